"""Releases between environments on the CLI path (pipelines.releases, as the release DAG's tasks
call it): real Spark, an MLflow tracking server, the small use case trained in dev by the
``lifecycle`` fixture, staging and prod fed a copy of dev's data (``mlops env copy-data``)."""
import datetime as dt
from pathlib import Path

import pytest
import yaml

from pipelines import releases, runtime
from pipelines.core.environments import acting_in
from pipelines.core.lake import list_partitions, read_partition
from pipelines.models import tracking
from pipelines.release.between_environments import ReleaseRefused
from pipelines.release.decision import Review

pytestmark = [pytest.mark.e2e, pytest.mark.spark]
UC = "churn_small"
QUICK_LOAD_TEST = {"deployment.load_test.users": 2, "deployment.load_test.rate": 10.0,
                   "deployment.load_test.seconds": 5}
APPROVED = Review(True, "risk-review", "2026-12-06T10:00:00+00:00", "staging looked right")


def versions(name: str) -> list:
    return sorted(tracking.client().search_model_versions(f"name = '{name}'"), key=lambda mv: int(mv.version))


def champion_in(environment: str) -> str | None:
    with acting_in(environment):
        ref = tracking.resolve_alias(runtime.spec(UC).model.registered_name, tracking.CHAMPION)
    return ref.version if ref else None


@pytest.fixture(scope="module")
def environments(lifecycle, small_spec):
    """staging and prod with a copy of dev's data, and the spec's overrides for staging; the spec
    file as it was afterwards."""
    spec_file = Path(small_spec.directory) / "spec.yaml"
    original = spec_file.read_text()
    for target in ("staging", "prod"):
        copied = releases.copy_data(UC, "dev", target)
        assert copied["partitions"]["features"] > 20 and copied["partitions"]["clean/labels"] > 0
    set_overrides(spec_file, {"staging": QUICK_LOAD_TEST})
    yield spec_file
    spec_file.write_text(original)
    runtime.forget_specs()


def set_overrides(spec_file: Path, overrides: dict, **deployment) -> None:
    raw = yaml.safe_load(spec_file.read_text())
    raw["environments"] = overrides
    raw["deployment"].update(deployment)
    spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    runtime.forget_specs()


@pytest.mark.parametrize("version, refused", [("1; drop table", "is not a version number"),
                                              ("../../1", "is not a version number"),
                                              ("99999", "dev has no version 99999 of churn_small_classifier")])
def test_a_version_that_is_not_one_is_refused_in_one_line(environments, version, refused):
    with pytest.raises(ReleaseRefused, match=refused):
        releases.release(UC, "staging", version, "tester", "hostile version")


def test_a_staging_test_that_fails_stops_the_release_and_says_why(environments):
    set_overrides(environments, {"staging": {**QUICK_LOAD_TEST, "promotion.floor": 0.999}})
    try:
        with pytest.raises(ReleaseRefused, match=r"stopped in staging: gate failed: .*floor 0\.999"):
            releases.release(UC, "staging", None, "tester", "a floor staging cannot reach")
    finally:
        set_overrides(environments, {"staging": QUICK_LOAD_TEST})
    staged = versions(f"staging.{UC}_classifier")[-1]
    assert staged.tags["release.staging"] == "failed" and staged.tags["release.test.gate"] == "failed"
    assert "floor" in staged.tags["release.staging_reason"]
    assert champion_in("staging") is None and versions(f"prod.{UC}_classifier") == []


