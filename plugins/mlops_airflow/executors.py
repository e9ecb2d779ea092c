"""An executor whose task processes start with the heavy libraries already imported.

Airflow's LocalExecutor forks its worker processes from the scheduler, and each worker forks
one process per task. Importing pandas, scikit-learn, MLflow, PySpark's Connect client,
Great Expectations and Evidently costs about 16 s of CPU on two cores; paid by every task,
it dominated the daily DAG's run time. :class:`PreloadingLocalExecutor` imports them once in
the scheduler, before the workers are forked, so every task process inherits them (shared
copy-on-write) and pays nothing. DAG files stay light: nothing here runs at parse time, and
this module itself imports nothing heavy.

Its worker processes, and the task processes they fork, also end with their parent: in
stock Airflow a killed scheduler leaves its workers behind, still holding the scheduler's
database connection (open transaction and row locks included) and running tasks that the
restarted scheduler hands out a second time. Here the kernel ends them with the scheduler
(Linux ``PR_SET_PDEATHSIG``); the restarted scheduler resets their task instances and runs
them again, one try at a time.

Set with ``AIRFLOW__CORE__EXECUTOR=mlops_airflow.executors.PreloadingLocalExecutor``; the
modules come from ``MLOPS_PRELOAD_MODULES`` (comma-separated; empty disables preloading).
Only third-party libraries are preloaded: the project's own modules are imported fresh by
each task, so a changed pipeline is picked up without restarting the scheduler.
"""
from __future__ import annotations

import ctypes
import importlib
import logging
import os
import signal
import sys
import time

from airflow.executors.local_executor import LocalExecutor

log = logging.getLogger(__name__)

DEFAULT_PRELOAD = (
    "pandas", "pyarrow.parquet", "yaml", "sklearn.ensemble", "sklearn.model_selection", "sklearn.metrics",
    "mlflow", "mlflow.sklearn", "skops.io", "pyspark.sql.connect.session", "great_expectations",
    "great_expectations.expectations", "evidently", "evidently.presets", "plotly.offline", "plotly.graph_objects",
    "matplotlib.pyplot", "apprise", "skl2onnx", "onnxruntime",
)


def preload_modules() -> list[str]:
    """The modules to import before forking workers (``MLOPS_PRELOAD_MODULES`` or the defaults)."""
    configured = os.environ.get("MLOPS_PRELOAD_MODULES")
    if configured is None:
        return list(DEFAULT_PRELOAD)
    return [name.strip() for name in configured.split(",") if name.strip()]


def preload(modules: list[str]) -> dict[str, float]:
    """Import each module once; returns seconds per module. A module that fails to import is
    logged and skipped: tasks then import it themselves, as they would without preloading."""
    timings = {}
    os.environ.setdefault("MPLBACKEND", "Agg")   # no display in workers
    for name in modules:
        started = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional library must not stop the scheduler
            log.warning("preload of %s failed (%s); tasks will import it themselves", name, exc)
            continue
        timings[name] = time.perf_counter() - started
    return timings


PR_SET_PDEATHSIG = 1   # <linux/prctl.h>
_forked_by: int | None = None


def _remember_parent() -> None:
    global _forked_by
    _forked_by = os.getpid()


def _end_with_parent() -> None:
    """In a freshly forked child: have the kernel SIGKILL this process when its parent ends; if
    the parent has ended already, end now."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        log.warning("could not tie process %d to its parent: errno %d", os.getpid(), ctypes.get_errno())
    elif _forked_by is not None and os.getppid() != _forked_by:
        os._exit(1)


def end_forked_children_with_their_parent() -> bool:
    """From now on, every process forked from this one (and from those, and so on) is ended by the
    kernel when the process that forked it ends. Linux only; returns whether it applies."""
    if not sys.platform.startswith("linux"):
        return False
    os.register_at_fork(before=_remember_parent, after_in_child=_end_with_parent)
    return True


class PreloadingLocalExecutor(LocalExecutor):
    """LocalExecutor that imports the heavy libraries before forking its worker processes, whose
    workers and task processes end with the scheduler."""

    def start(self) -> None:
        if not end_forked_children_with_their_parent():
            log.warning("workers and tasks may outlive a killed scheduler on %s", sys.platform)
        if self.is_mp_using_fork:
            started = time.perf_counter()
            timings = preload(preload_modules())
            log.info("preloaded %d modules for task processes in %.1fs", len(timings),
                     time.perf_counter() - started)
        else:  # spawned workers would not inherit anything
            log.warning("multiprocessing start method is not fork: task processes import their libraries")
        super().start()
