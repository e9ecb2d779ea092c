"""Batch scoring on Spark into the inference table.

The model version is resolved before scoring (``@champion`` -> a concrete version) and
passed in, so a run scores with exactly one version even if the alias moves meanwhile.
The version's compiled model (or its scikit-learn pipeline, see :mod:`pipelines.models.compiled`)
is shipped to the executors once, inside a pandas UDF over the feature
columns only (the entity and ``ds`` never leave the JVM), and each Arrow batch is scored
in-process. The day's partition is replaced whole.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator

import pandas as pd

from pipelines.core import lineage
from pipelines.core.errors import MissingData
from pipelines.core.lake import Lake, ds, partition_rows
from pipelines.core.spark import column, table_exists
from pipelines.features.point_in_time import feature_columns
from pipelines.models import compiled, tracking
from pipelines.models.tasks import ModelTask

log = logging.getLogger(__name__)

META_COLUMNS = {"model_name": "string", "model_version": "string", "model_run_id": "string",
                "run_id": "string", "scored_at": "timestamp"}


def inference_schema(entity: str, task: ModelTask) -> str:
    """The inference table's schema: the entity, the task's outputs (see :mod:`pipelines.models.tasks`),
    the model version that wrote them, and ``ds``."""
    columns = {entity: "string", **task.output_columns, **META_COLUMNS, "ds": "string"}
    return ", ".join(f"`{name}` {kind}" for name, kind in columns.items())


def make_scorer(model, columns: list[str], task: ModelTask):
    """A function scoring each batch of feature rows with ``model`` (captured once in the
    closure): an iterator of frames in, the task's output columns out, row for row.

    The model's own threads (OpenMP in HistGradientBoosting and the like) are limited to the
    task's cores (``spark.task.cpus``, 1 by default): Spark already runs a task per core, and two
    Python workers each starting a team of threads per core fight over the same cores."""
    def score_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import TaskContext
        from threadpoolctl import threadpool_limits

        context = TaskContext.get()
        with threadpool_limits(max(1, context.cpus() if context is not None else 1)):
            for batch in batches:
                yield task.outputs(model, batch[columns]).reset_index(drop=True)
    return score_batches


def score_frame(frame, model, columns: list[str], task: ModelTask, constants: dict):
    """``frame`` (the entity, the feature ``columns`` and ``ds``) scored as rows of the inference
    table: a pandas UDF over the features' struct, the entity, the constants and ``ds`` added
    by Spark. Only the features cross to Python and only the outputs come back (8-10% faster
    than handing whole rows to ``mapInPandas``, on the same 300,000 cached rows)."""
    from pyspark.sql import functions as F

    outputs = ", ".join(f"`{name}` {kind}" for name, kind in task.output_columns.items())
    score = F.pandas_udf(make_scorer(model, columns, task), outputs)
    entity = constants["entity"]
    return frame.select(
        column(entity).cast("string").alias(entity), score(F.struct(*[column(c) for c in columns])).alias("_outputs"),
        F.col("ds").cast("string").alias("ds"),
    ).select(
        column(entity), *[F.col(f"_outputs.`{name}`").alias(name) for name in task.output_columns],
        *[F.lit(str(constants[key])).alias(key) for key in ("model_name", "model_version", "model_run_id", "run_id")],
        F.lit(pd.Timestamp(constants["scored_at"]).to_pydatetime()).cast("timestamp").alias("scored_at"), "ds")


def score_partition(spark, spec, lake: Lake, date: dt.date, model_ref: dict, run_id: str) -> int:
    """Score the ``ds=date`` features with the given model version; returns rows written."""
    from pyspark.sql import functions as F

    features = lake.features(spec.name)
    if not table_exists(features) or partition_rows(features, date) == 0:
        raise MissingData(f"{spec.name}: no features for {ds(date)} at {features}; build them first")
    ref = tracking.ModelRef.from_xcom(model_ref)
    model = compiled.load_for_inference(ref)
    cols = feature_columns(spec)
    constants = {"entity": spec.entity, "model_name": ref.name, "model_version": ref.version,
                 "model_run_id": ref.run_id, "run_id": run_id,
                 "scored_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)}
    frame = spark.read.parquet(str(features)).where(F.col("ds") == ds(date)).select(
        *[column(c) for c in [spec.entity, *cols.all, "ds"]])
    task = ModelTask.of(spec)
    scored = score_frame(frame, model, cols.all, task, constants)
    table = lake.inference(spec.name)
    scored.write.mode("overwrite").partitionBy("ds").parquet(str(table))
    rows = partition_rows(table, date)
    lineage.read(lineage.partition(features, date))   # the model version: by load_model
    lineage.wrote(lineage.partition(table, date))
    log.info("%s: scored %d rows for %s with %s on %s", spec.name, rows, ds(date), ref.uri, compiled.runtime_of(model))
    return rows
