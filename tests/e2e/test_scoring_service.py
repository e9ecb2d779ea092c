"""The online scoring service, started for real (uvicorn on a free port) on the lifecycle's state:
its predictions are the batch scorer's, a promotion is served within seconds under load without
a failed request, a broken version is never swapped in, bad records get a 422 naming the field,
and every prediction lands in the online inference table."""
from __future__ import annotations

import datetime as dt
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from pipelines import runtime
from pipelines.core import catalog
from pipelines.core.lake import read_partition, read_table
from pipelines.models import tracking
from tests.conftest import (new_version, serve_in_thread, serving_get, serving_headers, serving_post,
                            version_without_files)

pytestmark = [pytest.mark.e2e, pytest.mark.spark]
UC = "churn_small"
POLL_S = 0.5


@pytest.fixture(scope="module")
def service(lifecycle, small_spec, mlflow_server):
    from pipelines.serving.service import create_app

    day = max(lifecycle["scored"])
    runtime.refresh_online_store(UC, day)
    app = create_app(UC, poll_s=POLL_S)
    server, thread, url = serve_in_thread(app)
    yield {"url": url, "app": app, "day": day}
    server.should_exit = True
    thread.join(15)


def _records(small_spec, day, n=40) -> list[dict]:
    from pipelines.features.point_in_time import feature_columns

    cols = feature_columns(small_spec).all
    frame = read_partition(runtime.lake().features(UC), day, [small_spec.entity, *cols]).head(n)
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict("records")]


def test_predictions_equal_the_batch_scorers(service, small_spec, lifecycle):
    records = _records(small_spec, service["day"])
    answer = serving_post(f"{service['url']}/v1/{UC}/predict", json={"records": records}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["version"] == lifecycle["champion"]["version"] and body["request_id"]
    online = pd.DataFrame(body["predictions"]).set_index(small_spec.entity)
    batch = read_partition(runtime.lake().inference(UC), service["day"]).set_index(small_spec.entity)
    assert set(batch.loc[online.index, "model_version"]) == {body["version"]}
    np.testing.assert_allclose(online["score"], batch.loc[online.index, "score"], rtol=0, atol=1e-12)
    assert (online["predicted_label"] == batch.loc[online.index, "predicted_label"]).all()


@pytest.mark.parametrize("change, field, words", [
    (lambda r: r.pop("txn_count_7d"), "txn_count_7d", "field required"),
    (lambda r: r.update(amount_sum_30d="a lot"), "amount_sum_30d", "expected double, got str 'a lot'"),
    (lambda r: r.update(segment=7), "segment", "expected string, got int 7"),
])
def test_a_malformed_record_gets_a_422_naming_the_field(service, small_spec, change, field, words):
    records = _records(small_spec, service["day"], n=2)
    change(records[1])
    answer = serving_post(f"{service['url']}/v1/{UC}/predict", json={"records": records}, timeout=30)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"] == ["records", 1, field] and words in error["msg"]


def test_a_promotion_is_served_within_seconds_under_load_without_a_failed_request(service, small_spec,
                                                                                  restore_champion):
    records = _records(small_spec, service["day"], n=5)
    seen, failures, stop = [], [], threading.Event()

    def load():
        with httpx.Client(timeout=30, headers=serving_headers()) as client:
            while not stop.is_set():
                answer = client.post(f"{service['url']}/v1/{UC}/predict", json={"records": records})
                if answer.status_code != 200:
                    failures.append(answer.text)
                else:
                    seen.append((time.monotonic(), answer.json()["version"]))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        newer = new_version(small_spec, restore_champion)
        moved = time.monotonic()
        tracking.move_champion(small_spec.model.registered_name, newer, restore_champion.version, "now")
        deadline = moved + 5.0
        while time.monotonic() < deadline and not any(v == newer for _, v in seen):
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:3]
    first_new = min((at for at, v in seen if v == newer), default=None)
    assert first_new is not None and first_new - moved <= 5.0, "the promotion was not served within 5 s"
    assert all(v == newer for at, v in seen if at > first_new + 0.2), "an old version answered after the swap"
    assert len(seen) > 20


