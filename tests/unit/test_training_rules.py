"""Training and promotion rules that need no services."""
import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from pipelines.models.tasks import classification_metrics
from pipelines.release.decision import decide_promotion
from pipelines.training.fit import fit_model, label_window, make_estimator, make_pipeline, recency_weights


def test_label_window_uses_only_landed_labels(small_spec):
    w = label_window(small_spec, dt.date(2026, 1, 20))
    # labels for D land on D + 7; as of Jan 20 the newest landed partition is Jan 19 -> label date Jan 12
    assert w.holdout_end == dt.date(2026, 1, 12)
    assert w.holdout_start == dt.date(2026, 1, 10)
    assert w.fit_end == dt.date(2026, 1, 9) and w.fit_start == dt.date(2026, 1, 1)


def test_label_window_too_early(small_spec):
    with pytest.raises(ValueError, match="no labelled dates"):
        label_window(small_spec, dt.date(2026, 1, 9))


def test_recency_weights_halve():
    w = recency_weights(pd.Series(["2026-01-01", "2026-01-15", "2026-01-29"]), 14)
    assert np.allclose(w, [0.25, 0.5, 1.0])
    assert (recency_weights(pd.Series(["2026-01-01"]), None) == 1).all()


def test_metrics_nan_on_single_class():
    m = classification_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert math.isnan(m["roc_auc"])
    m = classification_metrics([0, 1, 1, 0], [0.1, 0.8, 0.7, 0.4], 0.5)
    assert m["roc_auc"] == 1.0 and m["precision"] == 1.0


def test_fit_refuses_single_class(small_spec):
    from pipelines.features.point_in_time import feature_columns

    cols = feature_columns(small_spec)
    frame = pd.DataFrame({c: np.zeros(20) for c in cols.numeric} | {c: ["a"] * 20 for c in cols.categorical})
    frame["churned"], frame["ds"] = 0, "2026-01-01"
    with pytest.raises(ValueError, match="single class"):
        fit_model(small_spec, frame)


def test_bad_estimator_path(small_spec):

    broken = small_spec.model_copy(update={"model": small_spec.model.model_copy(update={"estimator": "sklearn.nope.Model"})})
    with pytest.raises(ValueError, match="cannot be imported"):
        make_estimator(broken)


@pytest.mark.parametrize("challenger,champion,version,promote,why", [
    (float("nan"), 0.7, "1", False, "NaN"),
    (0.65, None, None, False, "below the floor"),
    (0.75, None, None, True, "first model"),
    (0.80, 0.78, "3", True, "beats champion v3"),
    (0.785, 0.78, "3", False, "does not beat"),
    (0.75, float("nan"), "3", True, "undefined"),
    (float("nan"), float("nan"), "3", False, "NaN"),
])
def test_promotion_rule(challenger, champion, version, promote, why):
    d = decide_promotion("roc_auc", challenger, champion, floor=0.7, min_improvement=0.01, champion_version=version)
    assert d.promote is promote and why in d.reason


@pytest.mark.parametrize("challenger,champion,version,promote,why", [
    (0.30, None, None, False, "above the ceiling"),     # Brier 0.30 is worse than the ceiling 0.25
    (0.20, None, None, True, "first model"),
    (0.10, 0.12, "3", True, "beats champion v3"),       # lower is better: a 0.02 decrease
    (0.115, 0.12, "3", False, "does not beat"),         # a 0.005 decrease is under the margin
    (0.13, 0.12, "3", False, "does not beat"),          # worse
])
def test_promotion_rule_for_lower_is_better_metric(challenger, champion, version, promote, why):
    d = decide_promotion("brier", challenger, champion, floor=0.25, min_improvement=0.01, champion_version=version)
    assert d.promote is promote and why in d.reason


@pytest.mark.parametrize("metric,challenger,champion,version,promote,why", [
    ("rmse", 40.0, None, None, True, "first model: rmse 40.0000 is defined (no ceiling set)"),
    ("rmse", 38.0, 40.0, "2", True, "beats champion v2 40.0000 by +2.0000"),
    ("rmse", 41.0, 40.0, "2", False, "does not beat"),
    ("f1_macro", 0.9, None, None, True, "no floor set"),
    ("f1_macro", float("nan"), None, None, False, "NaN"),
])
def test_promotion_rule_without_a_floor(metric, challenger, champion, version, promote, why):
    d = decide_promotion(metric, challenger, champion, floor=None, min_improvement=1.0 if metric == "rmse" else 0.01,
                         champion_version=version)
    assert d.promote is promote and why in d.reason


