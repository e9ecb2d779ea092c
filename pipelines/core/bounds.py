"""A limit on a metric that knows its direction: a floor for a metric where higher is better
(ROC AUC), a ceiling where lower is (RMSE). One object decides "within" and words it, so no
caller repeats the sign logic."""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.core.spec.vocabulary import Metric


@dataclass(frozen=True)
class Bound:
    metric: Metric
    value: float

    @classmethod
    def allowed_change(cls, metric: Metric, reference: float, worse_by: float) -> "Bound":
        """The bound ``worse_by`` away from ``reference`` in the metric's bad direction."""
        return cls(metric, reference - worse_by if metric.higher_is_better else reference + worse_by)

    @property
    def kind(self) -> str:
        return "floor" if self.metric.higher_is_better else "ceiling"

    def holds(self, value: float) -> bool:
        """``value`` is on the good side of the bound (on it counts as good)."""
        return value >= self.value if self.metric.higher_is_better else value <= self.value

    def __str__(self) -> str:
        return f"{self.metric.value} {self.kind} {self.value:.4g}"
