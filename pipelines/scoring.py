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
from pipelines.spark import table_exists

log = logging.getLogger(__name__)

INFERENCE_COLUMNS = ["score", "predicted_label", "model_name", "model_version", "model_run_id",
                     "run_id", "scored_at"]


def inference_schema(entity: str) -> str:
    return (f"{entity} string, score double, predicted_label int, model_name string, model_version string, "
            "model_run_id string, run_id string, scored_at timestamp, ds string")


def make_scorer(model, columns: list[str], threshold: float, constants: dict):
    """A ``mapInPandas`` function scoring each batch with ``model`` (captured once in the closure)."""
    def score_batches(batches):
        import pandas as pd

        for batch in batches:
            scores = model.predict_proba(batch[columns])[:, 1] if len(batch) else []
            out = pd.DataFrame({constants["entity"]: batch[constants["entity"]].astype(str)})
            out["score"] = pd.Series(scores, index=batch.index, dtype="float64")
            out["predicted_label"] = (out["score"] >= threshold).astype("int32")
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
    scored = frame.mapInPandas(make_scorer(model, cols.all, spec.model.threshold, constants),
                               schema=inference_schema(spec.entity))
    table = lake.inference(spec.name)
    scored.write.mode("overwrite").partitionBy("ds").parquet(str(table))
    rows = partition_rows(table, date)
    log.info("%s: scored %d rows for %s with %s", spec.name, rows, ds(date), ref.uri)
    return rows
