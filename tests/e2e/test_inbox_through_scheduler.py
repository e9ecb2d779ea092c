"""A shipped use case on real data through the real scheduler, fed only by files dropped into its
inbox: the triggerer's watcher queues the ingest DAG, whose landed asset wakes the daily DAG for
the snapshot's date; a manual training run promotes the first champion; the next snapshot is
then scored on arrival, while a broken file dropped beside it is rejected with its error and
fails its ingest run without holding back the good one. Runs on the shared story's stack."""
from __future__ import annotations

import datetime as dt
import os
import shutil

import pytest

from tests.conftest import STORY_SHIPPED_UC as UC, story_alerts

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("in_story")]

FIRST, SECOND = dt.date(2026, 1, 1), dt.date(2026, 1, 2)


def _drop(csv, folder, name: str) -> None:
    """Drop a file as a careful writer does: a temporary name first, then one rename."""
    partial = folder / f".{name}.tmp"
    shutil.copy(csv, partial)
    os.replace(partial, folder / name)


def _states(client, dag_id: str, run: dict) -> dict[str, str]:
    return {t["task_id"]: t["state"] for t in client.task_instances(dag_id, run["dag_run_id"])}


def _settled_runs(client, dag_id: str, count: int, timeout: float = 600) -> list[dict]:
    """The DAG's runs once there are at least ``count`` and none is still going."""
    from scripts.airflow_api import wait_for

    def done():
        runs = client.runs(dag_id)
        finished = len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs)
        return runs if finished else None

    return wait_for(done, timeout, interval=3,
                    what=lambda: f"{dag_id}: {[(r['dag_run_id'], r['state']) for r in client.runs(dag_id)]}")


def test_dropped_snapshots_land_wake_the_daily_dag_and_get_scored(story, tmp_path):
    import pandas as pd

    from pipelines import runtime
    from pipelines.core.lake import list_partitions, read_partition
    from pipelines.data.example_data import export
    from pipelines.models import tracking

    client = story["client"]
    spec = runtime.spec(UC)
    inbox = runtime.inbox(UC)
    csv = export(UC, tmp_path)
    rows = len(pd.read_csv(csv))
    lake = runtime.lake()

    # 1. the first snapshot: landed, archived, validated and featurized; nothing to score it with yet
    _drop(csv, inbox / "patients", f"patients_{FIRST}.csv")
    [ingest] = _settled_runs(client, f"{UC}_ingest", 1)
    assert ingest["state"] == "success" and ingest["run_type"] == "asset_triggered"
    assert (inbox / "archive" / "patients" / f"patients_{FIRST}.csv").exists()
    assert list_partitions(lake.raw(UC, "patients")) == [FIRST.isoformat()]
    [daily] = _settled_runs(client, f"{UC}_daily", 1)
    states = _states(client, f"{UC}_daily", daily)
    assert daily["state"] == "success" and daily["logical_date"] is None, daily   # woken by the landed asset
    assert states["validate_raw"] == states["build_features"] == "success", states
    assert states["resolve_champion"] == states["score_batch"] == "skipped", states
    assert list_partitions(lake.features(UC)) == [FIRST.isoformat()]

    # 2. the first model, trained from the UI's form (here: the API)
    run_id = client.trigger(f"{UC}_training", conf={"as_of": SECOND.isoformat(), "trigger": "manual",
                                                    "reason": "first model from the inbox's snapshot"})
    assert client.wait_for_run(f"{UC}_training", run_id)["state"] == "success"
    champion = tracking.resolve_alias(spec.model.registered_name, tracking.CHAMPION)
    assert champion is not None

    # 3. the next snapshot and a broken file, dropped together
    (tmp_path / "broken.csv").write_text("patient_id,mean_radius,tumour_size\np1,12.0,large\n")
    _drop(tmp_path / "broken.csv", inbox / "patients", "broken.csv")
    _drop(csv, inbox / "patients", f"patients_{SECOND}.csv")
    ingests = _settled_runs(client, f"{UC}_ingest", 2)
    later = [r for r in ingests if r["dag_run_id"] != ingest["dag_run_id"]]
    announced = [r for r in later if _states(client, f"{UC}_ingest", r)["announce_landed"] == "success"]
    refused = [r for r in later if _states(client, f"{UC}_ingest", r)["report_rejected"] == "failed"]
    assert len(announced) == 1 and len(refused) == 1 and refused[0]["state"] == "failed", later
    error = (inbox / "rejected" / "patients" / "broken.csv.error.txt").read_text()
    assert "['tumour_size'] are not columns of source patients" in error
    assert not (inbox / "patients" / "broken.csv").exists()

    # 4. ... and the daily DAG woke for the snapshot's date and scored it with the champion
    dailies = _settled_runs(client, f"{UC}_daily", 2)
    assert len(dailies) == 2 and all(r["state"] == "success" for r in dailies), dailies
    scored = read_partition(lake.inference(UC), SECOND)
    assert len(scored) == rows and set(scored["model_version"].astype(str)) == {str(champion.version)}
    assert list_partitions(lake.inference(UC)) == [SECOND.isoformat()]

    # 5. people heard of the refused file once, with its error (and of the ingest task that failed)
    told = story_alerts(story, "inbox_refused", UC)
    assert [a["title"] for a in told] == [f"[{UC} dev] inbox file refused: broken.csv"], told
    assert "are not columns of source patients" in told[0]["message"]
    assert len([a for a in story_alerts(story, "task_failed", UC) if ".report_rejected failed" in a["title"]]) == 1


