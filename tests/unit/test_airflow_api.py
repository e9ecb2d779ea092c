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


def test_xcom_value_is_read_through_the_any_of_wrapper():
    from airflow_client.client.models.response_get_xcom_entry import ResponseGetXcomEntry
    from airflow_client.client.models.x_com_response_native import XComResponseNative

    from scripts.airflow_api import AirflowClient

    native = XComResponseNative(key="work_seconds", value=1.5, timestamp="2026-01-01T00:00:00Z",
                                logical_date=None, map_index=-1, task_id="t", dag_id="d", run_id="r",
                                dag_display_name="d", task_display_name="t", run_after="2026-01-01T00:00:00Z")
    client = AirflowClient.__new__(AirflowClient)
    client.xcom_api = type("Api", (), {"get_xcom_entry": lambda *a, **k: ResponseGetXcomEntry(native)})()
    assert client.xcom("d", "r", "t", "work_seconds") == 1.5


@pytest.mark.parametrize("run, day", [
    ({"logical_date": "2026-01-05T00:00:00Z"}, "2026-01-05"),
    ({"logical_date": None}, ""),          # woken by an asset, or triggered with a `ds` Param instead
    ({}, ""),
])
def test_logical_day_of_a_run(run, day):
    from scripts.airflow_api import logical_day

    assert logical_day(run) == day


@pytest.mark.parametrize("entry, line", [
    ("plain text", "plain text"),
    ({"event": "Task failed", "exception": [{"exc_type": "ChampionLost", "exc_value": "v3 is gone", "frames": []}]},
     "Task failed | ChampionLost: v3 is gone"),
    ({"event": "Task failed", "error_detail": [{"exc_type": "KeyError", "exc_value": "'x'"},
                                               {"exc_type": "RuntimeError", "exc_value": "wrapped"}]},
     "Task failed | KeyError: 'x' | RuntimeError: wrapped"),
    ({"event": "Done.", "exception": "not a list"}, "Done."),
])
def test_a_failure_log_line_carries_the_exception_text(entry, line):
    from scripts.airflow_api import _log_line

    assert _log_line(entry) == line
