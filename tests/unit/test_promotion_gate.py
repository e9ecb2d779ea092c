"""The promotion gate's checks and decisions, on hand-made holdouts (no Spark, no MLflow)."""
import math

import numpy as np
import pandas as pd
import pytest

from pipelines.core.spec import (CalibrationCheck, FairnessCheck, LatencyCheck, Metric, MetricCheck, SchemaCheck,
                                 SlicesCheck, TaskType)
from pipelines.features import slices
from pipelines.models.tasks import ModelTask
from pipelines.release import gate
from pipelines.release.decision import Evaluation, Review, decide_final

BINARY = ModelTask(TaskType.BINARY, (0, 1), 0.5)
RNG = np.random.default_rng(7)


def holdout(challenger_scores, champion_scores=None, segment=None, y=None, champion_version="1"):
    n = len(challenger_scores)
    y = np.asarray(y if y is not None else RNG.integers(0, 2, n))
    X = pd.DataFrame({"segment": segment if segment is not None else ["a"] * n, "amount": np.arange(n, dtype=float)})

    def outputs(scores):
        scores = np.asarray(scores, dtype=float)
        return pd.DataFrame({"score": scores, "predicted_label": (scores >= 0.5).astype("int32")})

    return gate.Holdout(X, y, outputs(challenger_scores),
                        outputs(champion_scores) if champion_scores is not None else None,
                        champion_version if champion_scores is not None else None)


def perfect(y):
    return np.where(np.asarray(y) == 1, 0.9, 0.1)


def noisy(y, flip):
    """Scores that rank a ``flip`` share of the rows wrongly."""
    y = np.asarray(y)
    scores = perfect(y).copy()
    idx = np.flatnonzero(RNG.random(len(y)) < flip)
    scores[idx] = 1 - scores[idx]
    return scores


def segmented(n_a=400, n_b=400):
    y = RNG.integers(0, 2, n_a + n_b)
    segment = np.array(["a"] * n_a + ["b"] * n_b)
    return y, segment


# ----------------------------------------------------------------- slices
def test_a_challenger_that_wins_overall_but_loses_a_slice_is_rejected_naming_it():
    y, segment = segmented(600, 200)
    in_b = segment == "b"
    champion = noisy(y, 0.10)                       # about 0.90 everywhere
    challenger = perfect(y)                         # perfect on a ...
    challenger[in_b] = noisy(y[in_b], 0.35)         # ... but much worse on b
    h = holdout(challenger, champion, segment, y)
    overall = gate.metric_check(MetricCheck(name="m", kind="metric", metric=Metric.ROC_AUC, min_improvement=0.01),
                                BINARY, h)
    assert overall.passed, overall.reason          # it wins on the overall metric
    check = SlicesCheck(name="segment_quality", kind="slices", columns=["segment"], min_rows=50, max_regression=0.05)
    v = gate.slices_check(check, BINARY, h, Metric.ROC_AUC)
    assert not v.passed and "segment=b" in v.reason and "segment=a" not in v.reason
    decision = gate.decide_gate([overall, v])
    assert not decision.eligible and decision.failing == ["segment_quality"]
    assert "segment_quality" in decision.reason and "segment=b" in decision.reason


def test_slices_too_small_are_reported_not_dropped_and_nothing_to_judge_fails():
    y, segment = segmented(300, 20)
    h = holdout(perfect(y), perfect(y), segment, y)
    check = SlicesCheck(name="s", kind="slices", columns=["segment"], min_rows=50)
    v = gate.slices_check(check, BINARY, h, Metric.ROC_AUC)
    status = {r.subject: r.status for r in v.results}
    assert status == {"segment=a": gate.PASSED, "segment=b": gate.NOT_JUDGED} and v.passed
    alone = gate.slices_check(check.model_copy(update={"min_rows": 1000}), BINARY, h, Metric.ROC_AUC)
    assert not alone.passed and "cannot be computed" in alone.reason and "too small" in alone.reason


def test_numeric_slices_are_quantile_bins_and_missing_values_a_group():
    values = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, None])
    groups = slices.groups_of(values, bins=2)
    assert groups.iloc[-1] == slices.MISSING and groups.iloc[:4].nunique() == 1 and groups.iloc[4:8].nunique() == 1
    assert slices.groups_of(pd.Series(["x", None, "y"]), 4).tolist() == ["x", slices.MISSING, "y"]


