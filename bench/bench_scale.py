"""The scale curve: features, batch scoring, drift and validation at growing sizes.

    .venv/bin/python -m bench.bench_scale [--sizes 1000000,10000000,50000000] [--spark local,standalone]

Each (stage, size, Spark) runs in a new process: it writes its data, runs our stage on it once
(what the DAG task runs: the JVM's JIT and Spark's Python workers warm up), then times a second
run while this process samples the memory of every process involved (the
stage's own, its Spark JVM, and the standalone master's and workers' executors): the peak RSS is
the most they held at once *during the timed part*. Spark is `local[2]`, or the native cluster
topology's standalone master with its workers (the stack's own command lines, see
`scripts/services.py`). Drift and validation do not use Spark: they run once per size.

- features: the churn simulator's 121 days (about 63 transactions per customer), the
  features of the day after (`build_features`); rows are the transactions read;
- scoring: the churn spec's compiled pipeline over the features' Parquet (`score_frame`, Spark's
  `noop` sink);
- drift: one day's whole-partition statistics of 20 numeric columns and a text one
  (`column_drift_over_files`);
- validation: the transactions suite over one partition (`PartitionValidator.check_table`, in
  slices above 2M rows).

Prints a row per run, appends the table to docs/benchmarks.md and draws
docs/images/scale-curve.png (rows/s and peak memory against rows). Timings only.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

from bench.report import DOCS, append_section, churn_spec, machine

ROOT = Path(__file__).resolve().parent.parent
PLOT = DOCS.parent / "images" / "scale-curve.png"
SPARK_STAGES = ("features", "scoring")
CHUNK = 500_000


@dataclass(frozen=True)
class Point:
    stage: str
    spark: str       # local, standalone, or "-" (no Spark)
    rows: int
    seconds: float
    peak_mb: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


# ------------------------------------------------------------------ in the stage's process
def run_stage(stage: str, rows: int, master: str, workdir: str, timing, result, counted) -> None:
    """Write the data, then time ``stage`` with ``timing`` set (the parent samples memory then);
    its seconds into ``result`` and the rows it read into ``counted``."""
    os.environ["MLOPS_SPARK_MASTER"] = master
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    work = Path(workdir)
    prepared = {"features": _features, "scoring": _scoring, "drift": _drift, "validation": _validation}[stage](
        rows, work)
    read, act = prepared
    act()   # once untimed: the JVM's JIT, Spark's Python workers, the libraries' first calls
    timing.value = 1
    started = time.perf_counter()
    act()
    result.value = time.perf_counter() - started
    timing.value = 0
    counted.value = read


def _spark(work: Path):
    from pipelines.core.config import Settings
    from pipelines.core.spark import get_spark

    spark = get_spark(Settings.from_env({**os.environ, "MLOPS_HOME": str(work)}), "bench-scale")
    spark.range(1).count()
    return spark


def _features(rows: int, work: Path):
    from bench.bench_features import write_clean_days
    from pipelines.core.lake import Lake
    from pipelines.features.point_in_time import build_features

    spec, lake = churn_spec(), Lake(work / "lake")
    date, transactions = write_clean_days(spec, lake, max(1_000, rows // 63), 121)
    spark = _spark(work)
    return transactions, lambda: build_features(spark, spec, lake, date)


def _scoring(rows: int, work: Path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.synthetic import SyntheticChurn
    from pipelines.features.point_in_time import feature_columns
    from pipelines.models.compiled import compile_checked
    from pipelines.models.tasks import ModelTask
    from pipelines.serving.batch import score_frame

    spec = churn_spec()
    task, cols, synthetic = ModelTask.of(spec), feature_columns(spec), SyntheticChurn(spec)
    model = compile_checked(synthetic.model, synthetic.frame(10_000), task).model
    folder = work / "features"
    folder.mkdir(parents=True)
    for part, start in enumerate(range(0, rows, CHUNK)):
        n = min(CHUNK, rows - start)
        frame = synthetic.frame(n).assign(customer_id=[f"C{start + i}" for i in range(n)], ds="2026-01-01")
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / f"part-{part:05d}.parquet")
    spark = _spark(work)
    constants = {"entity": "customer_id", "model_name": "m", "model_version": "1", "model_run_id": "r",
                 "run_id": "bench", "scored_at": pd.Timestamp("2026-01-01")}
    features = spark.read.parquet(str(folder))
    return rows, lambda: score_frame(features, model, cols.all, task, constants).write.mode("overwrite") \
        .format("noop").save()


def _drift(rows: int, work: Path):
    from bench.bench_drift import write_day
    from pipelines.monitoring.drift_stats import column_drift_over_files

    work.mkdir(parents=True, exist_ok=True)
    reference, files, numeric = write_day(str(work), rows, 20)
    return rows, lambda: column_drift_over_files(reference, files, numeric, ["segment"], "psi", 0.2)


def _validation(rows: int, work: Path):
    from bench.bench_validation import transactions_table
    from pipelines.core.lake import Lake
    from pipelines.data.validation import PartitionValidator

    spec = churn_spec()
    validator = PartitionValidator(spec, Lake("/nonexistent"))
    table = transactions_table(rows)   # as the gate reads a partition: Arrow, checked in slices when large
    return rows, lambda: validator.check_table("transactions", table)


# ------------------------------------------------------------------ in this process
def tree_rss(pids: list[int]) -> float:
    """MB held by the processes ``pids`` and all their descendants."""
    import psutil

    total = 0
    for pid in pids:
        try:
            parent = psutil.Process(pid)
            for process in [parent, *parent.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return total / 2**20


def measure(stage: str, rows: int, spark: str, master: str, cluster_pids: list[int]) -> Point:
    context = multiprocessing.get_context("spawn")
    timing, result, counted = context.Value("b", 0), context.Value("d", float("nan")), context.Value("q", 0)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_SCALE_TMP")) as tmp:
        process = context.Process(target=run_stage, args=(stage, rows, master, tmp, timing, result, counted))
        process.start()
        peak, done = 0.0, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                if timing.value:
                    peak = max(peak, tree_rss([process.pid, *cluster_pids]))
                time.sleep(0.2)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        process.join()
        done.set()
        sampler.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{stage} at {rows:,} rows on {spark} failed (exit {process.exitcode})")
    point = Point(stage, spark, counted.value or rows, result.value, peak)
    print(f"{stage:10s} {spark:10s} {point.rows:>12,} rows {point.seconds:8.1f} s {point.rows_per_s:>12,.0f} rows/s "
          f"peak {point.peak_mb:8,.0f} MB", flush=True)
    return point


def standalone(home: Path) -> tuple[str, list[subprocess.Popen]]:
    """The cluster topology's standalone master and workers (the stack's command lines)."""
    from pipelines.core.waiting import wait_until
    from pipelines.release.load_test import free_port
    from scripts.services import spark_programs

    port, ui = free_port(), free_port()   # the workers' UIs take the ports after it
    stack = SimpleNamespace(clustered=True, spark_master_port=port, spark_ui_port=ui, spark_port=free_port(),
                            spark_master_url=f"spark://127.0.0.1:{port}", home=home,
                            settings={"MLOPS_SPARK_WORKER_CORES": "1", "MLOPS_SPARK_SHUFFLE_PARTITIONS": "4"})
    started = []
    for program in spark_programs(stack):
        if program.name == "spark-connect":
            continue
        log = open(home / f"{program.name}.log", "w")
        started.append(subprocess.Popen(program.command, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "SPARK_WORKER_DIR": str(home / "work")}))
        if program.name == "spark-master":
            def listening() -> bool:
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port)) == 0
            wait_until(listening, 120, what=f"Spark master on port {port}")
    time.sleep(10)   # the workers register with the master
    return stack.spark_master_url, started


def growth(points: list[Point]) -> dict[tuple[str, str, int], str]:
    """How time grew from the size before: '10x rows: 8.7x time'."""
    found = {}
    for point in points:
        before = [p for p in points if (p.stage, p.spark) == (point.stage, point.spark) and p.rows < point.rows]
        if before:
            prior = max(before, key=lambda p: p.rows)
            found[(point.stage, point.spark, point.rows)] = (f"{point.rows / prior.rows:.0f}x rows: "
                                                              f"{point.seconds / prior.seconds:.1f}x time")
    return found


def plot(points: list[Point], path: Path) -> None:
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["savefig.dpi"] = 110
    figure = Figure(figsize=(11, 4.2))
    speed, memory = figure.subplots(1, 2)
    for (stage, spark) in sorted({(p.stage, p.spark) for p in points}):
        mine = sorted((p for p in points if (p.stage, p.spark) == (stage, spark)), key=lambda p: p.rows)
        label = stage if spark == "-" else f"{stage} ({spark})"
        speed.plot([p.rows for p in mine], [p.rows_per_s for p in mine], marker="o", label=label)
        memory.plot([p.rows for p in mine], [p.peak_mb for p in mine], marker="o", label=label)
    for axes, title, unit in ((speed, "throughput", "rows/s"), (memory, "peak memory (all processes)", "MB")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("rows")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
    speed.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000000,10000000,50000000")
    parser.add_argument("--spark", default="local,standalone")
    parser.add_argument("--stages", default="features,scoring,drift,validation")
    parser.add_argument("--points", type=Path, default=None,
                        help="append each point to this file as it is measured, and show every point in it "
                             "(to combine runs: the same file for each); default: this run's points only")
    args = parser.parse_args()
    points_file = args.points or Path(tempfile.mkdtemp()) / "points.jsonl"
    begun = time.monotonic()
    sizes = [int(s) for s in args.sizes.split(",")]
    sparks, stages = args.spark.split(","), args.stages.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for spark in sparks:
            master, cluster = ("local[2]", []) if spark == "local" else standalone(Path(tmp))
            try:
                for stage in stages:
                    if stage not in SPARK_STAGES and spark != sparks[0]:
                        continue
                    for rows in sizes:
                        point = measure(stage, rows, spark if stage in SPARK_STAGES else "-", master,
                                        [c.pid for c in cluster])
                        with points_file.open("a") as out:
                            out.write(json.dumps(asdict(point)) + "\n")
            finally:
                for process in cluster:
                    process.terminate()
                    process.wait(60)
    points = [Point(**json.loads(line)) for line in points_file.read_text().splitlines() if line.strip()]
    plot(points, PLOT)
    grew = growth(points)
    command = (f".venv/bin/python -m bench.bench_scale --sizes {args.sizes} --spark {args.spark} "
               f"--stages {args.stages}" + (f" --points {args.points}" if args.points else ""))
    table = "\n".join(f"| {p.stage} | {p.spark} | {p.rows:,} | {p.seconds:.1f} s | {p.rows_per_s:,.0f} | "
                      f"{p.peak_mb:,.0f} | {grew.get((p.stage, p.spark, p.rows), '')} |" for p in points)
    append_section(f"## Scale curve, {dt.date.today()}", f"""
Command: `{command}` ({machine()}; wall time {time.monotonic() - begun:.0f} s). What each stage
does and how memory is measured: `bench/bench_scale.py`.

![rows/s and peak memory against rows](images/scale-curve.png)

| stage | Spark | rows | seconds | rows/s | peak MB | growth |
|---|---|---|---|---|---|---|
{table}
""")
    print(table)


if __name__ == "__main__":
    main()
