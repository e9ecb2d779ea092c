"""Environments and releases: ``mlops env``, ``mlops release`` and the ``<uc>_release`` DAG.

A release moves a use case's model one environment on, dev -> staging -> prod (the order of
``include/environments.yaml``). Into a tested environment (staging) it brings a copy of the
same artifact (deploy models) or a version trained there with this code (deploy code), runs
the tests of :data:`pipelines.release.between_environments.STAGING_TESTS` on that environment's
data and, when all pass, makes it that environment's champion. Into the last one (prod) it
takes only what the environment before passed, and only with a person's approval when the
environment requires one. Each step is one function here, called by the DAG's tasks and by
the CLI; each acts in the environment it names (:func:`pipelines.core.environments.acting_in`).
"""
from __future__ import annotations

import datetime as dt
import logging
import re

from pipelines import runtime
from pipelines.core.config import settings
from pipelines.core.environments import EnvironmentsError, acting_in
from pipelines.core.lake import copy_partitions, list_partitions
from pipelines.core.spec import Pattern
from pipelines.models import tracking
from pipelines.release import between_environments
from pipelines.release.between_environments import ReleaseRefused
from pipelines.release.decision import Review

log = logging.getLogger(__name__)


def environment_overview() -> dict:
    """``mlops env``: the environment this process runs in, and each one's state and registry."""
    envs, current = runtime.environments(), settings().env
    rows = []
    for env in envs.environments:
        with acting_in(env.name):
            s = settings()
            rows.append({"name": env.name, "current": env.name == current, "approval": env.approval,
                         "registry_prefix": env.registry_prefix, "lake": str(s.lake), "inbox": str(s.inbox),
                         "online_store": str(s.online_store), "description": env.description})
    mlflow = re.sub(r"//[^/@]*@", "//***@", settings().mlflow_tracking_uri)   # no password on the screen
    return {"environment": current, "release_path": " -> ".join(envs.names), "mlflow": mlflow, "environments": rows}


def copy_data(use_case: str, source: str, target: str) -> dict:
    """Copy the use case's validated data and features from environment ``source`` into ``target``
    (``mlops env copy-data``): how a staging or prod environment without its own feeds gets data
    to test on (the demo's, or a first setup's); each partition swapped in whole."""
    envs = runtime.environments()
    for field, name in (("--from", source), ("--to", target)):
        try:
            envs.get(name)
        except EnvironmentsError as exc:
            raise EnvironmentsError(f"{field}: {exc}") from None
    the_spec = runtime.spec(use_case)
    with acting_in(source):
        source_lake = runtime.lake()
    with acting_in(target):
        target_lake = runtime.lake()
    if source_lake.root == target_lake.root:
        raise ReleaseRefused(f"{source} and {target} share the lake {source_lake.root}: nothing to copy")
    tables = {f"clean/{name}": (source_lake.clean(use_case, name), target_lake.clean(use_case, name))
              for name in the_spec.sources}
    tables["features"] = (source_lake.features(use_case), target_lake.features(use_case))
    copied = {table: len(copy_partitions(frm, to)) for table, (frm, to) in tables.items()}
    log.info("%s: copied %s partitions from %s to %s", use_case, copied, source, target)
    return {"use_case": use_case, "from": source, "to": target, "partitions": copied}


def release_source(use_case: str, to: str, version: str | None = None) -> dict:
    """The version a release into ``to`` starts from: ``version`` of the environment before it,
    or that environment's champion (XCom-ready, with its environment)."""
    tracking.require_tracking_server()
    envs = runtime.environments()
    before = envs.before(to)
    if before is None:
        raise ReleaseRefused(f"nothing is released into {to}: it is the first environment ({' -> '.join(envs.names)})")
    with acting_in(before.name):
        ref = between_environments.release_source(runtime.spec(use_case), version)
    return {**ref.as_xcom(), "environment": before.name}