# ----------------------------------------------------------------- fairness
def test_fairness_over_its_threshold_rejects_and_in_warn_mode_only_warns():
    y, segment = segmented(300, 300)
    scores = perfect(y)
    scores[(segment == "b") & (y == 0)] = 0.7       # b is selected far more often
    h = holdout(scores, None, segment, y)
    enforce = FairnessCheck(name="parity", kind="fairness", sensitive=["segment"], max_difference=0.1)
    v = gate.fairness_check(enforce, BINARY, h, Metric.ROC_AUC)
    rate = {r.subject: r.value for r in v.results if r.status == gate.INFO}
    assert rate["segment=b"] > rate["segment=a"] + 0.3
    overall = [r for r in v.results if r.subject == "segment"][0]
    assert overall.value == pytest.approx(rate["segment=b"] - rate["segment=a"]) and overall.status == gate.FAILED
    assert not gate.decide_gate([v]).eligible

    warn = gate.fairness_check(enforce.model_copy(update={"mode": "warn"}), BINARY, h, Metric.ROC_AUC)
    decision = gate.decide_gate([warn])
    assert decision.eligible and decision.warnings == ["parity"] and "warnings: parity" in decision.reason


@pytest.mark.parametrize("measure", ["equalized_odds_difference", "metric_difference"])
def test_other_fairness_measures_pass_an_even_model(measure):
    y, segment = segmented(300, 300)
    h = holdout(perfect(y), None, segment, y)
    check = FairnessCheck(name="f", kind="fairness", sensitive=["segment"], measure=measure, max_difference=0.05)
    v = gate.fairness_check(check, BINARY, h, Metric.ROC_AUC)
    assert v.passed, v.reason


def test_fairness_with_one_group_big_enough_cannot_be_computed():
    y, segment = segmented(300, 10)
    check = FairnessCheck(name="f", kind="fairness", sensitive=["segment"], max_difference=0.1, min_rows=50)
    v = gate.fairness_check(check, BINARY, holdout(perfect(y), None, segment, y), Metric.ROC_AUC)
    assert not v.passed and "two are needed" in v.reason


# ----------------------------------------------------------------- NaN and missing inputs never pass
NAN_CASES = [
    ("metric NaN (one class in the holdout)",
     lambda: gate.metric_check(MetricCheck(name="m", kind="metric", metric=Metric.ROC_AUC, floor=0.5), BINARY,
                               holdout([0.2, 0.4, 0.6], y=[1, 1, 1]))),
    ("a slice's metric NaN",
     lambda: gate.slices_check(SlicesCheck(name="s", kind="slices", columns=["segment"], min_rows=2), BINARY,
                               holdout([0.2, 0.4, 0.6, 0.7], [0.2, 0.4, 0.6, 0.7], ["a", "a", "b", "b"], y=[1, 1, 0, 1]),
                               Metric.ROC_AUC)),
    ("a slice column not in the holdout",
     lambda: gate.slices_check(SlicesCheck(name="s", kind="slices", columns=["tenure"]), BINARY,
                               holdout([0.2, 0.8]), Metric.ROC_AUC)),
    ("calibration of an empty holdout",
     lambda: gate.calibration_check(CalibrationCheck(name="c", kind="calibration", max_brier=0.5), BINARY,
                                    holdout([], y=[]))),
    ("latency that was not measured",
     lambda: gate.latency_check(LatencyCheck(name="l", kind="latency"),
                                gate.Latency(1.0, float("nan"), 1.0, 1.0, 1000, 1.0))),
    ("a challenger without a signature",
     lambda: gate.schema_check(SchemaCheck(name="x", kind="schema"), None, {"a": "double"}, "the spec")),
]


@pytest.mark.parametrize("what, run", NAN_CASES, ids=[c[0] for c in NAN_CASES])
def test_a_check_that_cannot_be_computed_never_passes(what, run):
    v = run()
    assert not v.passed, what
    decision = gate.decide_gate([v])
    assert not decision.eligible and decision.failing == [v.name]


# ----------------------------------------------------------------- calibration, latency, schema
def test_expected_calibration_error_by_hand():
    # bin [0.2, 0.3): predicted 0.2, observed 0.5 (2 rows); bin [0.8, 0.9): predicted 0.8, observed 1.0 (2 rows)
    ece = gate.expected_calibration_error(np.array([0.2, 0.2, 0.8, 0.8]), np.array([0, 1, 1, 1]), bins=10)
    assert ece == pytest.approx(0.5 * 0.3 + 0.5 * 0.2)
    assert math.isnan(gate.expected_calibration_error(np.array([]), np.array([]), 10))


def test_calibration_ceilings():
    y = np.array([0, 1] * 50)
    good = gate.calibration_check(CalibrationCheck(name="c", kind="calibration", max_brier=0.05, max_ece=0.15),
                                  BINARY, holdout(perfect(y), y=y))
    assert good.passed and {r.subject for r in good.results} == {"brier", "ece"}
    bad = gate.calibration_check(CalibrationCheck(name="c", kind="calibration", max_brier=0.05), BINARY,
                                 holdout(np.full(100, 0.5), y=y))
    assert not bad.passed and "brier 0.2500" in bad.reason


