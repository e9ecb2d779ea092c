"""Hyperparameter search of a spec's model: a grid, or Optuna within a trial and time budget.

Both search the spec's ``model.search_space`` for the promotion metric with the spec's
cross-validation (time-ordered for a time split), refit the best candidate on all the rows,
and report every candidate the same way (:func:`search_trials` columns): its parameters, its
cross-validated metric in the metric's own sign, its rank and its cost in seconds.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipelines.core.spec import SearchMethod, SearchRange

log = logging.getLogger(__name__)


@dataclass
class SearchOutcome:
    """The refitted best pipeline and what the search tried."""

    model: object
    best_params: dict
    cv_score: float               # the best candidate's cross-validated metric, in the metric's sign
    trials: pd.DataFrame          # one row per candidate (see search_trials)
    method: SearchMethod = SearchMethod.GRID
    extra: dict = field(default_factory=dict)


def search(spec, pipeline, X: pd.DataFrame, y: np.ndarray, fit_params: dict, cv, jobs: int = 1) -> SearchOutcome:
    """Search the spec's space by its method, ``jobs`` candidates at a time; the best pipeline
    refitted on ``X``."""
    if spec.model.search.method is SearchMethod.OPTUNA:
        return optuna_search(spec, pipeline, X, y, fit_params, cv, jobs)
    return grid_search(spec, pipeline, X, y, fit_params, cv, jobs)


@contextlib.contextmanager
def _bins_collapse_quietly():
    """Quantile bins of a column with few distinct values collapse; that is expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Bins whose width are too small", category=UserWarning)
        yield


def grid_search(spec, pipeline, X, y, fit_params: dict, cv, jobs: int = 1) -> SearchOutcome:
    """Every candidate of the grid on every fold, ``jobs`` fits at a time in threads (the fits
    release the GIL in their numeric loops; threads need no worker processes, which would each
    import scikit-learn again). The outcome does not depend on ``jobs``."""
    from joblib import parallel_config
    from sklearn.model_selection import GridSearchCV

    metric = spec.promotion.metric
    grid = {f"model__{k}": v for k, v in spec.model.search_space.items()}
    searched = GridSearchCV(pipeline, grid or [{}], scoring=metric.scorer, cv=cv, n_jobs=jobs, refit=True)
    with _bins_collapse_quietly(), parallel_config(backend="threading"):
        searched.fit(X, y, **fit_params)
    best = {k.removeprefix("model__"): v for k, v in searched.best_params_.items()}
    return SearchOutcome(searched.best_estimator_, best, _in_metric_sign(searched.best_score_, metric),
                         search_trials(searched, metric), SearchMethod.GRID)


def search_trials(searched, metric) -> pd.DataFrame:
    """One row per candidate of a scikit-learn search: its parameters, its cross-validated ``metric``
    (in the metric's own sign: an RMSE is positive), its rank and what it cost over all folds."""
    results = searched.cv_results_
    trials = pd.DataFrame(list(results["params"])).rename(columns=lambda c: c.removeprefix("model__"))
    folds = searched.n_splits_
    trials[f"cv_{metric.value}"] = [_in_metric_sign(v, metric) for v in results["mean_test_score"]]
    trials["rank"] = np.asarray(results["rank_test_score"], dtype=int)
    trials["fit_seconds"] = np.asarray(results["mean_fit_time"], dtype=float) * folds
    trials["score_seconds"] = np.asarray(results["mean_score_time"], dtype=float) * folds
    return trials


