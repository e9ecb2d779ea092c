"""Task types: a model's outputs as the inference table holds them, their metrics, and the scorer
that writes them, for binary, multiclass and regression models (no services needed)."""
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from pipelines.core.spec import TaskType
from pipelines.models.tasks import ModelTask, multiclass_metrics, regression_metrics
from pipelines.serving.batch import inference_schema, make_scorer, score_frame

RNG = np.random.default_rng(0)
X = pd.DataFrame({"f1": RNG.normal(size=300), "f2": RNG.normal(size=300)})
TARGETS = {
    TaskType.BINARY: (X["f1"] > 0).astype(int),
    TaskType.MULTICLASS: np.digitize(X["f1"], [-0.5, 0.5]),           # classes 0, 1, 2
    TaskType.REGRESSION: 3 * X["f1"] - X["f2"] + RNG.normal(0, 0.1, 300),
}
TASKS = {TaskType.BINARY: ModelTask(TaskType.BINARY, (0, 1), 0.3),
         TaskType.MULTICLASS: ModelTask(TaskType.MULTICLASS, (0, 1, 2)),
         TaskType.REGRESSION: ModelTask(TaskType.REGRESSION)}


def _model(kind):
    return (LinearRegression() if kind is TaskType.REGRESSION else LogisticRegression()).fit(X, TARGETS[kind])


@pytest.mark.parametrize("kind, columns", [
    (TaskType.BINARY, ["score", "predicted_label"]),
    (TaskType.MULTICLASS, ["score", "predicted_label", "proba_0", "proba_1", "proba_2"]),
    (TaskType.REGRESSION, ["prediction"]),
])
def test_outputs_are_the_inference_columns(kind, columns):
    task, model = TASKS[kind], _model(kind)
    out = task.outputs(model, X)
    assert list(out.columns) == columns == list(task.output_columns)
    if kind is TaskType.BINARY:
        assert np.allclose(out["score"], model.predict_proba(X)[:, 1])
        assert ((out["score"] >= 0.3) == (out["predicted_label"] == 1)).all()
    elif kind is TaskType.MULTICLASS:
        proba = model.predict_proba(X)
        assert np.allclose(out[["proba_0", "proba_1", "proba_2"]], proba)
        assert (out["predicted_label"] == model.predict(X)).all() and np.allclose(out["score"], proba.max(axis=1))
    else:
        assert np.allclose(out["prediction"], model.predict(X))
    assert task.outputs(model, X.iloc[:0]).empty


def test_a_class_the_model_never_saw_has_probability_zero():
    y = np.where(X["f1"] > 0, 2, 0)                        # class 1 absent from the training labels
    model = LogisticRegression().fit(X, y)
    out = TASKS[TaskType.MULTICLASS].outputs(model, X)
    assert (out["proba_1"] == 0).all() and set(out["predicted_label"]) == {0, 2}
    assert np.allclose(out[["proba_0", "proba_2"]].sum(axis=1), 1)


@pytest.mark.parametrize("kind, metric, lowest, highest", [
    (TaskType.BINARY, "roc_auc", 0.95, 1.0),
    (TaskType.MULTICLASS, "f1_macro", 0.8, 1.0),
    (TaskType.REGRESSION, "r2", 0.95, 1.0),
])
def test_metrics_of_a_good_model(kind, metric, lowest, highest):
    task, model = TASKS[kind], _model(kind)
    metrics = task.metrics(np.asarray(TARGETS[kind]), task.outputs(model, X))
    assert lowest <= metrics[metric] <= highest and metrics["rows"] == len(X)


def test_multiclass_and_regression_metrics_by_hand():
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    m = multiclass_metrics([0, 1, 2, 1], proba, (0, 1, 2))
    # predicted 0, 1, 2, 0: F1 of class 0 is 2/3 (one false positive), of 1 is 2/3 (one miss), of 2 is 1
    assert m["accuracy"] == 0.75 and math.isclose(m["f1_macro"], 7 / 9)
    r = regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert math.isclose(r["rmse"], math.sqrt(1 / 3)) and math.isclose(r["mae"], 1 / 3) and math.isclose(r["r2"], 0.5)
    assert math.isnan(regression_metrics([1.0], [2.0])["r2"])


def test_labels_outside_the_specs_classes_are_refused():
    with pytest.raises(ValueError, match=r"training labels \[7\] are not classes"):
        TASKS[TaskType.MULTICLASS].check_labels("uc", np.array([0, 1, 7]))
    with pytest.raises(ValueError, match="single value"):
        TASKS[TaskType.REGRESSION].check_labels("uc", np.array([1.5, 1.5]))


@pytest.mark.parametrize("kind", list(TaskType))
def test_the_scorer_gives_each_batch_its_outputs_row_for_row(kind):
    task, model = TASKS[kind], _model(kind)
    scorer = make_scorer(model, ["f1", "f2"], task)
    batches = [X.iloc[:120].assign(noise="x"), X.iloc[120:]]          # a later batch's index does not start at 0
    outputs = list(scorer(iter(batches)))
    assert [len(o) for o in outputs] == [120, 180]
    assert pd.concat(outputs, ignore_index=True).equals(task.outputs(model, X))
    (empty,) = list(scorer(iter([X.iloc[:0]])))
    assert empty.empty and list(empty.columns) == list(task.output_columns)


@pytest.mark.parametrize("kind", list(TaskType))
def test_scored_rows_have_the_inference_schema(spark, kind):
    """Only the features go to the model: the entity and ds come through Spark unchanged."""
    task, model = TASKS[kind], _model(kind)
    batch = X.assign(customer_id=[f"C{i}" for i in range(len(X))], ds="2026-01-02")
    scored = score_frame(spark.createDataFrame(batch[["customer_id", "f1", "f2", "ds"]]).repartition(3), model,
                         ["f1", "f2"], task, {"entity": "customer_id", "model_name": "m", "model_version": "3",
                                              "model_run_id": "r", "run_id": "a",
                                              "scored_at": pd.Timestamp("2026-01-01")})
    schema = [part.split(" ")[0].strip("`") for part in inference_schema("customer_id", task).split(", ")]
    assert scored.columns == schema
    out = scored.toPandas().sort_values("customer_id", key=lambda s: s.str[1:].astype(int)).reset_index(drop=True)
    expected = task.outputs(model, X)
    for column in task.output_columns:
        assert np.allclose(out[column].astype(float), expected[column].astype(float)), column
    assert list(out["customer_id"]) == list(batch["customer_id"])
    assert (out["model_version"] == "3").all() and (out["ds"] == "2026-01-02").all()
    assert (out["scored_at"] == pd.Timestamp("2026-01-01")).all()
