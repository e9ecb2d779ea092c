"""Promotion with a person in the loop, through the real scheduler: a use case whose spec requires
approval trains twice; each challenger passes the gate and waits in Airflow's ApprovalOperator;
the reviewer answers through the REST API (what the UI's Required Actions form sends): the first
is approved and becomes champion, the second is rejected and the champion stays. The decision,
the reviewer and the comment are on each model version and in its model card. Runs on the
shared story's stack (its own use case, fed through the CLI path)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tests.conftest import STORY_REVIEWED_UC as UC, land_breast_cancer, story_alerts

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("in_story")]

DAY = dt.date(2026, 1, 1)
DAG = f"{UC}_training"


def _states(client, run_id: str) -> dict[str, str]:
    return {t["task_id"]: t["state"] for t in client.task_instances(DAG, run_id)}


def _train_and_review(client, approve: bool, comment: str) -> tuple[str, dict]:
    run_id = client.trigger(DAG, conf={"as_of": (DAY + dt.timedelta(days=1)).isoformat(), "trigger": "manual",
                                       "reason": f"reviewed training ({'approve' if approve else 'reject'})"})
    request = client.wait_for_review(DAG, run_id, "review_challenger")
    evaluation = client.xcom(DAG, run_id, "evaluate_challenger")
    assert evaluation["eligible"], evaluation["reason"]
    assert request["options"] == ["Approve", "Reject"] and request["defaults"] == ["Reject"]
    version = evaluation["challenger"]["version"]
    assert f"v{version}" in request["subject"] and "holdout_roc_auc" in request["body"], request
    assert "Model card" in request["body"]
    reviewed = client.review(DAG, run_id, "review_challenger", approve=approve, comment=comment)
    assert reviewed["state"] == "success", client.task_log(DAG, run_id, "review_challenger")
    run = client.wait_for_run(DAG, run_id)
    assert run["state"] == "success", (run, _states(client, run_id))
    return version, _states(client, run_id)


def test_a_reviewer_approves_one_challenger_and_rejects_the_next(story, tmp_path):
    from pipelines import runtime
    from pipelines.models import tracking
    client = story["client"]
    client.wait_for_dags([DAG])
    land_breast_cancer(UC, tmp_path, DAY)
    name = runtime.spec(UC).model.registered_name
    c = tracking.client()

    first, states = _train_and_review(client, approve=True, comment="slices and calibration look right")
    assert states["approved"] == "success" and states["promote_if_better"] == "success", states
    assert tracking.resolve_alias(name, tracking.CHAMPION).version == first
    tags = c.get_model_version(name, first).tags
    assert tags["promotion.decision"] == "promoted" and tags["review.decision"] == "approved"
    assert tags["review.by"] == "admin" and tags["review.comment"] == "slices and calibration look right"
    assert "approved by admin" in tags["promotion.reason"]

    second, states = _train_and_review(client, approve=False, comment="wait for next month's data")
    assert second != first
    assert states["approved"] == "skipped" and states["promote_if_better"] == "success", states
    assert tracking.resolve_alias(name, tracking.CHAMPION).version == first     # the champion stayed
    tags = c.get_model_version(name, second).tags
    assert tags["promotion.decision"] == "rejected" and tags["review.decision"] == "rejected"
    assert tags["review.by"] == "admin" and "rejected by admin (wait for next month's data)" in tags["promotion.reason"]
    assert tags["gate.decision"] == "passed"
    card = Path(c.get_model_version(name, second).description.split("Model card: ")[1].split(" ")[0])
    text = card.read_text()
    assert "Decision: rejected" in text and "wait for next month" in text and "<img" in text
    # the reviewer was told each time, and the rejection was told too
    waiting = [a["title"] for a in story_alerts(story, "approval_waiting", UC)]
    assert [t.split("] ")[1] for t in waiting] == [f"{DAY + dt.timedelta(days=1)} promotion: {name} v{v} waits for "
                                                   f"your approval" for v in (first, second)], waiting
    rejected = story_alerts(story, "gate_rejected", UC)
    assert len(rejected) == 1 and f"challenger v{second} rejected" in rejected[0]["title"], rejected
    assert "rejected by admin (wait for next month's data)" in rejected[0]["message"]
