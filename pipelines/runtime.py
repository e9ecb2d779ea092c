"""Composition root: one call per lifecycle step, by use-case name and date.

Airflow tasks and the ``mlops`` CLI both call these functions, so a step behaves the same
whether it runs in a DAG, from a shell or in a test. Each resolves the spec, the settings
from the environment, the lake and (when needed) a Spark session, then calls the domain
function of its stage.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

# the catalogue of use cases, also asked for through this module by the DAGs, the CLI and the tests
from pipelines.core.catalog import UnknownUseCase, forget_specs, lake, spec, use_case_names  # noqa: F401
from pipelines.core.config import settings
from pipelines.core.environments import acting_in, load_environments
from pipelines.core.errors import MissingData
from pipelines.core.lake import list_partitions
from pipelines.core.spark import get_spark
from pipelines.core.spec import Pattern
from pipelines.data.inbox import inbox_folder, make_source_folders, process_inbox
from pipelines.data.ingest import ingest as land_files
from pipelines.data.simulate import config_from_spec, simulate_to_lake
from pipelines.data.validation import validate_day
from pipelines.features.online_store import refresh, store_path
from pipelines.features.point_in_time import build_features as build_feature_partition, require_complete_look_back
from pipelines.models import tracking
from pipelines.monitoring.performance import performance_decision as decide_on_performance
from pipelines.monitoring.watch import (DRIFT_SUMMARY, RetrainDecision, live_performance as measure_live_performance,
                                        monitor_drift as monitor_day, record_retrain_request as store_retrain_request,
                                        retrain_decision as decide_retraining)
from pipelines.release import between_environments, rollout
from pipelines.release.between_environments import ReleaseRefused
from pipelines.release.decision import Evaluation, Review
from pipelines.release.evaluation import evaluate_challenger, promote_if_better
from pipelines.release.fault_injection import register_slowed_copy
from pipelines.release.rollback import roll_back
from pipelines.serving.batch import score_partition
from pipelines.training.fit import train_challenger

log = logging.getLogger(__name__)


def _date(value: str | dt.date) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])


def spark(app: str = "mlops"):
    return get_spark(settings(), app)


def simulate(use_case: str, **overrides) -> dict[str, int]:
    """Generate the use case's simulated raw history into the lake's landing zone."""

    s = spec(use_case)
    return simulate_to_lake(s, lake(), config_from_spec(s, **overrides))


def ingest(use_case: str, source: str, location: str, as_of: str | dt.date | None = None) -> dict:
    """Land a team's own CSV/Parquet files as a source's raw daily partitions (see pipelines.data.ingest)."""

    return asdict(land_files(spec(use_case), lake(), source, location, _date(as_of) if as_of else None))


def inbox(use_case: str):
    """The use case's drop folder (``$MLOPS_INBOX/<use case>``), with a folder per source."""

    use_case_spec = spec(use_case)   # first: a name that is no use case builds no path
    folder = inbox_folder(settings().inbox, use_case)
    make_source_folders(use_case_spec, folder)
    return folder


def ingest_inbox(use_case: str) -> dict:
    """Land the files dropped in the use case's inbox (see pipelines.data.inbox): what landed, the
    partition dates written, and each refused file with its error."""

    result = process_inbox(spec(use_case), lake(), inbox(use_case))
    return {"landed": result.landed, "partitions": result.partitions, "rejected": result.rejected,
            "dates": result.dates}


def validate(use_case: str, date: str | dt.date, run_id: str | None = None,
             allow_empty_redelivery: bool = False) -> dict[str, int]:
    return validate_day(spec(use_case), lake(), _date(date), run_id, allow_empty_redelivery)


def check_look_back(use_case: str, date: str | dt.date) -> None:
    """Raise LookBackIncomplete if a day of the features' look-back window is not validated."""

    require_complete_look_back(spec(use_case), lake(), _date(date))


def build_features(use_case: str, date: str | dt.date) -> int:
    return build_feature_partition(spark(f"{use_case}-features"), spec(use_case), lake(), _date(date))


def refresh_online_store(use_case: str, date: str | dt.date) -> dict:
    """The features of ``date`` into the use case's online store (see pipelines.features.online_store)."""

    return refresh(spec(use_case), lake(), _date(date), store_path(settings().online_store, use_case))


def resolve_champion(use_case: str) -> dict | None:
    """The champion as a concrete version (XCom-ready), or None before the first promotion."""
    tracking.require_tracking_server()
    ref = tracking.resolve_champion(spec(use_case).model.registered_name)
    return ref.as_xcom() if ref else None


