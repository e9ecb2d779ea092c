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
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipelines.core.errors import Refusal
from pipelines.core.spec import USE_CASE_NAME, ColumnType, CsvFormat, TaskType, check_spec
from pipelines.data.ingest import (FALSE_WORDS, NA_LIKE, SAMPLE_BYTES, TRUE_WORDS, cast_column, expand, read_file,
                                   sniff_delimiter)

MAX_CATEGORIES = 20          # a text column with at most this many values gets a value set
MAX_TEXT_LEVELS = 100        # a text column with more distinct values is free text, not a feature
RANGE_MARGIN = 0.1           # ranges widened by this share of the observed span
ID_HINTS = ("id", "key", "uuid", "number", "no", "rownames", "code")
ROW_ID = "row_id"            # the generated entity column of a table that has none
# texts read as missing wherever they stand; NA_LIKE's looser ones only where the rest is numbers
STRICT_NA = ("NA", "N/A", "n/a", "#N/A", "NaN", "null", "NULL")
POSITIVE_WORDS = {"yes", "y", "true", "t", "1", "positive", "pos"}


class InitError(Refusal, ValueError):
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
        name = self.name.lower().replace(".", "_").replace(" ", "_")
        return any(name == h or name.endswith("_" + h) or self.name.endswith(h.title()) or self.name.endswith(h.upper())
                   for h in ID_HINTS)

    @property
    def unique(self) -> bool:
        return self.nulls == 0 and self.distinct == self.rows

    @property
    def identifier(self) -> bool:
        """Unique text, unique whole numbers named like an id or counting rows: never a feature."""
        return self.unique and (self.kind is ColumnType.STRING or self.named_like_id or self.sequential)

    @property
    def sequential(self) -> bool:
        """Whole numbers that number the rows: 1..n (or 0..n-1) in some order."""
        return (self.kind is ColumnType.INT and self.low is not None and self.high is not None
                and self.high - self.low == self.rows - 1)

    @property
    def free_text(self) -> bool:
        """Text with too many distinct values to one-hot encode: names, comments, case numbers
        (more than MAX_TEXT_LEVELS, or nearly one per row)."""
        return self.kind is ColumnType.STRING and (
            self.distinct > MAX_TEXT_LEVELS or (self.distinct > MAX_CATEGORIES and self.distinct > 0.9 * self.rows))

    @property
    def flag(self) -> bool:
        """A 0/1 number column."""
        return self.kind is ColumnType.INT and self.values is not None and set(self.values) <= {0, 1}


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
        if kind is ColumnType.BOOL and not present.astype(str).str.strip().str.lower().isin(
                {"true", "false", "yes", "no", "t", "f", "y", "n"}).all():
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
        if kind in (ColumnType.STRING, ColumnType.BOOL, ColumnType.INT) and distinct <= MAX_CATEGORIES:
            values = sorted(present.unique().tolist(), key=str)
            values = [int(v) for v in values] if kind is ColumnType.INT else values
        if kind in (ColumnType.INT, ColumnType.DOUBLE) and len(present):
            finite = present[np.isfinite(present.astype(float))]
            low, high = (float(finite.min()), float(finite.max())) if len(finite) else (None, None)
        out[name] = ColumnProfile(name, kind, int(typed.isna().sum()), distinct, len(frame), values, low, high)
    return out


def guess_entity(profiles: dict[str, ColumnProfile], exclude: set[str]) -> str | None:
    """The column that identifies an entity: unique, never missing, and not a measurement (text,
    whole numbers named like an id, or numbering the rows); None when no column is."""
    def rank(p: ColumnProfile) -> int:
        return 3 * p.named_like_id + 2 * (p.kind is ColumnType.STRING) + p.sequential

    candidates = [p for p in profiles.values() if p.name not in exclude and p.identifier]
    return max(candidates, key=rank).name if candidates else None


def csv_format(path: Path) -> CsvFormat:
    """The delimiter and encoding of a CSV file, as a first guess from its first bytes."""
    head = path.open("rb").read(SAMPLE_BYTES)
    encoding = "utf-8"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(head) == SAMPLE_BYTES and exc.start >= len(head) - 4:
            text = head[:exc.start].decode("utf-8")
        else:
            encoding, text = "cp1252", head.decode("cp1252", errors="replace")
    return CsvFormat(delimiter=sniff_delimiter(text), encoding=encoding)


