"""Compiled inference: a fitted pipeline as an ONNX graph that onnxruntime runs.

At registration the training converts the fitted scikit-learn pipeline (``skl2onnx``), checks on
the holdout that the graph's outputs equal scikit-learn's, and records the outcome on the run and
the version (:data:`RUNTIME_TAG` and the tags beside it). Batch scoring, the scoring service and
the gate's latency check load a version with :func:`load_for_inference`: the compiled model when
the check passed, else the scikit-learn one (the version's ``compiled.reason`` says why).

What runs where. The graph holds the one-hot encoding and the estimator. The steps before them
that ONNX does badly are done in numpy before the graph is fed (:class:`FeedPlan`): text
imputation (ONNX-ML's imputer takes no text), numeric imputation, and the quantile bins of
:func:`pipelines.training.fit.quantile_bins` (ONNX has no ``searchsorted``: skl2onnx writes bins as a
comparison with every edge, which made 100,000 rows take 1.6 s instead of 0.17 s). Each of them
reads the fitted step's own values (medians, fill text, bin edges), so they compute what
scikit-learn computes.

A :class:`CompiledModel` answers ``predict_proba``, ``predict`` and ``classes_`` like the pipeline
it replaces (so :meth:`pipelines.models.tasks.ModelTask.outputs` takes either), pickles small (the
graph's bytes and the plan; the onnxruntime session is made again where it is unpickled) and runs
the graph on one thread: Spark runs a task per core, the service a batch per request.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core import lineage

log = logging.getLogger(__name__)

RUNTIME_TAG = "compiled.runtime"        # on the training run and the version: what serves it
REASON_TAG = "compiled.reason"          # why it is not compiled (empty when it is)
DIFF_TAG = "compiled.max_abs_diff"      # the largest difference of an output on the holdout
ROWS_TAG = "compiled.rows_checked"      # how many holdout rows the check compared
BINS_TAG = "compiled.bins"              # quantile bins: "folded" into the trees, "in the feed", or ""
TAGS = (RUNTIME_TAG, REASON_TAG, DIFF_TAG, ROWS_TAG, BINS_TAG)   # what a copied or resumed version carries over
FOLDED, IN_FEED = "folded", "in the feed"
ONNX, SKLEARN = "onnxruntime", "scikit-learn"
ARTIFACT_DIR = "compiled"               # in the training run: model.onnx and plan.json
# scores and probabilities: absolute; regression predictions: relative to the largest one (a
# float32 sum of trees around 200 is exact to about 1.5e-5, whatever the row's own value)
TOLERANCE = 1e-5
# scikit-learn's imputer of NaN leaves None as it is, and the one-hot encoder takes None as a
# category of its own: the graph, whose text cannot be None, knows it by this text.
NONE_TEXT = "\x00None"
OPSETS = {"": 18, "ai.onnx.ml": 3}


class NotCompilable(ValueError):
    """The pipeline has a step or a shape the compiler does not take; the message names it."""


@dataclass(frozen=True)
class FeedPlan:
    """What is computed before the graph is fed: each numeric column's fill value (and bin edges),
    each text column's fill text for NaN (None becomes :data:`NONE_TEXT`); and the graph's input names, in the order of the columns."""

    numeric: tuple[str, ...]
    numeric_fill: tuple[float, ...]
    bin_edges: tuple[tuple[float, ...], ...] | None   # inner edges per numeric column; None: no bins
    categorical: tuple[str, ...]
    categorical_fill: tuple[str, ...]
    classes: tuple[int, ...] | None                    # a classifier's classes_; None for a regressor
    binned: bool = False                               # the pipeline has quantile bins (folded when no edges)

    @property
    def input_names(self) -> list[str]:
        return [f"n{i}" for i in range(len(self.numeric))] + [f"c{i}" for i in range(len(self.categorical))]

    @functools.cached_property
    def edge_arrays(self) -> list[np.ndarray]:
        """The bin edges as arrays (``searchsorted`` would convert a tuple on every call)."""
        return [np.asarray(edges, dtype="float64") for edges in self.bin_edges or ()]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "FeedPlan":
        raw = json.loads(text)
        edges = raw["bin_edges"]
        return cls(tuple(raw["numeric"]), tuple(float(v) for v in raw["numeric_fill"]),
                   None if edges is None else tuple(tuple(e) for e in edges), tuple(raw["categorical"]),
                   tuple(raw["categorical_fill"]), None if raw["classes"] is None else tuple(raw["classes"]),
                   bool(raw.get("binned", edges is not None)))

    def feed(self, X: pd.DataFrame | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's inputs for the rows of ``X`` (a column each, as the graph names them). ``X``
        is a frame, or its columns as arrays (numbers as float64 with NaN, text as objects with
        None): the scoring service's few records, for which making a frame cost more than the graph."""
        feed = {}
        if self.numeric:   # a row per column: each is contiguous while it is filled, binned and fed
            numbers = (X[list(self.numeric)].to_numpy(dtype="float64", na_value=np.nan).T.copy()
                       if isinstance(X, pd.DataFrame) else np.array([X[c] for c in self.numeric], dtype="float64"))
            for j, fill in enumerate(self.numeric_fill):
                row = numbers[j]
                row[np.isnan(row)] = fill
                if self.bin_edges is not None:
                    row = np.searchsorted(self.edge_arrays[j], row, side="right")
                feed[f"n{j}"] = row.astype("float32").reshape(-1, 1)
        for j, (name, fill) in enumerate(zip(self.categorical, self.categorical_fill)):
            values = X[name].to_numpy(dtype=object) if isinstance(X, pd.DataFrame) else np.asarray(X[name], dtype=object)
            values = np.where(np.equal(values, None), NONE_TEXT, np.where(pd.isna(values), fill, values))
            values = values.astype(str).astype(object)
            feed[f"c{j}"] = values.reshape(-1, 1)
        return feed


