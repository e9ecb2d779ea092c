"""Drift detection (real Evidently) and the retrain policy."""
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pipelines.core.lake import Lake, replace_partition
from pipelines.monitoring.watch import (DRIFT_SUMMARY, RETRAIN_REQUESTS, column_drift_from_snapshot, drift_report,
                                        retrain_decision)


def _frames(n=1500, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(shift, 1, n), "b": rng.normal(0, 1, n),
                         "c": rng.choice(["x", "y", "z"], n)})


def test_drift_report_flags_the_shifted_column_only(tmp_path):
    html = tmp_path / "r.html"
    result = {r.column: r for r in drift_report(_frames(), _frames(shift=1.0, seed=1), ["a", "b"], ["c"], html)}
    assert result["a"].drifted and not result["b"].drifted and not result["c"].drifted
    assert html.exists() and html.stat().st_size > 10_000


def test_empty_column_and_missing_value_jump(tmp_path):
    reference = _frames()
    current = _frames(seed=2)
    current["a"] = np.nan                                    # an input broke entirely
    current.loc[current.index[:600], "b"] = np.nan           # 40% missing, present values unchanged
    result = {r.column: r for r in drift_report(reference, current, ["a", "b"], ["c"])}
    assert result["a"].drifted and result["a"].method == "all values missing"
    assert result["b"].drifted and "missing-value jump" in result["b"].method
    assert not result["c"].drifted


def test_p_value_methods_drift_below_threshold():
    snapshot = {"metrics": [
        {"config": {"type": "evidently:metric_v2:ValueDrift", "column": "a", "method": "K-S p_value", "threshold": 0.05},
         "value": 0.01},
        {"config": {"type": "evidently:metric_v2:ValueDrift", "column": "b", "method": "Wasserstein distance (normed)",
                    "threshold": 0.1}, "value": 0.05},
        {"config": {"type": "evidently:metric_v2:DriftedColumnsCount"}, "value": {"count": 1}},
    ]}
    assert [(c, d) for c, _, _, _, d in column_drift_from_snapshot(snapshot)] == [("a", True), ("b", False)]


@pytest.fixture()
def lake(tmp_path):
    return Lake(tmp_path)


def _summary(lake, spec, day, share, version="1"):
    replace_partition(lake.monitoring(spec.name, DRIFT_SUMMARY), day, pd.DataFrame([{
        "model_version": version, "drift_share": share, "columns": 10, "drifted_columns": int(share * 10),
        "drifted_column_names": "a,b"}]))


def test_retrain_policy(lake, small_spec):
    d = dt.date(2026, 1, 10)
    threshold = small_spec.monitoring.drift_share_threshold
    assert not retrain_decision(small_spec, lake, d).retrain                       # no result yet
    _summary(lake, small_spec, d, threshold / 2)
    low = retrain_decision(small_spec, lake, d)
    assert not low.retrain and "below threshold" in low.reason
    _summary(lake, small_spec, d, threshold + 0.1)
    first = retrain_decision(small_spec, lake, d)
    assert not first.retrain and "consecutive" in first.reason                     # needs 2 days
    _summary(lake, small_spec, d - dt.timedelta(days=1), threshold + 0.2)
    yes = retrain_decision(small_spec, lake, d)
    assert yes.retrain and "2 consecutive days on champion v1" in yes.reason
    replace_partition(lake.monitoring(small_spec.name, RETRAIN_REQUESTS), d - dt.timedelta(days=1),
                      pd.DataFrame([{"reason": "earlier"}]))
    cooled = retrain_decision(small_spec, lake, d)
    assert not cooled.retrain and "cooldown" in cooled.reason


def test_persistence_counts_the_same_champion_only(lake, small_spec):
    d = dt.date(2026, 1, 10)
    _summary(lake, small_spec, d - dt.timedelta(days=1), 0.9, version="1")
    _summary(lake, small_spec, d, 0.9, version="2")                                # a new champion since
    assert not retrain_decision(small_spec, lake, d).retrain