def why_no_champion(use_case: str) -> str:
    """Why ``use_case`` has no champion: no version trained yet, or the newest one's gate decision."""
    name = spec(use_case).model.registered_name
    versions = tracking.client().search_model_versions(f"name = '{name}'")
    if not versions:
        return f"no version of {name} is registered; run 'mlops train {use_case}'"
    newest = max(versions, key=lambda v: int(v.version))
    tags = newest.tags or {}
    decision = tags.get("promotion.decision", "not decided")
    return f"v{newest.version} of {name} was {decision}: {tags.get('promotion.reason', 'no reason recorded')}"


def score(use_case: str, date: str | dt.date, champion: dict, run_id: str) -> int:
    tracking.require_tracking_server()
    return score_partition(spark(f"{use_case}-scoring"), spec(use_case), lake(), _date(date), champion, run_id)


def monitor_drift(use_case: str, date: str | dt.date, champion: dict) -> dict:
    return monitor_day(spec(use_case), lake(), settings().reports, _date(date), champion)


def live_performance(use_case: str, date: str | dt.date) -> list[dict]:
    return measure_live_performance(spec(use_case), lake(), _date(date))


def retrain_decision(use_case: str, date: str | dt.date) -> dict | None:
    """The retrain decision for ``date``, or None while its drift result is not there yet."""
    if _date(date).isoformat() not in list_partitions(lake().monitoring(use_case, DRIFT_SUMMARY)):
        return None
    return asdict(decide_retraining(spec(use_case), lake(), _date(date)))


def resolve_as_of(use_case: str, requested: str | None, scheduled_for: dt.date | None) -> dt.date:
    """Training cut-off: the requested date, else the schedule's date, else the day after the
    newest landed label partition; never later than the day after the newest label partition."""
    s = spec(use_case)
    landed = list_partitions(lake().clean(use_case, s.label.source))
    if not landed:
        raise MissingData(f"{use_case}: no clean {s.label.source} partitions yet; run the daily DAG first")
    latest = _date(landed[-1]) + dt.timedelta(days=1)
    wanted = _date(requested) if requested else (scheduled_for or latest)
    if wanted > latest:
        log.info("%s: as-of %s is past the newest labels; using %s", use_case, wanted, latest)
    return min(wanted, latest)


def request_retraining(use_case: str, decision: dict, trigger: str = "drift") -> dict:
    """Record a retrain request of drift or live performance (it starts the cooldown of both);
    returns the training run's conf and run id (one per trigger and day)."""

    fields = {k: decision.get(k) for k in ("retrain", "reason", "ds", "drift_share", "model_version")}
    store_retrain_request(spec(use_case), lake(), RetrainDecision(**fields))
    as_of = _date(decision["ds"]) + dt.timedelta(days=1)   # the day's labels have landed
    return {"reason": decision["reason"], "trigger": trigger, "as_of": as_of.isoformat(),
            "run_id": f"{trigger}__{decision['ds']}", "ds": decision["ds"]}


def performance_decision(use_case: str, date: str | dt.date) -> dict | None:
    """Whether the champion's live performance calls for retraining on ``date``
    (``monitoring.performance``; None when the spec has no such policy)."""
    the_spec = spec(use_case)
    if the_spec.monitoring.performance is None:
        return None
    tracking.require_tracking_server()
    champion = tracking.resolve_champion(the_spec.model.registered_name)
    return asdict(decide_on_performance(the_spec, lake(), _date(date), champion))


def training_lock(use_case: str, timeout: float = 3600.0):
    """One training or promotion of a use case at a time in an environment, whoever starts it
    (DAG task or CLI).

    A file lock beside the environment's lake (shared by every worker that shares the lake);
    re-entrant in one process, so the CLI can hold it across training and promotion.
    """
    spec(use_case)   # a name that is no use case builds no path
    return _lock_file(str(lake().root / "_locks" / f"{use_case}.training.lock"), timeout)


@lru_cache(maxsize=None)
def _lock_file(path: str, timeout: float):
    from filelock import FileLock

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path, timeout=timeout)


def train(use_case: str, as_of: str | dt.date, reason: str, trigger: str, run_id: str | None = None) -> dict:
    tracking.require_tracking_server()   # fail in seconds, before a long fit, when MLflow is away
    require_may_train(use_case)
    with training_lock(use_case):
        return train_challenger(spark(f"{use_case}-training"), spec(use_case), lake(), _date(as_of),
                                reason=reason, trigger=trigger, airflow_run_id=run_id)


def rollback(use_case: str, reason: str, requested_by: str, to: str | None = None) -> dict:
    """Move @champion back to an earlier champion (see pipelines.release.rollback); what was done."""

    tracking.require_tracking_server()
    with training_lock(use_case):   # not while a promotion of the same use case is deciding
        return asdict(roll_back(spec(use_case), reason, requested_by, to))


def start_rollout(use_case: str, version: str, reason: str, requested_by: str) -> dict:
    """Roll ``version`` out beside the champion by the spec's strategy (see pipelines.release.rollout)."""
    tracking.require_tracking_server()
    the_spec = spec(use_case)
    champion = tracking.resolve_champion(the_spec.model.registered_name)
    if champion is None:
        raise rollout.RolloutConflict(f"{use_case} has no champion to roll v{version} out beside; promote one first")
    state = rollout.start(the_spec, lake(), str(version).lstrip("v"), champion.version, reason, requested_by)
    return asdict(state)