@pytest.mark.parametrize("single, batch, size, passed, named", [
    (5.0, 80.0, 2.0, True, ""),
    (500.0, 80.0, 2.0, False, "single_row_p99_ms"),
    (5.0, 9000.0, 2.0, False, "batch_1000_p99_ms"),
    (5.0, 80.0, 400.0, False, "size_mb"),
])
def test_latency_budgets(single, batch, size, passed, named):
    check = LatencyCheck(name="lat", kind="latency", single_p99_ms=100, batch_p99_ms=1000, max_size_mb=50)
    v = gate.latency_check(check, gate.Latency(1.0, single, 10.0, batch, 1000, size))
    assert v.passed is passed and named in v.reason


@pytest.mark.parametrize("challenger, expected, passed, words", [
    ({"a": "double", "b": "string"}, {"a": "number", "b": "string"}, True, "match"),
    ({"a": "double", "b": "string"}, {"a": "long", "b": "string"}, True, "match"),     # integers are taken as floats
    ({"a": "long", "b": "string"}, {"a": "double", "b": "string"}, False, "a (long, champion v1 sends double)"),
    ({"a": "double"}, {"a": "double", "b": "string"}, False, "missing ['b']"),
    ({"a": "double", "b": "string", "c": "long"}, {"a": "double", "b": "string"}, False, "not sent by champion v1 ['c']"),
    ({"a": "string", "b": "string"}, {"a": "double", "b": "string"}, False, "a (string, champion v1 sends double)"),
])
def test_schema_check(challenger, expected, passed, words):
    v = gate.schema_check(SchemaCheck(name="schema", kind="schema"), challenger, expected, "champion v1")
    assert v.passed is passed and words in v.reason


# ----------------------------------------------------------------- decisions
def verdict(name, passed, mode="enforce"):
    return gate.CheckVerdict(name, "metric", mode, passed, "ok" if passed else "too low")


@pytest.mark.parametrize("verdicts, eligible, failing, warnings", [
    ([verdict("a", True), verdict("b", True)], True, [], []),
    ([verdict("a", True), verdict("b", False)], False, ["b"], []),
    ([verdict("a", False), verdict("b", False, "warn")], False, ["a"], ["b"]),
    ([verdict("a", True), verdict("b", False, "warn")], True, [], ["b"]),
])
def test_gate_decision(verdicts, eligible, failing, warnings):
    d = gate.decide_gate(verdicts)
    assert (d.eligible, d.failing, d.warnings) == (eligible, failing, warnings)
    for name in failing + warnings:
        assert f"{name}: too low" in d.reason


class _Promotion:
    def __init__(self, approval):
        from pipelines.core.spec import Approval

        self.approval, self.approval_timeout_hours = Approval(approval), 24.0


class _Spec:
    name = "uc"

    def __init__(self, approval):
        self.promotion = _Promotion(approval)


PASSED = {"eligible": True, "reason": "passed every enforced check: m: ok"}
FAILED = {"eligible": False, "reason": "failed m: too low"}


@pytest.mark.parametrize("approval, evaluation, review, outcome, words", [
    ("none", PASSED, None, "promoted", "gate passed"),
    ("none", FAILED, None, "rejected", "gate failed m"),
    ("required", PASSED, None, "awaiting_approval", "awaiting a reviewer"),
    ("required", FAILED, None, "rejected", "gate failed m"),
    ("required", PASSED, Review(True, "ana", comment="looks right"), "promoted", "approved by ana (looks right)"),
    ("required", PASSED, Review(False, "bo", comment="slice b too thin"), "rejected", "rejected by bo"),
    ("required", PASSED, Review(False, None), "rejected", "no review within 24 h"),
])
def test_final_decision_with_and_without_approval(approval, evaluation, review, outcome, words):
    got, reason = decide_final(_Spec(approval), Evaluation.from_xcom(evaluation), review)
    assert got == outcome and words in reason


def test_review_from_the_approval_operators_answer():
    answer = {"chosen_options": ["Reject"], "params_input": {"comment": "no"},
              "responded_by_user": {"id": "7", "name": "risk"}, "responded_at": "2026-12-02T10:00:00+00:00"}
    assert Review.from_hitl(answer) == Review(False, "risk", "2026-12-02T10:00:00+00:00", "no")
    timed_out = {"chosen_options": ["Reject"], "params_input": {}, "responded_by_user": None, "responded_at": None}
    assert Review.from_hitl(timed_out) == Review(False, None, None, "")
    assert Review.from_hitl(None) is None


def test_the_best_latency_round_counts():
    """A pause of the machine during one round (a 900 ms call) does not fail a fast model; a model
    that is slow in every round is still judged slow."""
    fast, paused = np.full(50, 4.0), np.r_[np.full(49, 4.0), 900.0]
    p50, p99, rounds = gate.best_round([paused, fast, paused])
    assert (p50, p99) == (4.0, 4.0) and rounds[0] > 400
    slow = [np.full(50, 300.0) for _ in range(3)]
    assert gate.best_round(slow)[1] == 300.0
