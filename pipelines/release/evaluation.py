"""Evaluate a challenger on the recent holdout through the promotion gate; promote only what passes.

The gate (see :mod:`pipelines.release.gate`) runs the spec's checks, the first always the promotion
metric's rule (:func:`pipelines.release.decision.decide_promotion`), then ``promotion.checks`` (slices, fairness, calibration, latency, schema, more metrics), each
enforced or only recorded. :func:`evaluate_challenger` runs them and records every result (the
``promotion_checks`` table, tags ``gate.*`` on the version, ``gate/checks.json`` in its run, a
model card); :func:`promote_if_better` acts on the evaluation and, when the spec requires it, a
reviewer's answer. The decision and its reasons are tags on the challenger's version (and on the
replaced champion), and the alias ``champion`` moves only on promotion, guarded by a
compare-and-set: if another run moved it meanwhile, the promotion is refused.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass, replace

from pipelines.core.config import settings
from pipelines.core.lake import Lake, read_partition, replace_partition
from pipelines.core.spec import CheckKind, MetricCheck, Strategy
from pipelines.features.point_in_time import feature_columns
from pipelines.models import tracking
from pipelines.models.signature import signature_inputs
from pipelines.models.tasks import ModelTask
from pipelines.release import gate, model_card, rollout
from pipelines.release.decision import Evaluation, PromotionConflict, Review, decide_final, short_reason
from pipelines.training.fit import holdout_frame, label_window

log = logging.getLogger(__name__)


PROMOTION_CHECKS = "promotion_checks"   # the monitoring table of every gate check's results


def gate_checks(spec) -> list:
    """The gate's checks: the promotion metric against its floor and the champion (always
    enforced), then the spec's ``promotion.checks`` in order."""

    promotion = spec.promotion
    primary = MetricCheck(name=f"holdout_{promotion.metric.value}", kind=CheckKind.METRIC, metric=promotion.metric,
                          floor=promotion.floor, min_improvement=promotion.min_improvement)
    return [primary, *promotion.checks]


@dataclass(frozen=True)
class CheckInputs:
    """What a gate check may look at: the spec, the task, the holdout and both models."""

    spec: object
    task: ModelTask
    holdout: object       # gate.Holdout
    challenger: object    # tracking.ModelRef
    champion: object      # tracking.ModelRef or None


def _schema_verdict(check, given: CheckInputs):
    """The challenger's signature against the champion's (or, with no champion, the spec's features)."""
    expected, against = gate.expected_inputs(feature_columns(given.spec)), "the spec's features"
    if given.champion is not None:
        expected = signature_inputs(given.champion.uri) or expected
        against = f"champion v{given.champion.version}"
    return gate.schema_check(check, signature_inputs(given.challenger.uri), expected, against)


CHECKS = {   # a check's kind -> its verdict from the check and the inputs
    CheckKind.METRIC: lambda check, g: gate.metric_check(check, g.task, g.holdout),
    CheckKind.SLICES: lambda check, g: gate.slices_check(check, g.task, g.holdout, g.spec.promotion.metric),
    CheckKind.FAIRNESS: lambda check, g: gate.fairness_check(check, g.task, g.holdout, g.spec.promotion.metric),
    CheckKind.CALIBRATION: lambda check, g: gate.calibration_check(check, g.task, g.holdout),
    CheckKind.LATENCY: lambda check, g: gate.latency_check(
        check, gate.measure_latency(g.challenger, g.task, g.holdout.X, check)),
    CheckKind.SCHEMA: _schema_verdict,
}


def run_checks(spec, task: ModelTask, holdout, challenger_ref, champion_ref) -> list:
    """Every check's verdict. A check that raises is a failed verdict naming the error: it never passes."""
    given = CheckInputs(spec, task, holdout, challenger_ref, champion_ref)
    verdicts = []
    for check in gate_checks(spec):
        try:
            result = CHECKS[CheckKind(gate.kind_of(check))](check, given)
        except Exception as exc:   # noqa: BLE001 - any failure to compute is a failed check, with its reason
            log.exception("%s: check %s could not be computed", spec.name, check.name)
            row = gate.CheckResult(check.name, check.kind.value, check.mode.value, "overall", gate.FAILED,
                                   detail=f"cannot be computed: {type(exc).__name__}: {exc}")
            result = gate.verdict(check, [row])
        log.info("%s: check %s (%s, %s): %s: %s", spec.name, result.name, result.kind, result.mode,
                 "passed" if result.passed else "FAILED", result.reason)
        verdicts.append(result)
    return verdicts


