"""DAG integrity: every DAG file imports cleanly, fast, without heavy modules; house rules hold."""
from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
HEAVY = ["pyspark", "mlflow", "sklearn", "great_expectations", "evidently"]

PROBE = """
import importlib.util, json, sys, time
path = sys.argv[1]
import airflow.sdk  # the DAG's own imports are what we measure, not Airflow's
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_under_test", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
elapsed = time.perf_counter() - start
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[2].split(',')))
print(json.dumps({"seconds": elapsed, "heavy": heavy}))
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins")])
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env.pop("MLOPS_INCLUDE", None)
    return env


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_imports_without_heavy_modules(path):
    """Importing a DAG file loads none of the heavy libraries; its parse time is reported."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), ",".join(HEAVY)], capture_output=True, text=True,
                         env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not result["heavy"], f"{path.name} imports {result['heavy']} at module level (in sys.modules after import)"
    print(f"\nparse time {path.name}: {result['seconds'] * 1000:.0f} ms")
    assert result["seconds"] < 5, f"{path.name} took {result['seconds']:.2f}s to import"


@pytest.fixture(scope="module")
def dagbag():
    """The project's DAGs, parsed against the project's own include/ folder."""
    saved = os.environ.pop("MLOPS_INCLUDE", None)
    try:
        from airflow.dag_processing.dagbag import DagBag

        return DagBag(str(ROOT / "dags"))
    finally:
        if saved is not None:
            os.environ["MLOPS_INCLUDE"] = saved


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_one_set_of_dags_per_spec(dagbag):
    from pipelines.core.spec import discover_specs

    specs = discover_specs(ROOT / "include")
    assert specs, "no use-case spec found under include/"
    expected = {f"{s.name}_{kind}" for s in specs for kind in ("daily", "training", "drift_watch", "ingest", "rollback",
                                                                 "release")}
    assert expected <= set(dagbag.dag_ids)


def test_every_dag_has_docs_tags_and_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 100, f"{dag_id} has no doc_md"
        assert "mlops" in dag.tags and len(dag.tags) >= 2, f"{dag_id} tags: {dag.tags}"
        assert "env:dev" in dag.tags, f"{dag_id} does not show its environment: {dag.tags}"
        for t in dag.tasks:
            assert t.retries >= 1, f"{dag_id}.{t.task_id} has no retries"


def test_manual_params_have_descriptions(dagbag):
    for dag_id, dag in dagbag.dags.items():
        for name, param in dag.params.items():
            described = dag.params.get_param(name).description
            assert described, f"{dag_id} param {name} has no description"


def test_assets_link_daily_monitoring_to_drift_watch(dagbag):
    daily = dagbag.dags["churn_daily"]
    watch = dagbag.dags["churn_drift_watch"]
    outlets = {a.uri for a in daily.get_task("monitor_drift").outlets}
    assert "mlops://churn/drift_summary" in outlets
    assert "mlops://churn/drift_summary" in str(watch.timetable.asset_condition)


def test_inbox_watcher_schedules_ingest_and_ingest_wakes_unscheduled_daily(dagbag):
    """Each ingest DAG runs on its inbox asset's watcher (an InboxTrigger on the use case's folder);
    its landed asset wakes the daily DAG of a use case without a scoring schedule, and only that."""
    from pipelines.core.spec import discover_specs

    for spec in discover_specs(ROOT / "include"):
        ingest, daily = dagbag.dags[f"{spec.name}_ingest"], dagbag.dags[f"{spec.name}_daily"]
        [inbox] = ingest.schedule
        assert inbox.uri == f"mlops://{spec.name}/inbox"
        trigger = inbox.watchers[0].trigger
        assert type(trigger).__name__ == "InboxTrigger" and trigger.directory.endswith(f"inbox/{spec.name}")
        outlets = {a.uri for a in ingest.get_task("announce_landed").outlets}
        assert outlets == {f"mlops://{spec.name}/landed"}
        if spec.scoring.schedule is None:
            assert [a.uri for a in daily.schedule] == [f"mlops://{spec.name}/landed"]
        else:
            assert daily.schedule == spec.scoring.schedule


def test_daily_graph_order(dagbag):
    dag = dagbag.dags["churn_daily"]
    assert dag.get_task("wait_for_look_back").upstream_task_ids == {"validate_raw"}
    assert dag.get_task("build_features").upstream_task_ids == {"wait_for_look_back"}
    assert dag.get_task("score_batch").upstream_task_ids == {"resolve_champion"}
    assert dag.get_task("monitor_drift").upstream_task_ids == {"resolve_champion"}


