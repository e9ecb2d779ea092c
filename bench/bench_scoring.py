"""Batch scoring throughput: our scorer (a pandas UDF over the features, model shipped once in the closure)
against mlflow.pyfunc.spark_udf(env_manager="local"), same model, same data, same session, and
against the ceiling: the same model's predict_proba over the whole frame in one process.

    .venv/bin/python -m bench.bench_scoring [--rows 1000000] [--repeats 3]

Prints rows/s for each, the ratios ours / spark_udf and ours / in-process, and appends a dated
row to docs/benchmarks.md. Timings only; no pass/fail.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
import time

from bench.report import append_row, churn_spec, median_seconds

SECTION = "## Batch scoring: our scorer against `mlflow.pyfunc.spark_udf`"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()

    import mlflow
    import pandas as pd
    from pyspark.sql import functions as F

    from bench.synthetic import SyntheticChurn
    from pipelines.core.config import Settings
    from pipelines.core.spark import get_spark
    from pipelines.features.point_in_time import feature_columns
    from pipelines.models.tasks import ModelTask
    from pipelines.serving.batch import score_frame

    spec = churn_spec()
    cols = feature_columns(spec)
    task = ModelTask.of(spec)
    synthetic = SyntheticChurn(spec)
    frame, train, model = synthetic.frame, synthetic.train, synthetic.model

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(model, name="model", input_example=train.head(3),
                                            pyfunc_predict_fn="predict_proba",
                                            pip_requirements=["scikit-learn"], serialization_format="cloudpickle")
        spark = get_spark(Settings.from_env({**os.environ, "MLOPS_HOME": tmp}), "bench-scoring")
        data = frame(args.rows).assign(customer_id=[f"C{i}" for i in range(args.rows)], ds="2026-01-01")
        path = f"{tmp}/features"
        spark.createDataFrame(data).repartition(4).write.parquet(path)
        features = spark.read.parquet(path).cache()
        features.count()

        constants = {"entity": "customer_id", "model_name": "m", "model_version": "1", "model_run_id": "r",
                     "run_id": "bench", "scored_at": pd.Timestamp("2026-01-01")}

        def ours():
            out = score_frame(features, model, cols.all, task, constants)
            out.write.mode("overwrite").format("noop").save()

        udf = mlflow.pyfunc.spark_udf(spark, info.model_uri, env_manager="local", result_type="array<double>")

        def peer():
            out = features.withColumn("score", udf(*[F.col(c) for c in cols.all])[1])
            out.write.mode("overwrite").format("noop").save()

        rows = data[cols.all]

        def in_process():   # the ceiling: one predict_proba over the whole frame, no Spark
            task.outputs(model, rows)

        results = {}
        for name, fn in (("ours", ours), ("mlflow spark_udf", peer), ("in-process", in_process)):
            results[name] = args.rows / median_seconds(fn, args.repeats)[0]   # the warm-up starts Python workers
            print(f"{name:22s} {results[name]:>12,.0f} rows/s (median of {args.repeats}, {args.rows:,} rows)")
        ratio = results["ours"] / results["mlflow spark_udf"]
        share = results["ours"] / results["in-process"]
        print(f"ratio ours / spark_udf: {ratio:.2f}x; ours / in-process predict_proba: {share:.0%}")
        spark.stop()
    command = f".venv/bin/python -m bench.bench_scoring --rows {args.rows} --repeats {args.repeats}"
    row = (f"| {dt.date.today()} | {os.cpu_count()} cores, {platform.machine()}, Spark `local[*]` | "
           f"{results['ours']:,.0f} | {results['mlflow spark_udf']:,.0f} | {ratio:.2f}x | "
           f"{results['in-process']:,.0f} | {share:.0%} | `{command}` | {time.monotonic() - started:.0f} s |")
    append_row(SECTION, row, "| date | machine | ours (rows/s) | spark_udf (rows/s) | ratio ours / spark_udf | "
               "in-process (rows/s) | ours / in-process | command | wall time |\n|---|---|---|---|---|---|---|---|---|")
    print(row)


if __name__ == "__main__":
    main()
