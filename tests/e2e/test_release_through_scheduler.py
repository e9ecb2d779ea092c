"""Releases through the real scheduler, on the shared story's stack: the release DAG takes the
story's dev champion into staging, tests it there and stops when a staging test fails; a
release a person approves reaches prod's registry as the same artifact; the rollback DAG acting
on prod moves prod's champion back and leaves staging's alone."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import STORY_UC as UC, story_alerts

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("in_story")]

DAG = f"{UC}_release"
QUICK_LOAD_TEST = {"deployment.load_test.users": 2, "deployment.load_test.rate": 10.0,
                   "deployment.load_test.seconds": 5}


def _states(client, dag_id: str, run_id: str) -> dict[str, str]:
    return {t["task_id"]: t["state"] for t in client.task_instances(dag_id, run_id)}


def _champion(environment: str) -> str | None:
    from pipelines import runtime
    from pipelines.core.environments import acting_in
    from pipelines.models import tracking
    with acting_in(environment):
        ref = tracking.resolve_alias(runtime.spec(UC).model.registered_name, tracking.CHAMPION)
    return ref.version if ref else None


def _overrides(spec_file: Path, staging: dict) -> None:
    from pipelines import runtime
    raw = yaml.safe_load(spec_file.read_text())
    raw["environments"] = {"staging": staging}
    spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    runtime.forget_specs()


def _release_approved(client, reason: str) -> tuple[str, dict]:
    run_id = client.trigger(DAG, conf={"reason": reason})
    try:
        request = client.wait_for_review(DAG, run_id, "approve_prod")
    except RuntimeError:
        states = _states(client, DAG, run_id)
        failed = [task for task, state in states.items() if state == "failed"]
        raise AssertionError(f"{states}\n" + "\n".join(client.task_log(DAG, run_id, t)[-3000:] for t in failed))
    staged = client.xcom(DAG, run_id, "pass_staging")
    assert f"v{staged['version']}" in request["subject"] and "into prod" in request["subject"], request
    assert "gate, batch_scoring, load_test, prod_schema" in request["body"], request
    reviewed = client.review(DAG, run_id, "approve_prod", approve=True, comment="staging looks right")
    assert reviewed["state"] == "success", client.task_log(DAG, run_id, "approve_prod")
    run = client.wait_for_run(DAG, run_id)
    assert run["state"] == "success", (_states(client, DAG, run_id), client.task_log(DAG, run_id, "release_into_prod"))
    return run_id, client.xcom(DAG, run_id, "release_into_prod")


def test_a_release_stops_in_staging_then_an_approved_one_reaches_prod_and_rolls_back_alone(story):
    from pipelines import releases, runtime
    from pipelines.models import tracking
    client = story["client"]
    client.wait_for_dags([DAG, f"{UC}_rollback"])
    spec_file = Path(runtime.spec(UC).directory) / "spec.yaml"
    original = spec_file.read_text()
    dev = _champion("dev")
    assert dev is not None, "the story promoted a dev champion"
    for target in ("staging", "prod"):
        releases.copy_data(UC, "dev", target)
    try:
        # 1. a staging test fails: the release stops there, nothing reaches prod
        _overrides(spec_file, {**QUICK_LOAD_TEST, "promotion.floor": 0.999})
        run_id = client.trigger(DAG, conf={"reason": "a floor staging cannot reach"})
        run = client.wait_for_run(DAG, run_id)
        states = _states(client, DAG, run_id)
        assert run["state"] == "failed" and states["staging_gate"] == "failed", states
        assert states["release_into_prod"] == "upstream_failed" and states["staging_load_test"] == "upstream_failed"
        assert states["staging_gate"] == "failed" and "floor 0.999" in client.task_log(DAG, run_id, "staging_gate")
        assert _champion("staging") is None and _champion("prod") is None

        # 2. approved: dev's champion, tested in staging, copied into prod (the story's small, drifted
        # holdout puts the champion near its floor: staging's floor is a named override here)
        _overrides(spec_file, {**QUICK_LOAD_TEST, "promotion.floor": 0.5})
        first_run, first = _release_approved(client, "first release")
        c = tracking.client()
        tags = c.get_model_version(first["name"], first["version"]).tags
        dev_name = runtime.spec(UC).model.registered_name
        assert first["name"] == f"prod.{dev_name}" and _champion("prod") == first["version"]
        assert tags["release.origin"] == f"{dev_name}/{dev}" and tags["release.approved_by"] == "admin"
        assert tags["release.approval_comment"] == "staging looks right" and tags["release.from_env"] == "staging"
        assert tags["release.run_id"] == c.get_model_version(dev_name, dev).run_id
        staging = _champion("staging")
        assert staging is not None and _champion("dev") == dev

        # 3. a second release, then the rollback DAG acting on prod: prod goes back, staging stays
        second_run, second = _release_approved(client, "second release")   # the same dev artifact, staged again
        assert _champion("prod") == second["version"] != first["version"]
        staging = _champion("staging")
        run_id = client.trigger(f"{UC}_rollback", conf={"reason": "the second release misbehaved",
                                                          "environment": "prod"})
        run = client.wait_for_run(f"{UC}_rollback", run_id)
        assert run["state"] == "success", client.task_log(f"{UC}_rollback", run_id, "roll_back_champion")
        rolled = client.xcom(f"{UC}_rollback", run_id, "roll_back_champion")
        assert rolled["environment"] == "prod" and rolled["to_version"] == first["version"]
        assert _champion("prod") == first["version"]
        assert _champion("staging") == staging and _champion("dev") == dev

        # 4. who was told: the failed staging test, each approval asked for, prod's rollback
        stopped = [a for a in story_alerts(story, "task_failed") if f"{DAG}.staging_gate failed" in a["title"]]
        assert len(stopped) == 1 and "floor 0.999" in stopped[0]["message"], stopped
        waiting = [a["title"] for a in story_alerts(story, "approval_waiting")]
        staged = [client.xcom(DAG, run, "pass_staging")["version"] for run in (first_run, second_run)]
        assert waiting == [f"[{UC} dev] release into prod: staging.{dev_name} v{v} waits for your approval"
                           for v in staged], waiting
        rolled = [a["title"] for a in story_alerts(story, "rollback") if a["title"].startswith(f"[{UC} prod]")]
        assert rolled == [f"[{UC} prod] prod.{dev_name} @champion rolled back v{second['version']} -> "
                          f"v{first['version']}"], rolled
    finally:
        spec_file.write_text(original)
        runtime.forget_specs()


def _pattern(spec_file: Path, pattern: str) -> None:
    from pipelines import runtime
    raw = yaml.safe_load(spec_file.read_text())
    raw.setdefault("deployment", {})["pattern"] = pattern
    spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    runtime.forget_specs()


def test_prod_refuses_through_the_scheduler_a_training_its_pattern_forbids(story):
    """The training DAG asked to train in prod: refused at once (no retry) for deploy models, and for
    deploy code whose commit staging never trained and passed (the copies staging passed above
    carry this commit as their origin's code version: they do not count)."""
    from pipelines import runtime
    from pipelines.models import tracking
    client, training = story["client"], f"{UC}_training"
    client.wait_for_dags([training])
    spec_file = Path(runtime.spec(UC).directory) / "spec.yaml"
    original, prod_before = spec_file.read_text(), _champion("prod")
    code = tracking.code_version_tags()["code_version"]
    committed = not code.endswith("+dirty") and code != "unknown"
    refusals = {"deploy_models": "prod does not train (deployment.pattern: deploy_models, only dev trains)",
                "deploy_code": f"code {code[:12]} has not passed staging" if committed
                else "prod trains only a committed release"}
    try:
        for pattern, refusal in refusals.items():
            _pattern(spec_file, pattern)
            run_id = client.trigger(training, conf={"environment": "prod", "reason": f"prod trains? ({pattern})"})
            run = client.wait_for_run(training, run_id)
            tasks = {t["task_id"]: t for t in client.task_instances(training, run_id)}
            log = client.task_log(training, run_id, "train_challenger")
            assert run["state"] == "failed" and tasks["train_challenger"]["state"] == "failed", (pattern, log)
            assert tasks["train_challenger"]["try_number"] == 1, "a refusal spends no retries"
            assert tasks["evaluate_challenger"]["state"] == "upstream_failed"
            # the reason, as the failed task's alert carries it (the task's exception)
            told = [a for a in story_alerts(story, "task_failed") if f"{training}.train_challenger" in a["title"]
                    and f"error: training refused: {UC}: " in a["message"] and refusal in a["message"]]
            assert len(told) == 1, (pattern, story_alerts(story, "task_failed"), log)
        assert _champion("prod") == prod_before
    finally:
        spec_file.write_text(original)
        runtime.forget_specs()