def missing_tokens(frame: pd.DataFrame) -> list[str]:
    """Texts of the frame that stand for a missing value: NA and its kin wherever they are, and
    looser ones (``-``, ``?``, ``.``) in columns whose other values are all numbers."""
    found: set[str] = set()
    for name in frame.columns:
        values = frame[name].dropna().astype(str).str.strip()
        tokens = values[values.isin(NA_LIKE)]
        if tokens.empty:
            continue
        rest = values[~values.isin(NA_LIKE)]
        numeric = rest.empty or pd.to_numeric(rest, errors="coerce").notna().all()
        found |= {v for v in tokens.unique() if v in STRICT_NA or numeric}
    return sorted(found)


def read_source(location: str) -> tuple[pd.DataFrame, CsvFormat | None]:
    """A source's files as text and the CSV format drafted for them (None for Parquet)."""
    files = expand(location)
    csv_files = [p for p in files if p.suffix.lower() == ".csv"]
    fmt = csv_format(csv_files[0]) if csv_files else None
    frame = pd.concat([read_file(p, fmt) for p in files], ignore_index=True)
    tokens = missing_tokens(frame)
    if tokens and fmt is not None:
        fmt = fmt.model_copy(update={"na_values": tokens})
        frame = pd.concat([read_file(p, fmt) for p in files], ignore_index=True)
    return frame, fmt


def binary_positive(target: str, labels: ColumnProfile, positive: str | None):
    """The spec's ``label.positive`` for a binary target, in the target's stored type: the user's
    spelling matched to the file's (``--positive Yes`` for a yes/no column), or the value that is
    conventionally positive when ``positive`` is None (yes, y, true, 1); None for a 0/1 column."""
    values = labels.values
    if values is None:
        if positive is None:
            raise InitError(f"--target {target} has {labels.distinct} distinct values; say which is the positive "
                            f"class with --positive (or use --task multiclass / regression)")
        return _plain(positive, labels.kind)
    if labels.kind is ColumnType.BOOL:
        if positive is None:
            return True
        word = str(positive).strip().lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise InitError(f"--positive {positive}: not a value of {target} (it holds yes/no values: "
                            f"{', '.join(map(str, values))})")
        return word in TRUE_WORDS
    spelled = {str(v).strip().lower(): v for v in values}
    if positive is not None:
        match = spelled.get(str(positive).strip().lower())
        if match is None:
            raise InitError(f"--positive {positive}: not a value of {target} (values: {', '.join(map(str, values))})")
        return match
    if len(values) == 2 and set(map(str, values)) == {"0", "1"}:
        return None   # already 0/1
    conventional = [v for word, v in spelled.items() if word in POSITIVE_WORDS]
    if len(values) == 2 and len(conventional) == 1:
        return conventional[0]
    raise InitError(f"--target {target} holds {', '.join(map(str, values))}; say which is the positive class "
                    f"with --positive")


@dataclass(frozen=True)
class Profiled:
    """What ``mlops init`` learnt of the sources: each one's frame sample, CSV format and profile."""

    frames: dict
    formats: dict
    profiles: dict[str, dict[str, ColumnProfile]]


def draft(use_case: str, sources: dict[str, str], target: str, positive: str | None = None,
          timestamp: str | None = None, entity: str | None = None, task: TaskType = TaskType.BINARY,
          today: dt.date | None = None) -> tuple[str, str]:
    """The spec's and the expectation suite's text for the given sources."""
    if positive is not None and task is not TaskType.BINARY:
        raise InitError(f"--positive names the positive class of a binary task; a {task.value} task has none")
    read = {name: read_source(path) for name, path in sources.items()}
    seen = Profiled({n: f for n, (f, _) in read.items()}, {n: fmt for n, (_, fmt) in read.items()},
                    {n: profile(f) for n, (f, _) in read.items()})
    profiles = seen.profiles
    holder = [n for n, cols in profiles.items() if target in cols]
    if not holder:
        raise InitError(f"--target {target}: no source has that column (columns: "
                        f"{ {n: list(c) for n, c in profiles.items()} })")
    label_source = holder[0]
    entity, generated = _entity(profiles, entity, target, timestamp)
    labels = profiles[label_source][target]
    label_values = cast_column(seen.frames[label_source][target], labels.kind).dropna()
    binary = _binary_label(target, labels, positive) if task is TaskType.BINARY else {}
    classes = _label_classes(task, target, labels, label_values)
    if timestamp and not any(timestamp in cols for cols in profiles.values()):
        raise InitError(f"--timestamp {timestamp}: no source has that column")
    spec_sources, features, left_out = _source_sections(seen, entity, generated, target, timestamp)
    events_label = bool(timestamp and timestamp in profiles[label_source])
    label = {"source": label_source, "target": target, "horizon_days": 0,
             **({"date_column": timestamp} if events_label else {}), **binary,
             **({"values": {value: i for i, value in enumerate(classes)}} if task is TaskType.MULTICLASS else {})}
    entity_note = (f"entity: no column identifies a row, so ingest numbers the rows of each file ({ROW_ID}, from 1):\n"
                   f"a row keeps its entity only while files keep their order. Give --entity COLUMN if one does."
                   if generated else f"entity: {entity}, unique in every row (override: --entity COLUMN).")
    start = (today or dt.date.today()).isoformat()
    head = _block(f"Use case {use_case}, drafted by `mlops init` from {', '.join(sources.values())} on {start}.\n"
                  f"{entity_note}\nRead every section, then run `mlops check {use_case}`.",
                  {"name": use_case, "description": f"{use_case}: predict {target}", "start_date": start,
                   "entity": entity})
    body = [head, *_data_blocks(spec_sources, next(iter(profiles)), features, left_out),
            *_model_blocks(use_case, task, label, label_values, len(classes), events_label,
                           any(source["kind"] == "events" for source in spec_sources.values()))]
    return "\n".join(body), draft_expectations(profiles, {entity})


