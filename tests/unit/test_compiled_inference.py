"""Compiled inference (pipelines.models.compiled): every shipped use case's pipeline compiles to
ONNX and answers as scikit-learn does, on rows with missing numbers, None and NaN text and
categories never seen; a pipeline that cannot be compiled, or whose outputs differ, is served by
scikit-learn with the reason; the compiled model travels by pickle and by its logged files."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.spec import TaskType, load_spec
from pipelines.features.point_in_time import feature_columns
from pipelines.models import compiled
from pipelines.models.tasks import ModelTask
from pipelines.training.fit import make_pipeline

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.parent.name for p in (ROOT / "include").glob("*/spec.yaml"))


def rows(spec, n: int, seed: int, categories=("a", "b", "c")) -> pd.DataFrame:
    """Rows of ``spec``'s features: numbers with NaN, text with None, NaN and the given categories."""
    rng = np.random.default_rng(seed)
    cols = feature_columns(spec)
    frame = pd.DataFrame({c: rng.gamma(2.0, 10.0, n) for c in cols.numeric})
    for c in cols.categorical:
        frame[c] = pd.Series(rng.choice(list(categories), n), dtype=object)
        frame.loc[frame.index[::13], c] = None
        frame.loc[frame.index[5::17], c] = np.nan
    frame.iloc[::9, 0] = np.nan
    return frame


