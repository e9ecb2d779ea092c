"""Batch scoring throughput: our scorer (a pandas UDF over the features, the version's compiled
model shipped once in the closure, see pipelines.models.compiled) against
mlflow.pyfunc.spark_udf(env_manager="local") of the same logged model, and against the old
ceiling: the scikit-learn pipeline's predict_proba over the whole frame in one process. Also our
scorer with the scikit-learn pipeline (what it scored with before compiling). Same data, same
session.

    .venv/bin/python -m bench.bench_scoring [--rows 1000000] [--repeats 3]

Prints rows/s for each, the ratios ours / in-process scikit-learn (goal 1.5x) and ours /
spark_udf (goal 2x), and appends a dated row to docs/benchmarks.md. Timings only; no pass/fail.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time

from bench.report import append_row, churn_spec, machine, median_seconds

SECTION = "## Batch scoring, compiled: our scorer against in-process scikit-learn and `spark_udf`"
INTRO = """
What it compares, on the data and model of the section above (the churn spec's pipeline fitted on
20,000 synthetic rows; 1,000,000 rows in 4 cached partitions; Spark's `noop` sink; one warm-up,
then the median of 3): our scorer with the version's compiled model (ONNX run by onnxruntime on
one thread per Spark task, see `pipelines/models/compiled.py`), against the scikit-learn
pipeline's `predict_proba` over the whole frame in one process (the old ceiling, both cores) and
against `mlflow.pyfunc.spark_udf`. Also our scorer with the scikit-learn pipeline, as it scored
before. Goals: ours at least 1.5x in-process scikit-learn and 2x `spark_udf`.

Command (from the project root): `make bench` (1,000,000 rows).

| date | machine | ours, compiled (rows/s) | ours, scikit-learn (rows/s) | in-process scikit-learn (rows/s) | spark_udf (rows/s) | ours / in-process (goal 1.5x) | ours / spark_udf (goal 2x) | command | wall time |
|---|---|---|---|---|---|---|---|---|---|
"""


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
    from pipelines.models.compiled import compile_checked
    from pipelines.models.tasks import ModelTask
    from pipelines.serving.batch import score_frame

    spec = churn_spec()
    cols = feature_columns(spec)
    task = ModelTask.of(spec)
    synthetic = SyntheticChurn(spec)
    frame, train, model = synthetic.frame, synthetic.train, synthetic.model
    outcome = compile_checked(model, frame(20_000), task)
    assert outcome.compiled, outcome.reason

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

        def ours(scoring_model):
            def score():
                out = score_frame(features, scoring_model, cols.all, task, constants)
                out.write.mode("overwrite").format("noop").save()
            return score

        udf = mlflow.pyfunc.spark_udf(spark, info.model_uri, env_manager="local", result_type="array<double>")

        def peer():
            out = features.withColumn("score", udf(*[F.col(c) for c in cols.all])[1])
            out.write.mode("overwrite").format("noop").save()

        rows = data[cols.all]

        def in_process():   # the old ceiling: one predict_proba over the whole frame, no Spark
            task.outputs(model, rows)

        results = {}
        for name, fn in (("ours, compiled", ours(outcome.model)), ("ours, scikit-learn", ours(model)),
                         ("in-process scikit-learn", in_process), ("mlflow spark_udf", peer)):
            results[name] = args.rows / median_seconds(fn, args.repeats)[0]   # the warm-up starts Python workers
            print(f"{name:24s} {results[name]:>12,.0f} rows/s (median of {args.repeats}, {args.rows:,} rows)")
        spark.stop()
    mine = results["ours, compiled"]
    share, ratio = mine / results["in-process scikit-learn"], mine / results["mlflow spark_udf"]
    print(f"ours / in-process scikit-learn: {share:.2f}x (goal 1.5x); ours / spark_udf: {ratio:.2f}x (goal 2x)")
    command = f".venv/bin/python -m bench.bench_scoring --rows {args.rows} --repeats {args.repeats}"
    row = (f"| {dt.date.today()} | {machine()}, Spark `local[*]` | {mine:,.0f} | {results['ours, scikit-learn']:,.0f} | "
           f"{results['in-process scikit-learn']:,.0f} | {results['mlflow spark_udf']:,.0f} | "
           f"{share:.2f}x ({'met' if share >= 1.5 else 'not met'}) | {ratio:.2f}x ({'met' if ratio >= 2 else 'not met'}) | "
           f"`{command}` | {time.monotonic() - started:.0f} s |")
    append_row(SECTION, row, INTRO)
    print(row)


if __name__ == "__main__":
    main()
