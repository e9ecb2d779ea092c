"""Releases between environments: a model version (deploy models) or a code version (deploy
code) moves dev -> staging -> prod, tested on the way, approved before prod.

*Deploy models*: the version dev promoted is copied into staging's registry
(``MlflowClient.copy_model_version``: the same artifact, the same run), tested there on staging's
data (:data:`STAGING_TESTS`), and, once a person approved, copied into prod's registry, where it
becomes ``@champion``. Each copy carries tags naming where it came from: environment, model,
version, run, training-data digest and code version, the release id, who asked and who approved.

*Deploy code*: a release is a commit of this repository. Staging trains with it on its own
data and runs the same tests; prod trains only with a commit staging passed
(:func:`require_code_passed`), and every prod version records the commit it was trained with.

Every function here acts on the specs and lakes it is given (one environment each); which
environment a spec is of is its ``environment`` field. :mod:`pipelines.runtime` picks them.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import asdict, dataclass

from pipelines.core.errors import FinalRefusal
from pipelines.core.lake import Lake, list_partitions, partition_files
from pipelines.models import compiled, tracking
from pipelines.release.decision import Review

log = logging.getLogger(__name__)

STAGING_TESTS = ("gate", "batch_scoring", "load_test", "prod_schema")
PASSED, FAILED = "passed", "failed"


class ReleaseRefused(FinalRefusal, RuntimeError):
    """A release cannot go on: a staging test failed, no approval, a version staging did not pass."""


@dataclass(frozen=True)
class StagingTest:
    """One staging test's verdict on a version."""

    name: str
    passed: bool
    reason: str

    def as_xcom(self) -> dict:
        return asdict(self)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------- provenance
def provenance(name: str, version: str) -> dict[str, str]:
    """Where a version comes from: its own release tags if it is a copy, else itself (its run's
    training-data digest and code version)."""
    c = tracking.client()
    mv = c.get_model_version(name, version)
    tags = mv.tags or {}
    if "release.origin" in tags:
        return {k: v for k, v in tags.items() if k in ORIGIN_TAGS}
    run_tags = c.get_run(mv.run_id).data.tags if mv.run_id else {}
    return {"release.origin": f"{name}/{version}", "release.run_id": mv.run_id or "",
            "release.data_digest": run_tags.get("training_data_digest", "unknown"),
            "release.code_version": run_tags.get("code_version", "unknown")}


ORIGIN_TAGS = ("release.origin", "release.run_id", "release.data_digest", "release.code_version")


def release_tags(source_spec, source: tracking.ModelRef, release_id: str, requested_by: str, reason: str,
                 review: Review | None) -> dict[str, str]:
    """The tags of a copy: where it came from, the release, who asked, who approved and why."""
    tags = {**provenance(source.name, source.version), "release.id": release_id,
            "release.from_env": source_spec.environment, "release.from": f"{source.name}/{source.version}",
            "release.requested_by": requested_by, "release.reason": tracking.tag_text(reason), "release.at": now()}
    run_tags = tracking.client().get_run(source.run_id).data.tags if source.run_id else {}
    tags.update({key: run_tags[key] for key in compiled.TAGS if key in run_tags})   # the copy serves as its run says
    if review is not None:
        tags.update({"release.approved_by": review.by or "nobody (timed out)", "release.approved_at": review.at or "",
                     "release.approval_comment": tracking.tag_text(review.comment)})
    return tags


def version_of_release(name: str, release_id: str) -> tracking.ModelRef | None:
    """The version of ``name`` an earlier try of this release made (a retry reuses it)."""
    return tracking.newest_version_tagged(name, "release.id", release_id)


# ----------------------------------------------------------------- deploy models: the copies
def copy_version(source_spec, source: tracking.ModelRef, target_spec, release_id: str, requested_by: str,
                 reason: str, review: Review | None = None) -> tracking.ModelRef:
    """Copy ``source`` (same artifact, same run) into ``target_spec``'s registry, tagged with its
    provenance; the source version is tagged with where it went. Idempotent per release id."""
    target_name = target_spec.model.registered_name
    existing = version_of_release(target_name, release_id)
    if existing is not None:
        log.info("%s: release %s already copied %s v%s to %s v%s", source_spec.name, release_id, source.name,
                 source.version, target_name, existing.version)
        return existing
    tags = release_tags(source_spec, source, release_id, requested_by, reason, review)
    copied = tracking.client().copy_model_version(f"models:/{source.name}/{source.version}", target_name)
    tracking.tag_version(target_name, copied.version, tags)
    went = {f"release.to_{target_spec.environment}": f"{target_name}/{copied.version} ({release_id})",
            **{f"release.to_{target_spec.environment}.{key.removeprefix('release.')}": tags[key]
               for key in ("release.approved_by", "release.approved_at", "release.approval_comment") if key in tags}}
    tracking.tag_version(source.name, source.version, went)   # who approved, and when, on both sides
    log.info("%s: release %s copied %s v%s into %s as v%s", source_spec.name, release_id, source.name,
             source.version, target_spec.environment, copied.version)
    return tracking.ModelRef(target_name, str(copied.version), copied.run_id)


