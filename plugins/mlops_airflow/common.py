"""What every lifecycle DAG shares: default args, the use cases to generate DAGs for, asset names.

Cheap to import: reads the use-case specs (YAML) and environment only; nothing heavy.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from airflow.sdk import Asset

from pipelines.config import settings
from pipelines.spec import SpecError, UseCaseSpec, discover_specs_and_errors

DEFAULT_ARGS = {
    "owner": "mlops",
    "retries": 2,
    # doubled on each try (a cleared run's tries count too), never past the cap
    "retry_delay": dt.timedelta(seconds=settings().retry_delay_s),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=5),
}


def use_cases() -> list[UseCaseSpec]:
    """Every valid spec under the configured include folder; one set of DAGs is generated per spec.
    A broken spec breaks only its own use case: it is left out here and reported, as one import
    error naming the file and every problem, by ``dags/spec_errors.py``."""
    return discover_specs_and_errors(settings().include)[0]


def spec_errors() -> list[SpecError]:
    """The problems of every spec that does not load."""
    return discover_specs_and_errors(settings().include)[1]


def schedule_window(spec: UseCaseSpec) -> dict:
    """start_date and (optional, from MLOPS_SCHEDULE_END) end_date of a use case's scheduled DAGs."""
    window = {"start_date": dt.datetime.combine(spec.start, dt.time(), tzinfo=dt.timezone.utc)}
    end = settings().schedule_end
    if end:
        window["end_date"] = dt.datetime.combine(dt.date.fromisoformat(end), dt.time(23, 59), tzinfo=dt.timezone.utc)
    return window


@dataclass(frozen=True)
class LifecycleAssets:
    """The data products a use case's DAGs produce and consume."""

    clean: Asset
    features: Asset
    inference: Asset
    drift: Asset
    champion: Asset


def lifecycle_assets(use_case: str) -> LifecycleAssets:
    def asset(kind: str) -> Asset:
        return Asset(name=f"{use_case}_{kind}", uri=f"mlops://{use_case}/{kind}", group="mlops")

    return LifecycleAssets(asset("clean"), asset("features"), asset("inference"), asset("drift_summary"),
                           asset("champion"))


WORK_SECONDS_KEY = "work_seconds"


def measured(step):
    """Decorate a task function: time its own work and push it as the ``work_seconds`` XCom,
    so a task's total time in Airflow can be split into work and overhead
    (``bench/bench_task_overhead.py`` reads both)."""
    import functools
    import time

    @functools.wraps(step)
    def run(*args, **kwargs):
        from airflow.sdk import get_current_context

        started = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            get_current_context()["ti"].xcom_push(WORK_SECONDS_KEY, round(time.perf_counter() - started, 3))

    return run
