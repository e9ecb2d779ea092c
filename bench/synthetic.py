"""What the benchmarks score: the churn spec's pipeline fitted on synthetic rows of its features."""
from __future__ import annotations


class SyntheticChurn:
    """Rows with the churn spec's feature columns (gamma-distributed numbers, three categories)
    and its pipeline fitted on ``train_rows`` of them, with a label the first feature drives."""

    def __init__(self, spec, train_rows: int = 20_000, seed: int = 0, categories=("a", "b", "c")):
        import numpy as np

        from pipelines.features.point_in_time import feature_columns
        from pipelines.training.fit import make_pipeline

        self.spec, self.columns, self.categories = spec, feature_columns(spec), list(categories)
        self.rng = np.random.default_rng(seed)
        self.train = self.frame(train_rows)
        y = (self.train[self.columns.numeric[0]] + self.rng.normal(0, 5, train_rows) > 25).astype(int)
        self.model = make_pipeline(spec).fit(self.train, y)

    def frame(self, n: int):
        import pandas as pd

        data = {c: self.rng.gamma(2.0, 10.0, n) for c in self.columns.numeric}
        data.update({c: self.rng.choice(self.categories, n) for c in self.columns.categorical})
        return pd.DataFrame(data)
