"""Training: the spec's hyperparameter search with two jobs against the same search with one
(`pipelines.training.fit.fit_model`, `MLOPS_SEARCH_JOBS`), and what logging, registering and
aliasing the chosen model costs against MLflow.

    .venv/bin/python -m bench.bench_training [--rows 40000] [--repeats 3]

The rows are synthetic with the churn spec's features and its recency weights (30 label dates);
the search is the spec's (grid or Optuna, its folds). Both searches must choose the same
parameters. The registry part times `log_sklearn_model`, `register_challenger` and moving
`@champion` (`move_champion`) on an MLflow store in a temporary folder, median of the repeats.
Prints the times, the search's speed-up and cost per candidate, and appends a dated row to
docs/benchmarks.md. Timings only; no pass/fail.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from bench.report import append_row, churn_spec, machine

SECTION = "## Training: the search with the cores it is given, and the registry's share"
INTRO = """What it measures: `pipelines.training.fit.fit_model` (the churn spec's search with its folds,
recency weights and refit) with `MLOPS_SEARCH_JOBS=2` against the same search with 1, on the
same synthetic rows (both must choose the same parameters); and the median time to log the
chosen model (`log_sklearn_model`: skops, signature, example), register it with its alias
(`register_challenger`) and move `@champion` to it (`move_champion`), on an MLflow store in a
temporary folder. Goal for the registry part: under 1 s.

| date | machine | rows | candidates x folds | search, 1 job | search, 2 jobs | speed-up | per candidate (2 jobs) | log_model | register + alias | champion move | command |
|---|---|---|---|---|---|---|---|---|---|---|---|"""


def training_frame(spec, rows: int):
    """Synthetic rows with the spec's features, its label and 30 label dates."""
    import numpy as np
    import pandas as pd

    from bench.synthetic import SyntheticChurn

    synthetic = SyntheticChurn(spec, train_rows=200)
    frame = synthetic.frame(rows)
    first = frame[synthetic.columns.numeric[0]]
    frame[spec.label.target] = (first + synthetic.rng.normal(0, 5, rows) > 25).astype(int)
    frame[spec.entity] = [f"C{i:06d}" for i in range(rows)]   # one row per entity (the folds group by entity)
    frame["ds"] = (pd.Timestamp("2026-01-01") + pd.to_timedelta(np.arange(rows) % 30, unit="D")).strftime("%Y-%m-%d")
    return frame


def timed_search(spec, frame, jobs: int):
    from pipelines.training.fit import fit_model

    os.environ["MLOPS_SEARCH_JOBS"] = str(jobs)
    os.environ.setdefault("MLOPS_MODEL_THREADS", "1")   # one core per fit: the jobs are what use the cores
    started = time.perf_counter()
    outcome = fit_model(spec, frame)
    return time.perf_counter() - started, outcome


def registry_seconds(model, example, repeats: int) -> dict[str, float]:
    """Median seconds of logging, registering (with the challenger alias) and moving @champion."""
    import mlflow

    from pipelines.models import tracking
    timings: dict[str, list[float]] = {"log_model": [], "register": [], "champion": []}
    for i in range(repeats + 1):
        with mlflow.start_run() as run:
            started = time.perf_counter()
            info = tracking.log_sklearn_model(model, example, model.predict_proba(example))
            logged = time.perf_counter()
            version = tracking.register_challenger("bench-model", info.model_uri, run.info.run_id, {"bench": "1"})
            registered = time.perf_counter()
            tracking.move_champion("bench-model", version, None, "2026-01-01")
            moved = time.perf_counter()
        if i:   # the first round warms imports and the store's tables
            timings["log_model"].append(logged - started)
            timings["register"].append(registered - logged)
            timings["champion"].append(moved - registered)
    return {k: statistics.median(v) for k, v in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    command = f".venv/bin/python -m bench.bench_training --rows {args.rows} --repeats {args.repeats}"

    from pipelines.features.point_in_time import feature_columns

    spec = churn_spec()
    frame = training_frame(spec, args.rows)
    timed_search(spec, frame.head(2_000), 2)   # warm-up: imports, thread pools
    alone, outcome = timed_search(spec, frame, 1)
    together, parallel = timed_search(spec, frame, 2)
    if parallel.best_params != outcome.best_params:
        raise SystemExit(f"the searches disagree: {outcome.best_params} with 1 job, {parallel.best_params} with 2")
    candidates, folds = len(outcome.trials), spec.model.cv_folds
    per_candidate = together / candidates
    print(f"search ({candidates} candidates x {folds} folds + refit on {args.rows:,} rows): 1 job {alone:.2f} s, "
          f"2 jobs {together:.2f} s, speed-up {alone / together:.2f}x; {per_candidate:.2f} s per candidate")

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ["MLOPS_MLFLOW_ARTIFACTS"] = f"{tmp}/artifacts"
        os.environ["MLOPS_HOME"] = tmp
        from pipelines.models import tracking
        tracking.configure()
        import mlflow

        mlflow.set_experiment("bench-training")
        registry = registry_seconds(outcome.model, frame[feature_columns(spec).all].head(5), args.repeats)
    total = sum(registry.values())
    print(f"log_model {registry['log_model']:.2f} s, register + challenger alias {registry['register']:.2f} s, "
          f"@champion move {registry['champion']:.2f} s: {total:.2f} s in all (goal under 1 s)")
    row = (f"| {time.strftime('%Y-%m-%d')} | {machine()} | {args.rows:,} | {candidates} x {folds} | {alone:.2f} s | "
           f"{together:.2f} s | {alone / together:.2f}x | {per_candidate:.2f} s | {registry['log_model']:.2f} s | "
           f"{registry['register']:.2f} s | {registry['champion']:.2f} s | `{command}` |")
    append_row(SECTION, row, INTRO)
    print(row)


if __name__ == "__main__":
    main()
