"""Per-task overhead of the daily DAG: Airflow's stock LocalExecutor against the project's
PreloadingLocalExecutor, on the same stack, the same state and the same days, in one run.

For every task of the daily DAG it reports the task's own work, its total time in Airflow (the
task instance's start to end) under each executor, the overhead (total - work) and the ratio of
the stock executor's overhead to the preloading one's. The work is what the task function
measures itself (the ``work_seconds`` XCom, see ``mlops_airflow.common.measured``) under the
preloading executor, where its libraries are already imported; under the stock executor the
same function also pays its imports, which are overhead, not work, so both executors' overhead
is counted against the same work. The goal is an overhead of at most 1.5 s per task.

    make demo                                            # once: the state this bench replays
    .venv/bin/python -m bench.bench_task_overhead [--days 3]

It restarts the demo's stack (``$MLOPS_HOME``, default ``.state``) once per executor, re-runs
the same last ``--days`` scored days with a backfill (reprocessing them), reads the task
instances and XComs through Airflow's API, and stops the stack. Timings only; no pass/fail.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time

OVERHEAD_GOAL_S = 1.5
EXECUTORS = {"stock": "LocalExecutor", "preloading": "mlops_airflow.executors.PreloadingLocalExecutor"}


def _seconds(ti: dict) -> float | None:
    if not ti.get("start_date") or not ti.get("end_date"):
        return None
    start = dt.datetime.fromisoformat(ti["start_date"])
    return (dt.datetime.fromisoformat(ti["end_date"]) - start).total_seconds()


def measure(executor: str, use_case: str, days: list[dt.date]) -> dict[str, list[tuple[float, float]]]:
    """(total, work) seconds per task of the daily DAG for ``days`` re-run under ``executor``."""
    from scripts.airflow_api import AirflowClient
    from scripts.demo import run_backfill
    from scripts.stack import Stack

    os.environ["MLOPS_AIRFLOW_EXECUTOR"] = executor
    stack = Stack()
    stack.down()
    started = time.monotonic()
    stack.up()
    print(f"  [{executor}] stack up in {time.monotonic() - started:.0f}s", flush=True)
    try:
        client = AirflowClient(stack.airflow_url, "admin", stack.admin_password())
        daily = f"{use_case}_daily"
        watch = [daily, f"{use_case}_drift_watch", f"{use_case}_training"]
        client.wait_for_dags(watch)
        runs = run_backfill(client, daily, days[0], days[-1], watch, max_active_runs=1)
        out: dict[str, list[tuple[float, float]]] = {}
        for run in runs:
            for ti in client.task_instances(daily, run["dag_run_id"]):
                total = _seconds(ti)
                work = client.xcom(daily, run["dag_run_id"], ti["task_id"], "work_seconds")
                if total is not None and work is not None and ti["state"] == "success":
                    out.setdefault(ti["task_id"], []).append((total, float(work)))
        return out
    finally:
        stack.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--use-case", default="churn")
    parser.add_argument("--days", type=int, default=3, help="last scored days to re-run per executor")
    args = parser.parse_args(argv)

    from pipelines import runtime
    from pipelines.core.lake import list_partitions
    from scripts.stack import Stack

    os.environ.setdefault("MLOPS_HOME", str(Stack().home))
    scored = list_partitions(runtime.lake().inference(args.use_case))
    if len(scored) < args.days:
        print(f"no scored days in {runtime.lake().root}: run `make demo` first", file=sys.stderr)
        return 2
    days = [dt.date.fromisoformat(d) for d in scored[-args.days:]]
    print(f"re-running {args.use_case}_daily for {days[0]}..{days[-1]} under each executor", flush=True)
    results = {name: measure(path, args.use_case, days) for name, path in EXECUTORS.items()}

    def med(values):
        return statistics.median(values) if values else float("nan")

    print()
    print(f"{'task':26s} {'work s':>7s} {'stock total':>12s} {'stock ovh':>10s} {'preload total':>14s} "
          f"{'preload ovh':>12s} {'ovh ratio':>10s}  goal")
    tasks = sorted(set(results["stock"]) | set(results["preloading"]))
    sums = {"stock": 0.0, "preloading": 0.0, "work": 0.0}
    for task in tasks:
        work = med([w for _, w in results["preloading"].get(task, [])])
        sums["work"] += work
        row = {}
        for name in EXECUTORS:
            total = med([t for t, _ in results[name].get(task, [])])
            row[name] = (total, total - work)
            sums[name] += total - work
        ratio = row["stock"][1] / row["preloading"][1] if row["preloading"][1] > 0 else float("inf")
        goal = "met" if row["preloading"][1] <= OVERHEAD_GOAL_S else "over"
        print(f"{task:26s} {work:7.2f} {row['stock'][0]:12.2f} {row['stock'][1]:10.2f} "
              f"{row['preloading'][0]:14.2f} {row['preloading'][1]:12.2f} {ratio:9.1f}x  {goal}")
    print(f"{'per run (sum of medians)':26s} {sums['work']:7.2f} {'':12s} {sums['stock']:10.2f} {'':14s} "
          f"{sums['preloading']:12.2f} {sums['stock'] / sums['preloading']:9.1f}x")
    print(f"\nwork = the task function's own time under the preloading executor (libraries imported);"
          f"\noverhead = task instance start..end in Airflow minus that work (goal: at most {OVERHEAD_GOAL_S} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
