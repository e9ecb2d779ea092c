"""Micro-batching of concurrent predictions: one model call for the records of many requests.

A scikit-learn pipeline's cost for one row is nearly all fixed overhead (input checks, the column
transformer, the predictor's set-up): the churn pipeline takes about 5 ms for 1 row and about the
same for 64. Under load the service's requests hand their records to one :class:`MicroBatcher`
per served model (:meth:`MicroBatcher.submit` returns at once with a future); its thread takes
every request waiting (up to ``max_rows`` records, after waiting ``max_wait_ms`` for more to
arrive), scores them in one call and gives each request its own outputs back. At low traffic a request is scored alone with no wait; the busier the
service, the larger the batches, so throughput grows with load instead of collapsing.

A batch that fails is scored again one request at a time, so a request gets its own error and
never a neighbour's.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

_CLOSE = object()


class BatchFuture(Future):
    """The future of one request's outputs; ``model_ms``: how long its batch took to score (the
    model's time, without the wait in the queue)."""

    model_ms: float = 0.0


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    largest: int = 0
    retried: int = 0     # batches that failed and were scored again one request at a time


class MicroBatcher:
    """Calls ``score(records) -> outputs`` (lists, one output per record, in order) on the
    records of concurrent :meth:`__call__` callers together, from one daemon thread.
    ``max_rows <= 1`` turns batching off (each request is a call of its own, still on the
    batcher's thread: the caller may be an event loop, which must not score)."""

    def __init__(self, score: Callable[[list], list], max_rows: int = 256,
                 max_wait_ms: float = 0.0, name: str = "model", on_start: Callable[[], None] | None = None):
        self.score, self.max_rows, self.max_wait_s = score, max_rows, max_wait_ms / 1000
        self.on_start = on_start   # run once on the batcher's thread before its first batch
        self.name = name
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._carry = None   # an item taken that did not fit in the last batch
        self._closed = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @classmethod
    def inline(cls, score: Callable[[list], list], name: str = "model") -> "MicroBatcher":
        """A batcher that scores on the caller's thread (no thread of its own, no batching)."""
        batcher = cls(score, max_rows=1, name=name)
        batcher.close()
        return batcher

    def __call__(self, records: list) -> list:
        """These records' outputs; raises what scoring them alone raises."""
        return self.submit(records).result()

    def submit(self, records: list) -> BatchFuture:
        """The future of these records' outputs (for callers that do not wait for them)."""
        done = BatchFuture()
        if self._closed:   # a late request for a model no longer served: scored here, once
            self._resolve(records, done)
            return done
        self._ensure_thread()
        self._queue.put((records, done))
        return done

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every request submitted before this call is scored and its callbacks ran
        (an empty request queued behind them; batches keep their order)."""
        self.submit([]).result(timeout)

    def close(self) -> None:
        """Stop the thread once the waiting requests are scored; later calls score on the caller's
        thread."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(_CLOSE)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=f"{self.name}-batcher", daemon=True)
                    self._thread.start()

    def _take(self) -> tuple[list, bool]:
        """The next batch: one waiting item (blocking), then whatever else arrives within the wait,
        up to ``max_rows`` records; and whether the batcher was closed."""
        first, self._carry = (self._carry, None) if self._carry is not None else (self._queue.get(), None)
        if first is _CLOSE:
            return [], True
        batch, rows = [first], len(first[0])   # a request larger than max_rows is a batch of its own
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_rows:
            try:
                wait = deadline - time.monotonic()
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _CLOSE or rows + len(item[0]) > self.max_rows:
                self._carry = item   # the next batch starts with it (a close: after this batch)
                break
            batch.append(item)
            rows += len(item[0])
        return batch, False

    def _run(self) -> None:
        if self.on_start is not None:
            self.on_start()
        while True:
            batch, closed = self._take()
            if closed:
                return
            self._score(batch)

    def _score(self, batch: list) -> None:
        if len(batch) == 1:
            self._resolve(*batch[0])
            return
        combined = [record for records, _ in batch for record in records]
        if not combined:   # nothing but drain markers
            for _, done in batch:
                done.set_result([])
            return
        started = time.perf_counter()
        try:
            outputs = self.score(combined)
        except Exception as exc:   # noqa: BLE001 - score each request alone: only its own error reaches it
            log.warning("%s: a batch of %d requests failed (%s: %s); scoring them one at a time", self.name,
                        len(batch), type(exc).__name__, exc)
            self.stats.retried += 1
            for records, done in batch:
                self._resolve(records, done)
            return
        self._count(len(combined))
        ms = (time.perf_counter() - started) * 1000
        start = 0
        for records, done in batch:
            done.model_ms = ms
            done.set_result(outputs[start:start + len(records)])
            start += len(records)

    def _resolve(self, records: list, done: BatchFuture) -> None:
        if not records:   # a drain marker
            done.set_result([])
            return
        started = time.perf_counter()
        try:
            outputs = self.score(records)
        except Exception as exc:   # noqa: BLE001 - the caller's thread raises it
            done.model_ms = (time.perf_counter() - started) * 1000
            done.set_exception(exc)
            return
        done.model_ms = (time.perf_counter() - started) * 1000
        self._count(len(records))
        done.set_result(outputs)

    def _count(self, rows: int) -> None:
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.largest = max(self.stats.largest, rows)
