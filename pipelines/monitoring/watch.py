"""Monitoring: input drift with Evidently, live performance once labels arrive, retrain decisions.

* :func:`monitor_drift` compares the day's scoring inputs with the champion's training
  reference (a sample logged with the model), and the champion's outputs on both (its score,
  predicted class or prediction), saves the Evidently HTML report under
  ``$MLOPS_REPORTS/<uc>/drift/``, logs it to MLflow and writes one summary row and one row
  per column to the monitoring tables. The drift share that drives retraining counts input
  columns; output drift is reported beside it. Missing values are compared separately,
  because drift tests drop them.
* :func:`live_performance` joins labels that arrived on a date with the scores written
  for their label date and records the quality per label date and model version.
* :func:`retrain_decision` turns the drift history into a retrain/no-retrain decision
  with its reason (threshold, persistence over consecutive days, cooldown).
"""
from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from pipelines.core.lake import (Lake, ds, list_partitions, partition_files, read_partition, read_table,
                                 replace_partition)
from pipelines.data.labels import encode_labels
from pipelines.features.point_in_time import feature_columns
from pipelines.models import compiled, tracking
from pipelines.models.tasks import ModelTask, finite_or_none
from pipelines.monitoring.drift_stats import ColumnDrift, column_drift_over_files, sample_files, scalable

log = logging.getLogger(__name__)

DRIFT_SUMMARY = "drift_summary"
DRIFT_COLUMNS = "drift_columns"
PERFORMANCE = "performance"
RETRAIN_REQUESTS = "retrain_requests"
NULL_SHARE_TOLERANCE = 0.10
OUTPUT_PREFIX = "model_output_"   # the drift columns of the champion's outputs (not features)


def column_drift_from_snapshot(snapshot: dict) -> list[tuple[str, str, float, float, bool]]:
    """(column, method, threshold, score, drifted) for each ValueDrift metric of an Evidently snapshot."""
    rows = []
    for metric in snapshot.get("metrics", []):
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        method, threshold, score = config.get("method", ""), float(config.get("threshold")), float(metric["value"])
        drifted = score < threshold if "p_value" in method else score >= threshold
        rows.append((config["column"], method, threshold, score, bool(drifted)))
    return rows


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], categorical: list[str],
                 html_path: Path | None = None, method: str | None = None,
                 threshold: float | None = None) -> list[ColumnDrift]:
    """Per-column drift of ``current`` against ``reference`` (Evidently DataDriftPreset).

    Columns that are entirely empty on either side cannot be tested by Evidently; they are
    reported as drifted when only the current side is empty (a broken input), else skipped.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    def null_share(frame, col):
        return float(frame[col].isna().mean()) if len(frame) else 1.0

    testable_num = [c for c in numeric if current[c].notna().any() and reference[c].notna().any()]
    testable_cat = [c for c in categorical if current[c].notna().any() and reference[c].notna().any()]
    results: list[ColumnDrift] = []
    if testable_num or testable_cat:
        definition = DataDefinition(numerical_columns=testable_num, categorical_columns=testable_cat)
        cols = testable_num + testable_cat
        snapshot = Report([DataDriftPreset(columns=cols, method=method, threshold=threshold)]).run(
            Dataset.from_pandas(current[cols], data_definition=definition),
            Dataset.from_pandas(reference[cols], data_definition=definition))
        if html_path is not None:
            html_path.parent.mkdir(parents=True, exist_ok=True)
            snapshot.save_html(str(html_path))
        for column, method, threshold, score, drifted in column_drift_from_snapshot(snapshot.dict()):
            results.append(ColumnDrift(column, method, threshold, score, drifted,
                                       null_share(current, column), null_share(reference, column)))
    for col in numeric + categorical:
        if col in testable_num or col in testable_cat:
            continue
        current_empty = not current[col].notna().any()
        results.append(ColumnDrift(col, "all values missing", 0.0, float("nan"),
                                   current_empty and reference[col].notna().any(),
                                   null_share(current, col), null_share(reference, col)))
    return with_missing_value_jumps(results)


def with_missing_value_jumps(results: list[ColumnDrift]) -> list[ColumnDrift]:
    """A jump in missing values is drift even when the present values look alike."""
    return [r if r.drifted or abs(r.null_share_current - r.null_share_reference) <= NULL_SHARE_TOLERANCE
            else ColumnDrift(**{**asdict(r), "drifted": True, "method": r.method + " + missing-value jump"})
            for r in results]


def _mlflow_monitoring_run(spec, date: dt.date):
    """Start (or resume, on a rerun) the MLflow run that holds the drift report of ``date``."""
    import mlflow

    experiment = tracking.ensure_experiment(spec.experiment("monitoring"))
    found = mlflow.search_runs([experiment], filter_string=f"tags.ds = '{ds(date)}' and tags.kind = 'drift'",
                               max_results=1, output_format="list")
    if found:
        return mlflow.start_run(run_id=found[0].info.run_id)
    return mlflow.start_run(experiment_id=experiment, run_name=f"drift-{ds(date)}",
                            tags={"ds": ds(date), "kind": "drift", "use_case": spec.name})


def with_model_output(frame: pd.DataFrame, model, task: ModelTask, columns: list[str]) -> pd.DataFrame:
    """``frame`` plus the model's monitored output on it, as column ``model_output_<name>``."""
    output = task.outputs(model, frame[columns])[task.monitored_output]
    if task.monitored_output_is_categorical:
        output = output.astype(str)
    return frame.assign(**{OUTPUT_PREFIX + task.monitored_output: output})


