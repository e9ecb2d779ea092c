"""Label values to model classes, the same way in Spark (training) and pandas (live performance).

The spec's ``label`` section says how: ``positive`` (that value is 1, any other value 0),
``values`` (a map; unmapped values count as missing), or neither (the target holds the class,
or, for a regression, the value to predict). A missing label is never a class: those rows are
left out and counted.
"""
from __future__ import annotations

import pandas as pd

from pipelines.spec import LabelSpec, TaskType


def _text(value) -> str:
    """A value as Spark writes it as text (booleans in lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def encode_labels(values: pd.Series, label: LabelSpec, task: TaskType = TaskType.BINARY) -> pd.Series:
    """Classes as a nullable integer series (a regression's values as floats); <NA> where the
    label is missing or unmapped."""
    if task is TaskType.REGRESSION:
        return pd.to_numeric(values, errors="coerce").astype("Float64")
    if label.positive is not None:
        classes = (values.map(_text) == _text(label.positive)).astype("Int64")
    elif label.values is not None:
        mapping = {_text(k): v for k, v in label.values.items()}
        classes = values.map(_text).map(mapping).astype("Int64")
    else:
        classes = pd.to_numeric(values, errors="coerce").round().astype("Int64")
    return classes.where(values.notna())


def encode_label_column(column, label: LabelSpec, task: TaskType = TaskType.BINARY):
    """The Spark column expression of :func:`encode_labels` (null where missing or unmapped)."""
    from pyspark.sql import functions as F

    if task is TaskType.REGRESSION:
        return column.cast("double")
    text = column.cast("string")
    if label.positive is not None:
        classes = F.when(text == F.lit(_text(label.positive)), F.lit(1)).otherwise(F.lit(0))
    elif label.values is not None:
        classes = F.lit(None).cast("int")
        for value, cls in reversed(list(label.values.items())):
            classes = F.when(text == F.lit(_text(value)), F.lit(cls)).otherwise(classes)
    else:
        classes = F.round(column.cast("double")).cast("int")
    return F.when(column.isNull(), F.lit(None).cast("int")).otherwise(classes)