def stage_release(use_case: str, source: dict, release_id: str, requested_by: str, reason: str) -> dict:
    """Bring ``source`` into the environment after its own, where it is tested: a copy of the same
    artifact (deploy models), or a version trained there with this code (deploy code)."""
    tracking.require_tracking_server()
    target = runtime.environments().after(source["environment"]).name
    source_spec, ref = runtime.spec_in(use_case, source["environment"]), tracking.ModelRef.from_xcom(source)
    with acting_in(target):
        target_spec = runtime.spec(use_case)
        if target_spec.deployment.pattern is Pattern.DEPLOY_MODELS:
            staged = between_environments.copy_version(source_spec, ref, target_spec, release_id, requested_by, reason)
        else:
            staged = tracking.ModelRef.from_xcom(runtime.train(use_case, runtime.resolve_as_of(use_case, None, None),
                                                       f"release {release_id}: {reason}", "release", release_id))
            tracking.tag_version(staged.name, staged.version, between_environments.release_tags(
                target_spec, staged, release_id, requested_by, reason, None))
    return {**staged.as_xcom(), "environment": target, "release_id": release_id}


def staging_test(use_case: str, test: str, staged: dict) -> dict:
    """One of the tests a staged version must pass (see between_environments.STAGING_TESTS), on its
    environment's data; ReleaseRefused, with the reason tagged on the version, when it fails."""
    tracking.require_tracking_server()
    ref = tracking.ModelRef.from_xcom(staged)
    with acting_in(staged["environment"]):
        passed, reason = _STAGING_TESTS[test](use_case, staged)
        result = between_environments.record_staging_test(ref, between_environments.StagingTest(test, passed, reason))
    if not passed:
        raise ReleaseRefused(f"{use_case}: release {staged.get('release_id')} stopped in {staged['environment']}: "
                             f"{test} failed: {reason}")
    return result.as_xcom()


def _gate_test(use_case: str, staged: dict) -> tuple[bool, str]:
    champion = tracking.resolve_alias(staged["name"], tracking.CHAMPION)
    if champion is not None and champion.version != staged["version"] and champion.run_id == staged["run_id"]:
        # a release of the artifact this environment already serves (after a rollback elsewhere,
        # say): the gate passed it before, and a model cannot beat itself by a margin
        return True, (f"the same artifact (run {staged['run_id']}) as {settings().env}'s champion v{champion.version},"
                      f" which passed this gate before")
    evaluation = runtime.evaluate(use_case, staged, runtime.resolve_as_of(use_case, None, None))
    return (evaluation["eligible"] or evaluation["already_champion"]), evaluation["reason"]


def _batch_scoring_test(use_case: str, staged: dict) -> tuple[bool, str]:
    dates = list_partitions(runtime.lake().features(use_case))
    if not dates:
        return False, f"{settings().env} has no feature partition to score"
    rows = runtime.score(use_case, dates[-1], staged, f"release__{staged.get('release_id')}")
    return rows > 0, f"scored {rows} rows of {dates[-1]}"


def _load_test(use_case: str, staged: dict) -> tuple[bool, str]:
    from pipelines.release.load_test import load_test

    if not runtime.spec(use_case).deployment.load_test.enabled:
        return True, "not run: deployment.load_test.enabled is false in this environment's spec"
    tracking.client().set_registered_model_alias(staged["name"], "candidate", staged["version"])
    _, passed, reason = load_test(runtime.spec(use_case), runtime.lake(), staged["version"])
    return passed, reason


def _prod_schema_test(use_case: str, staged: dict) -> tuple[bool, str]:
    after = runtime.environments().after(staged["environment"])
    if after is None:
        return True, "no environment after this one"
    with acting_in(after.name):
        theirs = runtime.lake()
    problem = between_environments.inference_schema_problem(runtime.lake(), theirs, use_case)
    return problem is None, problem or f"the inference table's schema matches {after.name}'s"


_STAGING_TESTS = {"gate": _gate_test, "batch_scoring": _batch_scoring_test, "load_test": _load_test,
                  "prod_schema": _prod_schema_test}


def pass_staging(use_case: str, staged: dict, tests: list[dict]) -> dict:
    """Record that ``staged`` passed every test and make it its environment's champion."""
    ref = tracking.ModelRef.from_xcom(staged)
    with acting_in(staged["environment"]), runtime.training_lock(use_case):
        between_environments.mark_staging_passed(ref, tests)
        replaced = between_environments.make_champion(runtime.spec(use_case), ref, f"passed staging in release "
                                                      f"{staged.get('release_id')}")
    return {**staged, "replaced": replaced, "tests": [t["name"] for t in tests]}


