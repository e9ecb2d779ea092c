"""Label values to model classes, the same way in Spark (training) and pandas (live performance).

The spec's ``label`` section says how: ``positive`` (that value is 1, any other value 0),
``values`` (a map; unmapped values count as missing), or neither (the target holds the class,
or, for a regression, the value to predict). A missing label is never a class: those rows are
left out and counted.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.core.lake import list_partitions, read_partition
from pipelines.core.spec import LabelSpec, TaskType
from pipelines.data.ingest import FALSE_WORDS, TRUE_WORDS


def _text(value) -> str:
    """A value as Spark writes it as text (booleans in lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)




def _positive_text(positive, boolean: bool) -> str:
    """The positive class as text; for a yes/no (bool) target in any spelling (Yes, y, True, 1)."""
    word = _text(positive).strip().lower()
    if boolean and word in TRUE_WORDS | FALSE_WORDS:
        return "true" if word in TRUE_WORDS else "false"
    return _text(positive)


def encode_labels(values: pd.Series, label: LabelSpec, task: TaskType = TaskType.BINARY) -> pd.Series:
    """Classes as a nullable integer series (a regression's values as floats); <NA> where the
    label is missing or unmapped."""
    if task is TaskType.REGRESSION:
        return pd.to_numeric(values, errors="coerce").astype("Float64")
    if label.positive is not None:
        present = values.dropna()
        boolean = pd.api.types.is_bool_dtype(values) or (
            not present.empty and present.map(lambda v: isinstance(v, (bool, np.bool_))).all())
        positive = _positive_text(label.positive, boolean)
        classes = (values.map(_text) == positive).astype("Int64")
    elif label.values is not None:
        mapping = {_text(k): v for k, v in label.values.items()}
        classes = values.map(_text).map(mapping).astype("Int64")
    else:
        classes = pd.to_numeric(values, errors="coerce").round().astype("Int64")
    return classes.where(values.notna())


def encode_label_column(column, label: LabelSpec, task: TaskType = TaskType.BINARY, boolean: bool = False):
    """The Spark column expression of :func:`encode_labels` (null where missing or unmapped);
    ``boolean``: the target is a yes/no column (stored as bool)."""
    from pyspark.sql import functions as F

    if task is TaskType.REGRESSION:
        return column.cast("double")
    text = column.cast("string")
    if label.positive is not None:
        classes = F.when(text == F.lit(_positive_text(label.positive, boolean)), F.lit(1)).otherwise(F.lit(0))
    elif label.values is not None:
        classes = F.lit(None).cast("int")
        for value, cls in reversed(list(label.values.items())):
            classes = F.when(text == F.lit(_text(value)), F.lit(cls)).otherwise(classes)
    else:
        classes = F.round(column.cast("double")).cast("int")
    return F.when(column.isNull(), F.lit(None).cast("int")).otherwise(classes)


def label_problems(spec, lake) -> list[str]:
    """The label section against the landed data (the label source's newest raw partition): a
    binary task whose positive class never occurs, or whose target is neither 0/1 nor mapped,
    would train on a single class. Empty when nothing has landed yet."""

    label, task = spec.label, spec.model.task
    table = lake.raw(spec.name, label.source)
    partitions = list_partitions(table)
    if task is not TaskType.BINARY or not partitions:
        return []
    values = read_partition(table, partitions[-1], columns=[label.target])[label.target].dropna()
    if values.empty:
        return []
    classes = encode_labels(values, label, task).dropna()
    seen = sorted({_text(v) for v in values.unique()})[:10]
    where = f"{label.source} {partitions[-1]}"
    if label.positive is not None and not (classes == 1).any():
        return [f"label.positive: {label.positive!r} never occurs in {label.target} of {where} "
                f"(its values: {seen}); name one of them"]
    if label.positive is None and label.values is None and len(classes) < len(values):
        return [f"label.target: {label.target} of {where} holds {seen}, not 0/1; name the positive class "
                f"with label.positive"]
    return []
