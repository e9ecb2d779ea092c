"""The lifecycle through a real Airflow (api-server, scheduler, dag-processor and triggerer on
the embedded PostgreSQL, the preloading LocalExecutor), a real MLflow server, a real Spark Connect
server: backfills, a manual training run, the drift watch's sensor firing and triggering
retraining, a broken last day quarantined, a rollback from the UI's form. The same story then
carries the fault cases that need a real scheduler (tests/faults/test_scheduler_faults.py): they
run on this module's stack."""

from __future__ import annotations

import datetime as dt

import pytest

from scripts.airflow_api import logical_day
from tests.conftest import (STORY_BROKEN as BROKEN, STORY_FIRST_TRAINING as FIRST_TRAINING, STORY_START as START,
                            STORY_UC as UC, newer_champion, story_alerts)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("in_story")]


def test_daily_runs_succeed_except_the_broken_day(story):
    client = story["client"]
    runs = {logical_day(r): r for r in client.runs(f"{UC}_daily") if logical_day(r)}   # the scheduled days
    expected = {(START + dt.timedelta(days=i)).isoformat() for i in range((story["end"] - START).days + 1)}
    assert set(runs) == expected
    failed = sorted(d for d, r in runs.items() if r["state"] != "success")
    assert failed == [BROKEN.isoformat()]
    states = {t["task_id"]: t["state"] for t in client.task_instances(f"{UC}_daily", runs[BROKEN.isoformat()]["dag_run_id"])}
    assert states["validate_raw"] == "failed"
    assert states["build_features"] == states["score_batch"] == "upstream_failed"
    day_before = {t["task_id"]: t["state"] for t in
                  client.task_instances(f"{UC}_daily", runs[(BROKEN - dt.timedelta(days=1)).isoformat()]["dag_run_id"])}
    assert day_before["score_batch"] == "success" and day_before["monitor_drift"] == "success"


def test_broken_day_wrote_nothing_downstream(story):
    from pipelines import runtime
    from pipelines.core.lake import list_partitions

    lake, ds = runtime.lake(), BROKEN.isoformat()
    assert ds in list_partitions(lake.quarantine(UC, "transactions"))
    for table in (lake.clean(UC, "transactions"), lake.features(UC), lake.inference(UC)):
        assert ds not in list_partitions(table)


def test_people_were_told_of_the_broken_day_and_each_retraining_once(story):
    """Every story use case alerts the stack's mailbox and a webhook: the broken day is one
    quarantine message and one failed-task message in each; each drift retraining one message."""
    from scripts.services import mailbox_messages

    day = BROKEN.isoformat()
    quarantined = story_alerts(story, "quarantined")
    assert len(quarantined) == 1, quarantined
    assert quarantined[0]["title"].startswith(f"[{UC} dev] {day} raw transactions quarantined: ")
    message = quarantined[0]["message"]
    assert "column 'customer_id'" in message and "quarantined partition: " in message
    failed = [a for a in story_alerts(story, "task_failed") if f"{UC}_daily.validate_raw failed" in a["title"]]
    assert len(failed) == 1 and day in failed[0]["title"] and "Airflow task: http://127.0.0.1:" in failed[0]["message"]
    drift_runs = [r for r in story["client"].runs(f"{UC}_training") if r["dag_run_id"].startswith("drift__")]
    retraining = story_alerts(story, "retraining")
    assert sorted(a["message"].split("training run: ")[1].split()[0] for a in retraining) == \
        sorted(r["dag_run_id"] for r in drift_runs)
    mails = [m for m in mailbox_messages(story["stack"]) if m["subject"].startswith(f"[{UC} dev]")]
    assert [m["subject"] for m in mails].count(quarantined[0]["title"]) == 1
    assert {a["title"] for a in quarantined + failed + retraining} <= {m["subject"] for m in mails}
    assert all(m.get_content_type() == "text/plain" for m in mails)


def test_registry_holds_champion_and_drift_retraining(story):
    from pipelines.models import tracking
    from pipelines.report import champion_history

    spec = story["spec"]
    champion = tracking.resolve_alias(spec.model.registered_name, "champion")
    assert champion is not None
    history = champion_history(spec)
    assert history[0]["decision"] == "promoted" and history[0]["trigger"] == "manual"
    drift_versions = [h for h in history if h["trigger"] == "drift"]
    assert drift_versions, f"no drift-triggered version in {history}"
    assert "drift on" in drift_versions[0]["trigger_reason"]
    assert drift_versions[0]["decision"] in {"promoted", "rejected"} and drift_versions[0]["reason"]


def test_sensor_fired_and_triggered_training_with_reason(story):
    client = story["client"]
    watch = client.runs(f"{UC}_drift_watch")
    assert watch and all(r["state"] == "success" for r in watch)
    training = client.runs(f"{UC}_training")
    drift_runs = [r for r in training if r["dag_run_id"].startswith("drift__")]
    assert drift_runs and all(r["state"] == "success" for r in drift_runs)
    run = drift_runs[0]
    assert run["conf"]["trigger"] == "drift" and "drift on" in run["conf"]["reason"]
    assert run["note"] and run["note"].startswith("Retraining on drift")


def test_inference_rows_per_scored_day(story):
    from pipelines import runtime
    from pipelines.core.lake import list_partitions, read_partition

    lake = runtime.lake()
    scored = list_partitions(lake.inference(UC))
    assert scored[0] == FIRST_TRAINING.isoformat() and scored[-1] == (BROKEN - dt.timedelta(days=1)).isoformat()
    for ds in scored:
        rows = read_partition(lake.inference(UC), ds)
        assert rows["customer_id"].is_unique and rows["model_version"].nunique() == 1


