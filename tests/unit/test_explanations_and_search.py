"""SHAP explanations in the spec's features, Optuna search within its budget, model cards' content
(real shap, optuna and scikit-learn on small frames; no MLflow server)."""
import datetime as dt
import types

import numpy as np
import pandas as pd
import pytest


def _frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"amount": rng.normal(size=n), "visits": rng.integers(0, 20, n).astype(float),
                      "noise": rng.normal(size=n), "segment": rng.choice(["retail", "pro", "vip"], n)})
    logit = 2.5 * X["amount"] + 1.5 * (X["segment"] == "vip")
    y = (logit + rng.normal(scale=0.5, size=n) > 0.5).astype(int).to_numpy()
    return X, y


def _pipeline(estimator):
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    pre = ColumnTransformer([("numeric", "passthrough", ["amount", "visits", "noise"]),
                             ("categorical", Pipeline([("onehot", OneHotEncoder(sparse_output=False))]), ["segment"])])
    return Pipeline([("features", pre), ("model", estimator)])


@pytest.mark.parametrize("estimator, explainer", [
    ("sklearn.ensemble.HistGradientBoostingClassifier", "tree"),
    ("sklearn.linear_model.LogisticRegression", "permutation"),
])
def test_shap_values_are_per_feature_and_find_what_drives_the_model(estimator, explainer):
    import importlib

    from pipelines.training.explanations import explain

    module, _, name = estimator.rpartition(".")
    X, y = _frame()
    model = _pipeline(getattr(importlib.import_module(module), name)()).fit(X, y)
    found = explain(model, X, "predict_proba", rows=200)
    assert found.explainer == explainer and found.values.shape == (200, 4)
    importance = found.importance
    assert list(importance.index[:2]) == ["amount", "segment"] and importance["noise"] < importance["amount"] / 3
    by_slice = found.top_by_slice(["segment"], top=2)
    assert set(by_slice) == {"segment=pro", "segment=retail", "segment=vip"}
    assert all(len(top) == 2 for top in by_slice.values())


def test_multiclass_shap_values_follow_the_predicted_class():
    from sklearn.ensemble import HistGradientBoostingClassifier

    from pipelines.training.explanations import explain

    X, _ = _frame()
    y = pd.cut(X["amount"], [-np.inf, -0.5, 0.5, np.inf], labels=False).to_numpy()
    model = _pipeline(HistGradientBoostingClassifier(max_iter=30)).fit(X, y)
    found = explain(model, X, "predict_proba", rows=150)
    assert found.values.shape == (150, 4) and found.importance.index[0] == "amount"


def test_optuna_searches_ranges_within_its_trial_budget(small_spec):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from pipelines.core.spec import SearchMethod
    from pipelines.training.search import search

    raw = small_spec.model.model_dump()
    raw.update(search={"method": "optuna", "trials": 4},
               search_space={"C": {"low": 0.01, "high": 10, "log": True}, "fit_intercept": [True, False]})
    spec = small_spec.model_copy(update={"model": type(small_spec.model).model_validate(raw)})
    X, y = _frame()
    outcome = search(spec, _pipeline(LogisticRegression(max_iter=500)), X, y, {},
                     StratifiedKFold(3, shuffle=True, random_state=0))
    assert outcome.method is SearchMethod.OPTUNA and len(outcome.trials) == 4
    assert set(outcome.best_params) == {"C", "fit_intercept"} and 0.01 <= outcome.best_params["C"] <= 10
    assert outcome.cv_score == pytest.approx(outcome.trials["cv_roc_auc"].max())
    assert outcome.trials.loc[outcome.trials["rank"] == 1, "cv_roc_auc"].item() == pytest.approx(outcome.cv_score)
    assert (outcome.trials["fit_seconds"] > 0).all()
    assert outcome.model.predict_proba(X).shape == (len(X), 2)    # refitted on every row


