"""Label values to classes: the spec's positive value or value map, the same in pandas and Spark;
missing and unmapped labels are never a class."""
import pandas as pd
import pytest

from pipelines.core.spec import LabelSpec
from pipelines.data.labels import encode_label_column, encode_labels

BASE = dict(source="s", date_column="d", target="t", horizon_days=0)
CASES = [
    ("positive text", dict(positive="bad"), ["bad", "good", None, "BAD"], [1, 0, None, 0]),
    ("positive number", dict(positive=2), [2, 1, None, 3], [1, 0, None, 0]),
    ("value map", dict(values={"yes": 1, "no": 0}), ["yes", "no", "maybe", None], [1, 0, None, None]),
    ("classes already", dict(), [1, 0, None, 1], [1, 0, None, 1]),
    ("boolean positive", dict(positive=True), [True, False, None, True], [1, 0, None, 1]),
]


@pytest.mark.parametrize("what, rule, values, expected", CASES, ids=[c[0] for c in CASES])
def test_encode_labels(what, rule, values, expected):
    got = encode_labels(pd.Series(values, dtype=object), LabelSpec(**BASE, **rule))
    assert [None if pd.isna(v) else int(v) for v in got] == expected


@pytest.mark.parametrize("what, rule, values, expected", CASES, ids=[c[0] for c in CASES])
def test_spark_encodes_like_pandas(spark, what, rule, values, expected):
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType, LongType, StringType, StructField, StructType

    kind = {str: StringType(), int: LongType(), bool: BooleanType()}[type(next(v for v in values if v is not None))]
    frame = spark.createDataFrame([(i, v) for i, v in enumerate(values)],
                                  StructType([StructField("i", LongType()), StructField("t", kind)]))
    rows = frame.select("i", encode_label_column(F.col("t"), LabelSpec(**BASE, **rule)).alias("c")).orderBy("i")
    assert [r["c"] for r in rows.collect()] == expected


def test_regression_labels_are_numbers():
    from pipelines.core.spec import TaskType

    got = encode_labels(pd.Series(["1.5", 2, None, "x"], dtype=object), LabelSpec(**BASE), TaskType.REGRESSION)
    assert [None if pd.isna(v) else float(v) for v in got] == [1.5, 2.0, None, None]


def test_multiclass_value_map(spark):
    from pyspark.sql import functions as F

    from pipelines.core.spec import TaskType

    rule = LabelSpec(**BASE, values={"red": 0, "green": 1, "blue": 2})
    values = ["blue", "red", None, "pink", "green"]
    assert [None if pd.isna(v) else int(v) for v in encode_labels(pd.Series(values), rule, TaskType.MULTICLASS)] \
        == [2, 0, None, None, 1]
    frame = spark.createDataFrame([(i, v) for i, v in enumerate(values)], "i long, t string")
    rows = frame.select("i", encode_label_column(F.col("t"), rule, TaskType.MULTICLASS).alias("c")).orderBy("i")
    assert [r["c"] for r in rows.collect()] == [2, 0, None, None, 1]