def _lineage_events(story) -> list[dict]:
    """The COMPLETE events the story's tasks sent through the stack's OpenLineage file transport."""
    import json

    from scripts.services import lineage_file

    lines = lineage_file(story["stack"]).read_text().splitlines()
    return [event for event in map(json.loads, lines) if event["eventType"] == "COMPLETE"]


def _names(datasets: list[dict], kind: str) -> list[str]:
    return [d["name"] for d in datasets if d["facets"]["datasetType"]["datasetType"] == kind]


def test_lineage_chains_raw_clean_features_model_and_inference_of_one_day(story):
    """OpenLineage events of the story's tasks: the scores of the last scored day come from a model
    version and that day's features; the version from feature partitions; each features partition
    from clean partitions, each validated from its raw partition: one chain, found by walking back."""
    from pipelines import runtime
    from pipelines.core.lake import Lake
    from pipelines.models import tracking

    lake, events = runtime.lake(), _lineage_events(story)
    producer = {(d["namespace"], d["name"]): event for event in events for d in event["outputs"]}
    day = BROKEN - dt.timedelta(days=1)
    inference = str(Lake.partition(lake.inference(UC), day).absolute())
    scoring = producer[("file", inference)]
    assert scoring["job"]["name"] == f"{UC}_daily.score_batch", scoring["job"]
    models = [d for d in scoring["inputs"] if d["facets"]["datasetType"]["datasetType"] == "MODEL"]
    assert len(models) == 1, scoring["inputs"]
    tags = {t["key"]: t["value"] for t in models[0]["facets"]["tags"]["tags"]}
    assert models[0]["name"] == f"{tags['name']}/{tags['version']}" and "@" not in models[0]["namespace"]
    assert tracking.client().get_model_version(tags["name"], tags["version"]).run_id == tags["run_id"]
    features_of_day = str(Lake.partition(lake.features(UC), day).absolute())
    assert features_of_day in _names(scoring["inputs"], "PARTITION")

    training = producer[(models[0]["namespace"], models[0]["name"])]
    assert training["job"]["name"] == f"{UC}_training.train_challenger"
    trained_on = _names(training["inputs"], "PARTITION")
    assert trained_on and all(name.startswith(str(lake.features(UC).absolute())) for name in trained_on)
    for features in (trained_on[-1], features_of_day):   # model <- features and inference <- features
        building = producer[("file", features)]
        assert building["job"]["name"] == f"{UC}_daily.build_features"
        clean = _names(building["inputs"], "PARTITION")
        assert clean and all(c.split("/ds=")[1] < features.split("/ds=")[1] for c in clean)   # strictly before
        validation = producer[("file", clean[-1])]
        assert validation["job"]["name"] == f"{UC}_daily.validate_raw"
        raw = str(Lake.partition(lake.raw(UC, clean[-1].split("/")[-2]), clean[-1].split("/ds=")[1]).absolute())
        assert raw in _names(validation["inputs"], "PARTITION")


def test_backfill_rerun_is_idempotent(story):
    """Re-running a scored day through Airflow replaces its partitions: same rows, no duplicates."""
    from pipelines import runtime
    from pipelines.core.lake import read_partition
    from scripts.demo import run_backfill

    lake, client = runtime.lake(), story["client"]
    day = BROKEN - dt.timedelta(days=1)
    before = {name: read_partition(t, day) for name, t in
              {"features": lake.features(UC), "inference": lake.inference(UC)}.items()}
    run_backfill(client, f"{UC}_daily", day, day, [f"{UC}_daily", f"{UC}_drift_watch", f"{UC}_training"])
    after_features = read_partition(lake.features(UC), day)
    after_inference = read_partition(lake.inference(UC), day)
    cols = list(before["features"].columns)
    assert after_features.sort_values(cols).reset_index(drop=True).equals(
        before["features"].sort_values(cols).reset_index(drop=True))
    assert len(after_inference) == len(before["inference"]) and after_inference["customer_id"].is_unique
    assert set(after_inference["customer_id"]) == set(before["inference"]["customer_id"])


def test_rollback_through_the_dag_changes_what_the_next_run_scores_with(story):
    """A newer champion is rolled back from the UI's form (here: the API): the alias moves back,
    who asked and why are on the versions, and a manual daily run for a date (the `ds` param)
    scores with the rolled-back-to version."""
    from pipelines import runtime
    from pipelines.core.lake import read_partition
    from pipelines.models import tracking

    client, name = story["client"], story["spec"].model.registered_name
    with newer_champion(name) as (original, newer):
        run_id = client.trigger(f"{UC}_rollback", conf={"reason": "alerts since the newer model"})
        assert client.wait_for_run(f"{UC}_rollback", run_id)["state"] == "success"
        done = client.xcom(f"{UC}_rollback", run_id, "roll_back_champion")
        assert (done["from_version"], done["to_version"]) == (newer, original)
        assert done["requested_by"] == "admin" and done["reason"] == "alerts since the newer model"
        assert tracking.resolve_alias(name, tracking.CHAMPION).version == original
        told = [a for a in story_alerts(story, "rollback") if f"rolled back v{newer} -> v{original}" in a["title"]]
        assert len(told) == 1 and "by: admin" in told[0]["message"] and "reason: alerts since" in told[0]["message"]
        assert tracking.client().get_model_version(name, newer).tags["champion.rolled_back"].endswith(
            "by admin: alerts since the newer model")

        day = BROKEN - dt.timedelta(days=1)
        daily = client.trigger(f"{UC}_daily", conf={"ds": day.isoformat()})
        assert client.wait_for_run(f"{UC}_daily", daily)["state"] == "success"
        scored = read_partition(runtime.lake().inference(UC), day)
        assert set(scored["run_id"]) == {daily} and set(scored["model_version"]) == {original}