def optuna_search(spec, pipeline, X, y, fit_params: dict, cv, jobs: int = 1) -> SearchOutcome:
    """Optuna (TPE, seeded) over the space: a list is a categorical choice, a range a float or an
    integer (log-scaled when asked); stops after ``trials`` trials or ``timeout_s`` seconds.
    ``jobs`` trials run at once in threads; then the sampler proposes a trial before the ones
    running have finished, so the trials depend on timing (with one job they repeat exactly)."""
    import optuna
    from sklearn.base import clone
    from sklearn.model_selection import cross_validate

    metric, budget = spec.promotion.metric, spec.model.search
    space = spec.model.search_space
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",   # scikit-learn scorers are maximised
                                sampler=optuna.samplers.TPESampler(seed=budget.seed))

    def objective(trial) -> float:
        params = {name: _suggest(trial, name, values) for name, values in space.items()}
        candidate = clone(pipeline).set_params(**{f"model__{k}": v for k, v in params.items()})
        with _bins_collapse_quietly():
            scores = cross_validate(candidate, X, y, scoring=metric.scorer, cv=cv, params=fit_params,
                                    error_score="raise")
        trial.set_user_attr("fit_seconds", float(np.sum(scores["fit_time"])))
        trial.set_user_attr("score_seconds", float(np.sum(scores["score_time"])))
        value = float(np.mean(scores["test_score"]))
        log.info("%s: trial %d %s cv %s %.4f", spec.name, trial.number, params, metric.value,
                 _in_metric_sign(value, metric))
        return value

    started = time.monotonic()
    study.optimize(objective, n_trials=budget.trials, timeout=budget.timeout_s, n_jobs=jobs)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError(f"{spec.name}: no Optuna trial completed within {budget.timeout_s} s")
    best = study.best_trial.params
    with _bins_collapse_quietly():
        model = clone(pipeline).set_params(**{f"model__{k}": v for k, v in best.items()}).fit(X, y, **fit_params)
    values = [_in_metric_sign(t.value, metric) for t in done]
    trials = pd.DataFrame([t.params for t in done])
    trials[f"cv_{metric.value}"] = values
    trials["rank"] = pd.Series([-t.value for t in done]).rank(method="min").astype(int).to_numpy()
    trials["fit_seconds"] = [t.user_attrs["fit_seconds"] for t in done]
    trials["score_seconds"] = [t.user_attrs["score_seconds"] for t in done]
    trials["trial"] = [t.number for t in done]
    return SearchOutcome(model, best, _in_metric_sign(study.best_value, metric), trials, SearchMethod.OPTUNA,
                         {"search_wall_seconds": time.monotonic() - started})


def _suggest(trial, name: str, values):
    if isinstance(values, SearchRange):
        if values.integer:
            return trial.suggest_int(name, int(values.low), int(values.high))
        return trial.suggest_float(name, values.low, values.high, log=values.log)
    return trial.suggest_categorical(name, list(values))


def _in_metric_sign(score: float, metric) -> float:
    """scikit-learn maximises the negative of a lower-is-better metric; report the metric itself."""
    return -float(score) if metric.scorer.startswith("neg_") else float(score)


def log_trials(outcome: SearchOutcome, metric) -> None:
    """Into the active MLflow run: the trials table, the search's cost, and (Optuna) each trial
    as a nested run with its parameters and metric; the best parameters on the parent run."""
    import mlflow

    trials = outcome.trials
    seconds = trials["fit_seconds"] + trials["score_seconds"]
    mlflow.log_table(trials, "search/trials.json")
    mlflow.log_params({"search_method": outcome.method.value,
                       **{f"best.{k}": v for k, v in outcome.best_params.items()}})
    mlflow.log_metrics({"search_candidates": len(trials), "search_seconds": float(seconds.sum()),
                        "search_seconds_per_candidate": float(seconds.mean()), **outcome.extra})
    if outcome.method is not SearchMethod.OPTUNA:
        return
    parent = mlflow.active_run()
    for row in trials.to_dict("records"):
        params = {k: v for k, v in row.items()
                  if k not in {f"cv_{metric.value}", "rank", "fit_seconds", "score_seconds", "trial"}}
        with mlflow.start_run(run_name=f"trial-{row['trial']}", nested=True,
                              experiment_id=parent.info.experiment_id):
            mlflow.log_params(params)
            mlflow.log_metrics({f"cv_{metric.value}": row[f"cv_{metric.value}"], "rank": row["rank"],
                                "fit_seconds": row["fit_seconds"], "score_seconds": row["score_seconds"]})