def test_a_version_that_fails_to_load_is_never_swapped_in(service, small_spec, mlflow_server, restore_champion):
    from scripts.airflow_api import wait_for

    served = restore_champion.version   # what the service serves once it has caught up with the registry
    wait_for(lambda: serving_get(f"{service['url']}/readyz", timeout=10).json()["version"] == served, 30, interval=0.2)
    broken = version_without_files(small_spec, restore_champion, mlflow_server, f"{UC}-serving-faults")
    tracking.client().set_registered_model_alias(small_spec.model.registered_name, tracking.CHAMPION, broken)
    time.sleep(POLL_S * 6)
    ready = serving_get(f"{service['url']}/readyz", timeout=10).json()
    assert ready["ready"] and ready["version"] == served and f"v{broken}" in ready["error"]
    answer = serving_post(f"{service['url']}/v1/{UC}/predict", json={"records": _records(small_spec, service["day"], 3)},
                        timeout=30)
    assert answer.status_code == 200 and answer.json()["version"] == served
    metrics = serving_get(f"{service['url']}/metrics", timeout=10).text
    assert 'mlops_model_reloads{outcome="failed",use_case="churn_small"}' in metrics


def test_entity_mode_reads_the_online_store(service, small_spec, monkeypatch):
    from fastapi.testclient import TestClient

    from pipelines.core.spec import ServingInput
    from pipelines.serving.service import create_app

    variant = small_spec.model_copy(update={"deployment": small_spec.deployment.model_copy(
        update={"input": ServingInput.ENTITY})})
    monkeypatch.setattr(runtime, "spec", lambda uc: variant)
    monkeypatch.setattr(catalog, "spec", lambda uc: variant)   # the service reads specs there
    records = _records(small_spec, service["day"], n=10)
    ids = [r[small_spec.entity] for r in records]
    with TestClient(create_app(UC, poll_s=60), headers=serving_headers()) as client:
        by_id = client.post(f"/v1/{UC}/predict", json={"entity_ids": ids})
        unknown = client.post(f"/v1/{UC}/predict", json={"entity_ids": [ids[0], "nobody"]})
    assert by_id.status_code == 200, by_id.text
    direct = serving_post(f"{service['url']}/v1/{UC}/predict", json={"records": records}, timeout=30).json()
    assert [p["score"] for p in by_id.json()["predictions"]] == pytest.approx([p["score"] for p in direct["predictions"]])
    assert [p[small_spec.entity] for p in by_id.json()["predictions"]] == ids
    assert unknown.status_code == 404 and unknown.json()["detail"]["unknown_entities"] == ["nobody"]


def test_every_prediction_is_in_the_online_inference_table_and_metrics(service, small_spec):
    records = _records(small_spec, service["day"], n=7)
    answer = serving_post(f"{service['url']}/v1/{UC}/predict", json={"records": records}, timeout=30).json()
    service["app"].state.request_log.flush()
    logged = read_table(runtime.lake().online_inference(UC))
    mine = logged[logged["request_id"] == answer["request_id"]]
    assert len(mine) == 7 and set(mine["mode"]) == {"served"} and (mine["latency_ms"] > 0).all()
    assert set(mine["model_version"]) == {answer["version"]}
    assert list(mine[small_spec.entity]) == [r[small_spec.entity] for r in records]
    batch_columns = set(read_partition(runtime.lake().inference(UC), service["day"]).columns)
    assert batch_columns <= set(logged.columns)
    metrics = serving_get(f"{service['url']}/metrics", timeout=10).text
    assert f'mlops_requests_total{{model_version="{answer["version"]}",outcome="ok",use_case="{UC}"}}' in metrics
    assert "mlops_request_seconds_bucket" in metrics


