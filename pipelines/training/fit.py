"""Train a challenger: build a point-in-time training set, fit the spec's model, track and register it.

The training set for a run "as of" date T joins every label known before T (its label
partition landed before T) to the features of the entity *as of the label's date*, so
the model sees what it would have seen then. The most recent ``holdout_days`` label dates
are held out for champion/challenger evaluation; the ``window_days`` before them are fitted.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import time
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.core import lineage
from pipelines.core.config import settings
from pipelines.core.errors import MissingData, NotEnoughData
from pipelines.core.lake import Lake, ds
from pipelines.core.spark import column, table_exists
from pipelines.core.spec import SPEC_FILE, Snapshots, SpecError, Split, TaskType, check_estimator, estimator_class
from pipelines.data.labels import encode_label_column
from pipelines.features.point_in_time import feature_columns
from pipelines.models import compiled, tracking
from pipelines.models.tasks import ModelTask, finite_or_none
from pipelines.training.explanations import explain, log_explanations
from pipelines.training.search import log_trials, search

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelWindow:
    """Label dates used for fitting and for the holdout, for a training run as of a date."""

    as_of: dt.date
    fit_start: dt.date
    fit_end: dt.date        # inclusive
    holdout_start: dt.date
    holdout_end: dt.date    # inclusive

    def describe(self) -> str:
        return (f"fit on label dates {self.fit_start}..{self.fit_end}, "
                f"holdout {self.holdout_start}..{self.holdout_end} (as of {self.as_of})")


def label_window(spec, as_of: dt.date) -> LabelWindow:
    """Which label dates a run as of ``as_of`` may use (labels must have landed before it).
    A random split fits and holds out over the same dates (it splits entities, not dates)."""
    horizon = spec.label.horizon_days
    last = as_of - dt.timedelta(days=horizon + 1)   # label partition ds = label_date + horizon < as_of
    if spec.training.split == Split.RANDOM:
        first = max(last - dt.timedelta(days=spec.training.window_days - 1), spec.start)
        if last < first:
            raise NotEnoughData(f"{spec.name}: as of {as_of} there are no labelled dates "
                             f"(labels arrive {horizon} days late; data starts {spec.start})")
        return LabelWindow(as_of, first, last, first, last)
    holdout_start = last - dt.timedelta(days=spec.training.holdout_days - 1)
    fit_end = holdout_start - dt.timedelta(days=1)
    fit_start = max(fit_end - dt.timedelta(days=spec.training.window_days - 1), spec.start)
    if fit_end < fit_start:
        raise NotEnoughData(f"{spec.name}: as of {as_of} there are no labelled dates to fit on "
                         f"(labels arrive {horizon} days late; data starts {spec.start})")
    return LabelWindow(as_of, fit_start, fit_end, holdout_start, last)


def in_holdout(entities: pd.Series, fraction: float) -> np.ndarray:
    """Stable random split by entity: the same entity is always on the same side, in every run
    (so champion and challenger are compared on rows neither was fitted on)."""

    buckets = np.array([zlib.crc32(str(e).encode()) % 10_000 for e in entities])
    return buckets < round(fraction * 10_000)


def training_frames(spark, spec, lake: Lake, window: LabelWindow, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows to fit on and the holdout, by the spec's split (newest dates, or entities)."""
    if spec.training.split == Split.RANDOM:
        rows = labelled_features(spark, spec, lake, window.fit_start, window.fit_end, window.as_of)
        if spec.training.snapshots is Snapshots.NEWEST:
            rows = newest_per_entity(rows, spec.entity)
        mask = in_holdout(rows[spec.entity], spec.training.holdout_fraction)
        train, holdout = rows[~mask], rows[mask]
        if len(train) > spec.training.max_rows:
            train = train.sample(n=spec.training.max_rows, random_state=seed).sort_index()
        train, holdout = train.reset_index(drop=True), holdout.reset_index(drop=True)
        train.attrs, holdout.attrs = dict(rows.attrs), {"labels_missing": 0}
        if train.empty or holdout.empty:
            raise NotEnoughData(f"{spec.name}: {len(rows)} labelled rows are too few to hold out "
                             f"{spec.training.holdout_fraction:.0%} of the entities")
        return train, holdout
    train = labelled_features(spark, spec, lake, window.fit_start, window.fit_end, window.as_of,
                              max_rows=spec.training.max_rows, seed=seed)
    return train, holdout_frame(spark, spec, lake, window)