class CompiledModel:
    """The graph and its feed plan, answering like the fitted pipeline (see the module's doc)."""

    def __init__(self, graph: bytes, plan: FeedPlan):
        self.graph, self.plan = graph, plan
        self._session = None

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.plan.classes)

    def __getstate__(self) -> dict:
        return {"graph": self.graph, "plan": self.plan}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["graph"], state["plan"])

    def session(self):
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._session = onnxruntime.InferenceSession(self.graph, options, providers=["CPUExecutionProvider"])
        return self._session

    def _run(self, X: pd.DataFrame) -> list[np.ndarray]:
        return self.session().run(None, self.plan.feed(X))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        if self.plan.classes is None:
            raise AttributeError("a regressor has no predict_proba")
        return np.asarray(self._run(X)[1], dtype="float64")

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        outputs = self._run(X)
        if self.plan.classes is None:
            return np.asarray(outputs[0], dtype="float64").ravel()
        return self.classes_[np.asarray(outputs[1]).argmax(axis=1)]


# ------------------------------------------------------------------ compiling
def compile_pipeline(model, fold: bool = True) -> CompiledModel:
    """``model`` (a pipeline of :func:`pipelines.training.fit.make_pipeline`'s shape) compiled;
    :class:`NotCompilable` naming what stops it. ``fold``: quantile bins folded into the trees'
    thresholds where the estimator allows (fast, float32), else computed in the feed (exact)."""
    plan, graph_pipeline = _split(model, fold)
    return CompiledModel(_convert(graph_pipeline, plan), plan)


def bins_of(model: CompiledModel, fold: bool) -> str:
    """Where a compiled model's quantile bins are: :data:`FOLDED`, :data:`IN_FEED`, or "" (none)."""
    if model.plan.bin_edges is not None:
        return IN_FEED
    return FOLDED if fold and model.plan.binned else ""


