"""The one polling helper: returns what the condition found, retries what it is told to, names
what never came, and lets any other error through at once."""
from __future__ import annotations

import pytest

from pipelines.core.waiting import wait_until


def test_returns_the_first_truthy_value():
    seen = iter([None, 0, {"state": "success"}])
    assert wait_until(lambda: next(seen), timeout=5, interval=0.01) == {"state": "success"}


def test_a_condition_that_never_holds_names_what_was_awaited():
    with pytest.raises(TimeoutError, match=r"run r1 \(last seen: queued\): not done after 0s"):
        wait_until(lambda: False, timeout=0.2, interval=0.05, what=lambda: "run r1 (last seen: queued)")


def test_errors_it_is_told_to_retry_are_retried_and_the_last_one_raised_at_the_deadline():
    calls = {"n": 0}

    def starting():
        calls["n"] += 1
        raise ConnectionError(f"refused #{calls['n']}")

    with pytest.raises(ConnectionError, match="refused #"):
        wait_until(starting, timeout=0.3, interval=0.05, retry_on=(ConnectionError,))
    assert calls["n"] > 1


def test_any_other_error_ends_the_wait_at_once():
    calls = {"n": 0}

    def broken():
        calls["n"] += 1
        raise RuntimeError("the service died")

    with pytest.raises(RuntimeError, match="died"):
        wait_until(broken, timeout=5, interval=0.01, retry_on=(ConnectionError,))
    assert calls["n"] == 1