def _entity(profiles: dict, entity: str | None, target: str, timestamp: str | None) -> tuple[str, bool]:
    """The entity column (given, or guessed from the first source), and whether ingest must number
    the rows instead (no column identifies a row)."""
    if entity is None:
        entity = guess_entity(next(iter(profiles.values())), {target, timestamp or ""})
        if entity is None:
            return ROW_ID, True
    for name, cols in profiles.items():
        if entity not in cols:
            raise InitError(f"--entity {entity}: source {name} has no such column")
    return entity, False


def _label_classes(task: TaskType, target: str, labels: ColumnProfile, label_values) -> list:
    """A multiclass target's classes (3 to MAX_CATEGORIES of them); a regression's target is a number."""
    classes = sorted(label_values.unique().tolist(), key=str) if task is TaskType.MULTICLASS else []
    if task is TaskType.MULTICLASS and not 3 <= len(classes) <= MAX_CATEGORIES:
        raise InitError(f"--task multiclass: {target} has {len(classes)} distinct values; a multiclass target "
                        f"has 3 to {MAX_CATEGORIES} (binary: --task binary; a quantity: --task regression)")
    if task is TaskType.REGRESSION and labels.kind not in (ColumnType.INT, ColumnType.DOUBLE):
        raise InitError(f"--task regression: {target} holds {labels.kind.value} values; a regression target is a number")
    return classes


def _source_sections(seen: Profiled, entity: str, generated: bool, target: str,
                     timestamp: str | None) -> tuple[dict, list, list]:
    """The spec's sources, the feature groups (a source's usable columns) and the columns left out."""
    spec_sources, features, left_out = {}, [], []
    for name, cols in seen.profiles.items():
        events = timestamp in cols if timestamp else False
        columns = {c: p.kind.value for c, p in cols.items()}
        csv = _csv_section(seen.formats[name])
        spec_sources[name] = {
            **({"kind": "events", "timestamp": timestamp, "partition_by": timestamp} if events else {"kind": "snapshot"}),
            "key": [entity] if not events else [entity, timestamp],
            "columns": {ROW_ID: "int", **columns} if generated else columns,
            **({"row_id": ROW_ID} if generated else {}),
            **({"csv": csv} if csv else {}),
        }
        usable = []
        for c, p in cols.items():
            if c in (entity, target, timestamp) or c in features:
                continue
            if p.identifier or p.free_text or p.distinct <= 1 or p.kind is ColumnType.TIMESTAMP:
                left_out.append(c)
            else:
                usable.append(c)
        if usable:
            features.append({"kind": "attributes", "source": name, "columns": usable})
    if not features:
        raise InitError("no column is left to use as a feature (the target, the entity, timestamps and "
                        "identifiers are excluded)")
    return spec_sources, features, left_out


def _data_blocks(spec_sources: dict, population: str, features: list, left_out: list) -> list[str]:
    """The spec's sources, expectations and features, each with its notes."""
    excluded = f"\nLeft out (identifiers, free text, constants, timestamps): {', '.join(left_out)}." if left_out else ""
    return [
        _block("Raw sources: column types as inferred (string, int, double, bool, date, timestamp).\n"
               "snapshot: a partition is the whole table as known on its `mlops ingest --as-of` date;\n"
               "events: rows partition by the date of their timestamp.\n"
               "csv: the delimiter, the encoding and the texts that mean missing (besides an empty field)\n"
               "as found in the file; any other text in a number column is refused at ingest.",
               {"sources": spec_sources}),
        _block("Great Expectations rules per source, beside the ones the spec implies (columns, types, keys).",
               {"expectations": "expectations.yaml"}),
        _block("Features: each entity's latest values. Excluded: the target, the entity, timestamps and\n"
               "identifier-like columns (unique per row). Text columns are one-hot encoded, yes/no columns\n"
               "are 0/1, missing values imputed by the model pipeline." + excluded,
               {"features": {"population": population, "groups": features}}),
    ]


