"""The spec's vocabulary: its closed sets (enums), the refusal a broken spec raises, names."""
from __future__ import annotations

import enum
import re

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

    def gain(self, value: float, reference: float) -> float:
        """How much better ``value`` is than ``reference`` in this metric's direction (negative: worse)."""
        return value - reference if self.higher_is_better else reference - value

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


class SearchMethod(enum.StrEnum):
    GRID = "grid"       # every combination of the listed values
    OPTUNA = "optuna"   # Optuna's sampler over the lists and ranges, within a trial and time budget


class Snapshots(enum.StrEnum):
    """Which rows training takes when an entity has a label in several snapshots.

    ``newest``: one row per entity, its newest labelled snapshot. ``all``: every snapshot's row,
    with cross-validation folds grouped by entity (an entity never sits on both sides of a fold)."""

    NEWEST = "newest"
    ALL = "all"


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


class Approval(enum.StrEnum):
    """``required``: a challenger that passes every enforced check waits for a reviewer in Airflow."""

    NONE = "none"
    REQUIRED = "required"


class ServingInput(enum.StrEnum):
    """What an online request carries: every feature (``features``) or only the entity id, whose
    features the service reads from the online store (``entity``)."""

    FEATURES = "features"
    ENTITY = "entity"


class Pattern(enum.StrEnum):
    """How a use case moves to production. ``deploy_models``: dev trains; the same artifact is
    tested in staging and copied into prod's registry (prod never trains). ``deploy_code``: a
    release is a commit of this code; staging trains, gates and scores with it on staging's data,
    and prod trains only with a commit staging passed."""

    DEPLOY_MODELS = "deploy_models"
    DEPLOY_CODE = "deploy_code"


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