def release_source(spec, version: str | None) -> tracking.ModelRef:
    """The version of ``spec``'s environment to release: ``version``, or its champion."""
    name = spec.model.registered_name
    if version:
        if not re.fullmatch(r"v?\d{1,9}", str(version)):
            raise ReleaseRefused(f"{spec.name}: {str(version)[:40]!r} is not a version number (like 7 or v7)")
        from mlflow.exceptions import MlflowException
        try:
            return tracking.model_version(name, str(version).lstrip("v"))
        except MlflowException:
            raise ReleaseRefused(f"{spec.name}: {spec.environment} has no version {version} of {name}") from None
    champion = tracking.resolve_champion(name)
    if champion is None:
        raise ReleaseRefused(f"{spec.name}: {spec.environment} has no champion of {name} to release; promote one "
                             f"there first, or name a version")
    return champion


def require_staging_passed(staging_spec, staged: tracking.ModelRef) -> None:
    """Refuse to release a staging version into prod unless every staging test passed on it."""
    tags = tracking.client().get_model_version(staged.name, staged.version).tags or {}
    if tags.get("release.staging") != PASSED:
        raise ReleaseRefused(f"{staging_spec.name}: {staged.name} v{staged.version} has not passed staging's tests "
                             f"({tags.get('release.staging_reason') or 'never tested'}); prod takes only what "
                             f"staging passed")


def require_approval(target_spec, environment, review: Review | None) -> None:
    """Refuse a release into an environment that requires approval without an approving review."""
    if environment.approval != "required":
        return
    if review is None or not review.approved:
        who = f" ({review.by or 'nobody answered in time'})" if review else ""
        raise ReleaseRefused(f"{target_spec.name}: a release into {environment.name} needs a person's approval"
                             f"{who}; nothing was copied")


def make_champion(spec, version: tracking.ModelRef, reason: str) -> str | None:
    """Point ``spec``'s ``@champion`` at ``version`` (its registry only); the former champion."""
    before = tracking.resolve_alias(version.name, tracking.CHAMPION)
    if before is not None and before.version == version.version:
        return before.version
    at = now()
    tracking.move_champion(version.name, version.version, before.version if before else None, at)
    tracking.tag_version(version.name, version.version, {"promotion.decision": "promoted", "promotion.reason": reason})
    log.info("%s: %s @champion -> v%s (was %s)", spec.name, spec.environment, version.version,
             f"v{before.version}" if before else "none")
    return before.version if before else None


# ----------------------------------------------------------------- staging's tests
def record_staging_test(staged: tracking.ModelRef, test: StagingTest) -> StagingTest:
    tags = {f"release.test.{test.name}": PASSED if test.passed else FAILED,
            f"release.test.{test.name}.reason": test.reason}
    if not test.passed:
        tags.update({"release.staging": FAILED, "release.staging_reason": f"{test.name}: {test.reason}"})
    tracking.tag_version(staged.name, staged.version, tags)
    log.info("staging test %s of %s v%s: %s: %s", test.name, staged.name, staged.version,
             PASSED if test.passed else "FAILED", test.reason)
    return test


def mark_staging_passed(staged: tracking.ModelRef, tests: list[dict]) -> None:
    names = [t["name"] for t in tests if t.get("passed")]
    missing = [n for n in STAGING_TESTS if n not in names]
    if missing:
        raise ReleaseRefused(f"{staged.name} v{staged.version}: staging tests not passed: {', '.join(missing)}")
    tracking.tag_version(staged.name, staged.version,
                         {"release.staging": PASSED, "release.staging_reason": f"{', '.join(names)} passed"})


def inference_schema_problem(staging_lake: Lake, prod_lake: Lake, use_case: str) -> str | None:
    """What differs between staging's newest inference partition and prod's (None: nothing; prod
    without an inference table yet takes any)."""
    import pyarrow.parquet as pq

    def newest_schema(lake: Lake):
        table = lake.inference(use_case)
        dates = list_partitions(table)
        files = partition_files(table, dates[-1]) if dates else []
        return pq.read_schema(files[0]) if files else None

    staged, prod = newest_schema(staging_lake), newest_schema(prod_lake)
    if staged is None:
        return "staging wrote no inference partition to compare"
    if prod is None:
        return None
    ours = {f.name: str(f.type) for f in staged}
    theirs = {f.name: str(f.type) for f in prod}
    differences = [f"{n}: staging {ours.get(n, 'missing')}, prod {theirs.get(n, 'missing')}"
                   for n in sorted(set(ours) | set(theirs)) if ours.get(n) != theirs.get(n)]
    return "; ".join(differences) or None


# ----------------------------------------------------------------- deploy code
def passed_code_versions(staging_spec) -> set[str]:
    """Code versions staging trained a version with that passed every staging test. A copy that
    passed (deploy models) does not count: its code trained elsewhere, on other data."""
    name = staging_spec.model.registered_name
    return {tags.get("release.code_version", "") for mv in tracking.versions_tagged(name, "release.staging", PASSED)
            if (tags := mv.tags or {}).get("release.origin") == f"{name}/{mv.version}"} - {""}


def require_code_passed(spec, staging_spec, code_version: str) -> None:
    """Refuse training in ``spec``'s environment with code staging has not passed (deploy code)."""
    if code_version.endswith("+dirty") or code_version == "unknown":
        raise ReleaseRefused(f"{spec.name}: {spec.environment} trains only a committed release; the code here is "
                             f"{code_version!r} (commit it, or set MLOPS_CODE_VERSION in a built image)")
    if code_version not in passed_code_versions(staging_spec):
        raise ReleaseRefused(f"{spec.name}: code {code_version[:12]} has not passed {staging_spec.environment}; "
                             f"release it there first: mlops release {spec.name} --to {staging_spec.environment}")