def test_task_functions_record_their_own_work_time(dagbag):
    """Every TaskFlow task of the lifecycle pushes `work_seconds` (the overhead benchmark reads it)."""
    from airflow.providers.standard.operators.python import PythonOperator

    for dag_id, dag in dagbag.dags.items():
        for t in dag.tasks:
            if isinstance(t, PythonOperator):
                assert getattr(t.python_callable, "__wrapped__", None), f"{dag_id}.{t.task_id} is not @measured"


def test_a_broken_spec_breaks_only_its_own_use_case(tmp_path, monkeypatch):
    """Two use cases, one with a typo: the good one's DAGs load; the broken one shows as one import
    error (from dags/spec_errors.py) naming its file and key."""
    import yaml
    from airflow.dag_processing.dagbag import DagBag

    raw = yaml.safe_load((ROOT / "include/churn/spec.yaml").read_text())
    for name, mutate in (("good_case", lambda r: None),
                         ("bad_case", lambda r: r["training"].update({"windw_days": 3}))):
        spec = {**raw, "name": name, "training": dict(raw["training"])}
        mutate(spec)
        (tmp_path / name).mkdir()
        (tmp_path / name / "spec.yaml").write_text(yaml.safe_dump(spec))
        (tmp_path / name / "expectations.yaml").write_text((ROOT / "include/churn/expectations.yaml").read_text())
    monkeypatch.setenv("MLOPS_INCLUDE", str(tmp_path))
    bag = DagBag(str(ROOT / "dags"))
    assert {"good_case_daily", "good_case_training", "good_case_drift_watch"} <= set(bag.dag_ids)
    assert not [d for d in bag.dag_ids if d.startswith("bad_case")]
    assert list(map(lambda p: Path(p).name, bag.import_errors)) == ["spec_errors.py"]
    message = next(iter(bag.import_errors.values()))
    assert "bad_case/spec.yaml: training.windw_days: unknown key (did you mean window_days?)" in message


