"""Use-case specs: the one place that describes a use case (sources, features, model, rules).

A spec is ``include/<name>/spec.yaml``, parsed into typed, frozen models (pydantic): every
closed set is an enum, unknown keys are refused, and cross-checks tie the parts together
(referenced sources and columns exist, the target is not a feature, the promotion metric fits
the task). Every problem of a file is reported at once, one line each, naming the file and key:

    include/churn/spec.yaml: model.cv_folds: Input should be a valid integer, got 'three'
    include/churn/spec.yaml: training.windw_days: unknown key (did you mean window_days?)

Loading needs only PyYAML and pydantic, so DAG files can read specs while parsing. The deeper
check of the estimator and its parameters imports scikit-learn: :func:`check_estimator`, run
by ``mlops check`` and before any training.
"""
from __future__ import annotations

import datetime as dt
import difflib
import enum
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.core.errors import Refusal

SPEC_FILE = "spec.yaml"
USE_CASE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")   # a use case's name: also its folder's and tables' names


class SpecError(Refusal, ValueError):
    """A spec has problems; ``problems`` holds one ``(key, message)`` per problem."""

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file, self.problems = file, problems
        super().__init__("\n".join(f"{file}: {key}: {message}" if key else f"{file}: {message}"
                                   for key, message in problems))


# ----------------------------------------------------------------- closed sets
class ColumnType(enum.StrEnum):
    """Column types of raw sources (stored as Arrow string, int64, float64, bool, date32, timestamp[us])."""

    STRING = "string"
    INT = "int"
    DOUBLE = "double"
    BOOL = "bool"
    DATE = "date"
    TIMESTAMP = "timestamp"


