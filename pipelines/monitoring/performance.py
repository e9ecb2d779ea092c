"""Retraining on measured live performance: the champion's metric over its most recent label
dates (``monitoring.performance``) against a bound that knows the metric's direction.

The rules are the drift watch's: a request needs the bound missed on ``consecutive_days`` label
dates in a row (each with at least ``min_labels`` labels, all of the same champion version); one
request a day, and none within ``monitoring.cooldown_days`` of an earlier one, whichever of drift
or performance asked. :func:`decide` is pure; :func:`performance_decision` reads its inputs.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pandas as pd

from pipelines.core.bounds import Bound
from pipelines.core.lake import Lake, ds, list_partitions, read_table
from pipelines.core.spec import Metric, PerformanceSpec
from pipelines.models import tracking
from pipelines.monitoring.watch import PERFORMANCE, RETRAIN_REQUESTS


@dataclass(frozen=True)
class PerformanceDecision:
    retrain: bool
    under_bound: bool           # the bound was missed on the last consecutive label dates
    reason: str
    ds: str                     # the day decided on (the labels landed by then)
    model_version: str | None
    metric: str
    bound: float | None = None
    values: list[dict] = field(default_factory=list)   # label_date, value, labels: the dates judged


def decide(policy: PerformanceSpec, metric: Metric, version: str | None, holdout: float | None,
           measured: pd.DataFrame, today: dt.date, requested: list[str], cooldown_days: int) -> PerformanceDecision:
    """Whether ``version``'s live performance calls for retraining on ``today``.

    ``measured``: rows of the performance table (label_date, source, model_version, rows and one
    column per metric); ``requested``: dates of earlier retrain requests; ``holdout``: the version's
    value of ``metric`` on the gate's holdout (needed for ``max_drop``)."""
    day, name = ds(today), metric.value

    def no(reason: str, under: bool = False, bound: Bound | None = None, values=()) -> PerformanceDecision:
        return PerformanceDecision(False, under, reason, day, version, name, bound and bound.value, list(values))

    if version is None:
        return no("no champion to judge")
    if policy.floor is not None:
        bound, origin = Bound(metric, policy.floor), ""
    elif holdout is None:
        return no(f"champion v{version} has no holdout {name} to measure a drop from")
    else:
        bound = Bound.allowed_change(metric, holdout, policy.max_drop)
        origin = f" (holdout {holdout:.4f}, allowed drop {policy.max_drop:g})"
    ours = measured[(measured["model_version"].astype(str) == str(version)) & (measured["source"] == policy.source)
                    & (measured["rows"] >= policy.min_labels) & (measured["label_date"] <= day)
                    & measured[name].notna()] if name in measured.columns else measured.iloc[0:0]
    recent = ours.sort_values("label_date").drop_duplicates("label_date", keep="last").tail(policy.consecutive_days)
    values = [{"label_date": r.label_date, "value": float(r[name]), "labels": int(r.rows)} for _, r in recent.iterrows()]
    if len(values) < policy.consecutive_days:
        return no(f"{len(values)} of {policy.consecutive_days} label dates measured with at least "
                  f"{policy.min_labels} labels for champion v{version}", bound=bound, values=values)
    shown = ", ".join(f"{v['value']:.4f} on {v['label_date']} ({v['labels']} labels)" for v in values)
    if any(bound.holds(v["value"]) for v in values):
        return no(f"live {name} of champion v{version} within its {bound.kind} {bound.value:.4f}{origin}: {shown}",
                  bound=bound, values=values)
    missed = (f"live {name} of champion v{version} ({policy.source} scores) beyond its {bound.kind} "
              f"{bound.value:.4f}{origin} on {len(values)} consecutive label dates: {shown}")
    since = ds(today - dt.timedelta(days=max(cooldown_days - 1, 0)))
    earlier = [p for p in requested if since <= p <= day]
    if earlier:
        return no(f"{missed}; a retraining was requested on {earlier[-1]}, within the {cooldown_days}-day cooldown",
                  True, bound, values)
    return PerformanceDecision(True, True, missed, day, version, name, bound.value, values)


def performance_decision(spec, lake: Lake, today: dt.date, champion: tracking.ModelRef | None) -> PerformanceDecision:
    """:func:`decide` on the lake's performance table and retrain requests, for ``champion``."""
    policy = spec.monitoring.performance
    metric = policy.metric or spec.promotion.metric
    table = lake.monitoring(spec.name, PERFORMANCE)
    measured = read_table(table) if list_partitions(table) else pd.DataFrame(
        columns=["label_date", "source", "model_version", "rows"])
    holdout = None
    if champion is not None and champion.run_id:
        holdout = tracking.client().get_run(champion.run_id).data.metrics.get(f"promotion_challenger_{metric.value}")
    requested = list_partitions(lake.monitoring(spec.name, RETRAIN_REQUESTS))
    return decide(policy, metric, champion.version if champion else None, holdout, measured, today, requested,
                  spec.monitoring.cooldown_days)
