"""Promotion decisions, pure: the metric rule, the gate's outcome with a reviewer's answer, reasons.

The promotion metric's rule (:func:`decide_promotion`):

* a challenger whose metric is NaN never passes;
* it must reach the absolute ``floor`` when the spec sets one (a ceiling for metrics where
  lower is better: Brier, RMSE);
* with no champion yet, passing the floor is enough;
* otherwise it must beat the champion's metric on the same holdout by ``min_improvement``
  in the metric's direction
  (a champion whose metric is NaN on that holdout is beaten by any finite metric).

:func:`decide_final` combines the gate's evaluation with a reviewer's :class:`Review` when the
spec requires approval.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from pipelines.core.bounds import Bound
from pipelines.core.spec import Approval, Metric


@dataclass(frozen=True)
class Evaluation:
    """What the gate found about one challenger: eligible or not and why, the promotion metric of
    both models on the holdout, every check's verdict and result, the model card. Crosses task
    boundaries as a plain dict (:meth:`as_xcom`, :meth:`from_xcom`)."""

    eligible: bool
    reason: str
    challenger: dict | None = None        # tracking.ModelRef.as_xcom() of the challenger
    champion: dict | None = None          # ... of the champion it was judged against (None: the first model)
    as_of: str = ""
    metric: str = ""
    evaluated_at: str = ""
    failing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    challenger_value: float | None = None
    champion_value: float | None = None
    already_champion: bool = False
    holdout: str = ""                     # its label dates and rows
    checks: list[dict] = field(default_factory=list)    # name, kind, mode, passed, reason
    results: list[dict] = field(default_factory=list)   # every row of every check (gate.CheckResult)
    card: str = ""                        # the model card's path
    review_summary: str = ""              # what a reviewer reads in the approval request

    def as_xcom(self) -> dict:
        return asdict(self)

    @classmethod
    def from_xcom(cls, value: dict) -> "Evaluation":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})


class PromotionConflict(RuntimeError):
    """The champion alias moved while this evaluation ran; rerun the evaluation."""


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    metric: str
    challenger_value: float
    champion_value: float | None
    champion_version: str | None


def decide_promotion(metric: Metric | str, challenger: float, champion: float | None, floor: float | None,
                     min_improvement: float, champion_version: str | None = None) -> PromotionDecision:
    """Pure promotion rule: see the module docstring. For a lower-is-better metric (RMSE, Brier)
    the floor is a ceiling and the gain is the decrease (the metric knows its direction)."""
    metric = Metric(metric)

    def done(ok: bool, why: str) -> PromotionDecision:
        return PromotionDecision(ok, why, metric.value, challenger, champion, champion_version)

    if challenger is None or not math.isfinite(challenger):
        return done(False, f"challenger {metric.value} is undefined (NaN) on the holdout")
    bound = Bound(metric, floor) if floor is not None else None
    if bound is not None and not bound.holds(challenger):
        where = "below the floor" if bound.kind == "floor" else "above the ceiling"
        return done(False, f"challenger {metric.value} {challenger:.4f} is {where} {floor:.4f}")
    kind = Bound(metric, 0.0).kind
    passes = f"passes the {kind} {floor:.4f}" if floor is not None else f"is defined (no {kind} set)"
    if champion_version is None:
        return done(True, f"first model: {metric.value} {challenger:.4f} {passes}")
    if champion is None or not math.isfinite(champion):
        return done(True, f"champion v{champion_version} {metric.value} is undefined on the holdout; "
                          f"challenger {challenger:.4f} {passes}")
    gain = metric.gain(challenger, champion)
    if gain >= min_improvement:
        return done(True, f"challenger {metric.value} {challenger:.4f} beats champion v{champion_version} "
                          f"{champion:.4f} by {gain:+.4f} (margin {min_improvement:.4f})")
    return done(False, f"challenger {metric.value} {challenger:.4f} does not beat champion v{champion_version} "
                       f"{champion:.4f} by the margin {min_improvement:.4f} (gain {gain:+.4f})")


@dataclass(frozen=True)
class Review:
    """A reviewer's answer to an approval request (None ``by``: nobody answered in time)."""

    approved: bool
    by: str | None
    at: str | None = None
    comment: str = ""

    @classmethod
    def from_hitl(cls, answer: dict | None) -> "Review | None":
        """From the return value of Airflow's ApprovalOperator (None: no review was asked)."""
        if not answer:
            return None
        user = answer.get("responded_by_user") or {}
        by = user.get("name") or user.get("id") if isinstance(user, dict) else (str(user) if user else None)
        comment = str((answer.get("params_input") or {}).get("comment") or "")
        return cls("Approve" in (answer.get("chosen_options") or []), by or None,
                   str(answer.get("responded_at") or "") or None, comment)


def decide_final(spec, evaluation: Evaluation, review: Review | None) -> tuple[str, str]:
    """(outcome, reason) of a promotion from the gate and the review: ``promoted`` (still subject to
    the champion not having moved), ``rejected``, or ``awaiting_approval``."""
    if evaluation.already_champion:
        return "rejected", evaluation.reason
    if not evaluation.eligible:
        return "rejected", f"gate {evaluation.reason}"
    if spec.promotion.approval is Approval.REQUIRED:
        if review is None:
            return "awaiting_approval", (f"gate {evaluation.reason}; awaiting a reviewer's approval in the "
                                         f"{spec.name}_training DAG")
        if not review.approved:
            who = (f"rejected by {review.by}" if review.by else
                   f"no review within {spec.promotion.approval_timeout_hours:g} h: rejected")
            return "rejected", who + (f" ({review.comment})" if review.comment else "") + f"; gate {evaluation.reason}"
        return "promoted", (f"approved by {review.by}" + (f" ({review.comment})" if review.comment else "")
                            + f"; gate {evaluation.reason}")
    return "promoted", f"gate {evaluation.reason}"


PASSED_GATE = "gate passed every enforced check: "


def short_reason(reason: str, limit: int = 400) -> str:
    """A promotion reason for one summary line: of a passed gate, only its first check (the metric
    rule; the gate line lists the rest); anything else cut at ``limit`` characters."""
    if PASSED_GATE in reason:
        head, _, checks = reason.partition(PASSED_GATE)
        reason = f"{head}{checks.split('; ')[0]}"
    return reason if len(reason) <= limit else reason[:limit - 3] + "..."
