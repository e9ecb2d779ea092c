"""Retraining on live performance: the decision is a pure function of the performance table, the
version's holdout value and the earlier requests; bounds know their metric's direction."""
from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from pipelines import alerts
from pipelines.core.bounds import Bound
from pipelines.core.spec import Metric, PerformanceSpec
from pipelines.monitoring.performance import decide

TODAY = dt.date(2026, 1, 28)


def _measured(*rows) -> pd.DataFrame:
    """(label_date, version, labels, roc_auc[, source]) per row."""
    return pd.DataFrame([{"label_date": r[0], "model_version": r[1], "rows": r[2], "roc_auc": r[3],
                          "rmse": r[3], "source": r[4] if len(r) > 4 else "batch"} for r in rows])


DROPPING = _measured(("2026-01-24", "3", 800, 0.86), ("2026-01-25", "3", 790, 0.71), ("2026-01-26", "3", 812, 0.62))
DRIFT_POLICY = {"max_drop": 0.1, "min_labels": 200, "consecutive_days": 2}

CASES = [   # name, policy, holdout, measured, requested, retrain, under, in reason
    ("two days beyond holdout - drop", DRIFT_POLICY, 0.87, DROPPING, [], True, True,
     "live roc_auc of champion v3 (batch scores) beyond its floor 0.7700 (holdout 0.8700, allowed drop 0.1) on 2 "
     "consecutive label dates: 0.7100 on 2026-01-25 (790 labels), 0.6200 on 2026-01-26 (812 labels)"),
    ("a fixed floor", {"floor": 0.65, "consecutive_days": 1}, None, DROPPING, [], True, True, "floor 0.6500"),
    ("one good day among them", {**DRIFT_POLICY, "consecutive_days": 3}, 0.87, DROPPING, [], False, False,
     "within its floor 0.7700"),
    ("too few labels to count", {**DRIFT_POLICY, "min_labels": 805}, 0.87, DROPPING, [], False, False,
     "1 of 2 label dates measured with at least 805 labels for champion v3"),
    ("another version's days do not count", DRIFT_POLICY, 0.87,
     _measured(("2026-01-25", "2", 790, 0.5), ("2026-01-26", "3", 812, 0.62)), [], False, False, "1 of 2"),
    ("online scores judged apart", {**DRIFT_POLICY, "source": "online"}, 0.87, DROPPING, [], False, False, "0 of 2"),
    ("within the cooldown", DRIFT_POLICY, 0.87, DROPPING, ["2026-01-22"], False, True,
     "a retraining was requested on 2026-01-22, within the 7-day cooldown"),
    ("once a day", DRIFT_POLICY, 0.87, DROPPING, ["2026-01-28"], False, True, "requested on 2026-01-28"),
    ("after the cooldown", DRIFT_POLICY, 0.87, DROPPING, ["2026-01-21"], True, True, "beyond its floor"),
    ("labels after today are not known today", DRIFT_POLICY, 0.87,
     _measured(("2026-01-27", "3", 800, 0.6), ("2026-01-29", "3", 800, 0.6)), [], False, False, "1 of 2"),
    ("no holdout value to drop from", DRIFT_POLICY, None, DROPPING, [], False, False, "has no holdout roc_auc"),
]


@pytest.mark.parametrize("name, policy, holdout, measured, requested, retrain, under, reason", CASES,
                         ids=[c[0] for c in CASES])
def test_the_performance_decision(name, policy, holdout, measured, requested, retrain, under, reason):
    decision = decide(PerformanceSpec(**policy), Metric.ROC_AUC, "3", holdout, measured, TODAY, requested, 7)
    assert (decision.retrain, decision.under_bound) == (retrain, under), decision.reason
    assert reason in decision.reason
    assert decision.ds == "2026-01-28" and decision.metric == "roc_auc"


def test_an_error_metric_has_a_ceiling():
    rising = _measured(("2026-01-25", "3", 800, 14.0), ("2026-01-26", "3", 800, 15.5))
    decision = decide(PerformanceSpec(max_drop=2.0), Metric.RMSE, "3", 11.0, rising, TODAY, [], 0)
    assert decision.retrain and "beyond its ceiling 13.0000 (holdout 11.0000, allowed drop 2)" in decision.reason
    holding = decide(PerformanceSpec(max_drop=5.0), Metric.RMSE, "3", 11.0, rising, TODAY, [], 0)
    assert not holding.retrain and "within its ceiling 16.0000" in holding.reason


@pytest.mark.parametrize("metric, value, bound, holds", [
    (Metric.ROC_AUC, 0.80, 0.80, True), (Metric.ROC_AUC, 0.79, 0.80, False),
    (Metric.RMSE, 3.0, 3.0, True), (Metric.RMSE, 3.1, 3.0, False), (Metric.BRIER, 0.05, 0.08, True),
])
def test_a_bound_knows_its_direction(metric, value, bound, holds):
    assert Bound(metric, bound).holds(value) is holds
    assert Bound.allowed_change(metric, 0.5, 0.1).value == (0.4 if metric.higher_is_better else 0.6)


def test_people_hear_of_a_missed_bound_with_the_days_judged():
    decision = decide(PerformanceSpec(**DRIFT_POLICY), Metric.ROC_AUC, "3", 0.87, DROPPING, TODAY, ["2026-01-28"], 7)
    from dataclasses import asdict
    alert = alerts.performance_low("churn", asdict(decision))
    title, body = alerts.render(alert, "prod")
    assert title == "[churn prod] 2026-01-28 live roc_auc of v3 beyond its bound 0.7700"
    assert "2026-01-26: roc_auc 0.6200 on 812 labels" in body and "within the 7-day cooldown" in body
    held = decide(PerformanceSpec(floor=0.5), Metric.ROC_AUC, "3", None, DROPPING, TODAY, [], 7)
    assert alerts.performance_low("churn", asdict(held)) is None and alerts.performance_low("churn", None) is None


def test_a_policy_needs_exactly_one_bound():
    from pydantic import ValidationError
    for bad in ({}, {"floor": 0.7, "max_drop": 0.1}):
        with pytest.raises(ValidationError, match="give floor .* or max_drop"):
            PerformanceSpec(**bad)
