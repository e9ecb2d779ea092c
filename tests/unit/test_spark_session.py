"""Which Spark Connect session a task attaches to (pure; the fault suite closes a real one)."""
from __future__ import annotations

import uuid

import pytest

from pipelines.core.config import Settings
from pipelines.core.spark import SHARED_SESSION_PERIOD_S, shared_session_url

HOUR = SHARED_SESSION_PERIOD_S
T = 1_800_000_000.0 - 1_800_000_000.0 % HOUR   # the start of a period


def session_id(url: str) -> str:
    return url.split("session_id=")[1]


@pytest.mark.parametrize("remote, now_a, scope_a, now_b, scope_b, same", [
    ("sc://127.0.0.1:15002", T, "/lake", T + HOUR - 1, "/lake", True),        # one period: one session
    ("sc://127.0.0.1:15002", T, "/lake", T + HOUR, "/lake", False),           # the next period: a new one
    ("sc://127.0.0.1:15002", T, "/lake", T, "/other-lake", False),            # deployments never share
    ("sc://h:15002/;token=x", T, "/lake", T + 10, "/lake", True),
])
def test_shared_session_follows_the_period_and_the_deployment(remote, now_a, scope_a, now_b, scope_b, same):
    a, b = shared_session_url(remote, scope_a, now_a), shared_session_url(remote, scope_b, now_b)
    assert (session_id(a) == session_id(b)) is same
    assert uuid.UUID(session_id(a)).version == 4   # Spark Connect accepts only version-4 ids


@pytest.mark.parametrize("remote, expected_prefix", [
    ("sc://127.0.0.1:15002", "sc://127.0.0.1:15002/;session_id="),
    ("sc://127.0.0.1:15002/", "sc://127.0.0.1:15002/;session_id="),
    ("sc://h:15002/;token=x", "sc://h:15002/;token=x;session_id="),
])
def test_session_id_is_a_connection_parameter(remote, expected_prefix):
    assert shared_session_url(remote, "/lake", T).startswith(expected_prefix)


def test_a_url_that_names_its_session_is_left_alone():
    remote = f"sc://h:15002/;session_id={uuid.uuid4()}"
    assert shared_session_url(remote, "/lake", T) == remote


@pytest.mark.parametrize("value, shared", [(None, True), ("1", True), ("0", False), ("false", False),
                                           ("off", False), ("yes", True)])
def test_sharing_is_on_unless_switched_off(value, shared):
    env = {} if value is None else {"MLOPS_SPARK_SHARED_SESSION": value}
    assert Settings.from_env(env).spark_shared_session is shared