def _split(model, fold: bool = True) -> tuple[FeedPlan, object]:
    """The feed plan, and a copy of the pipeline without the steps the plan does (the graph's part)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline) or len(model.steps) != 2 or not isinstance(model.steps[0][1], ColumnTransformer):
        raise NotCompilable(f"not a pipeline of a column transformer and an estimator: {type(model).__name__}")
    graph = copy.deepcopy(model)
    columns = graph.steps[0][1]
    parts, kept = {}, []
    for name, step, names in columns.transformers_:
        if not len(names):
            step, names = "drop", []
        elif name == "numeric":
            parts[name] = _numeric_part(step, list(names))
            step = "passthrough"
            names = [f"n{i}" for i in range(len(names))]
        elif name == "categorical":
            parts[name], step = _categorical_part(step, list(names))
            names = [f"c{i}" for i in range(len(names))]
        elif step != "drop" and len(names):
            raise NotCompilable(f"the column transformer's part {name!r} is not one the compiler knows")
        kept.append((name, step, names))
    columns.transformers_ = kept
    (numeric, fill, edges), (categorical, texts) = parts.get("numeric", ([], [], None)), parts.get("categorical", ([], []))
    numeric_first = [name for name, step, _ in kept if step != "drop"][:1] == ["numeric"]
    binned = edges is not None
    if binned and fold and numeric_first and fold_bins(graph.steps[1][1], edges):
        edges = None   # the trees now compare the numbers themselves
    classes = getattr(graph.steps[1][1], "classes_", None)
    if classes is not None and not all(float(c).is_integer() for c in classes):
        raise NotCompilable(f"classes {list(classes)[:5]} are not integer codes")
    plan = FeedPlan(tuple(numeric), tuple(float(v) for v in fill), edges, tuple(categorical), tuple(texts),
                    None if classes is None else tuple(int(c) for c in classes), binned)
    return plan, graph


def fold_bins(estimator, edges: tuple[tuple[float, ...], ...]) -> bool:
    """Rewrite a fitted HistGradientBoosting model that was fitted on quantile bins so that it
    takes the numbers themselves (the numeric columns first, in the order of ``edges``); False,
    and nothing changed, for another estimator or a categorical split.

    A bin is the count of inner edges at or below the number (``searchsorted(..., "right")``), so
    a split ``bin <= t`` is ``x < edges[floor(t)]`` (always true past the last edge). ONNX's trees
    compare ``x <= threshold`` in float32: the threshold is the float32 just below the edge. Bins
    in numpy cost more than the trees (searchsorted: 6 ms per column per 100,000 rows)."""
    predictors = getattr(estimator, "_predictors", None)
    if not type(estimator).__name__.startswith("HistGradientBoosting") or predictors is None:
        return False
    trees = [tree for per_iteration in predictors for tree in per_iteration]
    if any(tree.nodes["is_categorical"].any() for tree in trees):
        return False
    inner = [np.asarray(e, dtype="float64") for e in edges]
    for tree in trees:
        nodes = tree.nodes
        for i in np.flatnonzero(~nodes["is_leaf"].astype(bool) & (nodes["feature_idx"] < len(inner))):
            k, feature_edges = int(np.floor(nodes["num_threshold"][i])), inner[nodes["feature_idx"][i]]
            if k >= len(feature_edges):
                nodes["num_threshold"][i] = np.inf
            else:
                below = np.nextafter(np.float32(feature_edges[k]), np.float32(-np.inf))
                nodes["num_threshold"][i] = float(below)
    return True


def _numeric_part(step, names: list[str]) -> tuple[list[str], list[float], tuple | None]:
    """(columns, fill values, inner bin edges or None) of the numeric pipeline: an imputer of NaN,
    then optional ordinal quantile bins."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import KBinsDiscretizer

    steps = dict(step.steps) if hasattr(step, "steps") else {}
    imputer, bins = steps.get("impute"), steps.get("bins")
    if not isinstance(imputer, SimpleImputer) or imputer.add_indicator or not _is_nan(imputer.missing_values) \
            or set(steps) - {"impute", "bins"}:
        raise NotCompilable(f"the numeric steps {list(steps) or type(step).__name__} are not an imputer of NaN "
                            f"and optional bins")
    if len(imputer.statistics_) != len(names):
        raise NotCompilable("the numeric imputer dropped a column")
    edges = None
    if bins is not None:
        if not isinstance(bins, KBinsDiscretizer) or bins.encode != "ordinal":
            raise NotCompilable("numeric bins that are not ordinal KBinsDiscretizer bins")
        edges = tuple(tuple(float(v) for v in e[1:-1]) for e in bins.bin_edges_)
    return names, [float(v) for v in imputer.statistics_], edges


