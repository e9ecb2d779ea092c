"""The API driver's decision which refusals to wait out (the rest propagate at once)."""
import pytest
from airflow_client.client.exceptions import ConflictException, NotFoundException

from scripts.airflow_api import _earlier_backfill_open


def _conflict(body: str) -> ConflictException:
    error = ConflictException(status=409, reason="Conflict")
    error.body = body
    return error


@pytest.mark.parametrize("error, wait", [
    (_conflict('{"detail":"There is already a running backfill for dag churn_daily"}'), True),
    (_conflict('{"detail":"DAG run already exists"}'), False),
    (NotFoundException(status=404, reason="Not Found"), False),
    (ValueError("already a running backfill"), False),
])
def test_only_an_open_earlier_backfill_is_waited_out(error, wait):
    assert _earlier_backfill_open(error) is wait
