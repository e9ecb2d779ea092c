"""The sections of a spec, one pydantic model each (unknown keys refused, values checked)."""
from __future__ import annotations

import codecs
import datetime as dt
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from pipelines.core.spec.base import _Section, broken
from pipelines.core.spec.performance import PerformanceSpec
from pipelines.core.spec.vocabulary import (AggregateFn, Approval, CheckKind, CheckMode, ColumnType, DriftMethod,
                                            FairnessMeasure, FeatureKind, Metric, Pattern, SearchMethod, ServingInput,
                                            Snapshots, SourceKind, Split, Strategy, TaskType)

PRESETS = {"@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly"}


def valid_schedule(value: str) -> bool:
    """An Airflow schedule: a preset like ``@daily`` or a cron expression."""
    if value.startswith("@"):
        return value in PRESETS
    from croniter import croniter  # light; Airflow's own dependency

    return croniter.is_valid(value)


def _schedule_problems(value: str | None) -> list[tuple[str, str]]:
    if value is not None and not valid_schedule(value):
        return [("schedule", f"{value!r} is neither a cron expression nor a preset like @daily")]
    return []


# ----------------------------------------------------------------- sections

class CsvFormat(_Section):
    """How a source's CSV files are written. ``delimiter`` none: sniffed from each file's first
    lines (comma, semicolon, tab or pipe). Only an empty field is missing unless ``na_values``
    lists the texts that also mean missing (``[NA, n/a]``); any other text in a number column is
    refused, so a typo never turns into a silent missing value."""

    delimiter: str | None = Field(None, min_length=1, max_length=1)
    encoding: str = "utf-8"
    na_values: list[str] = Field(default_factory=list)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r} (e.g. utf-8, latin-1, cp1252)") from None
        return value


class SourceSpec(_Section):
    """A raw source: its key, event timestamp, partitioning timestamp and column types."""

    key: list[str] = Field(min_length=1)
    kind: SourceKind = SourceKind.EVENTS
    timestamp: str | None = None        # when a row happened (events: required)
    partition_by: str | None = None     # its date is the row's partition (snapshots: the --as-of date)
    columns: dict[str, ColumnType] = Field(min_length=1)
    min_rows: int = Field(1, ge=0)   # rows every daily delivery has; 0 for sources with legitimately empty days
    max_shrink: float = Field(0.5, ge=0, le=1)   # a redelivery with this share fewer rows than the clean partition
                                                 # it would replace is quarantined (the clean one is kept)
    csv: CsvFormat = CsvFormat()     # delimiter, encoding and missing-value texts of its CSV files
    row_id: str | None = None        # an int column ingest adds: each row's number in its file (from 1), for a
                                     # table with no id column of its own

    @model_validator(mode="after")
    def _events_are_timed(self):
        if self.kind is SourceKind.EVENTS:
            missing = [key for key in ("timestamp", "partition_by") if getattr(self, key) is None]
            if missing:
                raise broken(*[(key, "required for an events source (or declare kind: snapshot)") for key in missing])
        return self


class Aggregate(_Section):
    name: str
    fn: AggregateFn
    column: str | None = None
    value: Any = None   # the value whose share ``share`` measures

    @model_validator(mode="after")
    def _needs_what_it_measures(self):
        problems = []
        if self.fn is not AggregateFn.COUNT and self.column is None:
            problems.append(("column", f"{self.fn.value} needs a column"))
        if self.fn is AggregateFn.SHARE and self.value is None:
            problems.append(("value", "share needs the value whose share it is"))
        if problems:
            raise broken(*problems)
        return self


class WindowAggregatesGroup(_Section):
    """Aggregates of an event source over trailing windows (``<name>_<window>d`` features)."""

    kind: Literal[FeatureKind.WINDOW_AGGREGATES]
    source: str
    windows_days: list[Annotated[int, Field(gt=0)]] = Field(min_length=1)
    aggregates: list[Aggregate] = Field(min_length=1)