def record_checks(spec, lake: Lake, as_of: dt.date, challenger_version: str, champion_version: str | None,
                  verdicts: list, evaluated_at: str) -> None:
    """Rows of the ``promotion_checks`` table (partition of the evaluation's as-of date): an
    evaluation of the same version again replaces its rows, other versions' rows stay."""
    import pandas as pd

    table = lake.monitoring(spec.name, PROMOTION_CHECKS)
    rows = pd.DataFrame(gate.result_rows(verdicts))
    verdict_of = {v.name: ("passed" if v.passed else "failed") for v in verdicts}
    rows.insert(0, "model_version", str(challenger_version))
    rows.insert(1, "champion_version", str(champion_version) if champion_version else None)
    rows["check_verdict"] = rows["check"].map(verdict_of)
    rows["evaluated_at"] = evaluated_at
    for column in ("value", "threshold", "champion_value"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce").astype("float64")
    rows["rows"] = pd.to_numeric(rows["rows"], errors="coerce").astype("Int64")
    try:
        earlier = read_partition(table, as_of)
        earlier = earlier[earlier["model_version"].astype(str) != str(challenger_version)]
        rows = pd.concat([earlier, rows], ignore_index=True) if len(earlier) else rows
    except FileNotFoundError:
        pass
    replace_partition(table, as_of, rows)


def evaluate_challenger(spark, spec, lake: Lake, challenger: dict, as_of: dt.date) -> Evaluation:
    """Run the gate on the holdout of ``as_of``: every check's result goes to the ``promotion_checks``
    table, the version's tags and its MLflow run; a model card is written. Moves no alias."""
    import mlflow
    import pandas as pd

    name = spec.model.registered_name
    challenger_ref = tracking.model_version(name, challenger["version"])
    champion_ref = tracking.resolve_alias(name, tracking.CHAMPION)
    evaluated_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    base = {"challenger": challenger_ref.as_xcom(), "champion": champion_ref.as_xcom() if champion_ref else None,
            "as_of": str(as_of), "metric": spec.promotion.metric.value, "evaluated_at": evaluated_at}
    if champion_ref is not None and champion_ref.version == challenger_ref.version:
        return Evaluation(False, "challenger is already the champion", already_champion=True, **base)

    window = label_window(spec, as_of)
    frame = holdout_frame(spark, spec, lake, window)
    X, y = frame[feature_columns(spec).all], frame[spec.label.target].to_numpy()
    task = ModelTask.of(spec)
    holdout = gate.Holdout(X, y, task.outputs(tracking.load_model(challenger_ref), X),
                           task.outputs(tracking.load_model(champion_ref), X) if champion_ref else None,
                           champion_ref.version if champion_ref else None)
    verdicts = run_checks(spec, task, holdout, challenger_ref, champion_ref)
    decision = gate.decide_gate(verdicts)
    log.info("%s: gate for v%s: %s", spec.name, challenger_ref.version, decision.reason)
    record_checks(spec, lake, as_of, challenger_ref.version, champion_ref.version if champion_ref else None,
                  verdicts, evaluated_at)
    primary = verdicts[0].results[0]   # the promotion metric's rule: both models' values, computed once
    challenger_value, champion_value = primary.value, primary.champion_value
    tags = {"gate.decision": "passed" if decision.eligible else "failed", "gate.reason": decision.reason,
            "gate.failing": ",".join(decision.failing) or "none", "gate.warnings": ",".join(decision.warnings) or "none",
            "gate.evaluated_at": evaluated_at, "gate.champion_version": champion_ref.version if champion_ref else "none",
            **{f"gate.check.{v.name}": ("passed" if v.passed else ("failed" if v.enforced else "warned"))
               for v in verdicts}}
    tracking.tag_version(name, challenger_ref.version, tags)
    # the gate's results beside the training run's own artifacts
    mlflow.log_table(pd.DataFrame(gate.result_rows(verdicts)), "gate/checks.json", run_id=challenger_ref.run_id)
    model_card.log_calibration_plot(task, y, holdout, challenger_ref)
    evaluation = Evaluation(
        decision.eligible, decision.reason, failing=decision.failing, warnings=decision.warnings,
        challenger_value=_finite(challenger_value), champion_value=_finite(champion_value),
        holdout=f"{window.holdout_start}..{window.holdout_end} ({len(frame)} rows)",
        checks=[{"name": v.name, "kind": v.kind, "mode": v.mode, "passed": v.passed, "reason": v.reason}
                for v in verdicts],
        results=gate.result_rows(verdicts), **base)
    evaluation = replace(evaluation, card=str(model_card.publish(spec, challenger_ref, evaluation, decision=None)))
    return replace(evaluation, review_summary=model_card.review_summary(spec, evaluation))


def promote_if_better(spec, evaluation: Evaluation, review: Review | None = None) -> dict:
    """Act on an evaluation: move ``@champion`` to the challenger when the gate (and, if the spec
    asks, a reviewer) says so, guarded by a compare-and-set on the champion it was judged against.
    The decision, its reason and the review are tags on the version and in its model card."""
    name = spec.model.registered_name
    challenger_ref = tracking.ModelRef.from_xcom(evaluation.challenger)
    champion_ref = tracking.ModelRef.from_xcom(evaluation.champion) if evaluation.champion else None
    if evaluation.already_champion:
        return {"promoted": False, "reason": evaluation.reason, "champion": champion_ref.as_xcom()}
    outcome, reason = decide_final(spec, evaluation, review)
    decided_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if outcome == "promoted":   # compare-and-set: only if the champion is still the one the gate judged against
        now = tracking.resolve_alias(name, tracking.CHAMPION)
        if (now.version if now else None) != (champion_ref.version if champion_ref else None):
            outcome = "conflict"
            reason = (f"not promoted: the champion moved to v{now.version if now else None} while v"
                      f"{challenger_ref.version} was evaluated against v{champion_ref.version if champion_ref else None}"
                      f" ({reason}); rerun the evaluation against the new champion")
        elif champion_ref is not None and spec.deployment.strategy is not Strategy.DIRECT:
            state = rollout.start(spec, Lake(settings().lake), challenger_ref.version, champion_ref.version,
                                  short_reason(reason), "promotion")
            outcome = "rolling_out"
            reason = (f"{reason}; {spec.deployment.strategy.value} rollout {state.id} started beside champion "
                      f"v{champion_ref.version} (the {spec.name}_rollout DAG moves it)")
        else:
            tracking.move_champion(name, challenger_ref.version, champion_ref.version if champion_ref else None,
                                   decided_at)
    _log_decision(spec, outcome, reason, challenger_ref, champion_ref)
    metric = evaluation.metric
    tags = _decision_tags(evaluation, outcome, reason, champion_ref, decided_at, review)
    tracking.tag_version(name, challenger_ref.version, tags)
    card = model_card.publish(spec, challenger_ref, evaluation, decision=(outcome, reason, review))
    if outcome == "conflict":
        raise PromotionConflict(reason)
    value, c = evaluation.challenger_value, tracking.client()
    c.log_metric(challenger_ref.run_id, f"promotion_challenger_{metric}", value if value is not None else -1.0)
    if evaluation.champion_value is not None:
        c.log_metric(challenger_ref.run_id, f"promotion_champion_{metric}", evaluation.champion_value)
    promoted = outcome == "promoted"   # "rolling_out": the rollout DAG makes it champion, or not
    champion_now = challenger_ref if promoted else champion_ref
    return {"promoted": promoted, "outcome": outcome, "reason": reason, "metric": metric,
            "challenger_value": evaluation.challenger_value, "champion_value": evaluation.champion_value,
            "champion_version": champion_ref.version if champion_ref else None,
            "challenger_version": challenger_ref.version, "failing": evaluation.failing,
            "warnings": evaluation.warnings, "card": str(card),
            "champion": champion_now.as_xcom() if champion_now else None}


def _log_decision(spec, outcome: str, reason: str, challenger_ref, champion_ref) -> None:
    if outcome == "rolling_out":
        log.info("%s: ROLL OUT v%s beside champion v%s: %s", spec.name, challenger_ref.version,
                 champion_ref.version, reason)
    elif outcome == "promoted":
        log.info("%s: PROMOTE v%s to champion (was %s): %s", spec.name, challenger_ref.version,
                 f"v{champion_ref.version}" if champion_ref else "none", reason)
    else:
        log.info("%s: KEEP champion %s, challenger v%s %s: %s", spec.name,
                 f"v{champion_ref.version}" if champion_ref else "(none)", challenger_ref.version, outcome, reason)


def _decision_tags(evaluation: Evaluation, outcome: str, reason: str, champion_ref, decided_at: str,
                   review: Review | None) -> dict[str, str]:
    """The challenger version's ``promotion.*`` (and ``review.*``) tags."""
    metric = evaluation.metric
    return {
        "promotion.decision": outcome, "promotion.reason": reason, "promotion.metric": metric,
        f"promotion.challenger_{metric}": _fmt(evaluation.challenger_value),
        f"promotion.champion_{metric}": _fmt(evaluation.champion_value),
        "promotion.champion_version": champion_ref.version if champion_ref else "none",
        "promotion.holdout": evaluation.holdout, "promotion.evaluated_at": evaluation.evaluated_at,
        "promotion.decided_at": decided_at,
        **({"review.decision": "approved" if review.approved else "rejected", "review.by": review.by or "nobody",
            "review.at": review.at or decided_at, "review.comment": review.comment} if review else {}),
    }


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None

def _fmt(value: float | None) -> str:
    return "none" if value is None else ("nan" if not math.isfinite(value) else f"{value:.4f}")