def monitor_drift(spec, lake: Lake, reports_dir: Path, date: dt.date, champion: dict) -> dict:
    """Drift of the day's scoring inputs and of the champion's outputs against its reference;
    returns the summary row."""
    cols, task = feature_columns(spec), ModelTask.of(spec)
    files = partition_files(lake.features(spec.name), date)
    current = sample_files(files, cols.all, spec.monitoring.current_sample_rows) if files else \
        pd.DataFrame(columns=cols.all)
    reference = tracking.load_reference_sample(champion["run_id"])
    if len(reference) > spec.monitoring.reference_sample_rows:
        reference = reference.sample(n=spec.monitoring.reference_sample_rows, random_state=0)
    model = compiled.load_for_inference(tracking.ModelRef.from_xcom(champion))   # as it serves
    output = OUTPUT_PREFIX + task.monitored_output
    current, reference = (with_model_output(f, model, task, cols.all) for f in (current, reference))
    numeric, categorical = list(cols.numeric), list(cols.categorical)
    (categorical if task.monitored_output_is_categorical else numeric).append(output)
    html = reports_dir / spec.name / "drift" / f"{ds(date)}.html"
    method = spec.monitoring.method and str(spec.monitoring.method.value)
    columns = drift_report(reference, current, numeric, categorical, html, method=method,
                           threshold=spec.monitoring.column_threshold)
    rows_current = len(current)
    if files and scalable(method, False):
        columns, rows_current = _over_the_whole_day(spec, date, files, reference, columns, method, len(current))
    inputs = [c for c in columns if c.column != output]
    outputs = [c for c in columns if c.column == output]
    drifted = [c.column for c in inputs if c.drifted]
    share = len(drifted) / len(inputs) if inputs else 0.0
    summary = {
        "model_name": champion["name"], "model_version": str(champion["version"]),
        "rows_current": rows_current, "rows_reference": len(reference),
        "columns": len(inputs), "drifted_columns": len(drifted), "drift_share": share,
        "threshold": spec.monitoring.drift_share_threshold,
        "dataset_drift": share >= spec.monitoring.drift_share_threshold,
        "drifted_column_names": ",".join(drifted),
        "output_column": task.monitored_output,
        "output_drift": bool(outputs and outputs[0].drifted),
        "output_drift_score": outputs[0].score if outputs else float("nan"),
        "report_path": str(html),
        **online_drift(spec, lake, reports_dir, date, reference, model, numeric, categorical),
        "computed_at": pd.Timestamp.now(tz="UTC").tz_localize(None),
    }
    _record_drift(spec, lake, date, champion, summary, columns, output, html)
    log.info("%s %s: %d/%d input columns drifted (share %.2f, threshold %.2f)%s", spec.name, ds(date), len(drifted),
             len(inputs), share, spec.monitoring.drift_share_threshold,
             f": {', '.join(drifted)}" if drifted else "")
    log.info("%s %s: the champion's %s %s (%s)", spec.name, ds(date), task.monitored_output,
             "drifted" if summary["output_drift"] else "did not drift",
             outputs[0].method if outputs else "not tested")
    log.info("%s %s: drift report at %s", spec.name, ds(date), html)
    # what the task returns goes to XCom as JSON: no NaN there (a figure that does not exist is None)
    return {"ds": ds(date), **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                               for k, v in summary.items() if k != "computed_at"}}