class RecencyGroup(_Section):
    """Days since an entity's newest event, capped."""

    kind: Literal[FeatureKind.RECENCY]
    source: str
    name: str
    cap_days: int = Field(365, gt=0)


class AttributesGroup(_Section):
    """The latest value of snapshot columns before the feature date, and ages of timestamps."""

    kind: Literal[FeatureKind.ATTRIBUTES]
    source: str
    columns: list[str] = Field(default_factory=list)
    days_since: dict[str, str] = Field(default_factory=dict)


FeatureGroup = Annotated[Union[WindowAggregatesGroup, RecencyGroup, AttributesGroup], Field(discriminator="kind")]


class FeaturesSpec(_Section):
    population: str                             # entities that exist before the feature date
    allowed_missing_days: list[dt.date] = Field(default_factory=list)
    groups: list[FeatureGroup] = Field(min_length=1)


class LabelSpec(_Section):
    """Where labels come from and how their values map to the model's classes.

    ``positive`` names the value of ``target`` that is the positive class of a binary task
    (every other value is negative); ``values`` maps each value to a class (0/1 for binary).
    Without either, the target must already hold 0/1 (binary). Rows whose label is missing,
    or not in ``values``, are left out of training and counted."""

    source: str
    date_column: str | None = None      # the date a label is about; none: its partition's date (snapshots)
    target: str
    horizon_days: int = Field(0, ge=0)  # a label for date D is known on D + horizon_days
    positive: str | int | float | bool | None = None
    values: dict[str | int | float | bool, int] | None = None

    @model_validator(mode="after")
    def _one_way_to_classes(self):
        if self.positive is not None and self.values is not None:
            raise broken(("positive", "give either positive or values, not both"))
        return self


class SearchRange(_Section):
    """A range to search with Optuna: integers when both ends are integers (and no ``log``)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs a positive low")
        return self

    @property
    def integer(self) -> bool:
        return float(self.low).is_integer() and float(self.high).is_integer() and not self.log


class SearchSpec(_Section):
    method: SearchMethod = SearchMethod.GRID
    trials: int = Field(20, ge=1)                  # optuna: at most this many trials
    timeout_s: float | None = Field(None, gt=0)    # optuna: and no new trial after this many seconds
    seed: int = 0


class ModelSpec(_Section):
    registered_name: str
    estimator: str = Field(pattern=r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$")   # dotted import path of the class
    task: TaskType = TaskType.BINARY
    params: dict[str, Any] = Field(default_factory=dict)
    search_space: dict[str, list[Any] | SearchRange] = Field(default_factory=dict)
    search: SearchSpec = SearchSpec()

    @field_validator("search_space", mode="before")
    @classmethod
    def _ranges(cls, value):
        """A mapping is a range: checked here, so a mistake in it reads as one message."""
        if not isinstance(value, dict):
            return value
        out = {}
        for name, values in value.items():
            if isinstance(values, dict):
                try:
                    values = SearchRange.model_validate(values)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    raise ValueError(f"{name}: {where + ': ' if where else ''}"
                                     f"{first['msg'].removeprefix('Value error, ')}") from None
            out[name] = values
        return out
    cv_folds: int = Field(3, ge=2)
    threshold: float = Field(0.5, gt=0, lt=1)

    @model_validator(mode="after")
    def _grids_list_values(self):
        if self.search.method is SearchMethod.GRID:
            ranges = [name for name, values in self.search_space.items() if isinstance(values, SearchRange)]
            if ranges:
                raise broken(*[(f"search_space.{name}", "a grid searches listed values; a range needs "
                                                        "model.search.method: optuna") for name in ranges])
        return self


class TrainingSpec(_Section):
    schedule: str | None = None
    snapshots: Snapshots = Snapshots.NEWEST   # random split: one row per entity, or all with grouped folds
    window_days: int = Field(60, gt=0)
    holdout_days: int = Field(7, gt=0)
    recency_half_life_days: float | None = Field(None, gt=0)
    max_rows: int = Field(500_000, gt=0)
    split: Split = Split.TIME
    holdout_fraction: float = Field(0.2, gt=0, lt=1)   # share of entities held out by a random split
    reference_rows: int = Field(5000, gt=0)
    reference_days: int = Field(7, gt=0)

    @model_validator(mode="after")
    def _valid_schedule(self):
        if problems := _schedule_problems(self.schedule):
            raise broken(*problems)
        return self


class _Check(_Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    mode: CheckMode = CheckMode.ENFORCE


class MetricCheck(_Check):
    """A holdout metric against an absolute floor (a ceiling when lower is better) and against the
    champion on the same holdout (``min_improvement``; negative: the regression tolerated)."""

    kind: Literal[CheckKind.METRIC]
    metric: Metric
    floor: float | None = None
    min_improvement: float | None = None


class SlicesCheck(_Check):
    """The metric per value of each column (numeric columns in ``bins`` quantile bins): no slice of
    at least ``min_rows`` rows may fall below the champion's value on it by more than ``max_regression``."""

    kind: Literal[CheckKind.SLICES]
    columns: list[str] = Field(min_length=1)
    metric: Metric | None = None        # default: promotion.metric
    min_rows: int = Field(30, ge=1)
    max_regression: float = Field(0.05, ge=0)
    floor: float | None = None          # with no champion yet, each slice against this (if set)
    bins: int = Field(4, ge=2)


