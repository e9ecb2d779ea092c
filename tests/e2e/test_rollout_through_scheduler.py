"""A promotion reaches live traffic through the rollout DAG, on the real scheduler: the challenger
that passes the gate is load-tested on a staging service, shadows the champion, takes half the
entities (each one always on the same side), then all of them, and becomes champion; an injected
slow model started by hand fails its load test and is rolled back with the reason. The scoring
service is the real app, fed by this test; the DAG judges what it logged."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from tests.conftest import STORY_CANARY_UC as UC, land_breast_cancer, serving_headers, story_alerts

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("in_story")]

DAY = dt.date(2026, 1, 1)
DAG = f"{UC}_rollout"


def _records(spec, n: int) -> list[dict]:
    from pipelines import runtime
    from pipelines.core.lake import read_partition
    from pipelines.features.point_in_time import feature_columns

    frame = read_partition(runtime.lake().features(UC), DAY, [spec.entity, *feature_columns(spec).all]).head(n)
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict("records")]


def _judge(client) -> dict:
    run_id = client.trigger(DAG, conf={})
    run = client.wait_for_run(DAG, run_id)
    states = {t["task_id"]: t["state"] for t in client.task_instances(DAG, run_id)}
    assert run["state"] == "success", (run, states)
    return client.xcom(DAG, run_id, "judge_rollout")


def _send(http, app, records) -> list[dict]:
    answers = []
    for record in records:
        answer = http.post(f"/v1/{UC}/predict", json={"records": [record]})
        assert answer.status_code == 200, answer.text
        answers.append(answer.json()["predictions"][0])
    app.state.server.drain_shadows()   # shadow answers are logged once their batch is scored
    app.state.request_log.flush()
    return answers


def test_a_canary_reaches_all_traffic_and_an_injected_slow_model_is_rolled_back(story, tmp_path):
    from fastapi.testclient import TestClient

    from pipelines import runtime
    from pipelines.models import tracking
    from pipelines.release import rollout
    from pipelines.serving.service import create_app

    client = story["client"]
    client.wait_for_dags([DAG])
    land_breast_cancer(UC, tmp_path, DAY)
    spec = runtime.spec(UC)
    name, lake = spec.model.registered_name, runtime.lake()
    as_of = DAY + dt.timedelta(days=1)
    first = runtime.train(UC, as_of, "first model", "manual")
    assert runtime.promote(UC, first, as_of)["promoted"]          # no champion yet: promoted at once
    second = runtime.train(UC, as_of, "second model", "manual")
    decision = runtime.promote(UC, second, as_of)
    assert decision["outcome"] == "rolling_out" and not decision["promoted"], decision
    assert tracking.resolve_alias(name, tracking.CHAMPION).version == first["version"]
    state = rollout.read_state(spec)
    assert state.running and state.candidate == second["version"] and not state.load_tested
    assert tracking.resolve_alias(name, rollout.CANDIDATE).version == second["version"]

    records = _records(spec, 60)
    with TestClient(create_app(UC, poll_s=60), headers=serving_headers()) as http:
        app = http.app
        # 1. the load test on a staging service, then a shadow step: the champion answers everyone
        judged = _judge(client)
        assert judged["action"] == "wait" and "0 of 30 requests" in judged["reason"], judged
        tags = tracking.client().get_model_version(name, second["version"]).tags
        assert tags["gate.load_test.decision"] == "passed", tags
        assert "load_test_p99_ms" in tracking.client().get_run(second["run_id"]).data.metrics
        app.state.server.refresh()
        answers = _send(http, app, records[:40])
        assert {a["model_version"] for a in answers} == {first["version"]}
        judged = _judge(client)
        assert judged["action"] == "advance" and judged["stats"]["compared"] == 40, judged
        assert judged["stats"]["agreement"] >= 0.8 and judged["state"]["share"] == 0.5
        # 2. half the entities: each one on the same side every time
        app.state.server.refresh()
        answers, again = _send(http, app, records), _send(http, app, records)
        sides = [a["model_version"] for a in answers]
        assert sides == [a["model_version"] for a in again]
        assert 0.2 < sides.count(second["version"]) / len(sides) < 0.8, sides
        assert _judge(client)["state"]["share"] == 1.0
        # 3. all of them, then the candidate becomes champion
        app.state.server.refresh()
        assert {a["model_version"] for a in _send(http, app, records[:40])} == {second["version"]}
        judged = _judge(client)
        assert judged["action"] == "complete" and judged["state"]["phase"] == "completed", judged
    assert tracking.resolve_alias(name, tracking.CHAMPION).version == second["version"]
    assert tracking.resolve_alias(name, rollout.CANDIDATE) is None
    events = rollout.history(spec, lake, state.id)["event"].tolist()
    assert events == ["start", "load_test", "advance", "advance", "completed"], events

    # an injected slow model (a drill: the champion behind a 1.5 s sleep) fails its load test and
    # never takes traffic
    started = runtime.rollout_drill(UC, 1500, "test")
    slow = started["candidate"]
    assert slow not in (first["version"], second["version"]) and not started["load_tested"]
    assert "drill" in tracking.client().get_model_version(name, slow).tags
    judged = _judge(client)
    assert judged["action"] == "none", judged
    after = rollout.read_state(spec)
    # over its p99 budget; its circuit breaker in the staging service also turned requests away (503)
    assert after.phase == "rolled_back" and after.reason.startswith("load test:") and "p99" in after.reason, after
    assert tracking.resolve_alias(name, tracking.CHAMPION).version == second["version"]
    tags = tracking.client().get_model_version(name, slow).tags
    assert tags["rollout.decision"] == "rolled_back" and tags["gate.load_test.decision"] == "failed"
    status = runtime.rollout_status(UC, timelines=2)
    assert "rolled_back" in status and "load test:" in status and status.count("timeline of") == 2, status
    assert f"timeline of {state.id}" in status and "completed" in status
    told = [a["title"].removeprefix(f"[{UC} dev] ") for a in story_alerts(story, "rollout", UC)]
    assert told == [f"rollout of v{second['version']} advanced to 50%", f"rollout of v{second['version']} advanced "
                    f"to 100%", f"rollout of v{second['version']} completed", f"rollout of v{slow} rolled back"], told
