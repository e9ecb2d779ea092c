"""Features for one date: our `build_features` on Spark against the same features in DuckDB
over the same Parquet (the peer is the spec's feature groups written as one DuckDB query).

    .venv/bin/python -m bench.bench_features [--customers 20000] [--repeats 2]

The data is the churn simulator's (`--customers` is its size knob; about 0.6 transactions per
customer per day), 121 days written as clean partitions, and the features are those of the
day after: every window reads up to 120 days back. Both write their result as Parquet; the
bench checks that both outputs agree (numbers to 1e-9, text exactly) before it prints times.
Spark's session start is reported apart (a DAG pays it once per worker, not per task). Prints
both times, the ratio and the command, and appends a dated row to docs/benchmarks.md.
Timings only; no pass/fail.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

from bench.report import append_row, churn_spec, machine, median_seconds

SECTION = "## Features for one date: `build_features` on Spark against DuckDB"
INTRO = """What it compares: `pipelines.features.point_in_time.build_features` (Spark, the session already started,
writing the feature partition) against the churn spec's features as one DuckDB query over the
same clean Parquet partitions, written as Parquet (`bench/bench_features.py`: windows, recency,
latest attributes, fills). The data is the churn simulator's, 121 days, at `--customers`; the
bench checks that the two outputs agree before timing. Median of the repeats after a warm-up.

