"""Drift at scale: a whole day's drift statistics over its Parquet files (DuckDB, two scans)
against Evidently's DataDriftPreset on the same full frames in pandas, same method, same
reference; and the peak memory of ours.

    .venv/bin/python -m bench.bench_drift [--rows 1000000] [--columns 20] [--peer-max-rows 1000000]

The day has ``--rows`` rows of ``--columns`` numeric columns (gamma-distributed; every fourth
one shifted) plus one categorical column, written as Parquet in four files; the reference is
5,000 rows. Ours runs in a fresh process (its peak RSS is the process's own); Evidently runs
only up to ``--peer-max-rows`` (at 10M rows it does not finish on this machine). Prints both
times, the ratio, whether both flag the same columns, and appends a dated row to
docs/benchmarks.md. Timings only; no pass/fail.
"""
from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from bench.report import append_row, machine

SECTION = "## Drift at scale: the whole day in DuckDB against Evidently on the full frames"
INTRO = """What it compares: `pipelines.monitoring.drift_stats.column_drift_over_files` (what `monitor_drift`
decides on: the day's Parquet files reduced by DuckDB to counts per bin in two scans, the
statistic computed on Evidently's own bins) against Evidently's `DataDriftPreset` over the same
full frames in pandas, with the same method (PSI, threshold 0.2) and the same 5,000-row
reference. The day has numeric columns (every fourth one shifted) and one categorical column.
Ours runs in a fresh process whose peak RSS is reported. Evidently is skipped above
`--peer-max-rows`.

| date | machine | rows x columns | ours | ours peak RSS | Evidently | ratio | same columns flagged | command |
|---|---|---|---|---|---|---|---|---|"""


def write_day(folder: str, rows: int, columns: int, seed: int = 0):
    """The day's Parquet files (written in chunks: the whole day is never in memory) and the
    reference frame."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    names = [f"x{i:02d}" for i in range(columns)]

    def chunk(n: int, shift: bool) -> pd.DataFrame:
        data = {c: rng.gamma(2.0, 10.0 + (4.0 if shift and i % 4 == 0 else 0.0), n) for i, c in enumerate(names)}
        data["segment"] = rng.choice(["a", "b", "c"] if not shift else ["a", "b", "c", "d"], n)
        return pd.DataFrame(data)

    files, per_file = [], -(-rows // 4)
    for part in range(4):
        n = min(per_file, rows - part * per_file)
        path = f"{folder}/part-{part}.parquet"
        with pq.ParquetWriter(path, pa.Schema.from_pandas(chunk(1, True), preserve_index=False)) as writer:
            for start in range(0, n, 500_000):
                writer.write_table(pa.Table.from_pandas(chunk(min(500_000, n - start), True), preserve_index=False))
        files.append(path)
    return chunk(5_000, False), files, names


def ours_in_a_fresh_process(reference, files: list[str], numeric: list[str]) -> tuple[float, list[str], float]:
    """(seconds, drifted columns, peak RSS in MB) of the whole-day statistics in a new process."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_ours, reference, files, numeric).result()


def _ours(reference, files, numeric):
    import resource

    import duckdb  # noqa: F401 - imports are not what is timed
    import scipy.spatial  # noqa: F401
    import scipy.stats  # noqa: F401

    from pipelines.monitoring.drift_stats import column_drift_over_files

    started = time.perf_counter()
    day = column_drift_over_files(reference, files, numeric, ["segment"], "psi", 0.2)
    seconds = time.perf_counter() - started
    return seconds, sorted(c.column for c in day.columns if c.drifted), resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024


def evidently(reference, files: list[str], numeric: list[str]) -> tuple[float, list[str]]:
    """(seconds, drifted columns) of Evidently over the full frames (reading the files not timed)."""
    import evidently.presets  # noqa: F401 - imports are not what is timed
    import pandas as pd

    from pipelines.monitoring.watch import drift_report

    current = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    started = time.perf_counter()
    result = drift_report(reference, current, numeric, ["segment"], method="psi", threshold=0.2)
    return time.perf_counter() - started, sorted(c.column for c in result if c.drifted)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=20)
    parser.add_argument("--peer-max-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    command = (f".venv/bin/python -m bench.bench_drift --rows {args.rows} --columns {args.columns} "
               f"--peer-max-rows {args.peer_max_rows}")
    with tempfile.TemporaryDirectory() as folder:
        reference, files, numeric = write_day(folder, args.rows, args.columns)
        seconds, flagged, rss = ours_in_a_fresh_process(reference, files, numeric)
        print(f"ours       {seconds:8.2f} s  peak RSS {rss:,.0f} MB  {args.rows:,} rows x {args.columns + 1} columns; "
              f"drifted: {', '.join(flagged)}")
        peer = evidently(reference, files, numeric) if args.rows <= args.peer_max_rows else None
    if peer is not None:
        print(f"evidently  {peer[0]:8.2f} s  drifted: {', '.join(peer[1])}")
        print(f"ratio evidently / ours: {peer[0] / seconds:.1f}x; the same columns flagged: {peer[1] == flagged}")
    cells = (f"{peer[0]:.1f} s | {peer[0] / seconds:.1f}x | {'yes' if peer[1] == flagged else 'NO'}" if peer
             else "not run | | ")
    row = (f"| {time.strftime('%Y-%m-%d')} | {machine()} | {args.rows:,} x {args.columns + 1} | {seconds:.2f} s | "
           f"{rss:,.0f} MB | {cells} | `{command}` |")
    append_row(SECTION, row, INTRO)
    print(row)


if __name__ == "__main__":
    main()
