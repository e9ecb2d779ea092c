"""Point-in-time features on Spark.

Features for date D describe each entity as it was at the start of D: they use only
events with a timestamp strictly before D (and clean partitions before D), so a model
trained on them never sees the future. Three kinds of feature group, all from the spec:

* ``window_aggregates``: count, sum, avg, count_distinct and share-of-value over
  trailing windows of N days of an event source;
* ``recency``: days since the entity's last event (capped);
* ``attributes``: the latest value of snapshot columns before D, plus ``days_since``
  a timestamp column.

The output has one row per entity of the population source, written as the ``ds=D``
partition of the feature table (replaced whole on every run).
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from pipelines.core import lineage
from pipelines.core.errors import FinalRefusal, MissingData
from pipelines.core.lake import Lake, ds, list_partitions, partition_rows
from pipelines.core.spark import column, table_exists
from pipelines.core.spec import FeatureKind, SourceKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureColumns:
    """Names of the model inputs a spec defines, split by kind."""

    numeric: list[str]
    categorical: list[str]

    @property
    def all(self) -> list[str]:
        return self.numeric + self.categorical


def feature_columns(spec) -> FeatureColumns:
    """The feature names a spec produces, in table order (no Spark needed)."""
    numeric: list[str] = []
    categorical: list[str] = []
    for group in spec.features.groups:
        if group.kind == FeatureKind.WINDOW_AGGREGATES:
            for window in group.windows_days:
                numeric += [f"{agg.name}_{window}d" for agg in group.aggregates]
        elif group.kind == FeatureKind.RECENCY:
            numeric.append(group.name)
        else:
            source_types = spec.source(group.source).columns
            for col in group.columns:
                (categorical if source_types[col] == "string" else numeric).append(col)
            numeric += list(group.days_since)
    return FeatureColumns(numeric=numeric, categorical=categorical)


def _read_source(spark, lake: Lake, spec, source: str, date: dt.date, lookback: int | None):
    """Clean rows of ``source`` known before ``date``: events strictly before it (within ``lookback``
    days if given); for a snapshot, its newest partition up to ``date``."""
    from pyspark.sql import functions as F

    path = lake.clean(spec.name, source)
    if not table_exists(path):
        raise MissingData(f"no clean data for source {source!r} at {path}; validate raw partitions first")
    frame = spark.read.parquet(str(path))
    if spec.source(source).kind == SourceKind.SNAPSHOT:
        known = [p for p in list_partitions(path) if p <= ds(date)]
        lineage.read(*(lineage.partition(path, day) for day in known[-1:]))
        return frame.where(F.col("ds") == (known[-1] if known else ""))
    cond = F.col("ds") < ds(date)
    if lookback is not None:
        cond = cond & (F.col("ds") >= ds(date - dt.timedelta(days=lookback)))
    first = ds(date - dt.timedelta(days=lookback)) if lookback is not None else ""
    lineage.read(*(lineage.partition(path, day) for day in list_partitions(path) if first <= day < ds(date)))
    ts = spec.source(source).timestamp
    midnight = dt.datetime.combine(date, dt.time())
    return frame.where(cond).where(column(ts) < F.lit(midnight))




def _event_aggregates(group, ts: str, date: dt.date) -> tuple[list, dict[str, float]]:
    """Aggregate expressions of one event-source group, and the fill value of each feature."""
    from pyspark.sql import functions as F

    midnight = dt.datetime.combine(date, dt.time())
    if group.kind == FeatureKind.RECENCY:
        days = (F.unix_timestamp(F.lit(midnight)) - F.unix_timestamp(F.max(column(ts)))) / 86400.0
        return [days.cast("double").alias(group.name)], {group.name: float(group.cap_days)}
    exprs, fill = [], {}
    for window in group.windows_days:
        inside = column(ts) >= F.lit(midnight - dt.timedelta(days=window))
        for agg in group.aggregates:
            name, fn, col = f"{agg.name}_{window}d", agg.fn, agg.column
            if fn == "count":
                expr = F.count(F.when(inside, F.lit(1)))
            elif fn == "sum":
                expr = F.sum(F.when(inside, column(col)))
            elif fn == "avg":
                expr = F.avg(F.when(inside, column(col)))
            elif fn == "count_distinct":
                # the size of the set, not countDistinct: Spark plans each distinct aggregate as an
                # Expand of every row and a second aggregation (four times the rows for three windows)
                expr = F.size(F.collect_set(F.when(inside, column(col))))
            elif fn == "share":
                hits = F.count(F.when(inside & (column(col) == F.lit(agg.value)), F.lit(1)))
                expr = F.try_divide(hits, F.count(F.when(inside, F.lit(1))))
            else:
                raise ValueError(f"feature {name}: unknown aggregate fn {fn!r}")
            exprs.append(expr.cast("double").alias(name))
            if fn in {"count", "sum", "count_distinct"}:
                fill[name] = 0.0   # no events in the window: zero, not unknown
    return exprs, fill


def _group_lookback(group) -> int:
    """Days of history one event group reads."""
    return max(list(getattr(group, "windows_days", [])) + [getattr(group, "cap_days", 0), 1])


def compute_features(spark, spec, lake: Lake, date: dt.date):
    """The feature DataFrame for ``date`` (lazy): one row per entity, plus ``ds``."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    entity = spec.entity
    midnight = dt.datetime.combine(date, dt.time())
    out = _read_source(spark, lake, spec, spec.features.population, date, None).select(column(entity)).distinct()
    fill: dict[str, float] = {}
    # one scan and one aggregation per event source, whatever the number of groups on it
    by_source: dict[str, tuple[list, int]] = {}
    for group in spec.features.groups:
        kind, source = group.kind, group.source
        if kind in {FeatureKind.WINDOW_AGGREGATES, FeatureKind.RECENCY}:
            exprs, group_fill = _event_aggregates(group, spec.source(source).timestamp, date)
            fill.update(group_fill)
            known, lookback = by_source.get(source, ([], 0))
            by_source[source] = (known + exprs, max(lookback, _group_lookback(group)))
        else:
            src = spec.source(source)
            rows = _read_source(spark, lake, spec, source, date, None)
            latest = Window.partitionBy(column(entity)).orderBy(column(src.timestamp or "ds").desc())
            rows = rows.withColumn("_rank", F.row_number().over(latest)).where("_rank = 1")
            # yes/no columns are model inputs as 0/1, like every other number
            cols = [column(c).cast("double").alias(c) if src.columns[c] == "bool" else column(c)
                    for c in group.columns]
            for name, ts_col in group.days_since.items():
                cols.append(((F.unix_timestamp(F.lit(midnight)) - F.unix_timestamp(column(ts_col))) / 86400.0)
                            .cast("double").alias(name))
            out = out.join(rows.select(column(entity), *cols), entity, "left")
    for source, (exprs, lookback) in by_source.items():
        events = _read_source(spark, lake, spec, source, date, lookback)
        out = out.join(events.groupBy(column(entity)).agg(*exprs), entity, "left")
    if fill:
        out = out.fillna({f"`{name}`" if "." in name else name: value for name, value in fill.items()})
    return out.select(*[column(c) for c in [entity, *feature_columns(spec).all]]).withColumn("ds", F.lit(ds(date)))