class FairnessCheck(_Check):
    """For each sensitive column, a Fairlearn between-group difference of the challenger at most
    ``max_difference`` (groups of fewer than ``min_rows`` rows are reported, not judged)."""

    kind: Literal[CheckKind.FAIRNESS]
    sensitive: list[str] = Field(min_length=1)
    measure: FairnessMeasure = FairnessMeasure.DEMOGRAPHIC_PARITY_DIFFERENCE
    metric: Metric | None = None        # metric_difference: default promotion.metric
    max_difference: float = Field(gt=0)
    min_rows: int = Field(30, ge=1)
    bins: int = Field(4, ge=2)


class CalibrationCheck(_Check):
    """Brier score and expected calibration error (``bins`` equal-width bins of the score) at most
    their ceilings (classification)."""

    kind: Literal[CheckKind.CALIBRATION]
    max_brier: float | None = Field(None, gt=0)
    max_ece: float | None = Field(None, gt=0)
    bins: int = Field(10, ge=2)

    @model_validator(mode="after")
    def _a_ceiling(self):
        if self.max_brier is None and self.max_ece is None:
            raise broken(("", "a calibration check needs max_brier, max_ece or both"))
        return self


class LatencyCheck(_Check):
    """The model as it will be served (compiled when it passed its check, through the service's
    record checks): p50/p99 of single-row and ``batch_rows``-row predictions over ``repeats``
    calls, and the size of the served files. The
    calls are made in ``rounds`` rounds and the best round counts: a pause of the machine the
    gate runs on is not the model's latency, while a slow model is slow in every round."""

    kind: Literal[CheckKind.LATENCY]
    single_p99_ms: float = Field(100.0, gt=0)
    batch_p99_ms: float = Field(2000.0, gt=0)
    batch_rows: int = Field(1000, gt=0)
    max_size_mb: float = Field(100.0, gt=0)
    repeats: int = Field(50, ge=5)
    rounds: int = Field(3, ge=1)


class SchemaCheck(_Check):
    """The challenger's signature takes what inference sends: the champion's input columns and types
    (or, for a first model, the spec's features)."""

    kind: Literal[CheckKind.SCHEMA]


PromotionCheck = Annotated[Union[MetricCheck, SlicesCheck, FairnessCheck, CalibrationCheck, LatencyCheck,
                                 SchemaCheck], Field(discriminator="kind")]