def test_a_failing_candidate_is_answered_by_the_champion_and_rolled_back(service, small_spec, mlflow_server,
                                                                         restore_champion, monkeypatch):
    """A canary whose candidate cannot serve: its entities get the champion's answer flagged as a
    fallback (never an error), the log says why, and the judge rolls the rollout back on its error rate."""
    from fastapi.testclient import TestClient

    from pipelines.core.spec import LoadTestSpec, Strategy
    from pipelines.release import rollout
    from pipelines.serving.service import create_app

    variant = small_spec.model_copy(update={"deployment": small_spec.deployment.model_copy(update={
        "strategy": Strategy.CANARY, "steps": [0.5, 1.0], "window_minutes": 0, "min_requests": 10,
        "load_test": LoadTestSpec(enabled=False)})})
    monkeypatch.setattr(runtime, "spec", lambda uc: variant)
    monkeypatch.setattr(catalog, "spec", lambda uc: variant)   # the service reads specs there
    broken = version_without_files(small_spec, restore_champion, mlflow_server, f"{UC}-rollout-faults")
    state = rollout.start(variant, runtime.lake(), broken, restore_champion.version, "a candidate without files",
                          "test")
    try:
        assert state.running and state.share == 0.5 and state.load_tested
        with TestClient(create_app(UC, poll_s=60), headers=serving_headers()) as client:
            answers = [client.post(f"/v1/{UC}/predict", json={"records": [r]})
                       for r in _records(small_spec, service["day"], n=40)]
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:2]
            rows = [a.json()["predictions"][0] for a in answers]
            ready = client.get(f"/v1/{UC}/readyz").json()
            client.app.state.request_log.flush()
        assert {r["model_version"] for r in rows} == {restore_champion.version}
        fell_back = [r for r in rows if r.get("fallback")]
        assert 8 <= len(fell_back) <= 32, len(fell_back)
        assert ready["rollout"]["candidate"] == broken and not ready["rollout"]["candidate_loaded"]
        logged = read_table(runtime.lake().online_inference(UC))
        mine = logged[logged["rollout_id"] == state.id]
        assert (mine.loc[mine["arm"] == "candidate", "error"].str.contains("no candidate loaded")).all()
        assert mine.loc[mine["arm"] == "candidate", "fallback"].all()
        judged = rollout.judge_rollout(variant, runtime.lake())
        assert judged["action"] == "roll_back" and "error rate 100.0%" in judged["reason"], judged
        after = rollout.read_state(variant)
        assert after.phase == "rolled_back" and after.share == 0.0
        assert tracking.client().get_model_version(small_spec.model.registered_name, broken).tags[
            "rollout.decision"] == "rolled_back"
    finally:
        now = rollout.read_state(variant)
        if now is not None and now.running:
            rollout.apply(variant, runtime.lake(), now, rollout.Judgement("roll_back", "test cleanup"))


def test_live_performance_covers_the_services_answers(service, small_spec, lifecycle):
    """Labels joined to the online answers as to the batch scores: a row per source and version
    (shadow scores, never acted on, are left out)."""
    from pipelines.core.lake import drop_partition, replace_partition
    from pipelines.monitoring.watch import PERFORMANCE

    lake = runtime.lake()
    perf = read_table(lake.monitoring(UC, PERFORMANCE))
    label_day, landed = perf.sort_values("label_date").iloc[-1][["label_date", "labels_landed"]]
    batch = read_partition(lake.inference(UC), label_day).head(60)
    online = batch[[small_spec.entity, "score", "predicted_label", "model_version"]].copy()
    online["mode"] = ["served"] * 50 + ["shadow"] * 10
    online.loc[online.index[50:], "model_version"] = "shadowed"
    replace_partition(lake.online_inference(UC), label_day, online)
    try:
        rows = runtime.live_performance(UC, landed)
        mine = [r for r in rows if r["label_date"] == label_day]
        by_source = {(r["source"], r["model_version"]): r for r in mine}
        version = batch["model_version"].iloc[0]
        assert ("batch", version) in by_source and ("online", "shadowed") not in by_source, by_source.keys()
        assert by_source[("online", version)]["rows"] <= 50 < by_source[("batch", version)]["rows"]
        assert set(read_partition(lake.monitoring(UC, PERFORMANCE), label_day)["source"]) == {"batch", "online"}
    finally:
        drop_partition(lake.online_inference(UC), label_day)
        runtime.live_performance(UC, landed)


def test_the_daily_drift_check_covers_the_services_requests(service, small_spec):
    """The features the service answered on a day are compared with the champion's reference
    too (shadow rows left out), with their own Evidently report."""
    from pathlib import Path

    from pipelines.core.lake import drop_partition, replace_partition
    from pipelines.features.point_in_time import feature_columns

    lake, day = runtime.lake(), service["day"]
    features = read_partition(lake.features(UC), day, [small_spec.entity, *feature_columns(small_spec).all]).head(90)
    online = features.assign(mode=["served"] * 80 + ["shadow"] * 10)
    replace_partition(lake.online_inference(UC), day, online)
    champion = runtime.resolve_champion(UC)
    try:
        summary = runtime.monitor_drift(UC, day, champion)
        assert summary["online_rows"] == 80 and 0 <= summary["online_drift_share"] <= 1, summary
        assert Path(summary["online_report_path"]).name == f"{day}-online.html"
        assert Path(summary["online_report_path"]).exists()
    finally:
        drop_partition(lake.online_inference(UC), day)
        runtime.monitor_drift(UC, day, champion)