def newest_per_entity(rows: pd.DataFrame, entity: str) -> pd.DataFrame:
    """Each entity's row of its newest label date (rows sorted by date, as labelled_features
    returns them): an entity labelled in several snapshots counts once."""
    newest = rows.drop_duplicates(entity, keep="last")
    if len(newest) < len(rows):
        log.info("training on each entity's newest snapshot: %d of %d labelled rows (training.snapshots: newest)",
                 len(newest), len(rows))
    newest.attrs = dict(rows.attrs)
    return newest.reset_index(drop=True)


def holdout_frame(spark, spec, lake: Lake, window: LabelWindow) -> pd.DataFrame:
    """The rows champion and challenger are judged on."""
    if spec.training.split == Split.RANDOM:
        return training_frames(spark, spec, lake, window)[1]
    return labelled_features(spark, spec, lake, window.holdout_start, window.holdout_end, window.as_of)


def labelled_features(spark, spec, lake: Lake, start: dt.date, end: dt.date, as_of: dt.date,
                      max_rows: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Labels with ``start <= label_date <= end`` that landed before ``as_of``, joined to
    the features of their label date. Sorted by label date; sampled down to ``max_rows``."""
    from pyspark.sql import functions as F

    label = spec.label
    labels_path, features_path = lake.clean(spec.name, label.source), lake.features(spec.name)
    for path in (labels_path, features_path):
        if not table_exists(path):
            raise MissingData(f"{spec.name}: no data at {path}; run the daily pipeline first")
    labels = (spark.read.parquet(str(labels_path))
              .where(F.col("ds") < ds(as_of))
              .withColumn("_label_date", F.to_date(column(label.date_column or "ds")))
              .where((F.col("_label_date") >= F.lit(start)) & (F.col("_label_date") <= F.lit(end)))
              .select(column(spec.entity), F.date_format("_label_date", "yyyy-MM-dd").alias("ds"),
                      encode_label_column(column(label.target), label, spec.model.task,
                                          spec.source(label.source).columns[label.target] == "bool").alias(label.target)))
    unlabelled = labels.where(column(label.target).isNull()).count()
    labels = labels.where(column(label.target).isNotNull())
    features = (spark.read.parquet(str(features_path))
                .where((F.col("ds") >= ds(start)) & (F.col("ds") <= ds(end))))
    joined = labels.join(features, [spec.entity, "ds"], "inner")
    if max_rows:
        total = joined.count()
        if total > max_rows:
            joined = joined.sample(fraction=max_rows / total, seed=seed)
    frame = joined.toPandas()
    frame.attrs = {}  # Spark Connect attaches plan metrics that cannot be written to Parquet
    if unlabelled:
        log.warning("%s: %d label row(s) with a missing or unmapped %s left out (label dates %s..%s)",
                    spec.name, unlabelled, label.target, start, end)
    if frame.empty:
        raise NotEnoughData(f"{spec.name}: no labelled feature rows for label dates {start}..{end}")
    missing = sorted(set(pd.date_range(start, end).strftime("%Y-%m-%d")) - set(frame["ds"]))
    if missing:
        log.warning("%s: %d label date(s) without labelled features (skipped): %s", spec.name, len(missing), missing)
    frame = frame.sort_values(["ds", spec.entity], kind="stable").reset_index(drop=True)
    lineage.read(lineage.table(labels_path), *(lineage.partition(features_path, day) for day in frame["ds"].unique()))
    frame.attrs["labels_missing"] = int(unlabelled)   # counted in the training run's metrics
    return frame


def make_estimator(spec):
    """The spec's estimator with its fixed params; SpecError naming the key when the estimator
    cannot be imported or does not know a parameter."""

    problems = check_estimator(spec.model)
    if problems:
        raise SpecError(str(spec.directory / SPEC_FILE), problems)
    return estimator_class(spec.model)(**spec.model.params)


def make_pipeline(spec):
    """Preprocessing (impute, one-hot) plus the estimator, as one scikit-learn pipeline."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    cols = feature_columns(spec)
    estimator = make_estimator(spec)
    numeric = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
    if spec.training.recency_half_life_days and type(estimator).__name__.startswith("HistGradientBoosting"):
        numeric.append(("bins", quantile_bins(estimator.get_params()["max_bins"])))
    pre = ColumnTransformer([
        ("numeric", Pipeline(numeric), cols.numeric),
        ("categorical", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]), cols.categorical),
    ])
    return Pipeline([("features", pre), ("model", estimator)])