def test_dev_champion_is_tested_in_staging_then_approved_into_prod(environments, lifecycle):
    dev = lifecycle["champion"]
    staged = releases.release(UC, "staging", None, "tester", "weekly release")
    assert staged["tests"] == ["gate", "batch_scoring", "load_test", "prod_schema"]
    assert champion_in("staging") == staged["version"] and champion_in("dev") == dev["version"]
    c = tracking.client()
    tags = c.get_model_version(staged["name"], staged["version"]).tags
    run_tags = c.get_run(dev["run_id"]).data.tags
    assert tags["release.origin"] == f"{UC}_classifier/{dev['version']}" and tags["release.from_env"] == "dev"
    assert tags["release.run_id"] == dev["run_id"] == staged["run_id"]   # the same artifact, the same run
    assert tags["release.data_digest"] == run_tags["training_data_digest"]
    assert tags["release.code_version"] == run_tags["code_version"]
    assert tags["compiled.runtime"] == run_tags["compiled.runtime"] != ""   # the copy says what serves it
    assert all(tags[f"release.test.{t}"] == "passed" for t in staged["tests"])
    with acting_in("staging"):   # staging scored its own newest partition with the staged version
        newest = list_partitions(runtime.lake().features(UC))[-1]
        scored = read_partition(runtime.lake().inference(UC), newest)
    assert set(scored["model_name"]) == {f"staging.{UC}_classifier"} and len(scored) > 0

    with pytest.raises(ReleaseRefused, match="a release into prod needs a person's approval; nothing was copied"):
        releases.release(UC, "prod", None, "tester", "weekly release")
    assert versions(f"prod.{UC}_classifier") == []

    released = releases.release(UC, "prod", None, "tester", "weekly release", APPROVED)
    assert champion_in("prod") == released["version"] and released["approved_by"] == "risk-review"
    prod_tags = c.get_model_version(released["name"], released["version"]).tags
    assert prod_tags["release.origin"] == tags["release.origin"] and prod_tags["release.run_id"] == dev["run_id"]
    assert prod_tags["release.from"] == f"{staged['name']}/{staged['version']}"
    assert {k: v for k, v in prod_tags.items() if k.startswith("compiled.")} == \
        {k: v for k, v in run_tags.items() if k.startswith("compiled.")}
    assert prod_tags["release.approved_by"] == "risk-review"
    assert prod_tags["release.approval_comment"] == "staging looked right"
    source_tags = c.get_model_version(staged["name"], staged["version"]).tags
    assert source_tags["release.to_prod"].startswith(f"prod.{UC}_classifier/{released['version']}")
    assert source_tags["release.to_prod.approved_by"] == "risk-review"
    assert source_tags["release.to_prod.approval_comment"] == "staging looked right"

    # prod's daily scoring uses it, in prod's own lake
    with acting_in("prod"):
        champion = runtime.resolve_champion(UC)
        day = list_partitions(runtime.lake().features(UC))[-1]
        rows = runtime.score(UC, day, champion, "prod-daily")
        scored = read_partition(runtime.lake().inference(UC), day)
    assert rows > 0 and set(scored["model_version"].astype(str)) == {released["version"]}
    text = releases.environments_text(UC)   # what the demo's summary shows
    assert f"prod     prod.{UC}_classifier@champion: v{released['version']}, from staging" in text
    assert "approved by risk-review" in text and f"dev      {UC}_classifier@champion: v{dev['version']}, trained here" in text


def test_a_rollback_in_prod_leaves_staging_and_dev_alone(environments):
    first_prod = champion_in("prod")
    staging, dev = champion_in("staging"), champion_in("dev")
    assert first_prod is not None, "runs after the release into prod"
    # the same dev artifact through staging again: the gate does not ask it to beat itself
    restaged = releases.release(UC, "staging", None, "tester", "the same version again")
    reason = tracking.client().get_model_version(restaged["name"], restaged["version"]).tags["release.test.gate.reason"]
    assert f"same artifact (run {restaged['run_id']}) as staging's champion v{staging}" in reason
    staging = champion_in("staging")
    again = releases.release(UC, "prod", None, "tester", "a second release of the same version", APPROVED)
    assert champion_in("prod") == again["version"] != first_prod
    with acting_in("prod"):
        rolled = runtime.rollback(UC, "the second release misbehaved", "tester")
    assert rolled["to_version"] == first_prod and rolled["model"] == f"prod.{UC}_classifier"
    assert champion_in("prod") == first_prod
    assert champion_in("staging") == staging and champion_in("dev") == dev


def test_deploy_code_prod_trains_only_code_staging_passed(environments, monkeypatch):
    set_overrides(environments, {"staging": QUICK_LOAD_TEST}, pattern="deploy_code")
    monkeypatch.setenv("MLOPS_CODE_VERSION", f"release-test-{dt.datetime.now():%H%M%S%f}")
    tracking.code_version.cache_clear()
    try:
        with acting_in("prod"), pytest.raises(ReleaseRefused, match="has not passed staging; release it there first"):
            runtime.require_may_train(UC)
        staged = releases.release(UC, "staging", None, "tester", "code release")
        c = tracking.client()
        staged_tags = c.get_model_version(staged["name"], staged["version"]).tags
        assert staged_tags["release.code_version"].startswith("release-test-")
        assert staged_tags["trigger"] == "release" and staged_tags["release.staging"] == "passed"
        with acting_in("prod"):
            runtime.require_may_train(UC)   # the code passed staging now
        released = releases.release(UC, "prod", None, "tester", "code release", APPROVED)
        prod_tags = c.get_model_version(released["name"], released["version"]).tags
        assert prod_tags["release.code_version"] == staged_tags["release.code_version"]
        assert released["run_id"] != staged["run_id"]   # prod trained its own model on its own data
        assert champion_in("prod") == released["version"]
    finally:
        tracking.code_version.cache_clear()
        set_overrides(environments, {"staging": QUICK_LOAD_TEST})