def test_an_ab_test_splits_live_traffic_and_keeps_the_arm_the_labels_favour(service, small_spec, restore_champion,
                                                                             monkeypatch):
    """An A/B rollout against the live service: each entity stays on one arm, about half go to
    the candidate, and when the period ends the labels that landed decide. Here they say the
    candidate's rankings were right and the champion's wrong, so the candidate becomes champion,
    with a report per arm."""
    from pathlib import Path

    from fastapi.testclient import TestClient

    from pipelines.core.config import settings
    from pipelines.core.lake import drop_partition, list_partitions, replace_partition
    from pipelines.core.spec import LoadTestSpec, Strategy
    from pipelines.release import rollout
    from pipelines.serving.service import create_app

    variant = small_spec.model_copy(update={"deployment": small_spec.deployment.model_copy(update={
        "strategy": Strategy.AB, "ab_split": 0.5, "ab_hours": 1.0, "load_test": LoadTestSpec(enabled=False)})})
    monkeypatch.setattr(runtime, "spec", lambda uc: variant)
    monkeypatch.setattr(catalog, "spec", lambda uc: variant)   # the service reads specs there
    lake, entity = runtime.lake(), small_spec.entity
    candidate = new_version(small_spec, restore_champion)
    state = rollout.start(variant, lake, candidate, restore_champion.version, "an A/B test", "test")
    labels_table = lake.clean(UC, small_spec.label.source)
    today = rollout.now_utc().date().isoformat()
    had_today = today in list_partitions(labels_table)
    try:
        assert state.running and state.strategy == "ab" and state.share == 0.5
        records = _records(small_spec, service["day"], n=80)
        with TestClient(create_app(UC, poll_s=60), headers=serving_headers()) as client:
            first = [client.post(f"/v1/{UC}/predict", json={"records": [r]}).json()["predictions"][0] for r in records]
            again = [client.post(f"/v1/{UC}/predict", json={"records": [r]}).json()["predictions"][0]
                     for r in records]
            client.app.state.request_log.flush()
        arm = {row[entity]: row["model_version"] for row in first}
        assert arm == {row[entity]: row["model_version"] for row in again}, "an entity stays on its arm"
        on_candidate = [e for e, v in arm.items() if v == candidate]
        assert 0.2 * len(arm) <= len(on_candidate) <= 0.8 * len(arm), len(on_candidate)
        assert set(arm.values()) == {candidate, restore_champion.version}

        # labels land for today's answers: the candidate's higher scores were the churners, the champion's lower ones
        template = read_partition(labels_table, list_partitions(labels_table)[-1]).head(1)
        assert small_spec.label.values is None and small_spec.label.positive is None   # the target is 0/1
        positive, negative = 1, 0
        rows = []
        for version in (candidate, restore_champion.version):
            mine = [r for r in first if r["model_version"] == version]
            middle = float(np.median([r["score"] for r in mine]))
            for r in mine:
                high = r["score"] > middle
                rows.append({entity: r[entity], small_spec.label.date_column: today,
                             small_spec.label.target: positive if high == (version == candidate) else negative})
        landed = pd.DataFrame(rows)
        replace_partition(labels_table, today, landed.astype({c: template[c].dtype for c in landed}))

        judged = rollout.judge_rollout(variant, lake, now=rollout.now_utc() + dt.timedelta(hours=2))
        assert judged["action"] == "report", judged
        outcome = judged["state"]["reason"]
        assert "the candidate wins" in outcome and f"candidate v{candidate} 1.0000" in outcome, outcome
        assert f"champion v{restore_champion.version} 0.0000" in outcome, outcome
        assert tracking.resolve_alias(small_spec.model.registered_name).version == candidate
        assert rollout.read_state(variant).phase == "completed"
        report = Path(settings().reports) / UC / "rollouts" / f"{state.id}.md"
        assert "winner: the candidate" in report.read_text()
        events = rollout.history(variant, lake)
        mine = list(events.loc[events["rollout_id"] == state.id, "event"])
        assert mine[0] == "start" and mine[-1] == "completed", mine
    finally:
        now = rollout.read_state(variant)
        if now is not None and now.running:
            rollout.apply(variant, lake, now, rollout.Judgement("roll_back", "test cleanup"))
        if not had_today:
            drop_partition(labels_table, today)