class TaskType(enum.StrEnum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"


class Metric(enum.StrEnum):
    """Holdout metrics, each with its direction and the tasks it is defined for."""

    ROC_AUC = "roc_auc"
    AVERAGE_PRECISION = "average_precision"
    BRIER = "brier"
    PRECISION = "precision"
    RECALL = "recall"
    F1 = "f1"
    ACCURACY = "accuracy"
    F1_MACRO = "f1_macro"
    LOG_LOSS = "log_loss"
    RMSE = "rmse"
    MAE = "mae"
    R2 = "r2"

    @property
    def higher_is_better(self) -> bool:
        return self not in {Metric.BRIER, Metric.LOG_LOSS, Metric.RMSE, Metric.MAE}

    @property
    def tasks(self) -> set[TaskType]:
        return _METRIC_TASKS[self]

    @property
    def scorer(self) -> str:
        """scikit-learn's scorer of the metric (cross-validation searches for the promotion metric)."""
        return _SCORERS.get(self, self.value)

    @classmethod
    def default_for(cls, task: TaskType) -> "Metric":
        return {TaskType.BINARY: cls.ROC_AUC, TaskType.MULTICLASS: cls.F1_MACRO, TaskType.REGRESSION: cls.RMSE}[task]


_METRIC_TASKS = {
    Metric.ROC_AUC: {TaskType.BINARY}, Metric.AVERAGE_PRECISION: {TaskType.BINARY},
    Metric.BRIER: {TaskType.BINARY}, Metric.PRECISION: {TaskType.BINARY}, Metric.RECALL: {TaskType.BINARY},
    Metric.F1: {TaskType.BINARY}, Metric.ACCURACY: {TaskType.BINARY, TaskType.MULTICLASS},
    Metric.F1_MACRO: {TaskType.MULTICLASS}, Metric.LOG_LOSS: {TaskType.BINARY, TaskType.MULTICLASS},
    Metric.RMSE: {TaskType.REGRESSION}, Metric.MAE: {TaskType.REGRESSION}, Metric.R2: {TaskType.REGRESSION},
}

_SCORERS = {Metric.BRIER: "neg_brier_score", Metric.LOG_LOSS: "neg_log_loss",
            Metric.RMSE: "neg_root_mean_squared_error", Metric.MAE: "neg_mean_absolute_error"}


class AggregateFn(enum.StrEnum):
    COUNT = "count"
    SUM = "sum"
    AVG = "avg"
    COUNT_DISTINCT = "count_distinct"
    SHARE = "share"


class DriftMethod(enum.StrEnum):
    """Evidently's per-column statistical tests that suit tabular columns."""

    PSI = "psi"
    KS = "ks"
    WASSERSTEIN = "wasserstein"
    JENSENSHANNON = "jensenshannon"
    KL_DIV = "kl_div"
    CHISQUARE = "chisquare"
    Z = "z"
    HELLINGER = "hellinger"
    ANDERSON = "anderson"
    CRAMER_VON_MISES = "cramer_von_mises"


class SourceKind(enum.StrEnum):
    """``events``: rows happen at their ``timestamp``; a day's partition holds that day's events.
    ``snapshot``: a partition is the whole table as known on its date (``mlops ingest --as-of``);
    features of a date read each entity's row from the newest partition up to that date."""

    EVENTS = "events"
    SNAPSHOT = "snapshot"


class Split(enum.StrEnum):
    """How training holds out rows: the newest label dates (``time``) or a stable share of the
    entities (``random``, for snapshots whose labels share one date)."""

    TIME = "time"
    RANDOM = "random"


class FeatureKind(enum.StrEnum):
    WINDOW_AGGREGATES = "window_aggregates"
    RECENCY = "recency"
    ATTRIBUTES = "attributes"


# ----------------------------------------------------------------- sections
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


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
        import codecs

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


class Aggregate(_Section):
    name: str
    fn: AggregateFn
    column: str | None = None
    value: Any = None   # the value whose share ``share`` measures


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


class SearchMethod(enum.StrEnum):
    GRID = "grid"       # every combination of the listed values
    OPTUNA = "optuna"   # Optuna's sampler over the lists and ranges, within a trial and time budget


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


class Snapshots(enum.StrEnum):
    """Which rows training takes when an entity has a label in several snapshots.

    ``newest``: one row per entity, its newest labelled snapshot. ``all``: every snapshot's row,
    with cross-validation folds grouped by entity (an entity never sits on both sides of a fold)."""

    NEWEST = "newest"
    ALL = "all"


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


class CheckMode(enum.StrEnum):
    """``enforce``: a failure blocks promotion. ``warn``: the result is recorded, nothing is blocked."""

    ENFORCE = "enforce"
    WARN = "warn"


class CheckKind(enum.StrEnum):
    METRIC = "metric"
    SLICES = "slices"
    FAIRNESS = "fairness"
    CALIBRATION = "calibration"
    LATENCY = "latency"
    SCHEMA = "schema"


class FairnessMeasure(enum.StrEnum):
    """Between-group differences (Fairlearn): selection rates, error rates, or the check's metric."""

    DEMOGRAPHIC_PARITY_DIFFERENCE = "demographic_parity_difference"
    EQUALIZED_ODDS_DIFFERENCE = "equalized_odds_difference"
    METRIC_DIFFERENCE = "metric_difference"


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


class LatencyCheck(_Check):
    """The model as it will be served (the registered version through MLflow's pyfunc): p50/p99 of
    single-row and ``batch_rows``-row predictions over ``repeats`` calls, and its size on disk. The
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


class Approval(enum.StrEnum):
    """``required``: a challenger that passes every enforced check waits for a reviewer in Airflow."""

    NONE = "none"
    REQUIRED = "required"


class PromotionSpec(_Section):
    """The promotion gate. ``metric``/``floor``/``min_improvement`` are its first check (always
    enforced); ``checks`` adds more, each enforced or only recorded (``mode: warn``)."""

    metric: Metric = Metric.ROC_AUC   # default: roc_auc (binary), f1_macro (multiclass), rmse (regression)
    floor: float | None = None      # the worst value any champion may have (a ceiling for lower-is-better metrics)
    min_improvement: float = Field(0.0, ge=0)
    checks: list[PromotionCheck] = Field(default_factory=list)
    approval: Approval = Approval.NONE
    approval_timeout_hours: float = Field(24.0, gt=0)   # no answer by then: rejected


class ScoringSpec(_Section):
    schedule: str | None = "@daily"   # null: on demand (a manual run) and on each ingest through the inbox


class ServingInput(enum.StrEnum):
    """What an online request carries: every feature (``features``) or only the entity id, whose
    features the service reads from the online store (``entity``)."""

    FEATURES = "features"
    ENTITY = "entity"


class Strategy(enum.StrEnum):
    """How a promoted challenger reaches live traffic.

    ``direct``: the promotion moves ``@champion`` at once. ``shadow``: the candidate scores every
    request beside the champion for one window, only the champion answers; then it becomes
    champion. ``canary``: the candidate answers a growing share of entities (``steps``; a step of
    0 is a shadow period). ``ab``: a fixed split for ``ab_hours``, then a report per arm and the
    arm with the better live metric stays."""

    DIRECT = "direct"
    SHADOW = "shadow"
    CANARY = "canary"
    AB = "ab"


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
    """The online scoring service of the use case and how new versions reach its traffic."""

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
    cooldown_days: int = Field(7, ge=0)


class SimulationSpec(_Section):
    seed: int = 42
    customers: int = Field(2000, gt=0)
    history_start: dt.date = dt.date(2026, 1, 1)
    days: int = Field(60, gt=0)
    drift_start: dt.date | None = None
    first_training: dt.date | None = None
    backlog_days: int = Field(0, ge=0)


class UseCaseSpec(_Section):
    """One use case, as read from ``include/<name>/spec.yaml``."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")   # DAG ids, tables and model names derive from it
    description: str = ""
    owner: str = ""                  # who answers for the model (model cards)
    intended_use: str = ""           # what its scores may be used for, and what not (model cards)
    start_date: dt.date
    entity: str
    sources: dict[str, SourceSpec] = Field(min_length=1)
    expectations: str = "expectations.yaml"
    features: FeaturesSpec
    label: LabelSpec
    model: ModelSpec
    training: TrainingSpec = TrainingSpec()
    promotion: PromotionSpec = PromotionSpec()
    scoring: ScoringSpec = ScoringSpec()
    deployment: DeploymentSpec = DeploymentSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    simulation: SimulationSpec | None = None
    directory: Path = Path(".")

    @field_validator("description", "owner", "intended_use", mode="before")
    @classmethod
    def _strip(cls, value):
        return str(value or "").strip()

    @model_validator(mode="before")
    @classmethod
    def _metric_of_the_task(cls, raw):
        """Without ``promotion.metric``, the task's usual one (a regression has no ROC AUC)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            return raw
        promotion = raw.get("promotion", {})
        if not isinstance(promotion, dict) or "metric" in promotion:
            return raw
        try:
            task = TaskType(raw["model"].get("task", TaskType.BINARY))
        except ValueError:
            return raw   # reported as the task's own error
        return {**raw, "promotion": {**promotion, "metric": Metric.default_for(task).value}}

    @property
    def start(self) -> dt.date:
        return self.start_date

    @property
    def expectations_path(self) -> Path:
        return self.directory / self.expectations

    def source(self, name: str) -> SourceSpec:
        try:
            return self.sources[name]
        except KeyError:
            raise SpecError(str(self.directory / SPEC_FILE),
                            [("", f"no source named {name!r}; sources are {sorted(self.sources)}")]) from None

    def feature_sources(self) -> list[str]:
        """Sources read by the feature groups, in order of first use."""
        return list(dict.fromkeys([self.features.population] + [g.source for g in self.features.groups]))

    def feature_names(self) -> list[str]:
        """Every feature column the groups produce (no types needed)."""
        names: list[str] = []
        for group in self.features.groups:
            if isinstance(group, WindowAggregatesGroup):
                names += [f"{agg.name}_{w}d" for w in group.windows_days for agg in group.aggregates]
            elif isinstance(group, RecencyGroup):
                names.append(group.name)
            else:
                names += list(group.columns) + list(group.days_since)
        return names


# ----------------------------------------------------------------- loading
def load_spec(path: str | Path) -> UseCaseSpec:
    """Load and check one spec file (or a use-case directory holding ``spec.yaml``).

    Raises :class:`SpecError` listing every problem found."""
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    file = _display(path)
    if not path.exists():
        raise SpecError(file, [("", "spec file not found")])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(file, [("", f"not valid YAML: {exc}")]) from None
    if not isinstance(raw, dict):
        raise SpecError(file, [("", "a spec is a mapping of sections (name, sources, features, ...)")])
    try:
        spec = UseCaseSpec.model_validate({**raw, "directory": path.parent})
    except ValidationError as exc:
        raise SpecError(file, [_describe(error) for error in exc.errors()]) from None
    problems = cross_check(spec)
    if problems:
        raise SpecError(file, problems)
    return spec


def discover_specs(include_dir: str | Path) -> list[UseCaseSpec]:
    """All specs under ``include_dir`` (one per sub-directory holding ``spec.yaml``), by name.
    Raises on the first broken one: see :func:`discover_specs_and_errors` to keep the rest."""
    specs, errors = discover_specs_and_errors(include_dir)
    if errors:
        raise errors[0]
    return specs


def discover_specs_and_errors(include_dir: str | Path) -> tuple[list[UseCaseSpec], list[SpecError]]:
    """The specs that load, by name, and the errors of those that do not (a broken spec breaks
    only its own use case)."""
    specs, errors = [], []
    for path in sorted(Path(include_dir).glob(f"*/{SPEC_FILE}")):
        try:
            specs.append(load_spec(path))
        except SpecError as exc:
            errors.append(exc)
    return sorted(specs, key=lambda s: s.name), errors


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------- messages
def _key(loc: tuple) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        elif (part in FeatureKind.__members__.values() or part in CheckKind.__members__.values()) \
                and parts and parts[-1].endswith("]"):
            continue   # the discriminator's tag pydantic adds to the location
        else:
            parts.append(str(part))
    return ".".join(parts)


def _describe(error: dict) -> tuple[str, str]:
    """One readable ``(key, message)`` for a pydantic error."""
    loc, kind = tuple(error["loc"]), error["type"]
    key = _key(loc)
    if kind == "extra_forbidden":
        known = _known_keys(UseCaseSpec, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else (f"; expected one of {sorted(known)}" if known else "")
        return key, f"unknown key{hint}"
    if kind == "missing":
        return key, "required key is missing"
    if kind == "union_tag_invalid":
        kinds = CheckKind if "checks" in loc else FeatureKind
        return key, f"unknown kind {error['input'].get('kind')!r}; kinds are {[k.value for k in kinds]}"
    message = error["msg"]
    if "input" in error and not isinstance(error["input"], dict | list):
        message += f", got {error['input']!r}"
    return key, message


def _known_keys(model: Any, loc: tuple) -> list[str]:
    """Field names of the model found at ``loc`` (walking dicts, lists and tagged unions)."""
    current = model
    for part in loc:
        current = _inner(current, part)
        if current is None:
            return []
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _inner(current: Any, part: Any) -> Any:
    if isinstance(current, type) and issubclass(current, BaseModel):
        field = current.model_fields.get(str(part))
        return _strip(field.annotation) if field else None
    origin, args = typing.get_origin(current), typing.get_args(current)
    if origin in (dict, list):
        return _strip(args[-1])
    if origin in (Union, types.UnionType):   # a tagged feature group: pydantic puts the tag in the location
        return next((m for m in map(_strip, args) if typing.get_args(m.model_fields["kind"].annotation)[0] == part),
                    None)
    return None


def _strip(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` to ``X``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType) and type(None) in typing.get_args(annotation):
            rest = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = rest[0] if len(rest) == 1 else Union[tuple(rest)]
        else:
            return annotation


# ----------------------------------------------------------------- cross-checks
def cross_check(spec: UseCaseSpec) -> list[tuple[str, str]]:
    """Problems that tie parts of a spec together: references, the target, the task."""
    problems: list[tuple[str, str]] = []

    def source_columns(key: str, name: str) -> dict[str, ColumnType] | None:
        if name not in spec.sources:
            close = difflib.get_close_matches(name, list(spec.sources), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; sources are {sorted(spec.sources)}"
            problems.append((key, f"no source named {name!r}{hint}"))
            return None
        return spec.sources[name].columns

    def column(key: str, source: str, name: str | None, types_: set[ColumnType] | None = None) -> None:
        cols = source_columns(key, source) if source in spec.sources else None
        if cols is None or name is None:
            return
        if name not in cols:
            close = difflib.get_close_matches(name, list(cols), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append((key, f"column {name!r} is not a column of source {source}{hint}"))
        elif types_ and cols[name] not in types_:
            problems.append((key, f"column {name!r} of source {source} is {cols[name].value}; "
                                  f"expected {' or '.join(sorted(t.value for t in types_))}"))

    times = {ColumnType.TIMESTAMP, ColumnType.DATE}
    numbers = {ColumnType.INT, ColumnType.DOUBLE, ColumnType.BOOL}
    for name, src in spec.sources.items():
        for i, k in enumerate(src.key):
            column(f"sources.{name}.key[{i}]", name, k)
        column(f"sources.{name}.row_id", name, src.row_id, {ColumnType.INT})
        for key in ("timestamp", "partition_by"):
            if src.kind is SourceKind.EVENTS and getattr(src, key) is None:
                problems.append((f"sources.{name}.{key}", "required for an events source (or declare kind: snapshot)"))
            column(f"sources.{name}.{key}", name, getattr(src, key), times)

    source_columns("features.population", spec.features.population)
    column("features.population", spec.features.population, spec.entity)
    for i, group in enumerate(spec.features.groups):
        where = f"features.groups[{i}]"
        if source_columns(f"{where}.source", group.source) is None:
            continue
        column(f"{where}.source", group.source, spec.entity)
        if isinstance(group, WindowAggregatesGroup):
            for j, agg in enumerate(group.aggregates):
                if agg.fn in {AggregateFn.SUM, AggregateFn.AVG} :
                    if agg.column is None:
                        problems.append((f"{where}.aggregates[{j}].column", f"{agg.fn.value} needs a column"))
                    column(f"{where}.aggregates[{j}].column", group.source, agg.column, numbers)
                elif agg.fn in {AggregateFn.COUNT_DISTINCT, AggregateFn.SHARE}:
                    if agg.column is None:
                        problems.append((f"{where}.aggregates[{j}].column", f"{agg.fn.value} needs a column"))
                    column(f"{where}.aggregates[{j}].column", group.source, agg.column)
                    if agg.fn is AggregateFn.SHARE and agg.value is None:
                        problems.append((f"{where}.aggregates[{j}].value", "share needs the value whose share it is"))
        elif isinstance(group, AttributesGroup):
            for j, col in enumerate(group.columns):
                column(f"{where}.columns[{j}]", group.source, col)
            for name, ts in group.days_since.items():
                column(f"{where}.days_since.{name}", group.source, ts, times)

    names = spec.feature_names()
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(("features", f"feature {name!r} is produced twice"))
    for reserved, what in ((spec.label.target, "the label's target"), (spec.entity, "the entity key")):
        if reserved in names:
            problems.append(("features", f"{reserved!r} is {what}; it cannot also be a feature"))

    label = spec.label
    if source_columns("label.source", label.source) is not None:
        column("label.date_column", label.source, label.date_column, times)
        if label.date_column is None and spec.sources[label.source].kind is SourceKind.EVENTS:
            problems.append(("label.date_column", "required when labels come from an events source"))
        column("label.target", label.source, label.target)
        column("label.source", label.source, spec.entity)
        target_type = spec.sources[label.source].columns.get(label.target)
        if label.positive is not None and label.values is not None:
            problems.append(("label.positive", "give either positive or values, not both"))
        task = spec.model.task
        if task is TaskType.BINARY:
            if label.values is not None and set(label.values.values()) - {0, 1}:
                problems.append(("label.values", "a binary task maps every value to 0 or 1"))
            if label.positive is None and label.values is None and target_type is ColumnType.STRING:
                problems.append(("label.target", f"column {label.target!r} holds text; name the positive class "
                                                 f"with label.positive (or map values with label.values)"))
        elif task is TaskType.MULTICLASS:
            if label.positive is not None:
                problems.append(("label.positive", "a multiclass task has no positive class; map every value "
                                                   "to a class with label.values"))
            elif label.values is None:
                problems.append(("label.values", "a multiclass task maps each value of the target to a class "
                                                 "0, 1, 2, ... (label.values)"))
            else:
                classes = sorted(set(label.values.values()))
                if len(classes) < 3 or classes != list(range(len(classes))):
                    problems.append(("label.values", f"a multiclass task needs classes 0, 1, 2, ... (at least "
                                                     f"three), got {classes}"))
        else:
            for key in ("positive", "values"):
                if getattr(label, key) is not None:
                    problems.append((f"label.{key}", "a regression predicts the target's value; it has no classes"))
            if target_type is not None and target_type not in {ColumnType.INT, ColumnType.DOUBLE}:
                problems.append(("label.target", f"column {label.target!r} is {target_type.value}; "
                                                 f"a regression needs an int or double target"))

    metric = spec.promotion.metric
    if spec.model.task not in metric.tasks:
        fits = sorted(m.value for m in Metric if spec.model.task in m.tasks)
        problems.append(("promotion.metric", f"{metric.value} does not fit a {spec.model.task.value} task; "
                                             f"use one of {fits}"))
    problems += _check_gate(spec)
    if spec.model.search.method is SearchMethod.GRID:
        for name, values in spec.model.search_space.items():
            if isinstance(values, SearchRange):
                problems.append((f"model.search_space.{name}", "a grid searches listed values; a range needs "
                                                               "model.search.method: optuna"))
    if spec.monitoring.column_threshold is not None and spec.monitoring.method is None:
        problems.append(("monitoring.column_threshold", "a threshold needs the method it applies to (monitoring.method)"))
    for key, value in (("training.schedule", spec.training.schedule), ("scoring.schedule", spec.scoring.schedule)):
        if value is not None and not _valid_schedule(value):
            problems.append((key, f"{value!r} is neither a cron expression nor a preset like @daily"))
    return problems


def _check_gate(spec: UseCaseSpec) -> list[tuple[str, str]]:
    """The promotion checks fit the spec: unique names, columns that are features, metrics and
    measures that suit the task."""
    problems: list[tuple[str, str]] = []
    task, features = spec.model.task, spec.feature_names()
    seen: set[str] = set()
    for i, check in enumerate(spec.promotion.checks):
        key = f"promotion.checks[{i}]"
        if check.name in seen:
            problems.append((f"{key}.name", f"{check.name!r} is used by another check; names must be unique"))
        seen.add(check.name)
        metric = getattr(check, "metric", None)
        if metric is not None and task not in metric.tasks:
            problems.append((f"{key}.metric", f"{metric.value} does not fit a {task.value} task"))
        for field in ("columns", "sensitive"):
            for column in getattr(check, field, None) or []:
                if column not in features:
                    problems.append((f"{key}.{field}", f"{column!r} is not a feature column; features are "
                                                       f"{sorted(features)}"))
        if isinstance(check, FairnessCheck) and check.measure is not FairnessMeasure.METRIC_DIFFERENCE \
                and task is not TaskType.BINARY:
            problems.append((f"{key}.measure", f"{check.measure.value} needs a binary task; use metric_difference"))
        if isinstance(check, CalibrationCheck):
            if task is TaskType.REGRESSION:
                problems.append((f"{key}.kind", "calibration applies to classifiers, not a regression"))
            if check.max_brier is None and check.max_ece is None:
                problems.append((key, "a calibration check needs max_brier, max_ece or both"))
    return problems


_PRESETS = {"@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly"}


def _valid_schedule(value: str) -> bool:
    if value.startswith("@"):
        return value in _PRESETS
    from croniter import croniter  # light; Airflow's own dependency

    return croniter.is_valid(value)


# ----------------------------------------------------------------- the estimator (imports scikit-learn)
def estimator_class(model: ModelSpec):
    """The class ``model.estimator`` names; SpecError when it cannot be imported."""
    import importlib

    module_name, _, class_name = model.estimator.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise SpecError("spec", [("model.estimator", f"{model.estimator!r} cannot be imported")]) from None


def check_estimator(model: ModelSpec) -> list[tuple[str, str]]:
    """Problems of a ``model`` section: the estimator imports, suits the task, knows every parameter."""
    from sklearn.base import is_classifier, is_regressor

    try:
        cls = estimator_class(model)
    except SpecError as exc:
        return exc.problems
    try:
        instance = cls()
        known = set(instance.get_params())
    except Exception as exc:   # not a scikit-learn estimator
        return [("model.estimator", f"{model.estimator} is not a scikit-learn estimator ({exc})")]
    problems = []
    kind = "classifier" if is_classifier(instance) else "regressor" if is_regressor(instance) else "transformer"
    wanted = "regressor" if model.task is TaskType.REGRESSION else "classifier"
    if kind != wanted:
        problems.append(("model.estimator", f"{cls.__name__} is a {kind}; a {model.task.value} task needs a {wanted}"))
    for section, names in (("params", model.params), ("search_space", model.search_space)):
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                problems.append((f"model.{section}.{name}", f"unknown parameter of {cls.__name__}{hint}"))
    for name, values in model.search_space.items():
        if not values:
            problems.append((f"model.search_space.{name}", "an empty list of values to search"))
    return problems


def check_spec(path: str | Path) -> list[str]:
    """Every problem of one spec, of its structure and of its estimator, as printable lines
    (the estimator is checked whenever the ``model`` section itself is well-formed)."""
    path = Path(path)
    path = path / SPEC_FILE if path.is_dir() else path
    problems: list[tuple[str, str]] = []
    try:
        model = load_spec(path).model
    except SpecError as exc:
        problems += exc.problems
        raw = yaml.safe_load(path.read_text()) if path.exists() else None
        try:
            model = ModelSpec.model_validate(raw["model"]) if isinstance(raw, dict) else None
        except (ValidationError, KeyError, TypeError, yaml.YAMLError):
            model = None
    if model is not None:
        problems += check_estimator(model)
    raw = yaml.safe_load(path.read_text()) if path.exists() else None
    expectations = path.parent / str((raw or {}).get("expectations", "expectations.yaml")) if isinstance(raw, dict) else None
    if expectations is not None and not expectations.exists():
        problems.append(("expectations", f"{_display(expectations)} not found (write the rules, or an empty "
                                         f"file for none)"))
    return str(SpecError(_display(path), problems)).splitlines() if problems else []
