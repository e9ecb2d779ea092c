"""``mlops init``: profile a team's files and write a first spec and expectation suite.

    mlops init credit --source applicants=exports/applicants.csv --target Status --positive bad

It reads each source (CSV or Parquet, a file, folder or glob), infers every column's type,
tells categorical from numeric columns, and writes ``include/<uc>/spec.yaml`` (sources, a
feature list without the target, the entity, the timestamp and identifier columns, a label
section and a model suited to the task) and ``include/<uc>/expectations.yaml`` (not-null where
the data has no nulls, value sets of low-cardinality columns, ranges with a margin). Both files
carry comments saying what each part means; a person is expected to read and edit them. The
written spec is loaded back (and its estimator checked) before the command reports success.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipelines.ingest import cast_column, expand, read_file
from pipelines.spec import ColumnType, TaskType

MAX_CATEGORIES = 20          # a text column with at most this many values gets a value set
RANGE_MARGIN = 0.1           # ranges widened by this share of the observed span
ID_HINTS = ("id", "key", "uuid", "number", "no")


class InitError(ValueError):
    """The data or the options do not allow a spec to be drafted; the message says what to give."""


@dataclass(frozen=True)
class ColumnProfile:
    name: str
    kind: ColumnType
    nulls: int
    distinct: int
    rows: int
    values: list | None = None          # the sorted values of a low-cardinality column
    low: float | None = None
    high: float | None = None

    @property
    def categorical(self) -> bool:
        return self.kind in (ColumnType.STRING, ColumnType.BOOL)

    @property
    def named_like_id(self) -> bool:
        return any(self.name.lower() == h or self.name.lower().endswith("_" + h) or self.name.endswith(h.title())
                   for h in ID_HINTS)

    @property
    def identifier(self) -> bool:
        """Unique text (or unique numbers named like an id): never a feature."""
        return self.distinct == self.rows - self.nulls and (self.kind is ColumnType.STRING or self.named_like_id)


def infer_type(values: pd.Series) -> ColumnType:
    """The narrowest spec type every non-missing value casts to (whole numbers with gaps: double)."""
    present = values.dropna()
    if present.empty:
        return ColumnType.STRING
    if pd.api.types.is_bool_dtype(values):
        return ColumnType.BOOL
    if pd.api.types.is_datetime64_any_dtype(values):
        return ColumnType.TIMESTAMP
    for kind in (ColumnType.INT, ColumnType.DOUBLE, ColumnType.BOOL, ColumnType.TIMESTAMP):
        if kind is ColumnType.BOOL and not present.astype(str).str.lower().isin(
                {"true", "false", "yes", "no", "t", "f"}).all():
            continue
        if kind is ColumnType.TIMESTAMP and pd.to_numeric(present, errors="coerce").notna().any():
            continue   # numbers are not dates
        if cast_column(present, kind).notna().all():
            return ColumnType.DOUBLE if kind is ColumnType.INT and values.isna().any() else kind
    return ColumnType.STRING


def profile(frame: pd.DataFrame) -> dict[str, ColumnProfile]:
    out = {}
    for name in frame.columns:
        kind = infer_type(frame[name])
        typed = cast_column(frame[name], kind)
        present = typed.dropna()
        distinct = int(present.nunique())
        values = low = high = None
        if kind in (ColumnType.STRING, ColumnType.BOOL) and distinct <= MAX_CATEGORIES:
            values = sorted(present.unique().tolist(), key=str)
        if kind in (ColumnType.INT, ColumnType.DOUBLE) and len(present):
            finite = present[np.isfinite(present.astype(float))]
            low, high = (float(finite.min()), float(finite.max())) if len(finite) else (None, None)
        out[name] = ColumnProfile(name, kind, int(typed.isna().sum()), distinct, len(frame), values, low, high)
    return out


def _guess_entity(profiles: dict[str, ColumnProfile]) -> str | None:
    ids = [p for p in profiles.values() if p.identifier and p.nulls == 0]
    named = [p.name for p in ids if p.named_like_id]
    return named[0] if len(named) == 1 else (ids[0].name if len(ids) == 1 else None)


def draft(use_case: str, sources: dict[str, str], target: str, positive: str | None = None,
          timestamp: str | None = None, entity: str | None = None, task: TaskType = TaskType.BINARY,
          today: dt.date | None = None) -> tuple[str, str]:
    """The spec's and the expectation suite's text for the given sources."""
    if positive is not None and task is not TaskType.BINARY:
        raise InitError(f"--positive names the positive class of a binary task; a {task.value} task has none")
    frames = {name: pd.concat([read_file(p) for p in expand(path)], ignore_index=True)
              for name, path in sources.items()}
    profiles = {name: profile(frame) for name, frame in frames.items()}
    holder = [n for n, cols in profiles.items() if target in cols]
    if not holder:
        raise InitError(f"--target {target}: no source has that column (columns: "
                        f"{ {n: list(c) for n, c in profiles.items()} })")
    label_source = holder[0]
    first = next(iter(profiles))
    entity = entity or _guess_entity(profiles[first])
    if entity is None:
        raise InitError(f"cannot tell which column identifies an entity in {first}; give --entity COLUMN "
                        f"(one whose values are unique per row)")
    for name, cols in profiles.items():
        if entity not in cols:
            raise InitError(f"--entity {entity}: source {name} has no such column")
    labels = profiles[label_source][target]
    label_values = frames[label_source][target].dropna()
    if task is TaskType.BINARY and positive is None and labels.values is not None and set(map(str, labels.values)) - {"0", "1", "True", "False"}:
        raise InitError(f"--target {target} holds {labels.values}; say which is the positive class with --positive")
    if positive is not None and labels.values is not None and str(positive) not in map(str, labels.values):
        raise InitError(f"--positive {positive}: not a value of {target} ({labels.values})")
    classes = (sorted(cast_column(label_values, labels.kind).unique().tolist(), key=str)
               if task is TaskType.MULTICLASS else [])
    if task is TaskType.MULTICLASS and not 3 <= len(classes) <= MAX_CATEGORIES:
        raise InitError(f"--task multiclass: {target} has {len(classes)} distinct values; a multiclass target "
                        f"has 3 to {MAX_CATEGORIES} (binary: --task binary; a quantity: --task regression)")
    if task is TaskType.REGRESSION and labels.kind not in (ColumnType.INT, ColumnType.DOUBLE):
        raise InitError(f"--task regression: {target} holds {labels.kind.value} values; a regression target is a number")
    if timestamp and not any(timestamp in cols for cols in profiles.values()):
        raise InitError(f"--timestamp {timestamp}: no source has that column")
    start = (today or dt.date.today()).isoformat()

    spec_sources, features = {}, []
    for name, cols in profiles.items():
        events = timestamp in cols if timestamp else False
        spec_sources[name] = {
            **({"kind": "events", "timestamp": timestamp, "partition_by": timestamp} if events else {"kind": "snapshot"}),
            "key": [entity] if not events else [entity, timestamp],
            "columns": {c: p.kind.value for c, p in cols.items()},
        }
        usable = [c for c, p in cols.items()
                  if c not in (entity, target, timestamp) and not p.identifier and p.distinct > 1
                  and p.kind is not ColumnType.TIMESTAMP and c not in features]
        if usable:
            features.append({"kind": "attributes", "source": name, "columns": usable})
    if not features:
        raise InitError("no column is left to use as a feature (the target, the entity, timestamps and "
                        "identifiers are excluded)")
    events_label = bool(timestamp and timestamp in profiles[label_source])
    label = {"source": label_source, "target": target, "horizon_days": 0,
             **({"date_column": timestamp} if events_label else {}),
             **({"positive": _plain(positive, labels.kind)} if positive is not None else {}),
             **({"values": {value: i for i, value in enumerate(classes)}} if task is TaskType.MULTICLASS else {})}
    body = [
        _block(f"Use case {use_case}, drafted by `mlops init` from {', '.join(sources.values())} on {start}.\n"
               "Read every section, then run `mlops check " + use_case + "`.",
               {"name": use_case, "description": f"{use_case}: predict {target}", "start_date": start,
                "entity": entity}),
        _block("Raw sources: column types as inferred (string, int, double, bool, date, timestamp).\n"
               "snapshot: a partition is the whole table as known on its `mlops ingest --as-of` date;\n"
               "events: rows partition by the date of their timestamp.", {"sources": spec_sources}),
        _block("Great Expectations rules per source, beside the ones the spec implies (columns, types, keys).",
               {"expectations": "expectations.yaml"}),
        _block("Features: each entity's latest values. Excluded: the target, the entity, timestamps and\n"
               "identifier-like columns (unique per row). Text columns are one-hot encoded, missing\n"
               "values imputed by the model pipeline.", {"features": {"population": first, "groups": features}}),
        _block(LABEL_NOTES[task], {"label": label}),
        _block("The model: a scikit-learn estimator (dotted path), fixed params and a grid to search.",
               {"model": {"registered_name": f"{use_case}_model", "task": task.value,
                          "estimator": ESTIMATORS[task],
                          "params": {"random_state": 0, "max_iter": 200},
                          "search_space": {"learning_rate": [0.05, 0.1], "max_leaf_nodes": [15, 31]},
                          "cv_folds": 3, **({"threshold": 0.5} if task is TaskType.BINARY else {})}}),
        _block("Training: snapshots hold out a stable share of the entities (random split); event data\n"
               "holds out its newest label dates (time split).",
               {"training": {"split": "time" if events_label else "random", "holdout_fraction": 0.2,
                             "window_days": 60, "holdout_days": 7, "reference_rows": 2000}}),
        _block(*promotion_section(task, label_values, len(classes))),
        _block(*scoring_section(any(source["kind"] == "events" for source in spec_sources.values()))),
        _block("Drift: Evidently's tests per column; the share of drifted columns that triggers retraining.",
               {"monitoring": {"drift_share_threshold": 0.3, "consecutive_days": 2, "cooldown_days": 7}}),
    ]
    return "\n".join(body), draft_expectations(profiles)


def scoring_section(has_events: bool) -> tuple[str, dict]:
    """Event data is scored daily; snapshots when one lands through the inbox (and on demand)."""
    if has_events:
        return ("Scoring: the daily DAG validates, featurizes and scores each day on this schedule.",
                {"scoring": {"schedule": "@daily"}})
    return ("Scoring: no schedule. A snapshot is scored when it lands through the inbox (the <uc>_ingest\n"
            "DAG wakes the daily DAG for its date); `mlops score` or a manual run score one on demand.",
            {"scoring": {"schedule": None}})


LABEL_NOTES = {
    TaskType.BINARY: "The label: which column, and which of its values is the positive class. Rows whose label\n"
                     "is missing are left out of training and counted in the run's metrics.",
    TaskType.MULTICLASS: "The label: which column, and the class each of its values is (0, 1, 2, ...). Rows whose\n"
                         "label is missing or not in `values` are left out of training and counted.",
    TaskType.REGRESSION: "The label: the column whose value the model predicts. Rows whose label is missing are\n"
                         "left out of training and counted in the run's metrics.",
}
ESTIMATORS = {TaskType.BINARY: "sklearn.ensemble.HistGradientBoostingClassifier",
              TaskType.MULTICLASS: "sklearn.ensemble.HistGradientBoostingClassifier",
              TaskType.REGRESSION: "sklearn.ensemble.HistGradientBoostingRegressor"}


def promotion_section(task: TaskType, labels: pd.Series, classes: int) -> tuple[str, dict]:
    """The promotion gate with a floor a model must clear to be better than guessing."""
    if task is TaskType.REGRESSION:
        ceiling = float(pd.to_numeric(labels).std())
        return ("Promotion: lower RMSE is better. The ceiling is the target's standard deviation, the RMSE of\n"
                "always predicting the mean; a challenger must beat the champion by the margin.",
                {"promotion": {"metric": "rmse", "floor": _round(round(ceiling, 4)),
                               "min_improvement": _round(round(0.01 * ceiling, 4))}})
    if task is TaskType.MULTICLASS:
        return ("Promotion: macro-averaged F1 over the classes. The floor is what guessing scores (1/classes);\n"
                "a challenger must reach it, and beat the champion by the margin.",
                {"promotion": {"metric": "f1_macro", "floor": round(1 / classes, 2), "min_improvement": 0.01}})
    return ("Promotion: a challenger must reach the floor, and beat the champion by the margin.",
            {"promotion": {"metric": "roc_auc", "floor": 0.6, "min_improvement": 0.01}})


def draft_expectations(profiles: dict[str, dict[str, ColumnProfile]]) -> str:
    """Rules learnt from the data, commented; the spec already implies columns, types and keys."""
    lines = ["# Great Expectations rules per raw source, drafted by `mlops init` from the data it saw.",
             "# Beside these, every partition must have exactly the spec's columns and types and",
             "# unique, non-null keys. `type` is a GX expectation class; `kwargs` its arguments.",
             "# Widen a range or a value set when new values are legitimate; a failing rule",
             "# quarantines the day's partition with a message naming the column and the rule."]
    for source, cols in profiles.items():
        lines.append(f"{source}:")
        lines.append("  - {type: ExpectTableRowCountToBeBetween, kwargs: {min_value: 1}}")
        for name, p in cols.items():
            if p.nulls == 0:
                lines.append(_rule("ExpectColumnValuesToNotBeNull", column=name))
            if p.values is not None and p.kind is ColumnType.STRING:
                lines.append(_rule("ExpectColumnValuesToBeInSet", column=name, value_set=p.values))
            if p.low is not None and p.high is not None:
                margin = (p.high - p.low) * RANGE_MARGIN
                low, high = p.low - margin, p.high + margin
                if p.low >= 0:
                    low = max(low, 0.0)   # a quantity that was never negative stays so
                lines.append(_rule("ExpectColumnValuesToBeBetween", column=name, min_value=_round(low),
                                   max_value=_round(high)))
    return "\n".join(lines) + "\n"


def write_use_case(include: Path, use_case: str, spec_text: str, expectations_text: str, force: bool = False) -> Path:
    folder = include / use_case
    if (folder / "spec.yaml").exists() and not force:
        raise InitError(f"{folder / 'spec.yaml'} exists; pass --force to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(spec_text)
    (folder / "expectations.yaml").write_text(expectations_text)
    return folder


def _block(comment: str, data: dict) -> str:
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return "".join(f"# {line}\n" for line in comment.splitlines()) + text


def _rule(kind: str, **kwargs) -> str:
    return "  - " + yaml.safe_dump({"type": kind, "kwargs": kwargs}, default_flow_style=True, sort_keys=False,
                                   width=10_000).strip()


def _round(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 4)


def _plain(value: str, kind: ColumnType):
    """``--positive`` as the target's type (``1`` for an int column, ``bad`` for text)."""
    if kind is ColumnType.INT:
        return int(value)
    if kind is ColumnType.DOUBLE:
        return float(value)
    return value
