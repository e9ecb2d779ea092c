"""Batch scoring on Spark into the inference table.

The model version is resolved before scoring (``@champion`` -> a concrete version) and
passed in, so a run scores with exactly one version even if the alias moves meanwhile.
The fitted pipeline is shipped to the executors once, inside a ``mapInPandas`` function,
and each Arrow batch is scored in-process. The day's partition is replaced whole.
"""
from __future__ import annotations

import datetime as dt
import logging

from pipelines.features import feature_columns
from pipelines.lake import Lake, ds, partition_rows
from pipelines.model_tasks import ModelTask
from pipelines.spark import table_exists

log = logging.getLogger(__name__)

META_COLUMNS = {"model_name": "string", "model_version": "string", "model_run_id": "string",
                "run_id": "string", "scored_at": "timestamp"}


def inference_schema(entity: str, task: ModelTask) -> str:
    """The inference table's schema: the entity, the task's outputs (see :mod:`pipelines.model_tasks`),
    the model version that wrote them, and ``ds``."""
    columns = {entity: "string", **task.output_columns, **META_COLUMNS, "ds": "string"}
    return ", ".join(f"`{name}` {kind}" for name, kind in columns.items())


def make_scorer(model, columns: list[str], task: ModelTask, constants: dict):
    """A ``mapInPandas`` function scoring each batch with ``model`` (captured once in the closure).

    The model's own threads (OpenMP in HistGradientBoosting and the like) are limited to the
    task's cores (``spark.task.cpus``, 1 by default): Spark already runs a task per core, and two
    Python workers each starting a team of threads per core fight over the same cores."""
    def score_batches(batches):
        import pandas as pd
        from pyspark import TaskContext
        from threadpoolctl import threadpool_limits

        context = TaskContext.get()
        entity = constants["entity"]
        with threadpool_limits(max(1, context.cpus() if context is not None else 1)):
            for batch in batches:
                out = pd.concat([batch[[entity]].astype(str), task.outputs(model, batch[columns])], axis=1)
                for key in ("model_name", "model_version", "model_run_id", "run_id"):
                    out[key] = constants[key]
                out["scored_at"] = pd.Timestamp(constants["scored_at"])
                out["ds"] = batch["ds"].astype(str)
                yield out
    return score_batches


def score_partition(spark, spec, lake: Lake, date: dt.date, model_ref: dict, run_id: str) -> int:
    """Score the ``ds=date`` features with the given model version; returns rows written."""
    from pyspark.sql import functions as F

    from pipelines import tracking

    features = lake.features(spec.name)
    if not table_exists(features) or partition_rows(features, date) == 0:
        raise FileNotFoundError(f"{spec.name}: no features for {ds(date)} at {features}; build them first")
    ref = tracking.ModelRef.from_xcom(model_ref)
    model = tracking.load_model(ref)
    cols = feature_columns(spec)
    constants = {"entity": spec.entity, "model_name": ref.name, "model_version": ref.version,
                 "model_run_id": ref.run_id, "run_id": run_id,
                 "scored_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)}
    frame = spark.read.parquet(str(features)).where(F.col("ds") == ds(date)).select(spec.entity, *cols.all, "ds")
    task = ModelTask.of(spec)
    scored = frame.mapInPandas(make_scorer(model, cols.all, task, constants),
                               schema=inference_schema(spec.entity, task))
    table = lake.inference(spec.name)
    scored.write.mode("overwrite").partitionBy("ds").parquet(str(table))
    rows = partition_rows(table, date)
    log.info("%s: scored %d rows for %s with %s", spec.name, rows, ds(date), ref.uri)
    return rows
