"""Land and validate: the Great Expectations gate between the raw zone and the clean tables.

Each source's raw partition for a date is checked against a suite built from two parts:
rules derived from the spec (exact column set, column types, non-null and unique keys)
and the use case's own expectation file (ranges, allowed categories, row counts, ...).
A partition that passes is copied to the clean table; one that fails is written to the
quarantine area (with the validation report beside it, never deleted), its clean
partition is removed, and :class:`DataValidationError` names every failed column and rule.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import yaml

from pipelines.core import lineage
from pipelines.core.errors import FinalRefusal
from pipelines.core.lake import (Lake, drop_partition, ds, partition_files, partition_rows, read_files,
                                 replace_partition, write_json)
from pipelines.core.spec import SourceKind

log = logging.getLogger(__name__)
# GX logs every registered function at INFO while importing; task logs are read by people.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

PANDAS_TYPES = {
    "string": ["object", "str", "string", "StringDtype"],
    "timestamp": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"],
    "date": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"],
    # GX matches pandas' nullable types by their class names (what ingest writes for int columns)
    "int": ["int64", "int32", "Int64Dtype", "Int32Dtype"],
    "double": ["float64", "float32", "Float64Dtype"],
    "bool": ["bool", "BooleanDtype"],
}


class DataValidationError(FinalRefusal, RuntimeError):
    """A raw partition broke one or more rules; the message names each column and rule."""

    def __init__(self, message: str, reports: list["SourceReport"]):
        super().__init__(message)
        self.reports = reports


@dataclass
class RuleFailure:
    """One failed expectation, readable on its own."""

    rule: str
    column: str | None
    detail: str

    def __str__(self) -> str:
        where = f"column '{self.column}'" if self.column else "table"
        return f"{where}: {self.rule} failed: {self.detail}"


@dataclass
class SourceReport:
    """Outcome of validating one source's partition for one date."""

    source: str
    ds: str
    rows: int
    success: bool
    failures: list[RuleFailure] = field(default_factory=list)
    quarantined_to: str | None = None

    def summary(self) -> str:
        if self.success:
            return f"{self.source} {self.ds}: {self.rows} rows passed"
        lines = [f"{self.source} {self.ds}: {len(self.failures)} rule(s) failed on {self.rows} rows"
                 f" (quarantined to {self.quarantined_to})"]
        lines += [f"  - {f}" for f in self.failures]
        return "\n".join(lines)


def load_rules(spec) -> dict[str, list[dict[str, Any]]]:
    """The use case's expectation file: source name -> list of {type, kwargs}."""
    path = spec.expectations_path
    rules = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(rules) - set(spec.sources))
    if unknown:
        raise ValueError(f"{path}: rules for unknown source(s) {unknown}")
    return rules


def build_suite(spec, source: str, rules: dict[str, list[dict[str, Any]]], part: str = "all"):
    """The GX expectation suite for one source: spec-derived rules, then the file's rules. ``part``:
    every rule (``all``), only those judged row by row (``rows``), or only the others (``whole``);
    see :func:`judged_row_by_row`."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=f"{spec.name}.{source}" + ("" if part == "all" else f".{part}"))
    for expectation in source_expectations(spec, source, rules):
        if part == "all" or judged_row_by_row(expectation) == (part == "rows"):
            suite.add_expectation(expectation)
    return suite


def source_expectations(spec, source: str, rules: dict[str, list[dict[str, Any]]]) -> list:
    """The expectations of one source, new objects on every call: spec-derived, then the file's."""
    import great_expectations.expectations as gxe

    src = spec.source(source)
    found = [gxe.ExpectTableColumnsToMatchSet(column_set=list(src.columns), exact_match=True)]
    found += [gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=PANDAS_TYPES[kind])
              for column, kind in src.columns.items()]
    # a source that always delivers has at least min_rows rows a day; map rules pass on empty data
    found.append(gxe.ExpectTableRowCountToBeBetween(min_value=src.min_rows))
    found += [gxe.ExpectColumnValuesToNotBeNull(column=column) for column in src.key]
    found.append(gxe.ExpectColumnValuesToBeUnique(column=src.key[0]) if len(src.key) == 1
                 else gxe.ExpectCompoundColumnsToBeUnique(column_list=list(src.key)))
    for rule in rules.get(source, []):
        try:
            cls = getattr(gxe, rule["type"])
        except AttributeError:
            raise ValueError(f"{spec.expectations_path}: {source}: unknown expectation {rule['type']!r}") from None
        found.append(cls(**rule.get("kwargs", {})))
    return found


