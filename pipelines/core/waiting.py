"""The one way this project waits for something: poll a condition until it holds or a deadline
passes (tenacity underneath), naming what was awaited when it never came."""
from __future__ import annotations

from typing import Any, Callable

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed


class _NotYet(Exception):
    """The condition does not hold yet (retried until the deadline)."""


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 1.0,
               what: str | Callable[[], str] = "condition", retry_on: tuple[type[BaseException], ...] = ()) -> Any:
    """Call ``condition`` every ``interval`` s until it returns a truthy value, which is returned.

    An exception of a type in ``retry_on`` counts as "not yet" (a server still starting); the
    last one is raised again at the deadline. Any other exception propagates at once. A condition
    that is still falsy at the deadline is a TimeoutError naming ``what`` (a callable is asked
    then, so it can say what was last seen)."""
    def attempt():
        value = condition()
        if not value:
            raise _NotYet()
        return value

    try:
        for tried in Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(interval), reraise=True,
                              retry=retry_if_exception_type((_NotYet, *retry_on))):
            with tried:
                return attempt()
    except _NotYet:
        raise TimeoutError(f"{what() if callable(what) else what}: not done after {timeout:.0f}s") from None
