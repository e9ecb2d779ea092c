"""``monitoring.performance``: retrain when the champion's measured live performance stays on
the wrong side of its bound (labels land days after the scores they judge)::

    monitoring:
      performance:
        max_drop: 0.05          # or floor: 0.75 (a ceiling for metrics where lower is better)
        min_labels: 200         # a label date with fewer labels does not count
        consecutive_days: 2     # label dates in a row under the bound
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipelines.core.spec.base import _Section, broken
from pipelines.core.spec.vocabulary import Metric


class PerformanceSpec(_Section):
    metric: Metric | None = None                  # None: the promotion metric
    floor: float | None = None                    # the bound itself
    max_drop: float | None = Field(None, gt=0)    # or: this far worse than the version's holdout value
    min_labels: int = Field(100, ge=1)
    consecutive_days: int = Field(2, ge=1)
    source: Literal["batch", "online"] = "batch"  # whose scores are judged: the inference table's, the service's

    @model_validator(mode="after")
    def _one_bound(self):
        if (self.floor is None) == (self.max_drop is None):
            raise broken(("", "give floor (the bound itself) or max_drop (from the version's holdout value), "
                              "one of them"))
        return self