def _categorical_part(step, names: list[str]) -> tuple[tuple[list[str], list[str]], object]:
    """((columns, fill texts), the one-hot encoder) of the text pipeline: a constant or most
    frequent imputer, then a one-hot encoder of text categories."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    steps = dict(step.steps) if hasattr(step, "steps") else {}
    imputer, onehot = steps.get("impute"), steps.get("onehot")
    if not isinstance(imputer, SimpleImputer) or not isinstance(onehot, OneHotEncoder) or imputer.add_indicator:
        raise NotCompilable(f"the text steps {list(steps) or type(step).__name__} are not an imputer and a one-hot "
                            f"encoder")
    onehot = copy.deepcopy(onehot)
    for j, (column, categories) in enumerate(zip(names, onehot.categories_)):
        if not all(isinstance(c, str) or c is None for c in categories) or NONE_TEXT in categories:
            raise NotCompilable(f"column {column!r} has categories that are not text")
        onehot.categories_[j] = np.array([NONE_TEXT if c is None else c for c in categories], dtype=object)
    return (names, [str(v) for v in imputer.statistics_]), onehot


def _is_nan(value) -> bool:
    return isinstance(value, float) and np.isnan(value)


def _convert(graph_pipeline, plan: FeedPlan) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    _mend_skl2onnx()
    inputs = [(f"n{i}", FloatTensorType([None, 1])) for i in range(len(plan.numeric))] + \
             [(f"c{i}", StringTensorType([None, 1])) for i in range(len(plan.categorical))]
    estimator = graph_pipeline.steps[1][1]
    options = {id(estimator): {"zipmap": False}} if plan.classes is not None else {}
    try:
        onnx_model = convert_sklearn(graph_pipeline, initial_types=inputs, options=options, target_opset=OPSETS)
    except Exception as exc:   # noqa: BLE001 - skl2onnx raises many kinds; each means "not compilable"
        raise NotCompilable(f"skl2onnx cannot convert {type(estimator).__name__}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from None
    return onnx_model.SerializeToString()


@functools.cache
def _mend_skl2onnx() -> None:
    """skl2onnx 1.20 writes a leaf's ``missing_go_to_left`` of a HistGradientBoosting tree as Python's
    ``False``, which protobuf 7 refuses in an integer list: pass it on as an int."""
    from skl2onnx.common import tree_ensemble

    add_node = tree_ensemble.add_node

    @functools.wraps(add_node)
    def add_node_with_int_flag(*args, nodes_missing_value_tracks_true=0, **kwargs):
        return add_node(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    tree_ensemble.add_node = add_node_with_int_flag


# ------------------------------------------------------------------ the check
@dataclass(frozen=True)
class Compilation:
    """The outcome of compiling a version: what will serve it, and why."""

    runtime: str                    # ONNX or SKLEARN
    reason: str                     # empty when compiled
    max_abs_diff: float | None      # over every output column on the rows checked
    rows_checked: int
    model: CompiledModel | None = None
    bins: str = ""                  # FOLDED, IN_FEED or "" (see bins_of)

    @property
    def compiled(self) -> bool:
        return self.runtime == ONNX

    def tags(self) -> dict[str, str]:
        diff = "" if self.max_abs_diff is None else f"{self.max_abs_diff:.3g}"
        from pipelines.models.tracking import tag_text

        return {RUNTIME_TAG: self.runtime, REASON_TAG: tag_text(self.reason), DIFF_TAG: diff,
                ROWS_TAG: str(self.rows_checked), BINS_TAG: self.bins}


def compile_checked(model, X: pd.DataFrame, task, expected: pd.DataFrame | None = None) -> Compilation:
    """``model`` compiled and its outputs on ``X`` compared with scikit-learn's ``expected`` (the
    task's output columns on ``X``, computed when not given: scores and probabilities within
    :data:`TOLERANCE`, predictions within it relative to the largest of them, labels identical).

    Quantile bins are first folded into the trees (fast). The graph compares in float32, so a number
    within float32 rounding of a bin edge can take the other branch; when the folded model fails
    the check, it is compiled again with the bins computed in the feed (exact integers) and checked
    again. Never raises: a failure is a :data:`SKLEARN` outcome naming it."""
    outcome = None
    try:
        expected = task.outputs(model, X) if expected is None else expected
        for fold in (True, False):
            compiled = compile_pipeline(model, fold)
            outcome = replace(judge(expected, task.outputs(compiled, X), compiled), bins=bins_of(compiled, fold))
            if outcome.compiled or outcome.bins != FOLDED:
                return outcome
            log.info("bins folded into the trees: %s; compiling again with the bins in the feed", outcome.reason)
    except Exception as exc:   # noqa: BLE001 - whatever stops compiling, scikit-learn serves
        return Compilation(SKLEARN, f"{type(exc).__name__}: {exc}", None, 0)
    return outcome


def judge(expected: pd.DataFrame, got: pd.DataFrame, compiled: CompiledModel | None = None) -> Compilation:
    """The compiled outputs ``got`` against scikit-learn's ``expected`` (see :func:`compile_checked`)."""
    worst, problems = 0.0, []
    for column in expected.columns:
        want, have = expected[column].to_numpy(), got[column].to_numpy()
        if column == "predicted_label":
            differ = int((want != have).sum())
            if differ:
                problems.append(f"{differ} of {len(want)} predicted labels differ")
            continue
        want, have = want.astype("float64"), have.astype("float64")
        diff = np.abs(want - have)
        worst = max(worst, float(diff.max()) if len(diff) else 0.0)
        scale = max(1.0, float(np.nanmax(np.abs(want)))) if column == "prediction" and len(want) else 1.0
        over = int((~(diff <= TOLERANCE * scale)).sum())
        if over:
            problems.append(f"{over} of {len(want)} {column} values differ by more than {TOLERANCE:g} "
                            f"(at most {float(np.nanmax(diff)):.3g})")
    if problems:
        return Compilation(SKLEARN, "outputs differ from scikit-learn's on the holdout: " + "; ".join(problems),
                           worst, len(expected))
    return Compilation(ONNX, "", worst, len(expected), compiled)


