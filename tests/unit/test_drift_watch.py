"""The drift watch evaluates every drift result that woke it, not only the newest."""
from types import SimpleNamespace

import pytest

from mlops_airflow.sensors import choose_decision, event_dates


def _events(*dates):
    return {"churn_drift_summary": [SimpleNamespace(extra={"ds": d}) for d in dates]}


def test_every_queued_drift_result_is_evaluated_in_order():
    context = {"triggering_asset_events": _events("2026-02-12", "2026-02-10", "2026-02-11", "2026-02-11")}
    assert event_dates(context) == ["2026-02-10", "2026-02-11", "2026-02-12"]
    assert event_dates({"triggering_asset_events": {}}) == []


@pytest.mark.parametrize("flags, acted_on", [
    ([False, True, False], "2026-02-11"),     # a retrain request in the middle is not lost
    ([True, False, True], "2026-02-12"),      # the newest request wins
    ([False, False, False], "2026-02-12"),    # nothing to do: the newest decision is reported
])
def test_the_decision_acted_on(flags, acted_on):
    dates = ["2026-02-10", "2026-02-11", "2026-02-12"]
    decisions = [{"ds": d, "retrain": f, "reason": f"r{d}", "drift_share": 0.1, "model_version": "1"}
                 for d, f in zip(dates, flags)]
    chosen = choose_decision(decisions)
    assert chosen["ds"] == acted_on and chosen["retrain"] == any(flags)
    assert [e["ds"] for e in chosen["evaluated"]] == dates