class PromotionSpec(_Section):
    """The promotion gate. ``metric``/``floor``/``min_improvement`` are its first check (always
    enforced); ``checks`` adds more, each enforced or only recorded (``mode: warn``)."""

    metric: Metric = Metric.ROC_AUC   # default: roc_auc (binary), f1_macro (multiclass), rmse (regression)
    floor: float | None = None      # the worst value any champion may have (a ceiling for lower-is-better metrics)
    min_improvement: float = Field(0.0, ge=0)
    checks: list[PromotionCheck] = Field(default_factory=list)
    approval: Approval = Approval.NONE
    approval_timeout_hours: float = Field(24.0, gt=0)   # no answer by then: rejected

    @model_validator(mode="after")
    def _unique_check_names(self):
        seen, problems = set(), []
        for i, check in enumerate(self.checks):
            if check.name in seen:
                problems.append((f"checks[{i}].name", f"{check.name!r} is used by another check; names must be unique"))
            seen.add(check.name)
        if problems:
            raise broken(*problems)
        return self


class ScoringSpec(_Section):
    """When the daily run runs, and (``deadline``, ``HH:MM`` UTC) by when each scheduled day's run
    must have finished: a run still going then alerts ``deadline_missed``."""

    schedule: str | None = "@daily"   # null: on demand (a manual run) and on each ingest through the inbox
    deadline: str | None = Field(None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")

    @model_validator(mode="after")
    def _valid_schedule(self):
        problems = _schedule_problems(self.schedule)
        if self.deadline and not problems and (self.schedule is None or not daily_time(self.schedule)):
            problems.append(("deadline", f"needs a schedule that runs once a day at a fixed time, not "
                                         f"{self.schedule!r} (e.g. '@daily' or '30 2 * * *')"))
        if problems:
            raise broken(*problems)
        return self

    def deadline_after_start(self) -> dt.timedelta | None:
        """How long after its scheduled start (its logical date) a day's run must have finished:
        from the schedule's time of day to ``deadline``, the next day's when it comes earlier."""
        start = daily_time(self.schedule) if self.deadline and self.schedule else None
        if start is None:
            return None
        hours, minutes = map(int, self.deadline.split(":"))
        wait = dt.timedelta(hours=hours, minutes=minutes) - dt.timedelta(hours=start.hour, minutes=start.minute)
        return wait if wait > dt.timedelta(0) else wait + dt.timedelta(days=1)


def daily_time(schedule: str) -> dt.time | None:
    """The time of day a once-a-day schedule starts its runs (None: not once a day at a fixed time)."""
    if schedule == "@daily":
        return dt.time()
    if schedule.startswith("@") or not valid_schedule(schedule):
        return None
    fields = schedule.split()
    if len(fields) != 5:
        return None
    minute, hour, day, month, weekday = fields
    if not (minute.isdigit() and hour.isdigit()) or (day, month, weekday) != ("*", "*", "*"):
        return None
    return dt.time(int(hour), int(minute))


class RolloutBudgets(_Section):
    """What a candidate must stay within over a rollout step's window, or it is rolled back."""

    max_error_rate: float = Field(0.01, ge=0, le=1)    # share of its requests that failed (served by the fallback)
    max_p99_ms: float = Field(250.0, gt=0)             # p99 of its own scoring time per request
    min_agreement: float = Field(0.9, ge=0, le=1)       # share of records where it agrees with the champion
    agreement_tolerance: float = Field(0.1, ge=0)      # regression: |difference| within this share of the champion's value


class CircuitBreakerSpec(_Section):
    """In the service: after ``max_failures`` failed or slow answers in a row a model is left out for
    ``cooldown_s`` seconds (its requests go to the fallback), then tried again."""

    max_failures: int = Field(5, ge=1)
    latency_budget_ms: float = Field(500.0, gt=0)
    cooldown_s: float = Field(30.0, gt=0)


class BatchingSpec(_Section):
    """In the service: concurrent requests' records are scored by one model call (micro-batching).
    A batch takes every record waiting, up to ``max_rows``, after waiting up to ``max_wait_ms``
    for more; ``max_rows: 1`` scores each request on its own. Shadow scoring (after the answer is
    sent) waits up to ``shadow_wait_ms``: larger batches, fewer model calls (at 200 requests/s,
    one call of about 200 records a second instead of five of 40 took a third off the p99 of the
    answers served beside them)."""

    max_rows: int = Field(256, ge=1)
    max_wait_ms: float = Field(0.0, ge=0, le=100)
    shadow_wait_ms: float = Field(1000.0, ge=0, le=5000)   # shadow scoring: nobody waits, so batches wait to grow


class LoadTestSpec(_Section):
    """The pre-deployment load test of a candidate (Locust, headless, against a staging service)."""

    enabled: bool = True
    users: int = Field(10, ge=1)
    rate: float = Field(50.0, gt=0)     # requests per second offered
    seconds: int = Field(20, ge=5)
    max_p99_ms: float = Field(1000.0, gt=0)
    max_error_rate: float = Field(0.0, ge=0, le=1)


class ServingLimits(_Section):
    """What one request to the scoring service may hold; more is refused (413 for the body, 422 for
    the rest) before the model sees any of it."""

    max_body_bytes: int = Field(1_000_000, ge=1_000)
    max_records: int = Field(1_000, ge=1)        # records (or entity ids) per request
    max_string_length: int = Field(1_000, ge=1)  # characters of a text value or an entity id
    model_timeout_s: float = Field(5.0, gt=0)    # a model process silent this long is replaced; meanwhile
                                                 # /readyz is not ready and requests get 503 at once


class DeploymentSpec(_Section):
    """How the use case reaches production (``pattern``), its online scoring service, and how new
    versions reach its traffic."""

    pattern: Pattern = Pattern.DEPLOY_MODELS
    input: ServingInput = ServingInput.FEATURES
    strategy: Strategy = Strategy.DIRECT
    steps: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5, 1.0])   # canary: candidate's share per step
    window_minutes: float = Field(60.0, ge=0)   # a step is judged once it is this old ...
    min_requests: int = Field(200, ge=1)        # ... and the candidate scored this many requests in it
    ab_split: float = Field(0.5, gt=0, lt=1)    # ab: the candidate's share
    ab_hours: float = Field(168.0, gt=0)
    budgets: RolloutBudgets = RolloutBudgets()
    circuit_breaker: CircuitBreakerSpec = CircuitBreakerSpec()
    batching: BatchingSpec = BatchingSpec()
    model_process: bool = True   # models score in a process of their own beside the HTTP server (false: in it)
    fallback: dict[str, float | int | str] | None = None   # the answer when no model can (e.g. {score: 0.0, prediction: 0})
    load_test: LoadTestSpec = LoadTestSpec()
    limits: ServingLimits = ServingLimits()

    @field_validator("steps")
    @classmethod
    def _steps_grow_to_all(cls, steps: list[float]) -> list[float]:
        if not steps or any(not 0 <= s <= 1 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 1.0:
            raise ValueError(f"steps must be increasing shares between 0 and 1 that end at 1.0 (got {steps})")
        return steps


class MonitoringSpec(_Section):
    reference_sample_rows: int = Field(5000, gt=0)
    current_sample_rows: int = Field(5000, gt=0)
    drift_share_threshold: float = Field(0.5, gt=0, le=1)
    method: DriftMethod | None = None             # Evidently stat test for every column (None: its defaults)
    column_threshold: float | None = Field(None, gt=0)   # that test's per-column threshold
    consecutive_days: int = Field(1, ge=1)
    cooldown_days: int = Field(7, ge=0)        # between two retrainings, whether drift or performance asked
    performance: PerformanceSpec | None = None  # retraining on measured live performance (off without it)

    @model_validator(mode="after")
    def _threshold_of_a_method(self):
        if self.column_threshold is not None and self.method is None:
            raise broken(("column_threshold", "a threshold needs the method it applies to (monitoring.method)"))
        return self


class SimulationSpec(_Section):
    seed: int = 42
    customers: int = Field(2000, gt=0)
    history_start: dt.date = dt.date(2026, 1, 1)
    days: int = Field(60, gt=0)
    drift_start: dt.date | None = None
    first_training: dt.date | None = None
    backlog_days: int = Field(0, ge=0)
