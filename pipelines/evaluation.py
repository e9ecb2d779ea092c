"""Evaluate champion and challenger on the same recent holdout; promote only a clear winner.

Rules (from the spec's ``promotion`` section):

* a challenger whose metric is NaN never passes;
* it must reach the absolute ``floor`` when the spec sets one (a ceiling for metrics where
  lower is better: Brier, RMSE);
* with no champion yet, passing the floor is enough;
* otherwise it must beat the champion's metric on the same holdout by ``min_improvement``
  in the metric's direction
  (a champion whose metric is NaN on that holdout is beaten by any finite metric).

The decision and its reasons are written as tags on the challenger's model version (and
on the replaced champion), and the alias ``champion`` moves only on promotion, guarded by
a compare-and-set: if another run moved it meanwhile, the promotion is refused.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import asdict, dataclass

from pipelines.lake import Lake
from pipelines.model_tasks import ModelTask
from pipelines.training import holdout_frame, label_window

log = logging.getLogger(__name__)


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


def decide_promotion(metric: str, challenger: float, champion: float | None, floor: float | None,
                     min_improvement: float, champion_version: str | None = None,
                     higher_is_better: bool = True) -> PromotionDecision:
    """Pure promotion rule: see the module docstring. For a lower-is-better metric (RMSE, Brier)
    the floor is a ceiling and the gain is the decrease."""
    def done(ok: bool, why: str) -> PromotionDecision:
        return PromotionDecision(ok, why, metric, challenger, champion, champion_version)

    sign = 1.0 if higher_is_better else -1.0
    if challenger is None or not math.isfinite(challenger):
        return done(False, f"challenger {metric} is undefined (NaN) on the holdout")
    bound = "floor" if higher_is_better else "ceiling"
    if floor is not None and sign * (challenger - floor) < 0:
        where = "below the floor" if higher_is_better else "above the ceiling"
        return done(False, f"challenger {metric} {challenger:.4f} is {where} {floor:.4f}")
    passes = f"passes the {bound} {floor:.4f}" if floor is not None else f"is defined (no {bound} set)"
    if champion_version is None:
        return done(True, f"first model: {metric} {challenger:.4f} {passes}")
    if champion is None or not math.isfinite(champion):
        return done(True, f"champion v{champion_version} {metric} is undefined on the holdout; "
                          f"challenger {challenger:.4f} {passes}")
    gain = sign * (challenger - champion)
    if gain >= min_improvement:
        return done(True, f"challenger {metric} {challenger:.4f} beats champion v{champion_version} "
                          f"{champion:.4f} by {gain:+.4f} (margin {min_improvement:.4f})")
    return done(False, f"challenger {metric} {challenger:.4f} does not beat champion v{champion_version} "
                       f"{champion:.4f} by the margin {min_improvement:.4f} (gain {gain:+.4f})")


def promote_if_better(spark, spec, lake: Lake, challenger: dict, as_of: dt.date) -> dict:
    """Score both models on the holdout of ``as_of``, decide, tag, and move the alias if promoted."""
    from pipelines import tracking

    name = spec.model.registered_name
    challenger_ref = tracking.model_version(name, challenger["version"])
    champion_ref = tracking.resolve_alias(name, tracking.CHAMPION)
    if champion_ref is not None and champion_ref.version == challenger_ref.version:
        return {"promoted": False, "reason": "challenger is already the champion", "champion": champion_ref.as_xcom()}

    window = label_window(spec, as_of)
    holdout = holdout_frame(spark, spec, lake, window)
    from pipelines.features import feature_columns

    X, y = holdout[feature_columns(spec).all], holdout[spec.label.target].to_numpy()
    metric, task = spec.promotion.metric, ModelTask.of(spec)   # metric: a Metric (str enum)

    def holdout_metric(ref):
        return task.metrics(y, task.outputs(tracking.load_model(ref), X))[metric]

    challenger_value = holdout_metric(challenger_ref)
    champion_value = holdout_metric(champion_ref) if champion_ref else None
    decision = decide_promotion(metric, challenger_value, champion_value, spec.promotion.floor,
                                spec.promotion.min_improvement, champion_ref.version if champion_ref else None,
                                higher_is_better=metric.higher_is_better)
    c = tracking.client()
    evaluated_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    outcome, reason = ("promoted" if decision.promote else "rejected"), decision.reason
    if decision.promote:  # compare-and-set: only if the champion is still the one we evaluated against
        now = tracking.resolve_alias(name, tracking.CHAMPION)
        if (now.version if now else None) != (champion_ref.version if champion_ref else None):
            outcome = "conflict"
            reason = (f"not promoted: the champion moved to v{now.version if now else None} while v"
                      f"{challenger_ref.version} was evaluated against v{champion_ref.version if champion_ref else None}"
                      f" ({decision.reason}); rerun the evaluation against the new champion")
        else:
            tracking.move_champion(name, challenger_ref.version, champion_ref.version if champion_ref else None,
                                   evaluated_at)
    if outcome == "promoted":
        log.info("%s: PROMOTE v%s to champion (was %s): %s", spec.name, challenger_ref.version,
                 f"v{champion_ref.version}" if champion_ref else "none", reason)
    else:
        log.info("%s: KEEP champion %s, challenger v%s %s: %s", spec.name,
                 f"v{champion_ref.version}" if champion_ref else "(none)", challenger_ref.version, outcome, reason)
    # tags are written after the alias decision, so they say what actually happened
    tags = {
        "promotion.decision": outcome,
        "promotion.reason": reason,
        "promotion.metric": metric,
        f"promotion.challenger_{metric}": _fmt(challenger_value),
        f"promotion.champion_{metric}": _fmt(champion_value),
        "promotion.champion_version": champion_ref.version if champion_ref else "none",
        "promotion.holdout": f"{window.holdout_start}..{window.holdout_end} ({len(holdout)} rows)",
        "promotion.evaluated_at": evaluated_at,
    }
    for key, value in tags.items():
        c.set_model_version_tag(name, challenger_ref.version, key, value)
    if outcome == "conflict":
        raise PromotionConflict(reason)
    run = c.get_run(challenger_ref.run_id)
    if run:
        c.log_metric(challenger_ref.run_id, f"promotion_challenger_{metric}", challenger_value
                     if math.isfinite(challenger_value) else -1.0)
        if champion_value is not None and math.isfinite(champion_value):
            c.log_metric(challenger_ref.run_id, f"promotion_champion_{metric}", champion_value)
    champion_now = challenger_ref if decision.promote else champion_ref
    return {"promoted": decision.promote, **{k: v for k, v in asdict(decision).items() if k != "promote"},
            "challenger_version": challenger_ref.version,
            "champion": champion_now.as_xcom() if champion_now else None}


def _fmt(value: float | None) -> str:
    return "none" if value is None else ("nan" if not math.isfinite(value) else f"{value:.4f}")