def labels(task: ModelTask, frame: pd.DataFrame, column: str, seed: int) -> np.ndarray:
    noisy = frame[column].fillna(20).to_numpy() + np.random.default_rng(seed).normal(0, 5, len(frame))
    if task.kind is TaskType.REGRESSION:
        return 3 * noisy
    if task.kind is TaskType.BINARY:
        return (noisy > 20).astype(int)
    return np.asarray(task.classes)[np.clip((noisy // 12).astype(int), 0, len(task.classes) - 1)]


@pytest.fixture(scope="module", params=SHIPPED)
def fitted(request):
    spec = load_spec(ROOT / "include" / request.param)
    task = ModelTask.of(spec)
    train = rows(spec, 3000, seed=0)
    model = make_pipeline(spec).fit(train, labels(task, train, feature_columns(spec).numeric[1], seed=0))
    return spec, task, model


def test_every_shipped_use_case_compiles_and_answers_as_scikit_learn(fitted):
    spec, task, model = fitted
    holdout = rows(spec, 2000, seed=1)
    before = task.outputs(model, holdout)
    outcome = compiled.compile_checked(model, holdout, task)
    pd.testing.assert_frame_equal(task.outputs(model, holdout), before)   # the fitted pipeline is left as it was
    assert outcome.runtime == compiled.ONNX and outcome.reason == "", outcome.reason
    assert outcome.rows_checked == 2000 and outcome.max_abs_diff <= compiled.TOLERANCE * 1000
    # other rows: categories never seen, every value missing, a single row
    fresh = rows(spec, 500, seed=2, categories=("a", "zzz", "missing", ""))
    fresh.iloc[-1] = None
    for frame in (fresh, fresh.tail(1), fresh.head(1)):
        expected, got = task.outputs(model, frame), task.outputs(outcome.model, frame)
        assert list(got.columns) == list(expected.columns) and (got.index == expected.index).all()
        verdict = compiled.judge(expected, got)
        assert verdict.compiled, verdict.reason
    travelled = pickle.loads(pickle.dumps(outcome.model))
    pd.testing.assert_frame_equal(task.outputs(travelled, fresh), task.outputs(outcome.model, fresh))


def test_records_are_scored_without_a_frame_as_with_one(fitted):
    """The service's records reach a compiled model as columns, not a frame: the same answers,
    value for value and type for type, as through a frame (numbers sent as whole numbers too)."""
    from pipelines.serving.records import records_frame, score_records, to_json_rows

    spec, task, model = fitted
    outcome = compiled.compile_checked(model, rows(spec, 500, seed=1), task)
    assert outcome.compiled, outcome.reason
    cols = feature_columns(spec)
    fresh = rows(spec, 200, seed=2, categories=("a", "zzz", "missing", ""))
    fresh.iloc[-1] = None
    fresh[cols.numeric[-1]] = fresh[cols.numeric[-1]].round()
    inputs = {c: "string" if c in cols.categorical else "double" for c in cols.all} | {cols.numeric[-1]: "long"}
    records = fresh.astype(object).where(fresh.notna(), None).to_dict("records")
    for c in (r for r in records if r[cols.numeric[-1]] is not None):
        c[cols.numeric[-1]] = int(c[cols.numeric[-1]])
    for batch in (records, records[:1], records[-1:]):
        through_a_frame = to_json_rows(task.outputs(outcome.model, records_frame(batch, inputs)))
        answered = score_records(task, outcome.model, inputs, batch)
        assert answered == through_a_frame
        assert [type(v) for v in answered[0].values()] == [type(v) for v in through_a_frame[0].values()]
    assert len(answered) == 1 and set(answered[0]) == set(task.output_columns)


def test_hostile_records_that_pass_the_checks_are_answered_alike_without_a_frame(fitted):
    """Records at the edge of what the service's checks let through (numbers near a double's
    limits, markup, paths, the longest text allowed) answer the same through columns as through a
    frame, with finite scores, and as scikit-learn answers them."""
    from pipelines.serving.records import check_records, records_frame, score_records, to_json_rows

    spec, task, model = fitted
    outcome = compiled.compile_checked(model, rows(spec, 500, seed=1), task)
    cols = feature_columns(spec)
    inputs = {c: "string" if c in cols.categorical else "double" for c in cols.all}
    numbers = [1e308, -1e308, 5e-324, -0.0, 0, 2**53 + 1, None]
    texts = ["<script>alert(1)</script>", "{{ 7*7 }}", "../../etc/passwd", "x" * 1_000, "", "Zürich ☃", None]
    records = [{c: (texts if c in cols.categorical else numbers)[i % 7] for c in cols.all} for i in range(14)]
    records = check_records(records, inputs)    # valid: the checks let every one through
    answered = score_records(task, outcome.model, inputs, records)
    frame = records_frame(records, inputs)
    assert answered == to_json_rows(task.outputs(outcome.model, frame))
    assert all(np.isfinite(v) for row in answered for v in row.values())
    assert compiled.judge(task.outputs(model, frame), pd.DataFrame(answered)).compiled


def test_the_feed_plan_survives_its_json_and_names_the_graph_inputs(fitted):
    spec, _, model = fitted
    plan = compiled.compile_pipeline(model).plan
    assert compiled.FeedPlan.from_json(plan.to_json()) == plan
    cols = feature_columns(spec)
    assert plan.numeric == tuple(cols.numeric) and plan.categorical == tuple(cols.categorical)
    assert plan.input_names == [f"n{i}" for i in range(len(cols.numeric))] + [f"c{i}" for i in
                                                                             range(len(cols.categorical))]
    # quantile bins (the churn spec's recency weights) are folded into the trees' thresholds
    assert plan.bin_edges is None
    assert any("bins" in dict(step.steps) for name, step, _ in model.steps[0][1].transformers_
               if hasattr(step, "steps")) == bool(spec.training.recency_half_life_days)


def test_numbers_a_float32_rounding_from_a_bin_edge_are_compiled_with_the_bins_in_the_feed():
    """Numbers just below a quantile bin's edge round in float32 onto the edge, so the folded trees
    send them the other way than scikit-learn. The check sees it, and the model is compiled again
    with the bins computed in the feed, which answers exactly."""
    spec = load_spec(ROOT / "include" / "churn")
    assert spec.training.recency_half_life_days, "the churn spec's pipeline has quantile bins"
    task = ModelTask.of(spec)
    cols = feature_columns(spec)
    train = rows(spec, 3000, seed=0)
    model = make_pipeline(spec).fit(train, labels(task, train, cols.numeric[1], seed=0))
    binner = next(dict(step.steps)["bins"] for name, step, _ in model.steps[0][1].transformers_ if name == "numeric")
    holdout, rng = rows(spec, 2000, seed=1), np.random.default_rng(4)
    for j, column in enumerate(cols.numeric):   # every number just below one of its column's inner edges
        below = np.nextafter(binner.bin_edges_[j][1:-1], -np.inf)
        holdout[column] = rng.choice(below, len(holdout))

    expected = task.outputs(model, holdout)
    folded = compiled.compile_pipeline(model, fold=True)
    assert folded.plan.bin_edges is None
    assert not compiled.judge(expected, task.outputs(folded, holdout)).compiled   # float32 bites here
    outcome = compiled.compile_checked(model, holdout, task, expected)
    assert outcome.compiled and outcome.bins == compiled.IN_FEED, outcome.reason
    assert outcome.model.plan.bin_edges is not None and outcome.max_abs_diff <= compiled.TOLERANCE
    assert outcome.tags()[compiled.BINS_TAG] == compiled.IN_FEED
    assert compiled.FeedPlan.from_json(outcome.model.plan.to_json()) == outcome.model.plan
    # on ordinary rows the bins stay folded
    assert compiled.compile_checked(model, rows(spec, 500, seed=5), task).bins == compiled.FOLDED


def test_bins_stay_in_the_feed_when_they_cannot_be_folded():
    """Quantile bins before an estimator other than gradient boosting are computed in numpy."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from pipelines.training.fit import quantile_bins

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.gamma(2.0, 10.0, 2000), "b": rng.normal(size=2000)})
    frame.iloc[::7, 0] = np.nan
    model = Pipeline([("features", ColumnTransformer([("numeric", Pipeline([
        ("impute", SimpleImputer(strategy="median")), ("bins", quantile_bins(16))]), ["a", "b"])])),
        ("model", LogisticRegression())]).fit(frame, (frame.b > 0).astype(int))
    outcome = compiled.compile_checked(model, frame, ModelTask(TaskType.BINARY, (0, 1)))
    assert outcome.compiled, outcome.reason
    assert outcome.model.plan.bin_edges is not None and len(outcome.model.plan.bin_edges[1]) == 15


def test_column_names_users_write_do_not_reach_the_graph():
    """Dots, spaces, brackets and accents in a team's column names: the graph's inputs are n0.., c0.."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"tenure.months": rng.normal(size=400), "Spend [€]": rng.normal(size=400),
                          "plan name": rng.choice(["Básico", "Pro/Max", "<script>"], 400)})
    y = (frame["tenure.months"] > 0).astype(int)
    model = Pipeline([("features", ColumnTransformer([
        ("numeric", Pipeline([("impute", SimpleImputer(strategy="median"))]), ["tenure.months", "Spend [€]"]),
        ("categorical", Pipeline([("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                                  ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))]),
         ["plan name"])])), ("model", HistGradientBoostingClassifier(max_iter=20))]).fit(frame, y)
    outcome = compiled.compile_checked(model, frame, ModelTask(TaskType.BINARY, (0, 1)))
    assert outcome.compiled, outcome.reason
    import onnx
    graph = onnx.load_from_string(outcome.model.graph).graph
    assert [i.name for i in graph.input] == ["n0", "n1", "c0"]


@pytest.mark.parametrize("estimator", ["sklearn.neighbors.NearestCentroid",
                                       "sklearn.semi_supervised.LabelSpreading"])
def test_a_pipeline_skl2onnx_cannot_convert_is_served_by_scikit_learn_with_the_reason(estimator):
    import importlib

    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    module, _, name = estimator.rpartition(".")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    model = Pipeline([("features", ColumnTransformer([("numeric", Pipeline([("impute", SimpleImputer())]), ["a", "b"])])),
                      ("model", getattr(importlib.import_module(module), name)())]).fit(frame, (frame.a > 0).astype(int))
    outcome = compiled.compile_checked(model, frame, ModelTask(TaskType.BINARY, (0, 1)))
    assert outcome.runtime == compiled.SKLEARN and outcome.model is None
    assert "NotCompilable" in outcome.reason and name in outcome.reason
    assert outcome.tags()[compiled.RUNTIME_TAG] == compiled.SKLEARN and outcome.tags()[compiled.REASON_TAG]


def test_a_pipeline_of_another_shape_is_not_compiled():
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"a": np.arange(20.0)})
    outcome = compiled.compile_checked(LogisticRegression().fit(frame, np.arange(20) % 2), frame,
                                       ModelTask(TaskType.BINARY, (0, 1)))
    assert not outcome.compiled and "not a pipeline" in outcome.reason


@pytest.mark.parametrize("expected, got, passes, words", [
    ({"score": [0.5, 0.25], "predicted_label": [1, 0]}, {"score": [0.5 + 4e-6, 0.25], "predicted_label": [1, 0]},
     True, ""),
    ({"score": [0.5, 0.25], "predicted_label": [1, 0]}, {"score": [0.5 + 2e-5, 0.25], "predicted_label": [1, 0]},
     False, "1 of 2 score values differ by more than 1e-05"),
    ({"score": [0.5, 0.25], "predicted_label": [1, 0]}, {"score": [0.5, 0.25], "predicted_label": [0, 0]},
     False, "1 of 2 predicted labels differ"),
    ({"score": [0.5], "predicted_label": [1]}, {"score": [float("nan")], "predicted_label": [1]},
     False, "score values differ"),
    ({"prediction": [150_000.0, 0.5]}, {"prediction": [150_001.0, 0.5 + 5e-6]}, True, ""),   # relative to size
    ({"prediction": [150_000.0, 0.5]}, {"prediction": [150_002.0, 0.5]}, False, "1 of 2 prediction values"),
])
def test_outputs_are_judged_within_the_tolerance(expected, got, passes, words):
    verdict = compiled.judge(pd.DataFrame(expected), pd.DataFrame(got))
    assert verdict.compiled is passes and words in verdict.reason
    assert verdict.runtime == (compiled.ONNX if passes else compiled.SKLEARN)


def test_a_version_serves_compiled_when_its_check_passed_and_scikit_learn_otherwise(tmp_path, monkeypatch):
    """Through MLflow: the compiled version loads as onnxruntime (and the gate's latency check
    measures it so), a version whose check failed loads as scikit-learn, and so does a compiled
    version whose graph files are gone; all three answer the service's records alike."""
    import shutil
    from urllib.parse import urlparse

    import mlflow

    from pipelines.core.spec import LatencyCheck
    from pipelines.models import tracking
    from pipelines.release import gate
    from pipelines.serving.records import score_records

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    spec = load_spec(ROOT / "include" / "churn")
    task = ModelTask.of(spec)
    train = rows(spec, 1500, seed=0)
    model = make_pipeline(spec).fit(train, labels(task, train, feature_columns(spec).numeric[1], seed=0))
    experiment = tracking.ensure_experiment("compiled")
    refs = {}
    cases = ("compiled", "refused", "files gone", "half-written graph", "plan not JSON")
    for case in cases:
        outcome = (compiled.Compilation(compiled.SKLEARN, "outputs differ", 0.1, 10) if case == "refused"
                   else compiled.compile_checked(model, train, task))
        with mlflow.start_run(experiment_id=experiment) as run:
            info = tracking.log_sklearn_model(model, train.head(5), model.predict_proba(train.head(5)))
            tags = compiled.log_compilation(outcome)
        refs[case] = tracking.ModelRef("m", tracking.register_challenger("m", info.model_uri, run.info.run_id, tags),
                                       run.info.run_id)
    def files(case: str) -> Path:
        return Path(urlparse(mlflow.get_run(refs[case].run_id).info.artifact_uri).path) / compiled.ARTIFACT_DIR

    shutil.rmtree(files("files gone"))
    graph = (files("half-written graph") / "model.onnx").read_bytes()
    (files("half-written graph") / "model.onnx").write_bytes(graph[: len(graph) // 2])
    (files("plan not JSON") / "plan.json").write_text('{"numeric": ["<script>alert(1)</script>"')

    loaded = {case: compiled.load_for_inference(ref) for case, ref in refs.items()}
    assert {case: compiled.runtime_of(m) for case, m in loaded.items()} == {
        case: compiled.ONNX if case == "compiled" else compiled.SKLEARN for case in cases}
    version = tracking.client().get_model_version("m", refs["refused"].version)
    assert version.tags[compiled.RUNTIME_TAG] == compiled.SKLEARN and version.tags[compiled.REASON_TAG] == "outputs differ"
    inputs = {c: "string" if c in feature_columns(spec).categorical else "double" for c in feature_columns(spec).all}
    records = rows(spec, 50, seed=3).astype(object).where(lambda f: f.notna(), None).to_dict("records")
    answers = {case: pd.DataFrame(score_records(task, m, inputs, records)) for case, m in loaded.items()}
    assert compiled.judge(answers["refused"], answers["compiled"]).compiled
    for case in cases[2:]:
        pd.testing.assert_frame_equal(answers["refused"], answers[case])

    measured = gate.measure_latency(refs["compiled"], task, train, LatencyCheck(name="l", kind="latency", repeats=5,
                                                                                 rounds=1, batch_rows=100))
    assert measured.runtime == compiled.ONNX and measured.size_mb == pytest.approx(len(loaded["compiled"].graph) / 1e6)
    verdict = gate.latency_check(LatencyCheck(name="l", kind="latency"), measured)
    assert any(r.subject == "runtime" and "onnxruntime" in r.detail for r in verdict.results)


@pytest.mark.parametrize("tags, shown", [
    ({"compiled.runtime": "onnxruntime", "compiled.reason": "", "compiled.bins": ""}, "onnxruntime"),
    ({"compiled.runtime": "onnxruntime", "compiled.reason": "", "compiled.bins": "in the feed"},
     "onnxruntime: quantile bins in the feed"),
    ({"compiled.runtime": "scikit-learn", "compiled.reason": "outputs differ"}, "scikit-learn: outputs differ"),
    ({}, "not recorded (registered before compiled inference)"),
])
def test_a_versions_page_says_what_serves_it(tags, shown):
    from pipelines.report import _runtime_text

    assert _runtime_text(tags) == shown