def _over_the_whole_day(spec, date: dt.date, files: list, reference: pd.DataFrame, columns: list[ColumnDrift],
                        method: str | None, sampled: int) -> tuple[list[ColumnDrift], int]:
    """The input columns' drift over every row of the day (the decision reads the whole day;
    Evidently's report stays the sample's picture), and the day's rows."""
    cols = feature_columns(spec)
    day = column_drift_over_files(reference, files, list(cols.numeric),
                                  [c for c in cols.categorical if scalable(method, True)], method,
                                  spec.monitoring.column_threshold)
    whole = {c.column: c for c in with_missing_value_jumps(day.columns)}
    log.info("%s %s: %s drift of %d input columns over the whole day (%d rows); the report compares samples of "
             "%d and %d rows", spec.name, ds(date), method, len(whole), day.rows, sampled, len(reference))
    return [whole.get(c.column, c) for c in columns], day.rows


def _record_drift(spec, lake: Lake, date: dt.date, champion: dict, summary: dict, columns: list[ColumnDrift],
                  output: str, html: Path) -> None:
    """The day's drift summary and columns as monitoring partitions, and a monitoring run in MLflow."""
    import mlflow

    replace_partition(lake.monitoring(spec.name, DRIFT_SUMMARY), date, pd.DataFrame([summary]))
    replace_partition(lake.monitoring(spec.name, DRIFT_COLUMNS), date,
                      pd.DataFrame([asdict(c) for c in columns]).assign(
                          model_version=str(champion["version"]),
                          role=["output" if c.column == output else "input" for c in columns]))
    with _mlflow_monitoring_run(spec, date):
        mlflow.set_tags({"model_version": str(champion["version"]), "dataset_drift": str(summary["dataset_drift"]),
                         "output_drift": str(summary["output_drift"])})
        mlflow.log_metrics({"drift_share": summary["drift_share"], "drifted_columns": summary["drifted_columns"]}
                           | ({"online_drift_share": summary["online_drift_share"], "online_rows": summary["online_rows"]}
                              if summary["online_rows"] >= ONLINE_MIN_ROWS else {})
                           | {tracking.metric_key(f"drift.{c.column}"): c.score for c in columns
                              if math.isfinite(c.score)})
        if html.exists():
            mlflow.log_artifact(str(html), artifact_path="evidently")


ONLINE_MIN_ROWS = 50   # fewer online requests in a day: no online drift figures (too few to judge)