def quantile_bins(bins: int):
    """Numeric columns as their quantile bin (0..bins-1) by unweighted quantiles.

    Gradient boosting given sample weights finds its bin edges by weighted quantiles, one
    weighted percentile at a time: with recency weights a fit took about eight times longer
    (7 s against 0.9 s for 40,000 rows of 22 columns). Binned beforehand, each column has at
    most ``bins`` values, which the estimator keeps as they are; the weights still drive every
    split. Bin edges are then unweighted quantiles, as they were before scikit-learn 1.7.
    """
    from sklearn.preprocessing import KBinsDiscretizer

    return KBinsDiscretizer(n_bins=bins, encode="ordinal", strategy="quantile",
                            quantile_method="averaged_inverted_cdf", subsample=None)


def recency_weights(dates: pd.Series, half_life_days: float | None) -> np.ndarray:
    """Sample weights that halve every ``half_life_days`` back from the newest date."""
    if not half_life_days:
        return np.ones(len(dates))
    d = pd.to_datetime(dates)
    age = (d.max() - d).dt.days.to_numpy()
    return np.power(0.5, age / half_life_days)


def model_threads():
    """A context that caps the threads a model's fit may use (``MLOPS_MODEL_THREADS``; unset: no cap).

    Gradient boosting's OpenMP threads wait for each other at every split: beside the stack's
    other busy processes on two cores, two of them took 4 s for a fit that one thread does in 2 s.
    """

    from threadpoolctl import threadpool_limits

    threads = settings().model_threads
    return threadpool_limits(limits=threads) if threads else contextlib.nullcontext()