def release_to_last(use_case: str, staged: dict, release_id: str, requested_by: str, reason: str,
                    review: Review | None) -> dict:
    """Release a version its environment passed into the next (prod): after approval, a copy of
    the same artifact (deploy models) or a training with the passed code (deploy code) becomes
    that environment's champion."""
    tracking.require_tracking_server()
    envs = runtime.environments()
    target = envs.after(staged["environment"])
    staging_spec, ref = runtime.spec_in(use_case, staged["environment"]), tracking.ModelRef.from_xcom(staged)
    between_environments.require_staging_passed(staging_spec, ref)
    with acting_in(target.name):
        target_spec = runtime.spec(use_case)
        between_environments.require_approval(target_spec, target, review)
        with runtime.training_lock(use_case):
            if target_spec.deployment.pattern is Pattern.DEPLOY_MODELS:
                released = between_environments.copy_version(staging_spec, ref, target_spec, release_id, requested_by,
                                                              reason, review)
            else:
                released = _train_released_code(use_case, release_id, requested_by, reason, review)
            replaced = between_environments.make_champion(target_spec, released, f"release {release_id}: {reason}")
    return {**released.as_xcom(), "environment": target.name, "release_id": release_id, "replaced": replaced,
            "approved_by": review.by if review else None}


def _train_released_code(use_case: str, release_id: str, requested_by: str, reason: str,
                         review: Review | None) -> tracking.ModelRef:
    """Deploy code: train with this (passed) code on this environment's data; the gate must pass."""
    trained = tracking.ModelRef.from_xcom(runtime.train(use_case, runtime.resolve_as_of(use_case, None, None),
                                                f"release {release_id}: {reason}", "release", release_id))
    the_spec = runtime.spec(use_case)
    tracking.tag_version(trained.name, trained.version, between_environments.release_tags(
        the_spec, trained, release_id, requested_by, reason, review))
    evaluation = runtime.evaluate(use_case, trained.as_xcom(), runtime.resolve_as_of(use_case, None, None))
    if not (evaluation["eligible"] or evaluation["already_champion"]):
        raise ReleaseRefused(f"{use_case}: {the_spec.environment}'s training of release {release_id} failed the "
                             f"gate: {evaluation['reason']}")
    return trained


def release(use_case: str, to: str, version: str | None, requested_by: str, reason: str,
            review: Review | None = None) -> dict:
    """``mlops release``: into a tested environment (copy or train, every test, champion there),
    or into the last one (approval, copy or train, champion there)."""
    envs = runtime.environments()
    release_id = f"{use_case}-{to}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}"
    source = release_source(use_case, to, version)
    if envs.is_last(to):
        return release_to_last(use_case, source, release_id, requested_by, reason, review)
    staged = stage_release(use_case, source, release_id, requested_by, reason)
    tests = [staging_test(use_case, test, staged) for test in between_environments.STAGING_TESTS]
    return pass_staging(use_case, staged, tests)


def environments_text(use_case: str) -> str:
    """Each environment's state of a use case, for people: its champion, where that came from
    and who approved it, and its newest inference partition (the demo's summary, ``mlops env``)."""
    lines = [f"Environments of {use_case} (release path {' -> '.join(runtime.environments().names)}):"]
    for env in runtime.environments().environments:
        with acting_in(env.name):
            name = runtime.spec(use_case).model.registered_name
            champion = tracking.resolve_alias(name, tracking.CHAMPION)
            tags = tracking.client().get_model_version(name, champion.version).tags or {} if champion else {}
            inference = runtime.lake().inference(use_case)
            dates = list_partitions(inference)
        where = (f"from {tags['release.from_env']} {tags['release.from']} (origin {tags['release.origin']}, code "
                 f"{tags.get('release.code_version', '?')[:12]})" if "release.from" in tags else "trained here")
        approved = f", approved by {tags['release.approved_by']}" if tags.get("release.approved_by") else ""
        lines.append(f"  {env.name:<8} {name}@champion: " + (f"v{champion.version}, {where}{approved}"
                                                             if champion else "none"))
        lines.append(f"  {'':<8} inference: {len(dates)} partitions" + (f", newest {dates[-1]}" if dates else ""))
    return "\n".join(lines)