| date | machine | transactions (121 days) | entities | Spark | DuckDB | ratio Spark / DuckDB | Spark session start | command |
|---|---|---|---|---|---|---|---|---|"""


def write_clean_days(spec, lake, customers: int, days: int) -> tuple[dt.date, int]:
    """Simulated days written straight to the clean tables (as validation lands them); returns
    the feature date (the day after) and the number of transactions."""
    from pipelines.core.lake import replace_partition
    from pipelines.data.simulate import Population, config_from_spec, simulate_day

    cfg = config_from_spec(spec, customers=customers, days=days, backlog_days=0)
    cfg = dataclasses.replace(cfg, drift_start=None)
    population, transactions = Population(cfg), 0
    for date in cfg.dates():
        for source, frame in simulate_day(spec, cfg, date, population).items():
            replace_partition(lake.clean(spec.name, source), date, frame)
            transactions += len(frame) if source == "transactions" else 0
    return cfg.end + dt.timedelta(days=1), transactions


def duckdb_query(spec, lake, date: dt.date) -> str:
    """The spec's features for ``date`` as one DuckDB query: the same rules as
    ``pipelines.features.point_in_time.compute_features`` (events strictly before the date, windows by
    timestamp, latest attributes, the same fills)."""
    from pipelines.core.lake import ds
    from pipelines.core.spec import FeatureKind
    from pipelines.features.point_in_time import _group_lookback, feature_columns

    entity, midnight = spec.entity, f"TIMESTAMP '{date} 00:00:00'"

    def rows(source: str, lookback: int | None) -> str:
        src = spec.source(source)
        lower = f" AND ds >= '{ds(date - dt.timedelta(days=lookback))}'" if lookback else ""
        return (f"(SELECT * FROM read_parquet('{lake.clean(spec.name, source)}/*/*.parquet', hive_partitioning = true,"
                f" hive_types = {{'ds': VARCHAR}}) WHERE ds < '{ds(date)}'{lower} AND {src.timestamp} < {midnight})")

    def seconds(expr: str) -> str:   # Spark's unix_timestamp: whole seconds
        return f"floor(epoch({expr}))"

    joins, fill, by_source = [], {}, {}
    for group in spec.features.groups:
        if group.kind == FeatureKind.ATTRIBUTES:
            src = spec.source(group.source)
            cols = [*group.columns, *(f"({seconds(midnight)} - {seconds(ts)}) / 86400.0 AS {name}"
                                      for name, ts in group.days_since.items())]
            joins.append(f"(SELECT {entity}, {', '.join(cols)} FROM {rows(group.source, None)} "
                         f"QUALIFY row_number() OVER (PARTITION BY {entity} ORDER BY {src.timestamp} DESC) = 1)")
            continue
        ts = spec.source(group.source).timestamp
        exprs, lookback = by_source.get(group.source, ([], 0))
        if group.kind == FeatureKind.RECENCY:
            exprs.append(f"(({seconds(midnight)} - {seconds(f'max({ts})')}) / 86400.0) AS {group.name}")
            fill[group.name] = float(group.cap_days)
        for window in getattr(group, "windows_days", []):
            inside = f"{ts} >= {midnight} - INTERVAL {window} DAY"
            for agg in getattr(group, "aggregates", []):
                name, col = f"{agg.name}_{window}d", agg.column
                exprs.append({
                    "count": f"count(*) FILTER (WHERE {inside})",
                    "sum": f"sum({col}) FILTER (WHERE {inside})",
                    "avg": f"avg({col}) FILTER (WHERE {inside})",
                    "count_distinct": f"count(DISTINCT {col}) FILTER (WHERE {inside})",
                    "share": f"count(*) FILTER (WHERE {inside} AND {col} = '{agg.value}') "
                             f"/ nullif(count(*) FILTER (WHERE {inside}), 0)",
                }[agg.fn] + f"::DOUBLE AS {name}")
                if agg.fn in {"count", "sum", "count_distinct"}:
                    fill[name] = 0.0
        by_source[group.source] = (exprs, max(lookback, _group_lookback(group)))
    for source, (exprs, lookback) in by_source.items():
        joins.append(f"(SELECT {entity}, {', '.join(exprs)} FROM {rows(source, lookback)} GROUP BY {entity})")
    population = f"(SELECT DISTINCT {entity} FROM {rows(spec.features.population, None)})"
    outputs = [f"coalesce({c}, {fill[c]!r}) AS {c}" if c in fill else c for c in feature_columns(spec).all]
    joined = " ".join(f"LEFT JOIN {j} USING ({entity})" for j in joins)
    return f"SELECT {entity}, {', '.join(outputs)}, '{ds(date)}' AS ds FROM {population} p {joined}"


def same_outputs(ours, theirs, entity: str, numeric: list[str], text: list[str]) -> None:
    """Raise AssertionError unless both frames hold the same rows (numbers to 1e-9)."""
    import numpy as np

    ours, theirs = (f.sort_values(entity).reset_index(drop=True) for f in (ours, theirs))
    assert list(ours[entity]) == list(theirs[entity]), "different entities"
    for col in numeric:
        a, b = ours[col].to_numpy(float), theirs[col].to_numpy(float)
        assert np.allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True), f"{col} differs"
    for col in text:
        assert list(ours[col].fillna("")) == list(theirs[col].fillna("")), f"{col} differs"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    command = f".venv/bin/python -m bench.bench_features --customers {args.customers} --repeats {args.repeats}"

    import duckdb
    import pandas as pd

    from pipelines.core.config import Settings
    from pipelines.core.lake import Lake, read_partition
    from pipelines.core.spark import get_spark
    from pipelines.features.point_in_time import build_features, feature_columns

    spec = churn_spec()
    cols = feature_columns(spec)
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(Path(tmp) / "lake")
        started = time.perf_counter()
        date, transactions = write_clean_days(spec, lake, args.customers, 121)
        print(f"data: {transactions:,} transactions over 121 days ({time.perf_counter() - started:.0f} s to simulate)")

        started = time.perf_counter()
        spark = get_spark(Settings.from_env({**os.environ, "MLOPS_HOME": tmp}), "bench-features")
        spark.range(1).count()
        session = time.perf_counter() - started

        con = duckdb.connect(config={"threads": os.cpu_count()})
        out = f"{tmp}/duckdb_features.parquet"
        query = duckdb_query(spec, lake, date)

        def spark_run():
            return build_features(spark, spec, lake, date)

        def duckdb_run():
            con.execute(f"COPY ({query}) TO '{out}' (FORMAT parquet)")

        timings = {name: median_seconds(fn, args.repeats)[0]
                   for name, fn in (("spark", spark_run), ("duckdb", duckdb_run))}
        ours = read_partition(lake.features(spec.name), date)
        same_outputs(ours, pd.read_parquet(out), spec.entity, cols.numeric, cols.categorical)
        spark.stop()
    ratio = timings["spark"] / timings["duckdb"]
    print(f"spark {timings['spark']:.2f} s, duckdb {timings['duckdb']:.2f} s for {len(ours):,} entities; "
          f"ratio spark / duckdb {ratio:.2f}x (outputs agree); Spark session start {session:.1f} s")
    row = (f"| {dt.date.today()} | {machine()} | {transactions:,} | {len(ours):,} | {timings['spark']:.2f} s | "
           f"{timings['duckdb']:.2f} s | {ratio:.2f}x | {session:.1f} s | `{command}` |")
    append_row(SECTION, row, INTRO)
    print(row)


if __name__ == "__main__":
    main()
