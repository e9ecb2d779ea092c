"""Validation of one transactions partition: the Great Expectations gate (`PartitionValidator`,
the churn spec's suite) against the same rules written in plain pandas, on the same frame.

    .venv/bin/python -m bench.bench_validation [--rows 5000000] [--repeats 2]

The frame has the transactions source's columns and ``--rows`` rows, with a few broken
rows (an unknown channel, a negative amount, a missing customer) so that both sides must
find the same failed rules, which the bench checks before printing times. Prints both times,
the ratio, and appends a dated row to docs/benchmarks.md. Timings only; no pass/fail.
"""
from __future__ import annotations

import argparse
import time

from bench.report import append_row, churn_spec, machine, median_seconds

SECTION = "## Validation of one partition: Great Expectations against plain pandas"
INTRO = """What it compares: `pipelines.data.validation.PartitionValidator.check` (Great Expectations 1.x on
pandas, the churn spec's transactions suite: the spec-derived rules (column set, types, keys
present and unique, row count) and the suite file's) against the same rules written in plain
pandas (`bench/bench_validation.py`), on the same rows with a few broken ones; the bench checks
that both name the same failed rules. GX gets the frame as the gate reads a partition (text as
pandas strings); the peer is timed on that frame and on one with text as Python objects, and
the faster counts. Median of the repeats after a warm-up.

| date | machine | rows | Great Expectations | plain pandas | ratio GX / pandas | command |
|---|---|---|---|---|---|---|"""


def transactions(rows: int, seed: int = 0, start: int = 0, total: int | None = None):
    """A transactions partition of ``rows`` rows with three broken ones; or rows ``start`` to
    ``start + rows`` of one of ``total`` rows (broken where that one is)."""
    import numpy as np
    import pandas as pd

    from pipelines.data.simulate import CATEGORIES, CHANNELS

    total = rows if total is None else total
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "transaction_id": pd.Series(np.char.add("T", np.arange(start, start + rows).astype(str)), dtype=object),
        "customer_id": pd.Series(np.char.add("C", rng.integers(0, 200_000, rows).astype(str)), dtype=object),
        "event_ts": pd.Timestamp("2026-01-05") + pd.to_timedelta(rng.integers(0, 86_400, rows), unit="s"),
        "amount": rng.gamma(2.0, 20.0, rows) + 0.01,
        "channel": pd.Series(CHANNELS[rng.integers(0, len(CHANNELS), rows)], dtype=object),
        "category": pd.Series(CATEGORIES[rng.integers(0, len(CATEGORIES), rows)], dtype=object),
    })
    for index, column, value in ((total // 3, "channel", "fax"), (total // 2, "amount", -5.0),
                                 (total - 1, "customer_id", None)):
        if start <= index < start + rows:
            frame.loc[index - start, column] = value
    return frame


def transactions_table(rows: int, seed: int = 0, chunk: int = 2_000_000):
    """:func:`transactions` as the Arrow table the gate reads, made a chunk at a time (no pandas
    frame of every row)."""
    import pyarrow as pa

    return pa.concat_tables(pa.Table.from_pandas(transactions(min(chunk, rows - start), seed + start, start, rows),
                                                 preserve_index=False) for start in range(0, rows, chunk))


def plain_pandas_failures(spec, rules: list[dict], frame) -> set[tuple[str, str | None]]:
    """(rule, column) of every failed rule, the suite's rules written directly in pandas."""
    from pipelines.data.validation import PANDAS_TYPES

    src = spec.source("transactions")
    failed = set()
    if set(frame.columns) != set(src.columns):
        failed.add(("expect_table_columns_to_match_set", None))
    for column, kind in src.columns.items():
        if str(frame[column].dtype) not in PANDAS_TYPES[kind] and type(frame[column].dtype).__name__ not in \
                PANDAS_TYPES[kind]:
            failed.add(("expect_column_values_to_be_in_type_list", column))
    if len(frame) < src.min_rows:
        failed.add(("expect_table_row_count_to_be_between", None))
    for column in src.key:
        if frame[column].isna().any():
            failed.add(("expect_column_values_to_not_be_null", column))
    if frame[src.key[0]].dropna().duplicated().any():
        failed.add(("expect_column_values_to_be_unique", src.key[0]))
    for rule in rules:
        kind, kwargs = rule["type"], rule.get("kwargs", {})
        column = kwargs.get("column")
        values = frame[column].dropna() if column else None
        if kind == "ExpectTableRowCountToBeBetween":
            bad = not kwargs.get("min_value", 0) <= len(frame) <= kwargs.get("max_value", float("inf"))
        elif kind == "ExpectColumnValuesToNotBeNull":
            bad = frame[column].isna().any()
        elif kind == "ExpectColumnValuesToBeBetween":
            bad = ((values < kwargs["min_value"]) | (values > kwargs["max_value"])).any()
        elif kind == "ExpectColumnValuesToBeInSet":
            bad = (~values.isin(kwargs["value_set"])).any()
        else:
            raise ValueError(f"the plain pandas peer has no {kind}")
        if bad:
            failed.add((_snake(kind), column))
    return failed


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    command = f".venv/bin/python -m bench.bench_validation --rows {args.rows} --repeats {args.repeats}"

    import pyarrow as pa

    from pipelines.core.lake import Lake
    from pipelines.data.validation import PartitionValidator, frame_for_checks

    spec = churn_spec()
    validator = PartitionValidator(spec, Lake("/nonexistent"))
    raw = transactions(args.rows)
    table = pa.Table.from_pandas(raw, preserve_index=False)
    frame = frame_for_checks(table)   # as the gate reads a partition
    rules = validator.rules["transactions"]
    outcomes, timings = {}, {}
    for name, fn in (("gx", lambda: {(f.rule.split("(")[0], f.column)   # what the gate runs: in slices when large
                                     for f in validator.check_table("transactions", table)}),
                     # the peer on whichever frame suits it better: text as pandas strings, or as objects
                     ("pandas", lambda: plain_pandas_failures(spec, rules, frame)),
                     ("pandas on objects", lambda: plain_pandas_failures(spec, rules, raw))):
        timings[name], outcomes[name] = median_seconds(fn, args.repeats)
    assert outcomes["pandas"] == outcomes["pandas on objects"]
    timings["pandas"] = min(timings["pandas"], timings.pop("pandas on objects"))
    if outcomes["gx"] != outcomes["pandas"]:
        raise SystemExit(f"the two sides disagree: GX {sorted(outcomes['gx'])} against pandas "
                         f"{sorted(outcomes['pandas'])}")
    ratio = timings["gx"] / timings["pandas"]
    print(f"failed rules (both): {sorted(outcomes['gx'])}")
    print(f"great expectations {timings['gx']:.2f} s, plain pandas {timings['pandas']:.2f} s on {args.rows:,} rows; "
          f"ratio {ratio:.2f}x")
    row = (f"| {time.strftime('%Y-%m-%d')} | {machine()} | {args.rows:,} | {timings['gx']:.2f} s | "
           f"{timings['pandas']:.2f} s | {ratio:.2f}x | `{command}` |")
    append_row(SECTION, row, INTRO)
    print(row)


if __name__ == "__main__":
    main()