def online_drift(spec, lake: Lake, reports_dir: Path, date: dt.date, reference: pd.DataFrame, model,
                 numeric: list[str], categorical: list[str]) -> dict:
    """Drift of the day's *online* requests (the features the scoring service answered, from its
    request log) against the same reference; NaN figures on a day with too few of them."""
    cols, task = feature_columns(spec), ModelTask.of(spec)
    empty = {"online_rows": 0, "online_drift_share": float("nan"), "online_drifted_column_names": "",
             "online_report_path": ""}
    try:
        served = read_partition(lake.online_inference(spec.name), date, columns=[*cols.all, "mode"])
    except (FileNotFoundError, KeyError, ValueError) as exc:   # no log that day, or one without the features
        if not isinstance(exc, FileNotFoundError):
            log.warning("%s %s: online requests not comparable: %s", spec.name, ds(date), exc)
        return empty
    served = served[served["mode"] == "served"].drop(columns=["mode"])
    if len(served) < ONLINE_MIN_ROWS:
        return {**empty, "online_rows": len(served)}
    if len(served) > spec.monitoring.current_sample_rows:
        served = served.sample(n=spec.monitoring.current_sample_rows, random_state=0)
    for column in cols.numeric:
        served[column] = pd.to_numeric(served[column], errors="coerce").astype("float64")
    for column in cols.categorical:
        served[column] = served[column].astype(object).where(served[column].notna(), None)
    served = with_model_output(served, model, task, cols.all)
    html = reports_dir / spec.name / "drift" / f"{ds(date)}-online.html"
    output = OUTPUT_PREFIX + task.monitored_output
    columns = drift_report(reference, served, numeric, categorical, html,
                           method=spec.monitoring.method and str(spec.monitoring.method.value),
                           threshold=spec.monitoring.column_threshold)
    inputs = [c for c in columns if c.column != output]
    drifted = [c.column for c in inputs if c.drifted]
    share = len(drifted) / len(inputs) if inputs else 0.0
    log.info("%s %s: online requests: %d/%d input columns drifted (share %.2f) over %d rows; report at %s",
             spec.name, ds(date), len(drifted), len(inputs), share, len(served), html)
    return {"online_rows": len(served), "online_drift_share": share,
            "online_drifted_column_names": ",".join(drifted), "online_report_path": str(html)}


def live_performance(spec, lake: Lake, date: dt.date) -> list[dict]:
    """Quality of past scores whose labels landed on ``date``, per label date, source (the batch
    inference table, the online service's answers) and model version, by the task's metrics
    (:mod:`pipelines.models.tasks`)."""
    label, task, metric = spec.label, ModelTask.of(spec), spec.promotion.metric
    try:
        labels = read_partition(lake.clean(spec.name, label.source), date)
    except FileNotFoundError:
        return []
    if labels.empty:
        return []
    labels = with_label_dates(labels, spec, task, date)
    unknown = int(labels["_class"].isna().sum())
    if unknown:
        log.info("%s %s: %d landed label(s) missing or unmapped, left out of live performance",
                 spec.name, ds(date), unknown)
    labels = labels[labels["_class"].notna()]
    written = []
    for label_ds, group in labels.groupby("label_ds"):
        rows = []
        group = group.assign(**{spec.entity: group[spec.entity].astype(str)})   # one key type for both sources
        for source, scores in _scores_of(spec, lake, task, label_ds):
            joined = group.merge(scores, on=spec.entity, how="inner")
            for version, part in joined.groupby("model_version"):
                truth = part["_class"].to_numpy(dtype=int if task.classifier else float)
                metrics = task.metrics(truth, part[list(task.output_columns)])
                rows.append({"label_date": label_ds, "labels_landed": ds(date), "source": source,
                             "model_version": str(version), **finite_or_none(metrics)})
        if not rows:
            continue
        replace_partition(lake.monitoring(spec.name, PERFORMANCE), label_ds, pd.DataFrame(rows))
        written += rows
        for row in rows:
            log.info("%s: live performance for %s, %s scores of model v%s: %s %s on %d labels", spec.name, label_ds,
                     row["source"], row["model_version"], metric.value, row.get(metric.value), int(row["rows"]))
    return written


