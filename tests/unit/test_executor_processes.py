"""The executor's worker and task processes end with the process that forked them.

A scheduler forks its workers, a worker forks one process per task: the script below builds the
same chain (scheduler -> worker -> task) and the test kills the "scheduler" with SIGKILL, as the
fault suite does with the real one (tests/faults/test_scheduler_faults.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"

CHAIN = """
import os, sys, time
sys.path.insert(0, sys.argv[2])
if sys.argv[1] == "tied":
    from mlops_airflow.executors import end_forked_children_with_their_parent
    assert end_forked_children_with_their_parent()
worker = os.fork()
if worker == 0:
    task = os.fork()
    if task == 0:
        time.sleep(120)
        os._exit(0)
    print(os.getpid(), task, flush=True)
    time.sleep(120)
    os._exit(0)
time.sleep(120)
"""


def _chain(mode: str) -> tuple[subprocess.Popen, list[psutil.Process]]:
    scheduler = subprocess.Popen([sys.executable, "-c", CHAIN, mode, str(PLUGINS)], stdout=subprocess.PIPE,
                                 text=True)
    pids = [int(p) for p in scheduler.stdout.readline().split()]
    return scheduler, [psutil.Process(pid) for pid in pids]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("mode, survivors", [("tied", 0), ("stock", 2)])
def test_workers_and_tasks_end_with_a_killed_scheduler(mode, survivors):
    scheduler, descendants = _chain(mode)
    try:
        assert len(descendants) == 2 and all(p.is_running() for p in descendants)
        os.kill(scheduler.pid, signal.SIGKILL)
        scheduler.wait(timeout=10)
        _, alive = psutil.wait_procs(descendants, timeout=5)
        assert len(alive) == survivors, [p.pid for p in alive]
    finally:
        for proc in descendants:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
