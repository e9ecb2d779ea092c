"""The lifecycle on the production topology, natively: Airflow and MLflow on the private
PostgreSQL, Spark Connect as an application of a standalone Spark master and worker.

Proofs come from the systems themselves: the Spark master's and worker's JSON status, the
MLflow server's registry (and its PostgreSQL tables), Airflow's ``dag_run`` table. Then the
stack is stopped (every process group gone) and started again on the same state: the
registry, the runs and the tables are all still there.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import urllib.request

import pytest

from tests.conftest import free_port, serving_get, serving_post, small_spec_dict, traversable_home, write_spec

pytestmark = pytest.mark.integration
UC = "churn_cluster"
START, FIRST_TRAINING, DAYS = dt.date(2026, 1, 1), dt.date(2026, 1, 16), 17


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def _facts(stack, spec) -> dict:
    """What the systems hold: registry versions and aliases, Airflow runs, lake partitions."""
    from mlflow import MlflowClient

    from pipelines import runtime
    from pipelines.core.lake import list_partitions

    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    name = spec.model.registered_name
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    champion = client.get_model_version_by_alias(name, "champion").version
    runs = stack.postgres.query("airflow", "SELECT dag_id, state, count(*) FROM dag_run "
                                           "WHERE dag_id LIKE %s GROUP BY dag_id, state", (f"{UC}_%",))
    lake = runtime.lake()
    return {"versions": versions, "champion": champion, "runs": sorted(runs),
            "inference": list_partitions(lake.inference(UC)), "features": list_partitions(lake.features(UC))}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from pipelines import runtime
    from scripts.demo import play_story
    from scripts.stack import Stack

    home = traversable_home("mlops-cluster-")
    spec = small_spec_dict(UC, days=DAYS, customers=500, first_training=FIRST_TRAINING.isoformat(),
                           drift_start="2026-01-14")
    include = home / "include"
    write_spec(include, spec)
    end = START + dt.timedelta(days=DAYS - 1)
    mp = pytest.MonkeyPatch()
    stack = Stack(home=home, topology="cluster", airflow_port=free_port(), mlflow_port=free_port(),
                  spark_port=free_port(), postgres_port=free_port(), spark_master_port=free_port(),
                  spark_ui_port=free_port(span=3), serving_port=free_port(), redis_port=free_port(),
                  alerts_port=free_port())
    mp.delenv("MLOPS_SPARK_MASTER", raising=False)
    mp.setenv("MLOPS_HOME", str(home))
    mp.setenv("MLOPS_INCLUDE", str(include))
    mp.setenv("MLOPS_SCHEDULE_END", end.isoformat())
    runtime.forget_specs()
    runtime.simulate(UC)
    try:
        stack.up()
        mp.setenv("MLFLOW_TRACKING_URI", stack.mlflow_url)
        timings = play_story(stack, UC, START, FIRST_TRAINING, end)
        stack.serve()   # the scoring service, as `make ui` starts it
        yield {"stack": stack, "spec": runtime.spec(UC), "end": end, "timings": timings}
    finally:
        stack.down()
        mp.undo()
        runtime.forget_specs()
        shutil.rmtree(home, ignore_errors=True)


def test_spark_jobs_ran_on_the_standalone_master(cluster):
    stack = cluster["stack"]
    master = stack.spark_master_status()
    assert master["status"] == "ALIVE" and master["aliveworkers"] == 2
    apps = {a["name"]: a for a in master["activeapps"] + master["completedapps"]}
    assert "mlops-spark-connect" in apps, f"applications on the master: {sorted(apps)}"
    app = apps["mlops-spark-connect"]
    assert app["cores"] > 0
    for number in (1, 2):   # the application has an executor on each of the two workers
        worker = _json(f"http://127.0.0.1:{stack.spark_ui_port + number}/json/")
        executors = [e for e in worker["executors"] if e["appid"] == app["id"]]
        assert executors, f"no executor of {app['id']} on worker {number}: {worker['executors']}"


def test_tasks_ran_on_both_celery_workers_by_queue(cluster):
    """Airflow's CeleryExecutor with Redis: Spark-heavy tasks went to the spark queue's worker,
    fits and gates to the models queue's worker, the rest to either (task instances record the
    worker that ran them)."""
    stack = cluster["stack"]
    ran = stack.postgres.query("airflow", "SELECT task_id, queue, hostname FROM task_instance "
                                          "WHERE dag_id LIKE %s AND state = 'success'", (f"{UC}_%",))
    workers = {task: set() for task, _, _ in ran}
    for task, queue, host in ran:
        workers[task].add(host.split("@")[0])
        assert (queue, host.split("@")[0]) in {("spark", "airflow-worker-spark"), ("models", "airflow-worker-models"),
                                               ("default", "airflow-worker-spark"),
                                               ("default", "airflow-worker-models")}, (task, queue, host)
    assert workers["build_features"] == {"airflow-worker-spark"} and workers["score_batch"] == {"airflow-worker-spark"}
    assert workers["train_challenger"] == {"airflow-worker-models"}
    assert {w for hosts in workers.values() for w in hosts} == {"airflow-worker-spark", "airflow-worker-models"}
    print("which worker ran which task:", {task: sorted(hosts) for task, hosts in sorted(workers.items())})


def test_model_artifacts_go_through_the_mlflow_server(cluster):
    """MLflow's proxied artifact storage: the experiments' and versions' artifacts are
    ``mlflow-artifacts:`` URIs the server resolves; no worker needs the artifact folder."""
    from mlflow import MlflowClient

    stack, spec = cluster["stack"], cluster["spec"]
    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    experiment = client.get_experiment_by_name(spec.experiment("training"))
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
    champion = client.get_model_version_by_alias(spec.model.registered_name, "champion")
    run = client.get_run(champion.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri


def test_registry_lives_in_the_mlflow_server_on_postgres(cluster):
    stack, spec = cluster["stack"], cluster["spec"]
    facts = _facts(stack, spec)
    assert facts["versions"] and facts["champion"] in {str(v) for v in facts["versions"]}
    name = spec.model.registered_name
    rows = stack.postgres.query("mlflow", "SELECT alias, version FROM registered_model_aliases WHERE name = %s",
                                (name,))
    assert ("champion", int(facts["champion"])) in rows
    tags = dict(stack.postgres.query("mlflow", "SELECT key, value FROM model_version_tags "
                                               "WHERE name = %s AND version = 1", (name,)))
    assert tags.get("promotion.decision") == "promoted", tags


def test_airflow_runs_are_in_postgres(cluster):
    stack = cluster["stack"]
    runs = {(dag, state): n for dag, state, n in stack.postgres.query(
        "airflow", "SELECT dag_id, state, count(*) FROM dag_run WHERE dag_id LIKE %s GROUP BY dag_id, state",
        (f"{UC}_%",))}
    assert runs.get((f"{UC}_daily", "success")) == DAYS, runs
    assert runs.get((f"{UC}_training", "success"), 0) >= 1, runs
    assert not any(state == "failed" for _, state in runs), runs


def test_inference_table_written_through_the_cluster(cluster):
    from pipelines import runtime
    from pipelines.core.lake import list_partitions, read_partition

    lake = runtime.lake()
    scored = list_partitions(lake.inference(UC))
    assert scored[0] == FIRST_TRAINING.isoformat() and scored[-1] == cluster["end"].isoformat()
    rows = read_partition(lake.inference(UC), scored[-1])
    assert len(rows) > 0 and rows["customer_id"].is_unique


def test_the_stacks_scoring_service_answers_with_the_champion(cluster):
    """The native stack's scoring service serves the champion the registry names; the daily DAG
    put its newest features in the online store (its refresh_online_store task)."""
    import httpx

    from pipelines import runtime
    from pipelines.core.config import settings
    from pipelines.core.lake import read_partition
    from pipelines.features.online_store import store_date, store_path
    from pipelines.features.point_in_time import feature_columns

    stack, spec = cluster["stack"], cluster["spec"]
    assert store_date(store_path(settings().online_store, UC)) == cluster["end"].isoformat()
    champion = str(_facts(stack, spec)["champion"])
    ready = serving_get(f"{stack.serving_url}/v1/{UC}/readyz", timeout=10).json()
    assert ready["ready"] and ready["version"] == champion, ready
    rows = read_partition(runtime.lake().features(UC), cluster["end"], [spec.entity, *feature_columns(spec).all])
    records = json.loads(rows.head(5).to_json(orient="records"))
    answer = serving_post(f"{stack.serving_url}/v1/{UC}/predict", json={"records": records}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == champion and len(answer.json()["predictions"]) == 5


def test_state_survives_a_restart(cluster):
    """Stop every service, start again on the same home: everything is still there."""
    import psutil

    stack, spec = cluster["stack"], cluster["spec"]
    before = _facts(stack, spec)
    pids = {name: pid for name, pid in stack.status().items() if pid}
    assert set(pids) == set(stack.service_names())
    stack.down()
    assert not any(psutil.pid_exists(pid) for pid in pids.values()), "a service outlived `down`"
    assert stack.leftover_processes() == [], "a process of the stack outlived `down`"
    assert all(pid is None for pid in stack.status().values())
    stack.up()
    assert _facts(stack, spec) == before