def test_live_performance_beyond_its_bound_requests_a_training_through_the_scheduler(story):
    """The snapshot scored above, judged against a bound it cannot meet (a Brier score of 0: a
    ceiling no model reaches): a daily run for its date measures it, tells people, and starts
    the training DAG with trigger=performance and the measured values as its reason.

    The same spec sets a deadline a minute after each run's logical date (the run's date, long
    past): Airflow's deadline alert fires while the run goes on, and people are told once."""
    import yaml

    from pipelines import runtime
    from pipelines.core.waiting import wait_until
    from pipelines.models import tracking

    client, daily, training = story["client"], f"{UC}_daily", f"{UC}_training"
    spec_file = runtime.spec(UC).directory / "spec.yaml"
    original = spec_file.read_text()
    raw = yaml.safe_load(original)
    raw["monitoring"].update(cooldown_days=0, performance={"metric": "brier", "floor": 0.0, "min_labels": 50,
                                                          "consecutive_days": 1})
    raw["scoring"] = {"schedule": "@daily", "deadline": "00:01"}   # a minute after a run's logical date
    champion = tracking.resolve_alias(runtime.spec(UC).model.registered_name, tracking.CHAMPION)
    try:
        spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        runtime.forget_specs()
        client.wait_for_task(daily, "decide_performance_retraining")
        run_id = client.trigger(daily, conf={"ds": SECOND.isoformat()}, logical_date=f"{SECOND}T00:00:00+00:00")
        run = client.wait_for_run(daily, run_id)
        states = {t["task_id"]: t["state"] for t in client.task_instances(daily, run_id)}
        assert run["state"] == "success" and states["trigger_retraining"] == "success", states
        request = client.xcom(daily, run_id, "decide_performance_retraining")
        assert request["run_id"] == f"performance__{SECOND}" and request["trigger"] == "performance"
        retraining = client.wait_for_run(training, request["run_id"])
        assert retraining["state"] == "success" and retraining["conf"]["trigger"] == "performance"
        reason = retraining["conf"]["reason"]
        assert reason.startswith(f"live brier of champion v{champion.version} (batch scores) beyond its ceiling "
                                 f"0.0000 on 1 consecutive label dates: ") and f"on {SECOND} (" in reason, reason
        assert retraining["note"].startswith("Retraining on live performance: live brier")
        trained = tracking.newest_version_tagged(runtime.spec(UC).model.registered_name, "trigger", "performance")
        assert trained is not None and trained.version != champion.version
        low = story_alerts(story, "performance_low", UC)
        assert len(low) == 1 and f"{SECOND} live brier of v{champion.version} beyond its bound 0" in low[0]["title"]
        asked = [a for a in story_alerts(story, "retraining", UC) if "(performance)" in a["title"]]
        assert len(asked) == 1 and f"training run: performance__{SECOND}" in asked[0]["message"]
        late = wait_until(lambda: [a for a in story_alerts(story, "deadline_missed", UC) if run_id in a["message"]],
                          timeout=60, what="the deadline_missed alert of the late run")
        assert len(late) == 1 and late[0]["title"].endswith("daily run not finished by its deadline, 00:01 UTC")
        assert f"run: {run_id} (manual)" in late[0]["message"] and late[0]["type"] == "warning"
    finally:
        spec_file.write_text(original)
        runtime.forget_specs()