@pytest.mark.parametrize("method, trials", [("grid", None), ("optuna", 4)])
def test_a_search_runs_candidates_at_once_when_given_jobs(small_spec, method, trials):
    """Two jobs try the same candidates (a grid: the same scores too) and return a refitted model."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from pipelines.training.search import search

    raw = small_spec.model.model_dump()
    raw.update(search={"method": method, **({"trials": trials} if trials else {})},
               search_space={"C": [0.01, 0.1, 1.0, 10.0]})
    spec = small_spec.model_copy(update={"model": type(small_spec.model).model_validate(raw)})
    X, y = _frame()
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    alone, together = (search(spec, _pipeline(LogisticRegression(max_iter=500)), X, y, {}, folds, jobs)
                       for jobs in (1, 2))
    assert len(together.trials) == len(alone.trials) == 4
    if method == "grid":
        pd.testing.assert_frame_equal(alone.trials[["C", "cv_roc_auc", "rank"]],
                                      together.trials[["C", "cv_roc_auc", "rank"]])
        assert together.best_params == alone.best_params
    assert together.model.predict_proba(X).shape == (len(X), 2)


def test_model_card_shows_every_check_table_explanations_and_decision(small_spec):
    from pipelines.models.tracking import ModelRef
    from pipelines.release import gate
    from pipelines.release.decision import Evaluation, Review
    from pipelines.release.model_card import render_html, render_markdown, review_summary

    results = [gate.CheckResult("holdout_roc_auc", "metric", "enforce", "roc_auc", "passed", 0.81, 0.55, 0.78, 500,
                                "roc_auc 0.81 beats champion v1"),
               gate.CheckResult("segment_quality", "slices", "enforce", "segment=retail", "failed", 0.61, 0.05, 0.70,
                                300, "segment=retail: roc_auc 0.61 vs champion v1 0.70"),
               gate.CheckResult("segment_quality", "slices", "enforce", "segment=vip", "not_judged", rows=12,
                                detail="too small"),
               gate.CheckResult("region_parity", "fairness", "warn", "region", "passed", 0.04, 0.15, None, 500, "ok"),
               gate.CheckResult("calibration", "calibration", "enforce", "ece", "passed", 0.02, 0.05, 0.03, 500, "ok")]
    evaluation = Evaluation.from_xcom({"challenger": {"version": "2"}, "champion": {"version": "1"}, "as_of": "2026-01-20",
                  "metric": "roc_auc", "eligible": False, "reason": "failed segment_quality: segment=retail ...",
                  "challenger_value": 0.81, "champion_value": 0.78, "holdout": "2026-01-10..2026-01-12 (500 rows)",
                  "checks": [{"name": "holdout_roc_auc", "kind": "metric", "mode": "enforce", "passed": True,
                              "reason": "beats"},
                             {"name": "segment_quality", "kind": "slices", "mode": "enforce", "passed": False,
                              "reason": "segment=retail: roc_auc 0.61 vs champion v1 0.70"}],
                  "results": [r.__dict__ for r in results], "card": "/tmp/card.html"})
    run = types.SimpleNamespace(data=types.SimpleNamespace(
        params={"fit_label_dates": "2025-12-01..2026-01-09", "best.max_leaf_nodes": "15", "train_rows": "9000"},
        metrics={"holdout_roc_auc": 0.81, "holdout_brier": 0.03},
        tags={"as_of": "2026-01-20", "trigger": "drift", "trigger_reason": "drift on 2026-01-19",
              "training_data_digest": "abc123", "airflow_run_id": "manual__x", "code_version": "deadbeef"}))
    importance = {"explainer": "tree", "rows": 500, "global": {"days_since_last_txn": 0.4, "amount_sum_30d": 0.2},
                  "slices": {"segment=retail": {"days_since_last_txn": 0.5}}}
    review = Review(False, "risk-officer", "2026-01-21T10:00:00+00:00", "retail slice too weak")
    md = render_markdown(small_spec, ModelRef("churn_small_classifier", "2", "run2"), run, evaluation,
                         ("rejected", "rejected by risk-officer; gate failed segment_quality", review), importance,
                         {"shap_bar.png", "calibration.png"})
    for expected in ("# Model card: churn_small_classifier v2", "Decision: rejected", "deadbeef", "manual__x", "abc123",
                     "2025-12-01..2026-01-09", "best.max_leaf_nodes", "| holdout_roc_auc |", "### Slices",
                     "segment=retail", "not_judged", "### Fairness", "### Calibration", "days_since_last_txn",
                     "![SHAP importance](shap_bar.png)", "![calibration](calibration.png)", "risk-officer",
                     "retail slice too weak", "FAILED"):
        assert expected in md, expected
    html = render_html(md, {"shap_bar.png": b"\x89PNG fake"}, "v2")
    assert "<table>" in html and 'src="data:image/png;base64,' in html and 'src="shap_bar.png"' not in html
    summary = review_summary(small_spec, evaluation)
    assert "challenger v2" in summary and "champion v1" in summary and "segment_quality" in summary
    assert "/tmp/card.html" in summary and dt.date(2026, 1, 20).isoformat() in summary
