"""The scoring function shipped to Spark executors, tested on pandas batches."""
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from pipelines.scoring import make_scorer


def test_scorer_outputs_the_inference_schema():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"f1": rng.normal(size=200), "f2": rng.normal(size=200)})
    y = (X["f1"] > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    scorer = make_scorer(model, ["f1", "f2"], 0.5, {
        "entity": "customer_id", "model_name": "m", "model_version": "3", "model_run_id": "r", "run_id": "a",
        "scored_at": pd.Timestamp("2026-01-01")})
    batch = X.assign(customer_id=[f"C{i}" for i in range(200)], ds="2026-01-02")
    (out,) = list(scorer(iter([batch])))
    assert list(out.columns) == ["customer_id", "score", "predicted_label", "model_name", "model_version",
                                 "model_run_id", "run_id", "scored_at", "ds"]
    assert np.allclose(out["score"], model.predict_proba(X)[:, 1])
    assert ((out["score"] >= 0.5) == (out["predicted_label"] == 1)).all()
    assert (out["model_version"] == "3").all() and (out["ds"] == "2026-01-02").all()
    (empty,) = list(scorer(iter([batch.iloc[:0]])))
    assert empty.empty


def test_scoring_without_features_is_a_clear_error(tmp_path, small_spec):
    import datetime as dt

    import pytest

    from pipelines.lake import Lake
    from pipelines.scoring import score_partition

    champion = {"name": "m", "version": "1", "run_id": "r", "model_uri": "models:/m/1"}
    with pytest.raises(FileNotFoundError, match="no features for 2026-01-05"):
        score_partition(None, small_spec, Lake(tmp_path), dt.date(2026, 1, 5), champion, "run")