def test_random_split_is_stable_and_near_its_fraction():
    import pandas as pd

    from pipelines.training.fit import in_holdout

    entities = pd.Series([f"id-{i}" for i in range(5000)])
    mask = in_holdout(entities, 0.2)
    assert 0.17 < mask.mean() < 0.23
    assert (in_holdout(entities[::-1].reset_index(drop=True), 0.2) == mask[::-1]).all()   # by entity, not position
    assert not (mask & ~in_holdout(entities, 0.3)).any()    # a larger holdout contains the smaller one


def test_random_split_window_covers_the_same_dates(small_spec):
    from pipelines.core.spec import Split

    spec = small_spec.model_copy(update={"training": small_spec.training.model_copy(update={"split": Split.RANDOM})})
    w = label_window(spec, dt.date(2026, 1, 20))
    assert (w.fit_start, w.fit_end) == (w.holdout_start, w.holdout_end) == (dt.date(2026, 1, 1), dt.date(2026, 1, 12))


@pytest.mark.parametrize("configured, expected", [("1", 1), ("2", 2), ("", None)])
def test_model_fit_threads_follow_the_setting(monkeypatch, configured, expected):
    """Inside ``model_threads()`` the OpenMP pool (gradient boosting's) has the configured size;
    unset leaves the library's own choice."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_info

    from pipelines.training.fit import model_threads

    HistGradientBoostingClassifier(max_iter=2).fit(np.random.rand(40, 2), np.arange(40) % 2)   # loads OpenMP
    default = {p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"}
    monkeypatch.setenv("MLOPS_MODEL_THREADS", configured)
    with model_threads():
        inside = {p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"}
    assert inside == ({expected} if expected else default)


@pytest.mark.parametrize("half_life, estimator, binned", [
    (14, "sklearn.ensemble.HistGradientBoostingClassifier", True),     # weights: bin beforehand
    (None, "sklearn.ensemble.HistGradientBoostingClassifier", False),  # no weights: its own binning is fast
    (14, "sklearn.linear_model.LogisticRegression", False),            # bins would change what the model sees
])
def test_numeric_columns_are_binned_only_for_weighted_gradient_boosting(small_spec, half_life, estimator, binned):
    spec = small_spec.model_copy(update={
        "training": small_spec.training.model_copy(update={"recency_half_life_days": half_life}),
        "model": small_spec.model.model_copy(update={"estimator": estimator, "params": {}, "search_space": {}})})
    numeric = make_pipeline(spec).named_steps["features"].transformers[0][1]
    assert ("bins" in numeric.named_steps) is binned


def test_binned_columns_keep_the_order_of_values():
    from pipelines.training.fit import quantile_bins

    values = np.random.default_rng(0).gamma(2.0, 10.0, (5000, 1))
    codes = quantile_bins(255).fit_transform(values)[:, 0]
    assert len(np.unique(codes)) <= 255
    order = np.argsort(values[:, 0], kind="stable")
    assert (np.diff(codes[order]) >= 0).all()     # monotone: every split on codes is a split on values


@pytest.mark.parametrize("metric, scorer_sign", [("roc_auc", 1), ("rmse", -1)])
def test_search_trials_report_each_candidate_its_metric_and_cost(metric, scorer_sign):
    """One row per candidate with its parameters, its cross-validated metric in the metric's own
    sign (an RMSE is positive, though scikit-learn maximises its negative), rank and cost."""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GridSearchCV

    from pipelines.core.spec import Metric
    from pipelines.training.search import search_trials

    X, y = make_classification(n_samples=120, random_state=0)
    chosen = Metric(metric)
    estimator, grid = ((LogisticRegression(max_iter=200), {"C": [0.01, 1.0, 100.0]}) if metric == "roc_auc"
                       else (Ridge(), {"alpha": [0.1, 10.0, 1000.0]}))
    search = GridSearchCV(estimator, grid, scoring=chosen.scorer, cv=3).fit(X, y)
    trials = search_trials(search, chosen)
    assert len(trials) == 3 and list(trials[next(iter(grid))]) == next(iter(grid.values()))
    values = trials[f"cv_{metric}"].to_numpy()
    np.testing.assert_allclose(values, scorer_sign * search.cv_results_["mean_test_score"])
    assert (values > 0).all()                                   # AUC and RMSE are both positive
    best = trials.loc[trials["rank"] == 1, f"cv_{metric}"].item()
    assert best == (values.max() if chosen.higher_is_better else values.min())
    assert (trials["fit_seconds"] > 0).all() and (trials["score_seconds"] > 0).all()
