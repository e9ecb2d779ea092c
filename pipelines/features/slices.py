"""Slices of a column: the groups that the gate's slice and fairness checks and the explanations compare."""
from __future__ import annotations

import pandas as pd

MISSING = "missing"


def groups_of(values: pd.Series, bins: int) -> pd.Series:
    """Group labels of a column: its values (text), or ``bins`` quantile bins of a numeric column with
    more distinct values than that; missing values form their own group."""
    if values.dtype == object or isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == bool \
            or pd.api.types.is_string_dtype(values):
        return values.astype("string").fillna(MISSING).astype(str)
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.nunique(dropna=True) <= bins:
        labels = numeric.map(lambda v: f"{v:g}" if pd.notna(v) else MISSING)
        return labels.astype(str)
    binned = pd.qcut(numeric, q=bins, duplicates="drop")
    labels = binned.astype(object).map(lambda iv: f"({iv.left:g}, {iv.right:g}]" if isinstance(iv, pd.Interval)
                                       else MISSING)
    return labels.astype(str)
