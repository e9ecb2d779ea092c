"""The promotion gate: every check a challenger must pass before it may become champion.

The spec's ``promotion`` section lists the checks (``promotion.checks``) besides its first one,
the holdout metric against a floor and the champion. Each check is computed here from plain
inputs (the holdout, both models' outputs on it, timings, signatures) into rows of
:class:`CheckResult`, one per thing measured (a slice, a sensitive column, a percentile), and
one :class:`CheckVerdict`:

* a row that cannot be computed (a NaN, an empty slice, a missing column) fails, with that reason;
* rows too small to judge (a slice under ``min_rows``) are reported as ``not_judged``; a check
  with nothing it could judge fails;
* ``enforce`` checks that fail block the promotion, ``warn`` checks are recorded only.

:func:`decide_gate` turns the verdicts into the gate's decision, naming each failing check.
Everything here is pure except :func:`measure_latency` (it loads and times the model as it will serve).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.bounds import Bound
from pipelines.core.spec import (CalibrationCheck, CheckKind, CheckMode, FairnessCheck, FairnessMeasure, LatencyCheck,
                                 MetricCheck, SchemaCheck, SlicesCheck, TaskType)
from pipelines.features.slices import groups_of
from pipelines.models import compiled, tracking
from pipelines.release.decision import decide_promotion

PASSED, FAILED, NOT_JUDGED, INFO = "passed", "failed", "not_judged", "info"


@dataclass(frozen=True)
class CheckResult:
    """One measured value of a check (a row of the ``promotion_checks`` table)."""

    check: str
    kind: str
    mode: str
    subject: str                     # what was measured: "overall", "segment=retail", "region", "single_row_p99_ms"
    status: str                      # passed | failed | not_judged | info
    value: float | None = None       # the challenger's value
    threshold: float | None = None
    champion_value: float | None = None
    rows: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class CheckVerdict:
    name: str
    kind: str
    mode: str
    passed: bool
    reason: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def enforced(self) -> bool:
        return self.mode == CheckMode.ENFORCE.value


@dataclass(frozen=True)
class GateDecision:
    eligible: bool
    reason: str
    failing: list[str]     # enforced checks that failed
    warnings: list[str]    # warn-mode checks that failed


@dataclass(frozen=True)
class Holdout:
    """What the checks judge: the holdout's features and labels, and each model's outputs on it
    (as :meth:`ModelTask.outputs` shapes them; ``champion`` None before the first promotion)."""

    X: pd.DataFrame
    y: np.ndarray
    challenger: pd.DataFrame
    champion: pd.DataFrame | None = None
    champion_version: str | None = None


# ----------------------------------------------------------------- the verdict of a check
def verdict(check, results: list[CheckResult]) -> CheckVerdict:
    """A check passes when it judged something and nothing it judged failed."""
    kind, mode = kind_of(check), _mode(check)
    failed = [r for r in results if r.status == FAILED]
    judged = [r for r in results if r.status in (PASSED, FAILED)]
    if failed:
        return CheckVerdict(check.name, kind, mode, False, "; ".join(r.detail for r in failed), results)
    if not judged:
        small = [r.detail for r in results if r.status == NOT_JUDGED]
        why = "cannot be computed: nothing to judge" + (f" ({'; '.join(small)})" if small else "")
        return CheckVerdict(check.name, kind, mode, False, why, results)
    passed = [r.detail for r in judged]
    why = "; ".join(passed) if len(passed) <= 3 else f"{len(passed)} values within bounds"
    return CheckVerdict(check.name, kind, mode, True, why, results)


def decide_gate(verdicts: list[CheckVerdict]) -> GateDecision:
    """Eligible when every enforced check passed; the reason names each failing check and warning."""
    failing = [v for v in verdicts if v.enforced and not v.passed]
    warned = [v for v in verdicts if not v.enforced and not v.passed]
    warning_text = ("; warnings: " + "; ".join(f"{v.name}: {v.reason}" for v in warned)) if warned else ""
    if failing:
        reason = "failed " + "; ".join(f"{v.name}: {v.reason}" for v in failing) + warning_text
    else:
        reason = "passed every enforced check: " + "; ".join(f"{v.name}: {v.reason}" for v in verdicts
                                                             if v.passed) + warning_text
    return GateDecision(not failing, reason, [v.name for v in failing], [v.name for v in warned])


def kind_of(check) -> str:
    return check.kind.value if hasattr(check.kind, "value") else str(check.kind)


def _mode(check) -> str:
    return check.mode.value if hasattr(check.mode, "value") else str(check.mode)


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float, np.floating)) and math.isfinite(value)


def _fmt(value) -> str:
    return f"{value:.4f}" if _finite(value) else "NaN"


# ----------------------------------------------------------------- metric
def metric_check(check: MetricCheck, task, holdout: Holdout) -> CheckVerdict:
    """The holdout metric against the floor and (``min_improvement`` set) the champion's."""

    metric = check.metric
    value = task.metrics(holdout.y, holdout.challenger).get(metric.value, float("nan"))
    champion = (task.metrics(holdout.y, holdout.champion).get(metric.value, float("nan"))
                if holdout.champion is not None else None)
    compare = check.min_improvement is not None and holdout.champion_version is not None
    decision = decide_promotion(metric, value, champion if compare else None, check.floor,
                                check.min_improvement or 0.0, holdout.champion_version if compare else None)
    reason = decision.reason
    if holdout.champion_version is not None and not compare:   # judged on its own, not as a first model
        reason = reason.removeprefix("first model: ")
    row = CheckResult(check.name, kind_of(check), _mode(check), metric.value, PASSED if decision.promote else FAILED,
                      value if _finite(value) else None, check.floor, champion if _finite(champion) else None,
                      len(holdout.y), reason)
    return verdict(check, [row])