@dataclass(frozen=True)
class LookBackGap:
    """A day of a feature source's look-back window with no validated (clean) partition."""

    source: str
    ds: str
    state: str   # "pending": delivered, not validated yet; "rejected": quarantined; "not delivered"

    @property
    def settled(self) -> bool:
        """Whether waiting can help (False: validation of that day may still be running)."""
        return self.state != "pending"

    def __str__(self) -> str:
        return f"{self.source} {self.ds} ({self.state})"


class LookBackIncomplete(FinalRefusal, RuntimeError):
    """Features for a date would be computed from an incomplete look-back window."""

    def __init__(self, message: str, gaps: list[LookBackGap]):
        super().__init__(message)
        self.gaps = gaps


def _source_lookback(spec, source: str) -> int | None:
    """Days of history features read from ``source`` (None: all of it)."""
    days = [_group_lookback(g) for g in spec.features.groups
            if g.source == source and g.kind != FeatureKind.ATTRIBUTES]
    snapshot = source == spec.features.population or any(
        g.source == source and g.kind == FeatureKind.ATTRIBUTES for g in spec.features.groups)
    return None if snapshot or not days else max(days)


def look_back_gaps(spec, lake: Lake, date: dt.date) -> list[LookBackGap]:
    """Days in the look-back window of ``date`` (from the spec's start on) whose clean partition is
    missing for a feature source, except the days the spec declares as known gaps."""
    allowed = {ds(d) for d in spec.features.allowed_missing_days}
    gaps = []
    for source in spec.feature_sources():
        if spec.source(source).kind == SourceKind.SNAPSHOT:
            gaps += _snapshot_gap(spec, lake, source, date, allowed)
            continue
        lookback = _source_lookback(spec, source)
        first = spec.start if lookback is None else max(spec.start, date - dt.timedelta(days=lookback))
        clean = set(list_partitions(lake.clean(spec.name, source)))
        raw = set(list_partitions(lake.raw(spec.name, source)))
        rejected = set(list_partitions(lake.quarantine(spec.name, source)))
        for i in range((date - first).days):
            day = ds(first + dt.timedelta(days=i))
            if day in clean or day in allowed:
                continue
            state = "rejected" if day in rejected else ("pending" if day in raw else "not delivered")
            gaps.append(LookBackGap(source, day, state))
    return gaps