def cross_validation(spec, entities: pd.Series | None = None, y: np.ndarray | None = None):
    """Folds of the search: time-ordered for a time split; shuffled (stratified for classifiers)
    for a random split, whose rows share one date. When an entity has several rows (snapshots:
    all), the folds are grouped by entity, so that no entity is on both sides of a fold; they
    are then returned as a list of (train, test) index pairs."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold, TimeSeriesSplit

    folds = spec.model.cv_folds
    if spec.training.split == Split.TIME:
        return TimeSeriesSplit(n_splits=folds)
    classifier = ModelTask.of(spec).classifier
    if entities is not None and entities.duplicated().any():
        grouped = (StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0) if classifier
                   else GroupKFold(n_splits=folds, shuffle=True, random_state=0))
        return list(grouped.split(np.zeros(len(entities)), y, groups=entities.to_numpy()))
    return (StratifiedKFold if classifier else KFold)(n_splits=folds, shuffle=True, random_state=0)


def fit_model(spec, frame: pd.DataFrame):
    """Search the spec's space for its promotion metric (grid or Optuna, see pipelines.training.search);
    returns the :class:`~pipelines.training.search.SearchOutcome` (the refitted best pipeline and the trials)."""

    target = spec.label.target
    y = frame[target].to_numpy()
    ModelTask.of(spec).check_labels(spec.name, y)
    X = frame[feature_columns(spec).all]
    half_life = spec.training.recency_half_life_days
    # no weights unless they differ: gradient boosting fits about ten times slower with any weights
    fit_params = {"model__sample_weight": recency_weights(frame["ds"], half_life)} if half_life else {}
    jobs = settings().search_jobs
    with model_threads():
        outcome = search(spec, make_pipeline(spec), X, y, fit_params, cross_validation(spec, frame[spec.entity], y), jobs)
    log.info("%s: %s search of %d candidate(s), %d at a time: best params %s (cv %s %.4f)", spec.name,
             outcome.method.value, len(outcome.trials), jobs, outcome.best_params, spec.promotion.metric.value,
             outcome.cv_score)
    return outcome


def frame_digest(frame: pd.DataFrame) -> str:
    """A content hash identifying a training set (order-independent within the frame's order)."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def drift_reference(spec, train: pd.DataFrame) -> pd.DataFrame:
    """The drift reference kept with a model: features of the newest ``reference_days`` label
    dates it was fitted on (recent, so slow trends in the fit window do not read as drift)."""
    dates = sorted(train["ds"].unique())[-spec.training.reference_days:]
    recent = train[train["ds"].isin(dates)][feature_columns(spec).all]
    return recent.sample(n=min(spec.training.reference_rows, len(recent)), random_state=0)


def train_challenger(spark, spec, lake: Lake, as_of: dt.date, reason: str = "scheduled",
                     trigger: str = "schedule", airflow_run_id: str | None = None) -> dict:
    """Fit, log, register and alias a challenger; returns its URI, version and holdout metrics.

    Idempotent per Airflow run: a retried or cleared training of the same run first looks for
    what an earlier try left (see :func:`resume_challenger`) and fits nothing when it finds it.
    """
    import mlflow

    experiment = tracking.ensure_experiment(spec.experiment("training"))
    if airflow_run_id:
        earlier = resume_challenger(spec, experiment, airflow_run_id, trigger, reason)
        if earlier is not None:
            return earlier
    window = label_window(spec, as_of)
    log.info("%s: training challenger, %s", spec.name, window.describe())
    phases = PhaseTimer()
    with phases("read"):
        train, holdout = training_frames(spark, spec, lake, window, seed=int(as_of.strftime("%Y%m%d")))
    cols = feature_columns(spec)
    target, task = spec.label.target, ModelTask.of(spec)
    with phases("search"):
        outcome = fit_model(spec, train)
    model = outcome.model
    with phases("holdout"):
        holdout_outputs = task.outputs(model, holdout[cols.all])
        metrics = task.metrics(holdout[target].to_numpy(), holdout_outputs)
    log.info("%s: challenger holdout metrics %s", spec.name, {k: round(v, 4) for k, v in metrics.items()})

    with mlflow.start_run(experiment_id=experiment, run_name=f"train-{as_of}") as run:
        with phases("track"):
            _log_training_run(spec, lake, as_of, TrainingContext(trigger, reason, airflow_run_id), window, train,
                              holdout, metrics, outcome)
        with phases("plots"):
            task.log_plots(holdout[target].to_numpy(), holdout_outputs)
        with phases("explain"):
            explain_challenger(spec, model, holdout[cols.all], task)
        with phases("compile"):
            compiled_tags = compile_for_serving(spec, model, holdout[cols.all], task, holdout_outputs)
        with phases("model"):
            reference = drift_reference(spec, train)
            tracking.log_reference_sample(reference)
            example = train[cols.all].head(5)
            info = tracking.log_sklearn_model(model, example, getattr(model, task.predict_method)(example),
                                              task.predict_method)
            mlflow.set_tag(tracking.LOGGED_MODEL_TAG, info.model_uri)   # a retry registers this model, fits nothing
            version = tracking.register_challenger(
                spec.model.registered_name, info.model_uri, run.info.run_id,
                version_tags(spec, as_of, trigger, reason, metrics, airflow_run_id) | compiled_tags)
        mlflow.log_metrics({f"seconds_{name}": value for name, value in phases.seconds.items()})
    log.info("%s: training took %s", spec.name, phases)
    ref = tracking.ModelRef(spec.model.registered_name, str(version), run.info.run_id)
    lineage.wrote(ref.as_dataset())
    log.info("%s: registered %s (run %s) with alias challenger", spec.name, ref.uri, ref.run_id)
    return challenger_xcom(ref, as_of, finite_or_none(metrics))


@dataclass(frozen=True)
class TrainingContext:
    """Why and by what a training ran: its trigger, the reason given, and the Airflow run."""

    trigger: str
    reason: str
    airflow_run_id: str | None


def _log_training_run(spec, lake: Lake, as_of: dt.date, why: TrainingContext, window, train: pd.DataFrame,
                      holdout: pd.DataFrame, metrics: dict[str, float], outcome) -> None:
    """The active MLflow run's tags (trigger, code version, data digest), params (estimator,
    windows, split, sizes), metrics (holdout, cross-validation, labels), trials and dataset."""
    import mlflow

    cols, task, metric, target = feature_columns(spec), ModelTask.of(spec), spec.promotion.metric, spec.label.target
    mlflow.set_tags({
        "use_case": spec.name, "as_of": str(as_of), "trigger": why.trigger, "trigger_reason": why.reason,
        tracking.AIRFLOW_RUN_TAG: why.airflow_run_id or "", **tracking.code_version_tags(),
        "training_data_digest": frame_digest(train[[spec.entity, "ds", target] + cols.all]),
    })
    mlflow.log_params({
        "estimator": spec.model.estimator,
        "fit_label_dates": f"{window.fit_start}..{window.fit_end}",
        "holdout_label_dates": f"{window.holdout_start}..{window.holdout_end}",
        "split": str(spec.training.split.value), "holdout_fraction": spec.training.holdout_fraction,
        **({"snapshots": spec.training.snapshots.value} if spec.training.split is Split.RANDOM else {}),
        "task": task.kind.value, "train_rows": len(train), "holdout_rows": len(holdout),
        **({"threshold": task.threshold} if task.kind is TaskType.BINARY else {}),
        "features": ",".join(cols.all), "recency_half_life_days": spec.training.recency_half_life_days,
    })
    mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items() if np.isfinite(v)}
                       | {f"cv_{metric.value}": outcome.cv_score,
                          **task.label_summary(train[target]),
                          "train_labels_missing": train.attrs.get("labels_missing", 0),
                          "holdout_labels_missing": holdout.attrs.get("labels_missing", 0)})
    log_trials(outcome, metric)
    mlflow.log_input(mlflow.data.from_pandas(train, source=str(lake.features(spec.name)),
                                             name=f"{spec.name}-train-{window.fit_start}-{window.fit_end}",
                                             targets=target), context="training")