def _subset(outputs: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    return outputs.iloc[np.flatnonzero(mask)]


def slices_check(check: SlicesCheck, task, holdout: Holdout, default_metric) -> CheckVerdict:
    """Per slice of each column: the challenger may fall below the champion by at most
    ``max_regression`` (or, with no champion, below ``floor`` when set)."""
    metric = check.metric or default_metric
    results: list[CheckResult] = []
    row = lambda subject, status, detail, **kw: CheckResult(check.name, kind_of(check), _mode(check),  # noqa: E731
                                                            subject, status, detail=detail, **kw)
    for column in check.columns:
        if column not in holdout.X.columns:
            results.append(row(column, FAILED, f"column {column!r} is not in the holdout"))
            continue
        groups = groups_of(holdout.X[column].reset_index(drop=True), check.bins)
        for value, count in groups.value_counts().sort_index().items():
            subject = f"{column}={value}"
            if count < check.min_rows:
                results.append(row(subject, NOT_JUDGED, f"{subject}: {count} rows, fewer than min_rows "
                                                        f"{check.min_rows}: too small to judge", rows=int(count)))
                continue
            mask = (groups == value).to_numpy()
            mine = task.metrics(holdout.y[mask], _subset(holdout.challenger, mask))[metric.value]
            theirs = (task.metrics(holdout.y[mask], _subset(holdout.champion, mask))[metric.value]
                      if holdout.champion is not None else None)
            common = dict(value=mine if _finite(mine) else None, champion_value=theirs if _finite(theirs) else None,
                          rows=int(count))
            if not _finite(mine):
                results.append(row(subject, FAILED, f"{subject}: challenger {metric.value} is undefined (NaN) on "
                                                    f"{count} rows", threshold=check.max_regression, **common))
            elif theirs is not None and _finite(theirs):
                regression = metric.gain(theirs, mine)   # how much better the champion is
                ok = regression <= check.max_regression
                results.append(row(subject, PASSED if ok else FAILED,
                                   f"{subject}: {metric.value} {mine:.4f} vs champion v{holdout.champion_version} "
                                   f"{theirs:.4f} (regression {regression:+.4f}, at most {check.max_regression:.4f})",
                                   threshold=check.max_regression, **common))
            elif check.floor is not None and theirs is None:
                ok = Bound(metric, check.floor).holds(mine)
                results.append(row(subject, PASSED if ok else FAILED,
                                   f"{subject}: {metric.value} {mine:.4f} against the "
                                   f"{Bound(metric, check.floor).kind} {check.floor:.4f}",
                                   threshold=check.floor, **common))
            else:
                why = "champion undefined on it" if theirs is not None else "no champion to compare"
                results.append(row(subject, PASSED, f"{subject}: {metric.value} {mine:.4f} ({why})", **common))
    return verdict(check, results)


# ----------------------------------------------------------------- fairness
def fairness_check(check: FairnessCheck, task, holdout: Holdout, default_metric) -> CheckVerdict:
    """For each sensitive column, the Fairlearn difference between its groups (those of at least
    ``min_rows`` rows) at most ``max_difference``; the per-group values are reported as info rows."""
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate

    results: list[CheckResult] = []
    row = lambda subject, status, detail, **kw: CheckResult(check.name, kind_of(check), _mode(check),  # noqa: E731
                                                            subject, status, detail=detail, **kw)
    measure = check.measure
    metric = check.metric or default_metric
    for column in check.sensitive:
        if column not in holdout.X.columns:
            results.append(row(column, FAILED, f"sensitive column {column!r} is not in the holdout"))
            continue
        groups = groups_of(holdout.X[column].reset_index(drop=True), check.bins)
        counts = groups.value_counts().sort_index()
        small = counts[counts < check.min_rows]
        for value, count in small.items():
            results.append(row(f"{column}={value}", NOT_JUDGED, f"{column}={value}: {count} rows, fewer than "
                                                                f"min_rows {check.min_rows}", rows=int(count)))
        judged = counts[counts >= check.min_rows]
        if len(judged) < 2:
            results.append(row(column, FAILED, f"{column}: cannot be computed, {len(judged)} group(s) with at least "
                                               f"{check.min_rows} rows (two are needed)", threshold=check.max_difference))
            continue
        mask = groups.isin(judged.index).to_numpy()
        y, sensitive = holdout.y[mask], groups[mask].to_numpy()
        outputs = _subset(holdout.challenger, mask)
        if measure is FairnessMeasure.METRIC_DIFFERENCE:
            def by_rows(y_true, rows, _outputs=outputs):
                return task.metrics(y_true, _outputs.iloc[np.asarray(rows, dtype=int)])[metric.value]
            frame = MetricFrame(metrics={metric.value: by_rows}, y_true=y, y_pred=np.arange(len(y)),
                                sensitive_features=sensitive)
            label = f"{metric.value} difference"
        else:
            predicted = outputs["predicted_label"].to_numpy()
            metrics = {"selection_rate": selection_rate}
            if measure is FairnessMeasure.EQUALIZED_ODDS_DIFFERENCE:
                metrics = {"true_positive_rate": true_positive_rate, "false_positive_rate": false_positive_rate}
            frame = MetricFrame(metrics=metrics, y_true=y, y_pred=predicted, sensitive_features=sensitive)
            label = measure.value.replace("_", " ")
        by_group = frame.by_group
        for group, values in by_group.iterrows():
            shown = ", ".join(f"{k} {_fmt(v)}" for k, v in values.items())
            results.append(row(f"{column}={group}", INFO, f"{column}={group}: {shown}",
                               value=float(values.iloc[0]) if _finite(values.iloc[0]) else None,
                               rows=int(counts[group])))
        # equalized odds: the larger of the two rate differences (Fairlearn's definition)
        difference = float(np.max(frame.difference(method="between_groups").to_numpy(dtype=float)))
        if not _finite(difference) or by_group.isna().to_numpy().any():
            results.append(row(column, FAILED, f"{column}: {label} cannot be computed (a group's value is NaN)",
                               threshold=check.max_difference))
            continue
        ok = difference <= check.max_difference
        results.append(row(column, PASSED if ok else FAILED,
                           f"{column}: {label} {difference:.4f} (at most {check.max_difference:.4f}) over "
                           f"{len(judged)} groups", value=difference, threshold=check.max_difference,
                           rows=int(mask.sum())))
    return verdict(check, results)


# ----------------------------------------------------------------- calibration
def expected_calibration_error(confidence: np.ndarray, outcome: np.ndarray, bins: int) -> float:
    """Mean gap between predicted probability and observed frequency over ``bins`` equal-width bins
    of the probability, weighted by the bins' rows (NaN without rows)."""
    confidence, outcome = np.asarray(confidence, dtype=float), np.asarray(outcome, dtype=float)
    if not len(confidence):
        return float("nan")
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.sum() * abs(outcome[inside].mean() - confidence[inside].mean())
    return float(total / len(confidence))


def calibration_values(task, y, outputs: pd.DataFrame, bins: int) -> dict[str, float]:
    """Brier score and ECE: of P(class 1) for a binary task, of the predicted class's probability
    (against being right) for a multiclass one, with the multiclass Brier score over all classes."""
    y = np.asarray(y)
    if not len(y):
        return {"brier": float("nan"), "ece": float("nan")}
    if task.kind is TaskType.BINARY:
        score = outputs["score"].to_numpy(dtype=float)
        return {"brier": float(np.mean((score - y) ** 2)), "ece": expected_calibration_error(score, y, bins)}
    proba = outputs[[f"proba_{c}" for c in task.classes]].to_numpy(dtype=float)
    onehot = (y.astype(int)[:, None] == np.asarray(task.classes)[None, :]).astype(float)
    right = (outputs["predicted_label"].to_numpy() == y).astype(float)
    return {"brier": float(np.mean(np.sum((proba - onehot) ** 2, axis=1))),
            "ece": expected_calibration_error(outputs["score"].to_numpy(dtype=float), right, bins)}


def calibration_check(check: CalibrationCheck, task, holdout: Holdout) -> CheckVerdict:
    values = calibration_values(task, holdout.y, holdout.challenger, check.bins)
    champion = (calibration_values(task, holdout.y, holdout.champion, check.bins)
                if holdout.champion is not None else {})
    results = []
    for subject, ceiling in (("brier", check.max_brier), ("ece", check.max_ece)):
        if ceiling is None:
            continue
        value = values[subject]
        ok = _finite(value) and value <= ceiling
        detail = (f"{subject} {_fmt(value)} (at most {ceiling:.4f})" if _finite(value)
                  else f"{subject} cannot be computed (NaN on {len(holdout.y)} rows)")
        results.append(CheckResult(check.name, kind_of(check), _mode(check), subject, PASSED if ok else FAILED,
                                   value if _finite(value) else None, ceiling,
                                   champion.get(subject) if _finite(champion.get(subject)) else None,
                                   len(holdout.y), detail))
    return verdict(check, results)


# ----------------------------------------------------------------- latency
@dataclass(frozen=True)
class Latency:
    """Timings of the served model, in milliseconds (of the best round), and its size on disk in MB."""

    single_p50_ms: float
    single_p99_ms: float
    batch_p50_ms: float
    batch_p99_ms: float
    batch_rows: int
    size_mb: float
    single_p99_rounds_ms: tuple[float, ...] = ()
    batch_p99_rounds_ms: tuple[float, ...] = ()
    runtime: str = ""   # what served: onnxruntime or scikit-learn


def best_round(rounds: list[np.ndarray]) -> tuple[float, float, tuple[float, ...]]:
    """(p50, p99) of the round with the lowest p99, and every round's p99."""
    p99s = [float(np.percentile(r, 99)) for r in rounds]
    best = int(np.argmin(p99s))
    return float(np.percentile(rounds[best], 50)), p99s[best], tuple(round(v, 3) for v in p99s)


def measure_latency(ref, task, X: pd.DataFrame, check: LatencyCheck) -> Latency:
    """Load version ``ref`` as the scoring service will serve it (compiled when its check passed, see
    :func:`pipelines.models.compiled.load_for_inference`) and time the service's path, records
    checked against the signature and scored, for ``repeats`` single rows and ``max(5, repeats // 10)``
    batches in each of ``rounds`` rounds (after one warm-up each); the best round counts (see
    :class:`LatencyCheck`). The size is the served files': the graph when compiled, else the
    logged model's directory."""
    import mlflow

    from pipelines.models.signature import signature_inputs
    from pipelines.serving.records import check_records, score_records

    tracking.configure()
    model = compiled.load_for_inference(ref)
    if isinstance(model, compiled.CompiledModel):
        size = len(model.graph)
    else:
        local = mlflow.artifacts.download_artifacts(ref.uri)
        size = sum(p.stat().st_size for p in Path(local).rglob("*") if p.is_file())
    inputs = signature_inputs(ref.uri) or {c: "string" if X[c].dtype == object else "double" for c in X.columns}
    rows = X.sample(n=check.batch_rows, replace=len(X) < check.batch_rows, random_state=0).reset_index(drop=True)
    records = rows[list(inputs)].astype(object).where(rows[list(inputs)].notna(), None).to_dict("records")

    def timings(batch: list[dict], times: int) -> np.ndarray:
        score_records(task, model, inputs, check_records(batch, inputs))
        spent = []
        for _ in range(times):
            start = time.perf_counter()
            score_records(task, model, inputs, check_records(batch, inputs))
            spent.append((time.perf_counter() - start) * 1000)
        return np.asarray(spent)

    single = best_round([timings(records[:1], check.repeats) for _ in range(check.rounds)])
    batch = best_round([timings(records, max(5, check.repeats // 10)) for _ in range(check.rounds)])
    return Latency(single[0], single[1], batch[0], batch[1], len(rows), size / 1e6, single[2], batch[2],
                   compiled.runtime_of(model))


def latency_check(check: LatencyCheck, measured: Latency) -> CheckVerdict:
    results = []
    for subject, value, budget in (("single_row_p99_ms", measured.single_p99_ms, check.single_p99_ms),
                                   (f"batch_{measured.batch_rows}_p99_ms", measured.batch_p99_ms, check.batch_p99_ms),
                                   ("size_mb", measured.size_mb, check.max_size_mb)):
        ok = _finite(value) and value <= budget
        results.append(CheckResult(check.name, kind_of(check), _mode(check), subject, PASSED if ok else FAILED,
                                   value if _finite(value) else None, budget, None, None,
                                   f"{subject} {_fmt(value)} (budget {budget:g})"))
    for subject, value in (("single_row_p50_ms", measured.single_p50_ms),
                           (f"batch_{measured.batch_rows}_p50_ms", measured.batch_p50_ms)):
        results.append(CheckResult(check.name, kind_of(check), _mode(check), subject, INFO, value, None, None, None,
                                   f"{subject} {_fmt(value)}"))
    if measured.runtime:
        results.append(CheckResult(check.name, kind_of(check), _mode(check), "runtime", INFO, None, None, None, None,
                                   f"measured on {measured.runtime}, as the version will serve"))
    if measured.single_p99_rounds_ms:
        results.append(CheckResult(check.name, kind_of(check), _mode(check), "p99_ms_of_each_round", INFO, None, None,
                                   None, None, f"single-row p99 per round {list(measured.single_p99_rounds_ms)}, "
                                               f"batch p99 per round {list(measured.batch_p99_rounds_ms)}; "
                                               f"the best round counts"))
    return verdict(check, results)


# ----------------------------------------------------------------- schema
INTEGER_TYPES = {"long", "integer", "int"}
NUMERIC_TYPES = {"double", "float"} | INTEGER_TYPES


def expected_inputs(feature_columns) -> dict[str, str]:
    """What inference sends for a spec's features: numbers, and text for categorical columns."""
    return {c: "number" for c in feature_columns.numeric} | {c: "string" for c in feature_columns.categorical}


def schema_check(check: SchemaCheck, challenger: dict[str, str] | None, expected: dict[str, str],
                 against: str) -> CheckVerdict:
    """The challenger's signature inputs (name -> MLflow type) against what inference sends
    (``expected``: the champion's inputs, or the spec's features with ``number`` for any numeric type)."""
    def row(status, detail):
        return CheckResult(check.name, kind_of(check), _mode(check), "inputs", status, None, None, None,
                           len(expected), detail)

    if challenger is None:
        return verdict(check, [row(FAILED, "the challenger has no signature: its inputs cannot be checked")])

    def same(mine: str, theirs: str) -> bool:
        """Whether MLflow's schema enforcement takes what is sent: the same type, any number for the
        spec's numeric features, or integers where the challenger takes floating point."""
        if theirs == "number":
            return mine in NUMERIC_TYPES
        return mine == theirs or (theirs in INTEGER_TYPES and mine in {"double", "float"})

    missing = sorted(set(expected) - set(challenger))
    extra = sorted(set(challenger) - set(expected))
    retyped = sorted(f"{c} ({challenger[c]}, {against} sends {expected[c]})" for c in set(expected) & set(challenger)
                     if not same(challenger[c], expected[c]))
    problems = ([f"missing {missing}"] if missing else []) + ([f"not sent by {against} {extra}"] if extra else []) \
        + ([f"other types: {', '.join(retyped)}"] if retyped else [])
    if problems:
        return verdict(check, [row(FAILED, "signature inputs differ from " + against + ": " + "; ".join(problems))])
    return verdict(check, [row(PASSED, f"signature inputs match {against} ({len(expected)} columns)")])


# ----------------------------------------------------------------- rows for the table and tags
def result_rows(verdicts: list[CheckVerdict]) -> list[dict]:
    return [asdict(r) for v in verdicts for r in v.results]


def is_kind(check, kind: CheckKind) -> bool:
    return kind_of(check) == kind.value