def rollout_drill(use_case: str, slow_ms: float, requested_by: str) -> dict:
    """Register a slowed copy of the champion and start its rollout: the safety net must stop it."""

    tracking.require_tracking_server()
    the_spec = spec(use_case)
    champion = tracking.resolve_champion(the_spec.model.registered_name)
    if champion is None:
        raise ValueError(f"{use_case} has no champion to drill with; promote one first")
    version = register_slowed_copy(the_spec, lake(), champion.version, slow_ms)
    return start_rollout(use_case, version, f"drill: v{champion.version} slowed by {slow_ms:.0f} ms; the rollout "
                         f"must roll it back", requested_by)


def rollout_load_test(use_case: str) -> dict:
    """Load-test the running rollout's candidate before traffic moves (see pipelines.release.load_test)."""
    tracking.require_tracking_server()
    return rollout.load_test_candidate(spec(use_case), lake())


def judge_rollout(use_case: str) -> dict:
    """Judge the running rollout's step on the request log and advance, complete or roll it back."""
    tracking.require_tracking_server()
    return rollout.judge_rollout(spec(use_case), lake())


def end_rollout(use_case: str, reason: str, requested_by: str) -> dict:
    """Roll the running rollout back to 0% by hand (the champion keeps all traffic)."""
    tracking.require_tracking_server()
    the_spec = spec(use_case)
    state = rollout.read_state(the_spec)
    if state is None or not state.running:
        return {"action": "none", "reason": "no rollout is running"}
    return asdict(rollout.apply(the_spec, lake(), state, rollout.Judgement("roll_back", reason), requested_by))


def stop_rollout(use_case: str, reason: str, requested_by: str) -> dict:
    """:func:`end_rollout`, reported as the rollout DAG's judging step reports a move (a manual
    run of ``<uc>_rollout`` with a ``stop_reason``: the control room's "Stop the rollout")."""
    stopped = end_rollout(use_case, reason, requested_by)
    if stopped.get("action") == "none":
        return stopped
    return {"action": "roll_back", "reason": f"stopped by {requested_by}: {reason}", "state": stopped}


def rollout_status(use_case: str, timelines: int = 1) -> str:
    return rollout.status_text(spec(use_case), lake(), timelines)


def evaluate(use_case: str, challenger: dict, as_of: str | dt.date) -> dict:
    """Run the promotion gate on a challenger (see pipelines.release.evaluation); moves no alias."""

    tracking.require_tracking_server()
    with training_lock(use_case):
        return evaluate_challenger(spark(f"{use_case}-evaluation"), spec(use_case), lake(), challenger,
                                   _date(as_of)).as_xcom()


def decide(use_case: str, evaluation: dict, review: dict | None = None) -> dict:
    """Promote an evaluated challenger if the gate passed (and, when the spec requires it, the
    reviewer approved: ``review`` is what Airflow's ApprovalOperator returned)."""

    tracking.require_tracking_server()
    with training_lock(use_case):
        return promote_if_better(spec(use_case), Evaluation.from_xcom(evaluation), Review.from_hitl(review))


def promote(use_case: str, challenger: dict, as_of: str | dt.date) -> dict:
    """Evaluate and decide in one step (the CLI, and tests). With ``promotion.approval: required``
    the challenger is left awaiting approval, which only the training DAG asks for."""
    with training_lock(use_case):
        return decide(use_case, evaluate(use_case, challenger, as_of))


# ----------------------------------------------------------------- environments and releases
def environments():
    """The environments of this deployment (include/environments.yaml, or the embedded defaults)."""
    return load_environments(settings().include)


def spec_in(use_case: str, environment: str):
    with acting_in(environment):
        return spec(use_case)


def require_may_train(use_case: str) -> None:
    """Refuse training where the use case's pattern forbids it: after the first environment for
    deploy models (prod never trains), and in the last one with code its predecessor has not
    passed for deploy code."""
    the_spec, envs = spec(use_case), environments()
    if envs.is_first(the_spec.environment):
        return
    if the_spec.deployment.pattern is Pattern.DEPLOY_MODELS:
        raise ReleaseRefused(f"{use_case}: {the_spec.environment} does not train (deployment.pattern: deploy_models, "
                             f"only {envs.names[0]} trains); release a {envs.names[0]} version: "
                             f"mlops release {use_case} --to {the_spec.environment}")
    if envs.is_last(the_spec.environment):
        before = envs.before(the_spec.environment).name
        between_environments.require_code_passed(the_spec, spec_in(use_case, before),
                                                  tracking.code_version_tags()["code_version"])
