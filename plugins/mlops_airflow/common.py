"""What every lifecycle DAG shares: default args, the use cases to generate DAGs for, asset names.

Cheap to import: reads the use-case specs (YAML) and environment only; nothing heavy.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from airflow.sdk import Asset, Param

from pipelines.core.config import settings
from pipelines.core.environments import load_environments
from pipelines.core.errors import FinalRefusal
from pipelines.core.spec import SpecError, UseCaseSpec, discover_specs_and_errors

# Celery queues (the cluster topology and docker-compose run a worker for each; the LocalExecutor
# ignores them): Spark-heavy tasks on one worker, model-heavy ones (fits, gates, load tests) on
# the other, so a long fit never holds the slots the day's scoring needs.
SPARK_QUEUE, MODELS_QUEUE = "spark", "models"

def _alert_task_failed(context) -> None:
    """A task failed for good: tell the use case's alert channels (never raises)."""
    try:
        from mlops_airflow.alerts import task_failed
        task_failed(context)
    except Exception:   # noqa: BLE001 - an alert that cannot be sent changes nothing about the task
        logging.getLogger(__name__).warning("the failure alert was not sent", exc_info=True)


DEFAULT_ARGS = {
    "owner": "mlops",
    "on_failure_callback": _alert_task_failed,
    "retries": 2,
    # doubled on each try (a cleared run's tries count too), never past the cap
    "retry_delay": dt.timedelta(seconds=settings().retry_delay_s),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=5),
}


def dag_tags(use_case: str, kind: str) -> list[str]:
    """A DAG's tags: the project, the use case, the kind of DAG, and the environment this
    deployment runs in (``env:prod``), so the UI shows which one it is."""
    return ["mlops", use_case, kind, f"env:{settings().env}"]


def use_cases() -> list[UseCaseSpec]:
    """Every valid spec under the configured include folder; one set of DAGs is generated per spec.
    A broken spec breaks only its own use case: it is left out here and reported, as one import
    error naming the file and every problem, by ``dags/spec_errors.py``."""
    return discover_specs_and_errors(settings().include)[0]


def spec_errors() -> list[SpecError]:
    """The problems of every spec that does not load."""
    return discover_specs_and_errors(settings().include)[1]


def schedule_window(spec: UseCaseSpec, timed: bool = True) -> dict:
    """start_date and (optional, from MLOPS_SCHEDULE_END, for ``timed`` schedules only) end_date
    of a use case's scheduled DAGs."""
    window = {"start_date": dt.datetime.combine(spec.start, dt.time(), tzinfo=dt.timezone.utc)}
    end = settings().schedule_end
    if end and timed:
        window["end_date"] = dt.datetime.combine(dt.date.fromisoformat(end), dt.time(23, 59), tzinfo=dt.timezone.utc)
    return window


def daily_deadline(spec: UseCaseSpec):
    """The daily DAG's deadline (``scoring.deadline``) as an Airflow deadline alert, or None: each
    run's deadline is its logical date (the schedule's start) plus the wait up to that time of day;
    a run still going then runs ``mlops_airflow.alerts.deadline_missed`` on an executor."""
    wait = spec.scoring.deadline_after_start()
    if wait is None:
        return None
    from airflow.sdk.definitions.callback import SyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    return DeadlineAlert(reference=DeadlineReference.DAGRUN_LOGICAL_DATE, interval=wait,
                         callback=SyncCallback("mlops_airflow.alerts.deadline_missed",
                                               kwargs={"use_case": spec.name, "deadline": spec.scoring.deadline}))


@dataclass(frozen=True)
class LifecycleAssets:
    """The data products a use case's DAGs produce and consume."""

    clean: Asset
    features: Asset
    inference: Asset
    drift: Asset
    champion: Asset
    landed: Asset     # raw partitions landed by the ingest DAG; its events carry the dates


def lifecycle_assets(use_case: str) -> LifecycleAssets:
    return LifecycleAssets(*(_asset(use_case, kind) for kind in
                             ("clean", "features", "inference", "drift_summary", "champion", "landed")))


def _asset(use_case: str, kind: str, **extra) -> Asset:
    return Asset(name=f"{use_case}_{kind}", uri=f"mlops://{use_case}/{kind}", group="mlops", **extra)