# Rules on a partition's schema: each slice of it has the same columns and types
SCHEMA_RULES = {"expect_table_columns_to_match_set", "expect_table_columns_to_match_ordered_list",
                "expect_column_to_exist", "expect_table_column_count_to_equal",
                "expect_table_column_count_to_be_between"}
# Map rules that still compare rows with each other
ACROSS_ROWS = {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"}
CHUNK_ROWS = 2_000_000   # a partition above this is checked in slices (see PartitionValidator.check_table)


def judged_row_by_row(expectation) -> bool:
    """Whether an expectation's outcome on a table is the sum of its outcomes on slices of it:
    a rule on the schema, or a map rule (each row judged alone) that allows no unexpected row
    (``mostly`` below 1 is a share of the whole table, and uniqueness compares rows)."""
    from great_expectations.expectations.expectation import (ColumnMapExpectation, ColumnPairMapExpectation,
                                                             MulticolumnMapExpectation)

    kind = expectation.expectation_type
    if kind in SCHEMA_RULES:
        return True
    row_map = isinstance(expectation, (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation))
    return row_map and kind not in ACROSS_ROWS and (getattr(expectation, "mostly", 1) or 1) >= 1


def _columns_of(expectation) -> list[str]:
    """The columns an expectation reads (none for a rule on the whole table, such as its row count)."""
    named = [getattr(expectation, key, None) for key in ("column", "column_A", "column_B")]
    return [c for c in named if isinstance(c, str)] + list(getattr(expectation, "column_list", None) or [])


def _rule_text(cfg) -> str:
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in {"batch_id", "column", "result_format"}}
    return cfg.type + (f"({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "")


def _expectation_key(kind: str, kwargs: dict) -> str:
    return kind + json.dumps({k: v for k, v in kwargs.items() if k not in {"batch_id", "result_format"}},
                             sort_keys=True, default=str)


def _rule_key(result) -> str:
    return _expectation_key(result.expectation_config.type, result.expectation_config.kwargs)


def _merge_slices(results: list) -> RuleFailure:
    """One failure from the results of a row-by-row rule on each slice of a partition (in order):
    the unexpected rows add up, and the examples are the first ones, as on the whole partition."""
    failed = [r for r in results if not r.success]
    counted = [r.result or {} for r in results if "unexpected_count" in (r.result or {})]
    if not counted or len(counted) != len(results):
        return _describe(failed[0])
    unexpected = sum(res["unexpected_count"] for res in counted)
    rows = sum(res.get("element_count") or 0 for res in counted)
    sample = [v for res in counted for v in (res.get("partial_unexpected_list") or [])][:3]
    cfg = failed[0].expectation_config
    return RuleFailure(_rule_text(cfg), cfg.kwargs.get("column"), _unexpected_text(unexpected, rows, sample))


def _unexpected_text(unexpected: int, rows, sample: list) -> str:
    detail = f"{unexpected} of {rows} rows unexpected"
    if sample:   # plain values (numpy scalars print as np.int64(0))
        detail += f", e.g. {[v.item() if hasattr(v, 'item') else v for v in sample[:3]]}"
    return detail


def _describe(result) -> RuleFailure:
    """Turn one failed GX result into a sentence naming the column and the rule."""
    cfg = result.expectation_config
    rule = _rule_text(cfg)
    column = cfg.kwargs.get("column")
    res = result.result or {}
    if "unexpected_count" in res:
        detail = _unexpected_text(res["unexpected_count"], res.get("element_count"),
                                  res.get("partial_unexpected_list") or [])
    elif cfg.type == "expect_table_columns_to_match_set":
        mismatch = (res.get("details") or {}).get("mismatched") or {}
        parts = [f"{k} columns {v}" for k, v in mismatch.items()]
        detail = "; ".join(parts) or f"observed {res.get('observed_value')}"
    elif "observed_value" in res:
        detail = f"observed {res['observed_value']!r}"
    else:
        detail = "could not be evaluated (is the column missing?)"
    return RuleFailure(rule=rule, column=column, detail=detail)


def frame_for_checks(table):
    """A partition as the pandas frame GX checks: text as pandas' string dtype, not ``object``.
    An Arrow column has one type, so GX's type rule is decided by the column's dtype; on an
    ``object`` column GX instead tests every value's Python type (two fifths of a partition's
    validation time)."""
    import pyarrow as pa

    return table.to_pandas(date_as_object=False, types_mapper={pa.string(): pd.StringDtype(),
                                                               pa.large_string(): pd.StringDtype()}.get)


def _skip_batch_fingerprints() -> None:
    """GX fingerprints every in-memory batch under 1 GB (an md5 over pandas' hash of every row) for
    batch metadata this project does not use; on a partition that is half of the validation
    time, and batches above 1 GB are never fingerprinted anyway."""
    from great_expectations.execution_engine import pandas_execution_engine

    pandas_execution_engine.HASH_THRESHOLD = 0


class PartitionValidator:
    """Validates raw partitions of one use case; holds one ephemeral GX context.

    A partition of more than ``chunk_rows`` rows is checked in slices, so its pandas copy never
    exists whole: the rules judged row by row run on each slice and their unexpected rows add up;
    the others (row counts, unique keys, aggregates, ``mostly``) run once on a frame of only the
    columns they read. The failures are those of checking the partition whole."""

    def __init__(self, spec, lake: Lake, chunk_rows: int = CHUNK_ROWS):
        import great_expectations as gx

        self.spec = spec
        self.lake = lake
        self.rules = load_rules(spec)
        self.chunk_rows = chunk_rows
        self.context = gx.get_context(mode="ephemeral")
        _quiet_progress_bars(self.context)
        _skip_batch_fingerprints()
        datasource = self.context.data_sources.add_pandas(name=f"{spec.name}_raw")
        self._batches = {}
        self._suites = {}
        for source in spec.sources:
            asset = datasource.add_dataframe_asset(name=source)
            self._batches[source] = asset.add_batch_definition_whole_dataframe(f"{source}_partition")
            for part in ("all", "rows", "whole"):
                self._suites[source, part] = self.context.suites.add(build_suite(spec, source, self.rules, part))

    def check(self, source: str, frame: pd.DataFrame) -> list[RuleFailure]:
        """Failures of ``frame`` against the source's suite (empty when it passes), in the suite's order."""
        return self._failures(source, {}, {_rule_key(r): r for r in self._results(source, "all", frame)})

    def check_table(self, source: str, table) -> list[RuleFailure]:
        """Failures of the Arrow ``table`` against the source's suite: whole, or in slices when it
        has more than ``chunk_rows`` rows (see the class's doc)."""
        if table.num_rows <= self.chunk_rows:
            return self.check(source, frame_for_checks(table))
        sliced: dict[str, list] = {}
        for start in range(0, table.num_rows, self.chunk_rows):
            for result in self._results(source, "rows", frame_for_checks(table.slice(start, self.chunk_rows))):
                sliced.setdefault(_rule_key(result), []).append(result)
        whole_suite = self._suites[source, "whole"]
        read = {c for e in whole_suite.expectations for c in _columns_of(e)} & set(table.column_names)
        columns = [c for c in table.column_names if c in read] or table.column_names[:1]
        whole = {_rule_key(r): r for r in self._results(source, "whole", frame_for_checks(table.select(columns)))}
        return self._failures(source, sliced, whole)

    def _failures(self, source: str, sliced: dict[str, list], whole: dict) -> list[RuleFailure]:
        """The failed rules, in the order of the source's suite, from the results of each rule on
        slices (``sliced``) or on the whole partition (``whole``), keyed by :func:`_rule_key`."""
        failures = []
        for expectation in self._suites[source, "all"].expectations:
            key = _expectation_key(expectation.expectation_type, expectation.configuration.kwargs)
            if key in sliced and not all(r.success for r in sliced[key]):
                failures.append(_merge_slices(sliced[key]))
            elif key in whole and not whole[key].success:
                failures.append(_describe(whole[key]))
        return failures

    def _results(self, source: str, part: str, frame: pd.DataFrame) -> list:
        batch = self._batches[source].get_batch(batch_parameters={"dataframe": frame})
        return batch.validate(self._suites[source, part]).results

    def validate(self, source: str, date: dt.date | str, attempt: str,
                 allow_empty_redelivery: bool = False) -> SourceReport:
        """Validate one raw partition; land it in clean or quarantine it.

        An unreadable file is a failed rule like any other (quarantined as delivered). An empty
        delivery, or one with more than the source's ``max_shrink`` share fewer rows, never replaces
        a clean partition that has rows, unless explicitly allowed: it is quarantined and the
        clean partition is kept (a late one-row file must not replace a day's rows).
        """
        raw_path = Lake.partition(self.lake.raw(self.spec.name, source), date)
        if not raw_path.exists() and self.spec.source(source).kind == SourceKind.SNAPSHOT:
            log.info("%s %s: no new snapshot of %s; features use the newest earlier one",
                     self.spec.name, ds(date), source)
            return SourceReport(source, ds(date), 0, True, [])
        if not raw_path.exists():
            return SourceReport(source, ds(date), 0, False,
                                [RuleFailure("raw partition present", None, f"nothing delivered at {raw_path}")])
        files = partition_files(self.lake.raw(self.spec.name, source), date)
        clean = self.lake.clean(self.spec.name, source)
        try:
            table = read_files(files)
        except Exception as exc:  # truncated or corrupt Parquet: retrying cannot help
            report = SourceReport(source, ds(date), 0, False, [RuleFailure(
                "readable Parquet", None, f"cannot read {', '.join(Path(f).name for f in files)}: "
                                          f"{type(exc).__name__}: {exc}")])
            self._quarantine(report, date, attempt, files=files)
            drop_partition(clean, date)
            return report
        failures = self.check_table(source, table)
        kept = partition_rows(clean, date)
        limit = self.spec.source(source).max_shrink
        shrinks = (not failures and kept > 0 and not allow_empty_redelivery
                   and (table.num_rows == 0 or table.num_rows < kept * (1 - limit)))
        if shrinks:
            what = ("an empty delivery" if table.num_rows == 0 else
                    f"a delivery of {table.num_rows} rows (more than {limit:.0%} fewer: max_shrink)")
            failures = [RuleFailure("redelivery keeps rows", None,
                                    f"{what} would replace the clean partition's {kept} rows; "
                                    f"the clean partition is kept (override: `mlops validate "
                                    f"{self.spec.name} {ds(date)} --allow-empty-redelivery`)")]
        report = SourceReport(source, ds(date), table.num_rows, not failures, failures)
        if failures:
            self._quarantine(report, date, attempt, table=table)
            if not shrinks and drop_partition(clean, date):
                log.warning("removed clean partition %s of %s: its new delivery failed validation", ds(date), source)
        else:
            replace_partition(clean, date, table)
        return report

    def _quarantine(self, report: SourceReport, date, attempt: str, table=None, files: list[str] = ()) -> None:
        """Keep the rejected delivery (as delivered) with its validation report; never deleted."""
        qdir = Lake.partition(self.lake.quarantine(self.spec.name, report.source), date) / f"attempt={attempt}"
        qdir.mkdir(parents=True, exist_ok=True)
        if table is not None:
            pq.write_table(table, qdir / "data.parquet")
        for path in files:
            shutil.copy2(path, qdir / Path(path).name)
        report.quarantined_to = str(qdir)
        write_json(qdir / "validation.json", asdict(report))
        lineage.wrote(lineage.partition(self.lake.quarantine(self.spec.name, report.source), date))


def _quiet_progress_bars(context) -> None:
    """Task logs are read by people: no per-metric progress bars."""
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # pragma: no cover - cosmetic only
        pass


def validate_day(spec, lake: Lake, date: dt.date | str, run_id: str | None = None,
                 allow_empty_redelivery: bool = False) -> dict[str, int]:
    """Validate every source of ``date``; returns clean row counts or raises DataValidationError.

    Each attempt quarantines into its own folder (UTC time, then the run id if given), so a
    rerun of the same run never overwrites an earlier rejected delivery.
    """
    attempt = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    if run_id:
        attempt += "__" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    validator = PartitionValidator(spec, lake)
    reports = [validator.validate(source, date, attempt, allow_empty_redelivery) for source in spec.sources]
    for report in reports:
        (log.info if report.success else log.error)("%s", report.summary())
    failed = [r for r in reports if not r.success]
    if failed:
        message = f"{spec.name}: raw data for {ds(date)} failed validation\n" + "\n".join(r.summary() for r in failed)
        raise DataValidationError(message, reports)
    return {r.source: r.rows for r in reports}