# ------------------------------------------------------------------ MLflow
def log_compilation(outcome: Compilation) -> dict[str, str]:
    """The compiled graph and its plan as artifacts of the active run, and the outcome as its
    tags; returns the tags (for the version)."""
    import mlflow

    if outcome.compiled:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "model.onnx").write_bytes(outcome.model.graph)
            Path(tmp, "plan.json").write_text(outcome.model.plan.to_json())
            mlflow.log_artifacts(tmp, ARTIFACT_DIR)
    tags = outcome.tags()
    mlflow.set_tags(tags)
    return tags


def load_compiled(run_id: str) -> CompiledModel:
    """The compiled model a training run logged."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT_DIR, dst_path=tmp))
        return CompiledModel((local / "model.onnx").read_bytes(), FeedPlan.from_json((local / "plan.json").read_text()))


def load_for_inference(ref):
    """What serves version ``ref``: its compiled model when its run's check passed, else its
    scikit-learn pipeline (also when the compiled files cannot be read: logged, never raised)."""
    from pipelines.models import tracking

    tags = tracking.client().get_run(ref.run_id).data.tags
    if tags.get(RUNTIME_TAG) == ONNX:
        try:
            compiled = load_compiled(ref.run_id)
            compiled.session()   # a half-written graph fails here, not at the first request
            lineage.read(ref.as_dataset())
            return compiled
        except Exception as exc:   # noqa: BLE001 - the scikit-learn flavour serves the same outputs
            log.warning("%s: compiled model of run %s unreadable (%s: %s); serving scikit-learn's", ref.uri,
                        ref.run_id, type(exc).__name__, exc)
    return tracking.load_model(ref)


def runtime_of(model) -> str:
    """Which runtime a loaded model runs on."""
    return ONNX if isinstance(model, CompiledModel) else SKLEARN