def with_label_dates(labels: pd.DataFrame, spec, task: ModelTask, landed: dt.date | str) -> pd.DataFrame:
    """Labels that landed on ``landed`` with ``label_ds`` (the date each is about) and ``_class``
    (the encoded target; <NA> when missing or unmapped)."""

    label = spec.label
    labels = labels.copy()
    labels["label_ds"] = (pd.to_datetime(labels[label.date_column]).dt.strftime("%Y-%m-%d") if label.date_column
                          else ds(landed))   # a snapshot's labels are about its own date
    labels["_class"] = encode_labels(labels[label.target], label, task.kind)
    return labels


def _scores_of(spec, lake: Lake, task: ModelTask, day: str) -> list[tuple[str, pd.DataFrame]]:
    """The scores made for ``day``: the batch inference table's, and the scoring service's answers
    (``mode: served``, by the version that answered; shadow scores were never acted on)."""
    columns = [spec.entity, *task.output_columns, "model_version"]
    found = []
    for source, table, extra in (("batch", lake.inference(spec.name), []),
                                 ("online", lake.online_inference(spec.name), ["mode"])):
        try:
            scores = read_partition(table, day, columns=columns + extra)
        except FileNotFoundError:
            continue
        if extra:
            scores = scores[scores["mode"] == "served"].drop(columns=extra)
        if not scores.empty:
            scores[spec.entity] = scores[spec.entity].astype(str)
            found.append((source, scores))
    return found


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str
    ds: str
    drift_share: float | None
    model_version: str | None


def retrain_decision(spec, lake: Lake, date: dt.date) -> RetrainDecision:
    """Whether drift on ``date`` calls for retraining, by the spec's threshold, persistence and cooldown."""
    policy = spec.monitoring
    summary = read_table(lake.monitoring(spec.name, DRIFT_SUMMARY))
    today = summary[summary["ds"] == ds(date)]
    if today.empty:
        return RetrainDecision(False, f"no drift result for {ds(date)}", ds(date), None, None)
    row = today.iloc[0]
    share, version = float(row["drift_share"]), str(row["model_version"])
    if share < policy.drift_share_threshold:
        return RetrainDecision(False, f"drift share {share:.2f} below threshold {policy.drift_share_threshold:.2f}",
                               ds(date), share, version)
    window = [ds(date - dt.timedelta(days=i)) for i in range(policy.consecutive_days)]
    recent = summary[summary["ds"].isin(window) & (summary["model_version"].astype(str) == version)]
    persistent = len(recent) == len(window) and bool((recent["drift_share"] >= policy.drift_share_threshold).all())
    if not persistent:
        return RetrainDecision(False, f"drift share {share:.2f} over threshold, but not yet for "
                                      f"{policy.consecutive_days} consecutive days on v{version}", ds(date), share, version)
    requests = list_partitions(lake.monitoring(spec.name, RETRAIN_REQUESTS))
    since = ds(date - dt.timedelta(days=policy.cooldown_days - 1))
    earlier = [p for p in requests if since <= p < ds(date)]
    if earlier:
        return RetrainDecision(False, f"drift persists (share {share:.2f}) but a retraining was requested on "
                                      f"{earlier[-1]}, within the {policy.cooldown_days}-day cooldown",
                               ds(date), share, version)
    columns = str(row.get("drifted_column_names", ""))
    reason = (f"drift on {ds(date)}: {int(row['drifted_columns'])}/{int(row['columns'])} columns drifted "
              f"(share {share:.2f} >= {policy.drift_share_threshold:.2f}) for {policy.consecutive_days} "
              f"consecutive days on champion v{version}; drifted: {columns}")
    return RetrainDecision(True, reason, ds(date), share, version)


def record_retrain_request(spec, lake: Lake, decision: RetrainDecision) -> None:
    """Remember a drift-triggered retraining (drives the cooldown); idempotent per date."""
    replace_partition(lake.monitoring(spec.name, RETRAIN_REQUESTS), decision.ds,
                      pd.DataFrame([{**asdict(decision), "requested_at": pd.Timestamp.now(tz="UTC").tz_localize(None)}]))