class PhaseTimer:
    """Wall seconds per named phase of a step (``with timer("search"): ...``), for the log and the
    run's ``seconds_*`` metrics: where a training's time goes."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        @contextlib.contextmanager
        def phase():
            started = time.perf_counter()
            try:
                yield
            finally:
                self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 3)
        return phase()

    def __str__(self) -> str:
        total = sum(self.seconds.values())
        return f"{total:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()) + ")"


def compile_for_serving(spec, model, X: pd.DataFrame, task: ModelTask, expected: pd.DataFrame) -> dict[str, str]:
    """The fitted pipeline compiled to ONNX and checked on the holdout ``X`` against scikit-learn's
    outputs ``expected`` (see :mod:`pipelines.models.compiled`), logged into the active run; the
    tags telling what will serve."""
    outcome = compiled.compile_checked(model, X, task, expected)
    if outcome.compiled:
        log.info("%s: compiled to ONNX%s; outputs equal scikit-learn's on %d holdout rows (largest difference %.2g)",
                 spec.name, f" (quantile bins {outcome.bins})" if outcome.bins else "", outcome.rows_checked,
                 outcome.max_abs_diff)
    else:
        log.warning("%s: not compiled, scikit-learn will serve it: %s", spec.name, outcome.reason)
    return compiled.log_compilation(outcome)


def explain_challenger(spec, model, X: pd.DataFrame, task: ModelTask) -> None:
    """SHAP plots and importances into the active run (see pipelines.training.explanations). A model SHAP
    cannot explain is still trained: the run says why it has no explanations."""
    import mlflow

    try:
        log_explanations(spec, explain(model, X, task.predict_method))
    except Exception as exc:   # noqa: BLE001 - explanations describe the model, they do not gate its training
        log.warning("%s: no SHAP explanations: %s: %s", spec.name, type(exc).__name__, exc)
        mlflow.set_tag("explanations", f"failed: {type(exc).__name__}: {exc}"[:500])


def version_tags(spec, as_of, trigger: str, reason: str, metrics: dict[str, float],
                 airflow_run_id: str | None) -> dict[str, str]:
    """The tags a registered challenger carries: where it came from and its holdout metric."""
    metric = spec.promotion.metric.value
    value = metrics.get(metric)
    return {"as_of": str(as_of), "trigger": trigger, "trigger_reason": reason,
            f"holdout_{metric}": f"{value if value is not None else float('nan'):.4f}",
            **({tracking.AIRFLOW_RUN_TAG: airflow_run_id} if airflow_run_id else {})}


def challenger_xcom(ref, as_of, metrics: dict[str, float | None]) -> dict:
    """What the training task hands on: the version, its run, its cut-off and holdout metrics."""
    return {"model_uri": ref.uri, "version": ref.version, "name": ref.name, "run_id": ref.run_id,
            "as_of": str(as_of), "metrics": metrics}


def resume_challenger(spec, experiment_id: str, airflow_run_id: str, trigger: str, reason: str) -> dict | None:
    """What an earlier try of the same Airflow run left, made whole: the version it registered
    (``challenger`` pointed at it again), or the model it logged before failing (registered now).
    None when it left neither: the caller trains."""
    name = spec.model.registered_name
    ref = tracking.version_registered_by(name, airflow_run_id)
    if ref is not None:
        tracking.point_challenger(ref)
        run = tracking.client().get_run(ref.run_id)
        log.info("%s: Airflow run %s registered %s already; reusing it (no new fit, no new version)",
                 spec.name, airflow_run_id, ref.uri)
    else:
        logged = tracking.model_logged_by(experiment_id, airflow_run_id)
        if logged is None:
            return None
        run_id, model_uri = logged
        run = tracking.client().get_run(run_id)
        tags = version_tags(spec, run.data.tags.get("as_of", ""), trigger, reason, _holdout_metrics(run),
                            airflow_run_id) | {k: v for k, v in run.data.tags.items() if k in compiled.TAGS}
        ref = tracking.ModelRef(name, tracking.register_challenger(name, model_uri, run_id, tags), run_id)
        log.info("%s: Airflow run %s logged its model in run %s before failing; registered it as %s",
                 spec.name, airflow_run_id, run_id, ref.uri)
    return challenger_xcom(ref, run.data.tags.get("as_of", ""), _holdout_metrics(run))


def _holdout_metrics(run) -> dict[str, float]:
    """The holdout metrics an MLflow training run logged (non-finite ones were not logged)."""
    return {key.removeprefix("holdout_"): value for key, value in run.data.metrics.items()
            if key.startswith("holdout_")}