def test_training_graph_with_and_without_approval(dagbag, tmp_path, monkeypatch):
    """Without approval: train, gate, promote. With `promotion.approval: required`: the gate, then a
    short-circuit that skips the review of a rejected challenger, Airflow's ApprovalOperator
    (rejecting on timeout, with the spec's timeout and the gate's summary as body), and a promotion
    that runs whatever the review answered (it records a rejection too)."""
    import datetime as dt

    import yaml
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    plain = dagbag.dags["churn_training"]
    assert plain.get_task("evaluate_challenger").upstream_task_ids == {"train_challenger"}
    assert plain.get_task("promote_if_better").upstream_task_ids == {"evaluate_challenger"}
    assert "review_challenger" not in plain.task_ids

    raw = yaml.safe_load((ROOT / "include/churn/spec.yaml").read_text())
    raw["promotion"].update(approval="required", approval_timeout_hours=6)
    (tmp_path / "churn").mkdir()
    (tmp_path / "churn" / "spec.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "churn" / "expectations.yaml").write_text((ROOT / "include/churn/expectations.yaml").read_text())
    monkeypatch.setenv("MLOPS_INCLUDE", str(tmp_path))
    dag = DagBag(str(ROOT / "dags")).dags["churn_training"]
    review = dag.get_task("review_challenger")
    assert isinstance(review, ApprovalOperator) and review.defaults == ["Reject"]
    assert review.response_timeout == dt.timedelta(hours=6) and "review_summary" in review.body
    assert "comment" in review.params
    assert review.upstream_task_ids == {"passed_gate"} and dag.get_task("passed_gate").upstream_task_ids == {
        "evaluate_challenger"}
    promote = dag.get_task("promote_if_better")
    assert promote.upstream_task_ids == {"evaluate_challenger", "approved"} and promote.trigger_rule == "none_failed"
    assert dag.get_task("approved").upstream_task_ids == {"review_challenger"}
    assert "review_challenger" in dag.doc_md


def test_a_rollout_dag_only_for_use_cases_with_a_rollout_strategy(dagbag, tmp_path, monkeypatch):
    """A direct strategy (the default) has no rollout DAG; a canary has one that load-tests the
    candidate before it judges the step, on a schedule of half its window."""
    import datetime as dt

    import yaml
    from airflow.dag_processing.dagbag import DagBag

    from pipelines.core.spec import discover_specs

    rolled = {f"{s.name}_rollout" for s in discover_specs(ROOT / "include") if s.deployment.strategy != "direct"}
    assert {d for d in dagbag.dag_ids if d.endswith("_rollout")} == rolled and "churn_rollout" in rolled
    raw = yaml.safe_load((ROOT / "include/churn/spec.yaml").read_text())
    raw["deployment"] = {"strategy": "canary", "steps": [0.0, 0.1, 1.0], "window_minutes": 30}
    (tmp_path / "churn").mkdir()
    (tmp_path / "churn" / "spec.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "churn" / "expectations.yaml").write_text((ROOT / "include/churn/expectations.yaml").read_text())
    monkeypatch.setenv("MLOPS_INCLUDE", str(tmp_path))
    bag = DagBag(str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert "churn_rollout" in bag.dag_ids
    raw["deployment"] = {"strategy": "direct"}
    (tmp_path / "churn" / "spec.yaml").write_text(yaml.safe_dump(raw))
    assert "churn_rollout" not in DagBag(str(ROOT / "dags")).dag_ids
    raw["deployment"] = {"strategy": "canary", "steps": [0.0, 0.1, 1.0], "window_minutes": 30}
    (tmp_path / "churn" / "spec.yaml").write_text(yaml.safe_dump(raw))
    dag = DagBag(str(ROOT / "dags")).dags["churn_rollout"]
    assert dag.get_task("judge_rollout").upstream_task_ids == {"load_test_candidate"}
    assert dag.timetable.delta == dt.timedelta(minutes=15)
    assert "shadow → 10% → 100%" in dag.doc_md and "mlops rollout status churn" in dag.doc_md
    assert {a.uri for a in dag.get_task("judge_rollout").outlets} == {"mlops://churn/champion"}


def test_a_manual_rollout_run_with_a_stop_reason_rolls_the_candidate_back(dagbag, monkeypatch):
    """The control room's "Stop the rollout": the rollout DAG's form takes a reason; its run rolls
    the running rollout back (reported and alerted as a roll-back) instead of judging it."""
    from pipelines import alerts, runtime

    assert dagbag.dags["churn_rollout"].params["stop_reason"] == ""
    asked = []
    monkeypatch.setattr(runtime, "end_rollout", lambda uc, reason, by: asked.append((uc, reason, by)) or {
        "candidate": "3", "champion": "2", "share": 0.0, "phase": "rolled_back"})
    stopped = runtime.stop_rollout("churn", "p99 too high", "ops")
    assert asked == [("churn", "p99 too high", "ops")]
    assert stopped["action"] == "roll_back" and stopped["reason"] == "stopped by ops: p99 too high"
    assert alerts.rollout("churn", stopped).headline == "rollout of v3 rolled back"
    monkeypatch.setattr(runtime, "end_rollout", lambda uc, reason, by: {"action": "none", "reason": "no rollout"})
    assert runtime.stop_rollout("churn", "x", "ops")["action"] == "none"


@pytest.mark.parametrize("choice", ["Approve", "Reject"])
def test_the_review_keeps_the_answer_before_acting_on_it(choice):
    """A rejection skips the tasks after the review before the operator's return value is pushed:
    the answer is kept as XCom `review` first, so the promotion task can record who rejected."""
    import datetime as dt
    import types

    from mlops_airflow.review import REVIEW_XCOM, promotion_review
    from pipelines.core.spec import load_spec

    review = promotion_review(load_spec(ROOT / "include" / "churn"))
    pushed = {}
    ti = types.SimpleNamespace(xcom_push=lambda key, value: pushed.update({key: value}))
    at = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.timezone.utc)
    review.execute_complete({"ti": ti, "task": review}, {
        "chosen_options": [choice], "params_input": {"comment": "why"}, "responded_at": at,
        "responded_by_user": {"id": "7", "name": "risk"}})
    assert pushed[REVIEW_XCOM] == {"chosen_options": [choice], "params_input": {"comment": "why"},
                                   "responded_by_user": {"id": "7", "name": "risk"}, "responded_at": str(at)}


def test_release_graph_tests_in_staging_one_at_a_time_then_asks_before_prod(dagbag):
    """dev's version into staging, the staging tests in a row (each stops the release when it
    fails), the pass recorded, a person's approval (rejecting on timeout), then prod."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from pipelines.release.between_environments import STAGING_TESTS

    dag = dagbag.dags["churn_release"]
    order = ["pick_version", "bring_into_staging", *[f"staging_{t}" for t in STAGING_TESTS], "pass_staging",
             "approve_prod", "release_into_prod"]
    for before, after in zip(order, order[1:]):
        assert before in dag.get_task(after).upstream_task_ids, (before, after)
    approval = dag.get_task("approve_prod")
    assert isinstance(approval, ApprovalOperator) and approval.defaults == ["Reject"] and "comment" in approval.params
    assert dag.schedule is None and set(dag.params) == {"version", "reason"}
    assert "staging_gate" in dag.doc_md and "deploy_models" in dag.doc_md
    rollback = dagbag.dags["churn_rollback"]
    assert rollback.params["environment"] == "dev" and "environment" in rollback.doc_md


@pytest.mark.parametrize("raised, fails_at_once", [
    ("pipelines.release.rollback:RollbackRefused", True),         # the same request again cannot help
    ("pipelines.release.between_environments:ReleaseRefused", True),
    ("pipelines.core.errors:MissingData", False),                 # a late file may land before the retry
    ("builtins:OSError", False),                                  # a bug or an outage keeps its retries
])
def test_a_refusal_retrying_cannot_change_fails_the_task_at_once(raised, fails_at_once):
    import importlib

    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.common import fail_at_once

    module, name = raised.split(":")
    kind = getattr(importlib.import_module(module), name)

    @fail_at_once("training refused: ")
    def step(params=None):
        raise kind("churn: prod does not train")

    assert "params" in inspect.signature(step).parameters   # Airflow still sees what the task asks for
    with pytest.raises(AirflowFailException if fails_at_once else kind) as caught:
        step()
    if fails_at_once:
        assert str(caught.value) == "training refused: churn: prod does not train"
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_training_and_rollback_act_in_the_environment_their_form_names(dagbag):
    for dag_id in ("churn_training", "churn_rollback"):
        param = dagbag.dags[dag_id].params.get_param("environment")
        assert param.value == "dev" and param.schema["enum"] == ["dev", "staging", "prod"], dag_id
    assert "dev, staging, prod" in dagbag.dags["churn_training"].doc_md


def test_live_performance_retraining_only_where_the_spec_asks_for_it(dagbag, tmp_path, monkeypatch):
    """Without `monitoring.performance` the daily DAG ends at measuring; with it, a decision that
    alerts and requests, and the trigger of the training DAG with `trigger=performance`. A
    snapshot use case (labels about their own day) measures after the day's scoring."""
    import yaml
    from airflow.dag_processing.dagbag import DagBag

    plain = dagbag.dags["churn_daily"]
    assert "decide_performance_retraining" not in plain.task_ids
    assert plain.get_task("measure_live_performance").upstream_task_ids == {"validate_raw"}
    raw = yaml.safe_load((ROOT / "include/churn/spec.yaml").read_text())
    raw["monitoring"]["performance"] = {"max_drop": 0.05}
    (tmp_path / "churn").mkdir()
    (tmp_path / "churn" / "spec.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "churn" / "expectations.yaml").write_text((ROOT / "include/churn/expectations.yaml").read_text())
    shutil.copytree(ROOT / "include" / "breast_cancer", tmp_path / "breast_cancer")
    monkeypatch.setenv("MLOPS_INCLUDE", str(tmp_path))
    bag = DagBag(str(ROOT / "dags"))
    dag = bag.dags["churn_daily"]
    assert dag.get_task("decide_performance_retraining").upstream_task_ids == {"measure_live_performance"}
    trigger = dag.get_task("trigger_retraining")
    assert trigger.upstream_task_ids == {"decide_performance_retraining"} and trigger.trigger_dag_id == "churn_training"
    assert trigger.conf["trigger"] == "performance" and trigger.skip_when_already_exists
    snapshot = bag.dags["breast_cancer_daily"].get_task("measure_live_performance")
    assert snapshot.upstream_task_ids == {"validate_raw", "score_batch"} and snapshot.trigger_rule == "none_failed"


def test_the_daily_dag_carries_the_specs_deadline_as_an_airflow_deadline_alert(dagbag, tmp_path, monkeypatch):
    """`scoring.deadline: "06:30"` on a daily schedule: each run's deadline is its logical date plus
    6 h 30 min, and a miss calls the project's alert callback on an executor; it survives the
    serialization the scheduler reads. The shipped churn spec asks for 06:00."""
    import datetime as dt

    import yaml
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.callback import SyncCallback
    from airflow.serialization.serialized_objects import DagSerialization

    [shipped] = dagbag.dags["churn_daily"].deadline
    assert shipped.interval == dt.timedelta(hours=6)
    assert not dagbag.dags["wine_daily"].deadline
    raw = yaml.safe_load((ROOT / "include/churn/spec.yaml").read_text())
    raw["scoring"] = {"schedule": "15 1 * * *", "deadline": "06:30"}
    (tmp_path / "churn").mkdir()
    (tmp_path / "churn" / "spec.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "churn" / "expectations.yaml").write_text((ROOT / "include/churn/expectations.yaml").read_text())
    monkeypatch.setenv("MLOPS_INCLUDE", str(tmp_path))
    dag = DagBag(str(ROOT / "dags")).dags["churn_daily"]
    [alert] = dag.deadline
    assert alert.interval == dt.timedelta(hours=5, minutes=15)   # from the 01:15 start to 06:30
    assert isinstance(alert.callback, SyncCallback)
    assert alert.callback.path == "mlops_airflow.alerts.deadline_missed"
    assert alert.callback.kwargs == {"use_case": "churn", "deadline": "06:30"}
    assert DagSerialization.to_dict(dag)["dag"]["deadline"]
    assert "deadline" in dag.doc_md