def _snapshot_gap(spec, lake: Lake, source: str, date: dt.date, allowed: set[str]) -> list[LookBackGap]:
    """A snapshot's newest delivery up to ``date`` must be validated (an older one would be stale)."""
    raw = [p for p in list_partitions(lake.raw(spec.name, source)) if p <= ds(date)]
    if not raw:
        return [LookBackGap(source, ds(date), "not delivered")]
    clean = set(list_partitions(lake.clean(spec.name, source)))
    newest = raw[-1]
    if newest in clean or newest in allowed:
        return []
    rejected = newest in set(list_partitions(lake.quarantine(spec.name, source)))
    return [LookBackGap(source, newest, "rejected" if rejected else "pending")]


def require_complete_look_back(spec, lake: Lake, date: dt.date) -> None:
    """Raise :class:`LookBackIncomplete` naming every missing day of ``date``'s look-back window."""
    gaps = look_back_gaps(spec, lake, date)
    if gaps:
        shown = ", ".join(map(str, gaps[:10])) + (f" and {len(gaps) - 10} more" if len(gaps) > 10 else "")
        raise LookBackIncomplete(
            f"{spec.name}: features for {ds(date)} need every day of their look-back window; no validated "
            f"partition for {shown}. Redeliver and validate those days, or declare them in the spec's "
            f"features.allowed_missing_days.", gaps)


def build_features(spark, spec, lake: Lake, date: dt.date) -> int:
    """Compute and write the ``ds=date`` feature partition (replaced whole); returns its row count.

    On the first day of data there is no history yet: nothing is written and 0 is returned.
    Any other day refuses to run (:class:`LookBackIncomplete`) when a day of its look-back
    window has no validated partition: features from a partial window would be silently wrong.
    """
    table = lake.features(spec.name)
    population = spec.features.population
    snapshot = spec.source(population).kind == SourceKind.SNAPSHOT
    if not any(p <= ds(date) if snapshot else p < ds(date) for p in list_partitions(lake.clean(spec.name, population))):
        log.warning("%s: no clean %s partition before %s: no population yet, no features written",
                    spec.name, population, date)
        return 0
    require_complete_look_back(spec, lake, date)
    compute_features(spark, spec, lake, date).write.mode("overwrite").partitionBy("ds").parquet(str(table))
    rows = partition_rows(table, date)
    lineage.wrote(lineage.partition(table, date))
    log.info("%s: wrote %d feature rows for %s", spec.name, rows, date)
    return rows