def _model_blocks(use_case: str, task: TaskType, label: dict, label_values, classes: int, events_label: bool,
                  events: bool) -> list[str]:
    """The spec's label, model, training, promotion, scoring and monitoring, each with its notes."""
    return [
        _block(LABEL_NOTES[task], {"label": label}),
        _block("The model: a scikit-learn estimator (dotted path), fixed params and a grid to search.",
               {"model": {"registered_name": f"{use_case}_model", "task": task.value,
                          "estimator": ESTIMATORS[task],
                          "params": {"random_state": 0, "max_iter": 200},
                          "search_space": {"learning_rate": [0.05, 0.1], "max_leaf_nodes": [15, 31]},
                          "cv_folds": 3, **({"threshold": 0.5} if task is TaskType.BINARY else {})}}),
        _block("Training: snapshots hold out a stable share of the entities (random split) and train on each\n"
               "entity's newest labelled snapshot (snapshots: all keeps every snapshot's row, with folds\n"
               "grouped by entity); event data holds out its newest label dates (time split).",
               {"training": {"split": "time" if events_label else "random", "holdout_fraction": 0.2,
                             **({} if events_label else {"snapshots": "newest"}),
                             "window_days": 60, "holdout_days": 7, "reference_rows": 2000}}),
        _block(*promotion_section(task, label_values, classes)),
        _block(*scoring_section(events)),
        _block("Drift: Evidently's tests per column; the share of drifted columns that triggers retraining.",
               {"monitoring": {"drift_share_threshold": 0.3, "consecutive_days": 2, "cooldown_days": 7}}),
    ]


def _binary_label(target: str, labels: ColumnProfile, positive: str | None) -> dict:
    value = binary_positive(target, labels, positive)
    return {} if value is None else {"positive": value}


def _csv_section(fmt: CsvFormat | None) -> dict:
    """The source's ``csv`` section: only what differs from the defaults."""
    if fmt is None:
        return {}
    out = {}
    if fmt.delimiter and fmt.delimiter != ",":
        out["delimiter"] = fmt.delimiter
    if fmt.encoding != "utf-8":
        out["encoding"] = fmt.encoding
    if fmt.na_values:
        out["na_values"] = list(fmt.na_values)
    return out


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


def draft_expectations(profiles: dict[str, dict[str, ColumnProfile]], keys: set[str] = frozenset()) -> str:
    """Rules learnt from the data, commented; the spec already implies columns, types and keys.
    Ids get no range (a new entity's id is out of any range seen); 0/1 columns get a value set."""
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
            if name in keys or p.identifier:
                continue
            if p.values is not None and (p.kind is ColumnType.STRING or p.flag):
                lines.append(_rule("ExpectColumnValuesToBeInSet", column=name, value_set=p.values))
            elif p.low is not None and p.high is not None:
                margin = (p.high - p.low) * RANGE_MARGIN
                low, high = p.low - margin, p.high + margin
                if p.low >= 0:
                    low = max(low, 0.0)   # a quantity that was never negative stays so
                lines.append(_rule("ExpectColumnValuesToBeBetween", column=name, min_value=_round(low),
                                   max_value=_round(high)))
    return "\n".join(lines) + "\n"




def write_use_case(include: Path, use_case: str, spec_text: str, expectations_text: str, force: bool = False) -> Path:
    """Check the drafted files, then write them into ``include/<use_case>/``. A draft with problems
    is refused (InitError listing them) and nothing is written."""

    if not re.fullmatch(USE_CASE_NAME, use_case):
        raise InitError(f"use case name {use_case!r}: lower-case letters, digits and _ only, starting with a letter "
                        f"(it names DAGs, tables and models)")
    folder = include / use_case
    if (folder / "spec.yaml").exists() and not force:
        raise InitError(f"{folder / 'spec.yaml'} exists; pass --force to replace it")
    with tempfile.TemporaryDirectory(prefix=f"mlops-init-{use_case}-") as tmp:
        draft_folder = Path(tmp)
        (draft_folder / "spec.yaml").write_text(spec_text)
        (draft_folder / "expectations.yaml").write_text(expectations_text)
        problems = check_spec(draft_folder)
        if problems:
            raise InitError("the drafted spec has problems, nothing was written:\n" + "\n".join(problems))
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("expectations.yaml", "spec.yaml"):
            shutil.copyfile(draft_folder / name, folder / name)
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
