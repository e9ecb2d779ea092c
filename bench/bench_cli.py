"""`mlops features` and `mlops score` on a small table, as a user types them: each a new process.

    .venv/bin/python -m bench.bench_cli [--rows 10000] [--repeats 3]

A 10,000-row table (an id, numbers with `n/a`, text, a Yes/No target) goes through `mlops init`,
`ingest`, `validate`, `features` and `train` once. Then `mlops features` and `mlops score` of the
same day are timed as new processes, the median of ``--repeats``:

- *cold*: no Spark running; the command starts a local session (`local[2]`) itself;
- *warm*: a Spark Connect server is running (the stack's own command line, see
  `scripts/services.py`) and the command attaches to it with `SPARK_REMOTE`, as a command run
  beside `make ui` does.

Each command logs when its Spark session was ready; that start is reported separately. Goal:
each command under 5 s warm. Appends a dated row to docs/benchmarks.md. Timings only.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from bench.report import append_row, machine

ROOT = Path(__file__).resolve().parent.parent
DAY = dt.date.today()   # the day `mlops init` starts the drafted spec at
UC = "small_table"
SESSION = re.compile(r"Spark session ready in ([0-9.]+) s")


def small_table(rows: int, path: Path) -> Path:
    """A team's export: ids that look like numbers, `n/a` among the numbers, text, Yes/No."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    tenure = rng.integers(1, 72, rows)
    monthly = rng.gamma(3.0, 20.0, rows).round(2).astype(object)
    monthly[rng.random(rows) < 0.03] = "n/a"
    frame = pd.DataFrame({"customer_id": [f"{100000 + i}" for i in range(rows)], "tenure_months": tenure,
                          "monthly_charges": monthly, "plan": rng.choice(["basic", "plus", "pro"], rows),
                          "paperless": rng.choice(["Yes", "No"], rows),
                          "churned": np.where(rng.random(rows) < 1 / (1 + np.exp(tenure / 12 - 2)), "Yes", "No")})
    frame.to_csv(path, index=False)
    return path


def prepare(home: Path, rows: int) -> dict[str, str]:
    """The table landed, validated, featurized and a first model trained (in this process)."""
    from bench.zoo import cli, configure

    configure(home)
    csv = small_table(rows, home / "customers.csv")
    for step, argv in (("init", ["init", UC, "--source", f"data={csv}", "--target", "churned", "--positive", "Yes",
                                 "--force"]),
                       ("ingest", ["ingest", UC, "data", str(csv), "--as-of", str(DAY)]),
                       ("validate", ["validate", UC, str(DAY)]), ("features", ["features", UC, str(DAY)]),
                       ("train", ["train", UC, "--reason", "bench"])):
        cli(step, argv, io.StringIO())
    return {k: v for k, v in os.environ.items() if k != "SPARK_REMOTE"}


def timed(command: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, seconds until its Spark session was ready) of ``mlops <command> UC DAY``."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", command, UC, str(DAY)], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"mlops {command} exited {done.returncode}: {done.stderr[-2000:]}")
    found = SESSION.search(done.stderr)
    return wall, float(found.group(1)) if found else float("nan")


def spark_connect(home: Path, port: int) -> subprocess.Popen:
    """The stack's Spark Connect server (its command line from scripts/services.py), on ``port``."""
    from pipelines.core.waiting import wait_until
    from scripts.services import spark_programs

    stack = SimpleNamespace(clustered=False, spark_port=port, home=home,
                            settings={"MLOPS_SPARK_SHUFFLE_PARTITIONS": "4"})
    program = [p for p in spark_programs(stack) if p.name == "spark-connect"][0]
    log = open(home / "spark-connect.log", "w")
    process = subprocess.Popen(program.command, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}"})
    import socket

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_until(listening, 120, what=f"Spark Connect on port {port}")
    return process


def measure(commands: list[str], env: dict[str, str], repeats: int) -> dict[str, tuple[float, float]]:
    """The median (wall, session start) of each command, after one run that is not counted."""
    found = {}
    for command in commands:
        timed(command, env)
        runs = [timed(command, env) for _ in range(repeats)]
        found[command] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        print(f"  mlops {command:9s} {found[command][0]:5.1f} s (Spark session ready after "
              f"{found[command][1]:.1f} s)", flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    begun = time.monotonic()
    from pipelines.release.load_test import free_port

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = prepare(home, args.rows)
        print("cold (each command starts local[2]):", flush=True)
        cold = measure(["features", "score"], env, args.repeats)
        port = free_port()
        server = spark_connect(home, port)
        try:
            print(f"warm (Spark Connect running on port {port}):", flush=True)
            warm = measure(["features", "score"], {**env, "SPARK_REMOTE": f"sc://127.0.0.1:{port}"}, args.repeats)
        finally:
            server.terminate()
            server.wait(60)
    goal = {c: "met" if warm[c][0] < 5 else "not met" for c in warm}
    command = f".venv/bin/python -m bench.bench_cli --rows {args.rows} --repeats {args.repeats}"
    row = (f"| {dt.date.today()} | {machine()} | {args.rows:,} | "
           + " | ".join(f"{warm[c][0]:.1f} s ({goal[c]}; session {warm[c][1]:.1f} s)" for c in ("features", "score"))
           + " | " + " | ".join(f"{cold[c][0]:.1f} s (session {cold[c][1]:.1f} s)" for c in ("features", "score"))
           + f" | `{command}` | {time.monotonic() - begun:.0f} s |")
    append_row(SECTION, row, INTRO)
    print(row)


SECTION = "## Commands on a small table: `mlops features` and `mlops score`"
INTRO = """
What it measures: the two commands on a 10,000-row table (ids that look like numbers, `n/a` among
the numbers, text, a Yes/No target), each a new process as a user runs it, the median of 3 after
one uncounted run. *Warm*: a Spark Connect server runs (the stack's own command line) and the
command attaches to it (`SPARK_REMOTE`, set by `make ui`'s environment). *Cold*: the command starts
`local[2]` itself. Each command logs when its Spark session was ready; that start is shown in
brackets. Goal: under 5 s each, warm. Not a ratio: the peer is the user's patience.

| date | machine | rows | features, warm (goal 5 s) | score, warm (goal 5 s) | features, cold | score, cold | command | wall time |
|---|---|---|---|---|---|---|---|---|
"""


if __name__ == "__main__":
    main()