def inbox_asset(use_case: str) -> Asset:
    """The use case's drop folder as an asset, watched by an :class:`InboxTrigger` in the triggerer:
    every new file there is an asset event, which schedules the use case's ingest DAG."""
    from airflow.sdk import AssetWatcher

    from mlops_airflow.triggers import InboxTrigger
    from pipelines.data.inbox import inbox_folder

    folder = inbox_folder(settings().inbox, use_case)
    watcher = AssetWatcher(name=f"{use_case}_inbox_watcher", trigger=InboxTrigger(directory=str(folder)))
    return _asset(use_case, "inbox", watchers=[watcher])


def event_dates(context) -> list[str]:
    """Every ``ds`` carried in the extra of the asset events that triggered this run, sorted
    (several events can queue into one run: drift results during a backfill, several ingests)."""
    found = set()
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            value = (getattr(event, "extra", None) or {}).get("ds")
            if value:
                found.add(str(value)[:10])
    return sorted(found)


def choose_run_day(given: str | None, logical_ds: str | None, landed: list[str]) -> str:
    """The date a lifecycle run is for: the ``ds`` param when given, else the run's logical date,
    else (a run woken by ingests, which has no logical date) the newest date they landed."""
    given = (given or "").strip()
    if given:
        return dt.date.fromisoformat(given).isoformat()   # a malformed date fails here, by name
    if logical_ds:
        return logical_ds
    if landed:
        return max(landed)
    raise ValueError("this run has no date: give the 'ds' param (YYYY-MM-DD), or let a schedule or an ingest start it")


def run_day(context=None) -> str:
    """:func:`choose_run_day` for the running task (or the task of ``context``)."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    context = context or get_current_context()
    logical = context.get("logical_date")
    try:
        return choose_run_day((context.get("params") or {}).get("ds"),
                              logical.strftime("%Y-%m-%d") if logical else None, event_dates(context))
    except ValueError as exc:   # no date, or a malformed one: a retry cannot help
        raise AirflowFailException(str(exc)) from None


WORK_SECONDS_KEY = "work_seconds"


def measured(step):
    """Decorate a task function: time its own work and push it as the ``work_seconds`` XCom,
    so a task's total time in Airflow can be split into work and overhead
    (``bench/bench_task_overhead.py`` reads both); its lineage record starts empty."""
    import functools
    import time

    @functools.wraps(step)
    def run(*args, **kwargs):
        from airflow.sdk import get_current_context

        from pipelines.core import lineage

        lineage.forget()   # what this task reads and writes goes into its OpenLineage events
        started = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            get_current_context()["ti"].xcom_push(WORK_SECONDS_KEY, round(time.perf_counter() - started, 3))

    return run


def environment_names() -> list[str]:
    """The declared environments, in release order (``include/environments.yaml``)."""
    return load_environments(settings().include).names


def environment_param(description: str) -> Param:
    """A form field naming the environment a run acts on: this deployment's by default, any
    declared one by choice; nothing else passes the form."""
    return Param(settings().env, type="string", enum=environment_names(), title="Environment",
                 description=description)


def in_environment(params):
    """Act, for a ``with`` block, in the environment a run's form names (settings, specs, lake and
    registry names follow it); this deployment's own when the form has none."""
    from pipelines.core.environments import acting_in
    return acting_in((params or {}).get("environment") or None)


def alert(use_case: str, *alerts) -> None:
    """Tell the use case's alert channels (``pipelines.alerts`` builders; None skipped), from a
    task, with links to its run. Never raises: a channel never fails the task it reports on."""
    try:
        from airflow.sdk import get_current_context

        from mlops_airflow.alerts import send
        send(use_case, [a for a in alerts if a is not None], get_current_context())
    except Exception:   # noqa: BLE001
        logging.getLogger(__name__).warning("%s: alerts not sent", use_case, exc_info=True)


def triggered_by(dag_run) -> str:
    """Who started a DAG run: the signed-in user who triggered it, else ``airflow`` (a schedule, an asset)."""
    return getattr(dag_run, "triggering_user_name", None) or "airflow"


def fail_at_once(prefix: str = "", refusals: tuple[type[Exception], ...] = (FinalRefusal,)):
    """Decorate a task function: a refusal that retrying cannot change fails the task at once,
    without spending its retries, with the refusal's one line (after ``prefix``) as the reason."""
    import functools

    def decorate(step):
        @functools.wraps(step)
        def run(*args, **kwargs):
            from airflow.sdk.exceptions import AirflowFailException
            try:
                return step(*args, **kwargs)
            except refusals as exc:
                raise AirflowFailException(f"{prefix}{exc}") from None
        return run

    return decorate
