"""Model quality: each shipped use case through the pipeline (ingest, GX, Spark features, training
with the spec's search) against the same model family in a plain scikit-learn script on the
same rows and the same holdout split.

    .venv/bin/python -m bench.quality_vs_plain_sklearn [--use-case wine ...]

The plain side reads the exported CSV with pandas, holds out the same entities
(``pipelines.training.fit.in_holdout``, a hash of the entity id), imputes medians, and grid-searches
the spec's estimator, parameters and grid with the same folds. Prints each holdout metric, the
pipeline's wall time, and the ratio pipeline / plain (1.00: the pipeline loses nothing on the
way). Runs in a temporary state folder; nothing of the project's own state is touched.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["breast_cancer", "wine", "diabetes"]
AS_OF = dt.date(2026, 1, 1)


def pipeline_metric(uc: str, csv: Path) -> tuple[float, dict]:
    """Holdout value of the spec's promotion metric reached through the CLI path; and timings."""
    from pipelines import runtime
    from pipelines.cli import main

    spec = runtime.spec(uc)
    day = AS_OF.isoformat()
    timings = {}
    for step, args in (("ingest", ["ingest", uc, spec.label.source, str(csv), "--as-of", day]),
                       ("validate", ["validate", uc, day]), ("features", ["features", uc, day]),
                       ("train", ["train", uc, "--reason", "quality benchmark"])):
        started, out = time.perf_counter(), io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(args)
        timings[step] = time.perf_counter() - started
        if code != 0:
            raise SystemExit(f"mlops {' '.join(args)} failed")
    result = json.loads(out.getvalue())
    return result["challenger"]["metrics"][spec.promotion.metric.value], timings


def plain_metric(uc: str, csv: Path) -> float:
    """The same estimator, parameters, grid, folds and holdout in plain scikit-learn."""
    import numpy as np
    import pandas as pd
    from sklearn.impute import SimpleImputer
    from sklearn.metrics import get_scorer
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
    from sklearn.pipeline import Pipeline

    from pipelines.core.spec import TaskType, estimator_class, load_spec
    from pipelines.data.labels import encode_labels
    from pipelines.training.fit import in_holdout

    spec = load_spec(ROOT / "include" / uc)
    frame = pd.read_csv(csv)
    y = encode_labels(frame[spec.label.target], spec.label, spec.model.task)
    frame = frame[y.notna()].reset_index(drop=True)
    y = y[y.notna()].to_numpy(dtype=float if spec.model.task is TaskType.REGRESSION else int)
    X = frame[spec.feature_names()]
    held = in_holdout(frame[spec.entity], spec.training.holdout_fraction)
    classifier = spec.model.task is not TaskType.REGRESSION
    folds = (StratifiedKFold if classifier else KFold)(n_splits=spec.model.cv_folds, shuffle=True, random_state=0)
    model = Pipeline([("impute", SimpleImputer(strategy="median")),
                      ("model", estimator_class(spec.model)(**spec.model.params))])
    metric = spec.promotion.metric
    search = GridSearchCV(model, {f"model__{k}": v for k, v in spec.model.search_space.items()} or [{}],
                          scoring=metric.scorer, cv=folds).fit(X[~held], y[~held])
    value = get_scorer(metric.scorer)(search.best_estimator_, X[held], y[held])
    return float(-value if metric.scorer.startswith("neg_") else value) if np.isfinite(value) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--use-case", action="append", choices=SHIPPED, help="default: all three")
    args = parser.parse_args()
    use_cases = args.use_case or SHIPPED
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update({"MLOPS_HOME": tmp, "MLOPS_INCLUDE": f"{tmp}/include"})
        for var in ("MLOPS_LAKE", "MLOPS_REPORTS", "MLFLOW_TRACKING_URI", "MLOPS_MLFLOW_ARTIFACTS", "SPARK_REMOTE"):
            os.environ.pop(var, None)
        from pipelines.core.spec import load_spec
        from pipelines.data.example_data import export

        for uc in use_cases:
            shutil.copytree(ROOT / "include" / uc, Path(tmp, "include", uc))
        rows = []
        for uc in use_cases:
            csv = export(uc, Path(tmp, "exports"))
            started = time.perf_counter()
            ours, timings = pipeline_metric(uc, csv)
            wall = time.perf_counter() - started
            plain = plain_metric(uc, csv)
            metric = load_spec(ROOT / "include" / uc).promotion.metric
            rows.append((uc, metric.value, ours, plain, wall, timings))
        print("| use case | metric | pipeline | plain scikit-learn | ratio | pipeline wall time (ingest/validate/features/train) |")
        print("|---|---|---|---|---|---|")
        for uc, metric, ours, plain, wall, t in rows:
            steps = "/".join(f"{t[s]:.0f}" for s in ("ingest", "validate", "features", "train"))
            print(f"| {uc} | {metric} | {ours:.4f} | {plain:.4f} | {ours / plain:.3f} | {wall:.0f} s ({steps} s) |")


if __name__ == "__main__":
    main()
