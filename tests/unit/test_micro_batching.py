"""Micro-batching: concurrent requests are scored by one call, each gets its own outputs back, and
a failing batch is scored again per request so that only the bad request sees an error."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipelines.serving.micro_batching import MicroBatcher


class Scorer:
    """Doubles each record's x; the first call waits until released, so the others queue up."""

    def __init__(self):
        self.calls: list[int] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, records: list[dict]) -> list[dict]:
        self.calls.append(len(records))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if any(r["x"] < 0 for r in records):
            raise ValueError("negative x")
        return [{"y": r["x"] * 2} for r in records]


def _queue_behind_a_busy_batch(batcher: MicroBatcher, scorer: Scorer, requests: list[list[dict]]):
    """Submit one request that keeps the batcher busy, then ``requests`` while it is busy."""
    pool = ThreadPoolExecutor(len(requests) + 1)
    first = pool.submit(batcher, [{"x": 0}])
    assert scorer.entered.wait(10)
    futures = [pool.submit(batcher, records) for records in requests]
    while batcher._queue.qsize() < len(requests):   # every request is waiting for the batcher
        threading.Event().wait(0.01)
    scorer.release.set()
    return first, futures


def test_requests_waiting_together_are_scored_by_one_call_and_each_gets_its_own_outputs():
    scorer = Scorer()
    batcher = MicroBatcher(scorer, max_rows=100)
    requests = [[{"x": i}, {"x": i + 100}] for i in range(1, 9)]
    first, futures = _queue_behind_a_busy_batch(batcher, scorer, requests)
    assert first.result(10) == [{"y": 0}]
    for records, future in zip(requests, futures):
        assert future.result(10) == [{"y": r["x"] * 2} for r in records]
    assert scorer.calls == [1, 16], "the eight waiting requests were one call"
    assert batcher.stats.batches == 2 and batcher.stats.largest == 16 and batcher.stats.rows == 17
    batcher.close()


def test_a_batch_never_exceeds_max_rows():
    scorer = Scorer()
    batcher = MicroBatcher(scorer, max_rows=5)
    requests = [[{"x": i}, {"x": i}] for i in range(1, 7)]   # 12 records waiting
    first, futures = _queue_behind_a_busy_batch(batcher, scorer, requests)
    assert [f.result(10) for f in futures] == [[{"y": 2 * i}] * 2 for i in range(1, 7)]
    assert max(scorer.calls[1:]) <= 5 and sum(scorer.calls[1:]) == 12
    batcher.close()


def test_a_failing_batch_fails_only_the_request_that_broke_it():
    scorer = Scorer()
    batcher = MicroBatcher(scorer, max_rows=100)
    requests = [[{"x": 1}], [{"x": -1}], [{"x": 3}]]
    first, futures = _queue_behind_a_busy_batch(batcher, scorer, requests)
    assert futures[0].result(10) == [{"y": 2}] and futures[2].result(10) == [{"y": 6}]
    with pytest.raises(ValueError, match="negative x"):
        futures[1].result(10)
    assert batcher.stats.retried == 1
    batcher.close()


def test_batching_off_scores_each_request_alone_off_the_callers_thread_and_closed_scores_on_it():
    seen = []

    def score(records):
        seen.append((threading.current_thread().name, len(records)))
        return [{"y": r["x"]} for r in records]

    scorer = Scorer()
    off = MicroBatcher(scorer, max_rows=1, name="off")
    first, futures = _queue_behind_a_busy_batch(off, scorer, [[{"x": 1}], [{"x": 2}], [{"x": 3}, {"x": 4}]])
    assert [f.result(10) for f in futures] == [[{"y": 2}], [{"y": 4}], [{"y": 6}, {"y": 8}]]
    assert scorer.calls == [1, 1, 1, 2], "one call per request, a request larger than max_rows whole"
    off.close()
    closed = MicroBatcher(score, max_rows=10)
    closed.close()
    assert closed([{"x": 5}]) == [{"y": 5}] and seen == [(threading.current_thread().name, 1)]
    inline = MicroBatcher.inline(score)
    assert inline.submit([{"x": 6}]).result(0) == [{"y": 6}] and inline._thread is None


def test_drain_returns_once_every_earlier_request_is_scored_and_its_callback_ran():
    import time

    logged = []

    def score(records):
        time.sleep(0.05)
        return [{"y": r["x"]} for r in records]

    batcher = MicroBatcher(score, max_rows=100, max_wait_ms=300)   # a shadow's long wait
    for i in range(5):
        batcher.submit([{"x": i}]).add_done_callback(lambda f: logged.append(f.result()[0]["y"]))
    batcher.drain(10)
    assert sorted(logged) == [0, 1, 2, 3, 4]
    assert batcher.stats.rows == 5, "the drain marker scored nothing"
    batcher.close()


def test_submit_returns_before_the_batch_is_scored():
    scorer = Scorer()
    batcher = MicroBatcher(scorer, max_rows=100)
    future = batcher.submit([{"x": 7}])
    assert scorer.entered.wait(10) and not future.done(), "the caller was not held while its batch scored"
    scorer.release.set()
    assert future.result(10) == [{"y": 14}] and future.model_ms > 0
    batcher.close()


def test_shadow_answers_arrive_without_waiting_with_their_batch_time_and_errors(small_spec):
    from types import SimpleNamespace

    from pipelines.serving.model_server import CircuitBreaker, ModelServer, ServedModel

    def score(records):
        if any(r["x"] < 0 for r in records):
            raise ValueError("negative x")
        return [{"score": r["x"] / 10} for r in records]

    server = ModelServer(small_spec)
    breaker = CircuitBreaker(max_failures=1)
    served = ServedModel(SimpleNamespace(version="3"), None, {"x": "double"}, 0.0, breaker,
                         shadow_batcher=MicroBatcher(score, max_rows=100, max_wait_ms=50))
    got, arrived = [], threading.Event()

    def then(answer):
        got.append(answer)
        if len(got) == 2:
            arrived.set()

    server.score_in_shadow(served, [{"x": 1.0}], "candidate", then)
    server.score_in_shadow(served, [{"x": -1.0}], "candidate", then)
    assert arrived.wait(10)
    ok = next(a for a in got if a.outputs is not None)
    failed = next(a for a in got if a.outputs is None)
    assert ok.outputs == [{"score": 0.1}] and ok.model_ms >= 0 and ok.error is None
    assert "v3 failed: ValueError: negative x" in failed.error
    assert breaker.allow(), "a shadow's failure leaves the circuit breaker alone"
    served.close()
