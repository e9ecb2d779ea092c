"""The scoring service's model process: models score in a process of their own, beside the HTTP one.

In one process the model and the HTTP server share one interpreter lock. Under load each took
turns waiting for the other: at 200 requests/s on 2 cores a batch of 8 records took 10 ms of CPU
and 15 ms of wall time in the service, against 6 ms alone; and once the model thread held the
lock most of the time, requests reached it one by one, batches stayed small and the service fell
behind (p50 over 100 ms). In a process of its own the model scores on the other core while the
server takes the next requests in.

:class:`ModelProcess` (the service's side) starts the process (``spawn``: the service has threads),
sends it each version it serves once (:meth:`load`: the fitted model, pickled, scored on a test
record before it is accepted) and then only records (:meth:`score`) over one pipe; answers come
back on the same pipe. Calls are serialized: the process scores one batch at a time, and the
micro-batchers in front of it (:mod:`pipelines.serving.micro_batching`) gather what arrives meanwhile.
A process that dies or does not answer within ``timeout_s`` is replaced by a new one, which gets
the versions loaded again; the call that found it gone is tried once more on the new one.

The service runs two: one for the answers requests wait for, one for shadow scoring
(:meth:`pipelines.serving.model_server.ModelServer.score_in_shadow`), whose large batches would otherwise hold
up the answers behind them (at 200 requests/s they added half to the p99). The shadow one runs at
a lower CPU priority (niceness +10): nobody waits for its answers.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import threading
import time
from dataclasses import dataclass

from pipelines.serving.records import calm_garbage_collector, score_records

log = logging.getLogger(__name__)

_LOST = (EOFError, BrokenPipeError, ConnectionResetError, OSError)   # the pipe's other end is gone


@dataclass(frozen=True)
class _Loaded:
    """A version as the model process holds it."""

    model: object
    inputs: dict
    task: object


class ModelProcessLost(RuntimeError):
    """The model process died or stopped answering (it was replaced)."""


class ModelProcess:
    """The service's handle on its model process; thread-safe (one call at a time)."""

    LOAD_TIMEOUT_S = 60.0   # starting a process and loading versions may take a while on a busy machine

    def __init__(self, name: str = "model", timeout_s: float = 60.0, niceness: int = 0):
        self.name, self.timeout_s = name, timeout_s   # timeout_s: for a batch to be scored
        self.busy_since: float | None = None          # when the call now waiting for an answer was sent
        self.niceness = niceness   # added to the process's niceness: a lower CPU priority
        self.restarts = 0
        self._held: dict[str, tuple[bytes, dict, object]] = {}   # key -> what load sent: sent again after a restart
        self._lock = threading.Lock()
        self._process = self._conn = None
        self._closed = False

    # ------------------------------------------------------------------ calls
    def load(self, key: str, model, inputs: dict, task, example: list[dict] | None) -> None:
        """Hold ``model`` under ``key`` in the process; raises what scoring ``example`` there raises
        (then the process does not keep it). ``None``: no test (a version already accepted)."""
        blob = pickle.dumps(model)
        with self._lock:
            self._call("load", key, blob, inputs, task, example)
            self._held[key] = (blob, inputs, task)

    def score(self, key: str, records: list[dict]) -> list[dict]:
        """The outputs of the version held under ``key`` for checked records (JSON-ready dicts)."""
        with self._lock:
            return self._call("score", key, records)

    def holds(self, key: str) -> bool:
        return key in self._held

    def unload(self, key: str) -> None:
        """Drop the version held under ``key`` (nothing if it is not held)."""
        with self._lock:
            if self._held.pop(key, None) is not None and self._process is not None:
                try:
                    self._call("unload", key, retry=False)
                except Exception as exc:   # noqa: BLE001 - a version nobody serves any more
                    log.warning("%s: unloading %s: %s", self.name, key, exc)

    def close(self) -> None:
        """Stop the process; later calls raise :class:`ModelProcessLost` (a late batch of a
        service shutting down) instead of starting another one."""
        with self._lock:
            self._closed = True
            self._stop()
            self._held.clear()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # ------------------------------------------------------------------ the pipe
    def _call(self, op: str, *args, retry: bool = True):
        if self._closed:
            raise ModelProcessLost(f"{self.name}: the model process was closed")
        if self._process is None:
            self._start()
        try:
            ok, result = self._exchange(op, args)
        except _LOST + (TimeoutError,) as exc:
            self._restart(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            if not retry:
                raise ModelProcessLost(f"{self.name}: model process lost during {op}") from exc
            try:
                ok, result = self._exchange(op, args)
            except _LOST + (TimeoutError,) as again:
                self._stop()
                raise ModelProcessLost(f"{self.name}: model process lost twice during {op}: {again}") from again
        if not ok:
            raise result
        return result

    def _exchange(self, op: str, args: tuple):
        timeout = self.timeout_s if op == "score" else max(self.timeout_s, self.LOAD_TIMEOUT_S)
        self._conn.send_bytes(pickle.dumps((op, args)))
        self.busy_since = time.monotonic() if op == "score" else None
        try:
            if not self._conn.poll(timeout):
                raise TimeoutError(f"no answer to {op} within {timeout:.0f} s")
            return pickle.loads(self._conn.recv_bytes())
        finally:
            self.busy_since = None

    @property
    def stalled(self) -> bool:
        """A batch has waited for its answer more than half the timeout: the process is hung (or
        about to be replaced); callers should not queue behind it."""
        since = self.busy_since
        return since is not None and time.monotonic() - since > self.timeout_s / 2

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")   # never fork a process with threads
        self._conn, child = context.Pipe()
        self._process = context.Process(target=serve, args=(child, self.niceness), name=f"{self.name}-models",
                                        daemon=True)
        self._process.start()
        child.close()
        for key, (blob, inputs, task) in self._held.items():   # a replacement: everything held, again
            ok, result = self._exchange("load", (key, blob, inputs, task, None))
            if not ok:
                raise result
        log.info("%s: model process %d started (%d version(s) loaded)", self.name, self._process.pid, len(self._held))

    def _restart(self, why: str) -> None:
        self.restarts += 1
        log.error("%s: model process %s lost (%s); starting a new one", self.name, self.pid, why)
        self._stop()
        self._start()

    def _stop(self) -> None:
        if self._process is None:
            return
        try:
            self._conn.close()
        except OSError:
            pass
        self._process.join(timeout=2)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        self._process = self._conn = None


# ---------------------------------------------------------------------- in the model process
def serve(conn, niceness: int = 0) -> None:
    """The model process's loop: one request at a time from the service, until the pipe closes."""

    from threadpoolctl import threadpool_limits

    if niceness:
        os.nice(niceness)
    threadpool_limits(1)   # one core's work at a time: the HTTP process has the other one
    held: dict[str, _Loaded] = {}
    while True:
        try:
            op, args = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            result = _OPS[op](held, *args)
            answer = (True, result)
        except Exception as exc:   # noqa: BLE001 - the service raises it in the caller
            answer = (False, exc)
        try:
            conn.send_bytes(pickle.dumps(answer))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:   # an exception that cannot travel
            conn.send_bytes(pickle.dumps((False, RuntimeError(f"{type(answer[1]).__name__}: {answer[1]} ({exc})"))))


def _load(held: dict, key: str, blob: bytes, inputs: dict, task, example: list[dict] | None) -> int:
    loaded = _Loaded(pickle.loads(blob), inputs, task)
    if example is not None:
        _score_with(loaded, example)   # it answers here before it serves
    held[key] = loaded
    calm_garbage_collector()   # models and libraries are long-lived: keep them out of later collections
    return len(held)


def _score(held: dict, key: str, records: list[dict]) -> list[dict]:
    return _score_with(held[key], records)


def _unload(held: dict, key: str) -> int:
    held.pop(key, None)
    return len(held)


def _score_with(loaded: _Loaded, records: list[dict]) -> list[dict]:
    return score_records(loaded.task, loaded.model, loaded.inputs, records)


_OPS = {"load": _load, "score": _score, "unload": _unload}
