"""Why a model answers what it does: SHAP values on a sample of the holdout.

The spec's model is a scikit-learn pipeline (impute, bin, one-hot, estimator). SHAP explains the
estimator on the pipeline's transformed columns: ``shap.TreeExplainer`` for tree ensembles, a
model-agnostic explainer (permutation, with a background sample) for anything else. The values of
the columns one feature became (its one-hot columns) are summed back into that feature, so every
plot and table speaks of the spec's features.

What each training run gets (under ``explanations/`` in MLflow): a bar plot of the mean |SHAP|
per feature, a beeswarm plot, and ``importance.json`` with the global importance and the top
features within each slice of the columns the promotion checks slice by (read by the model card).
For a multiclass model a row's values are those of the class it predicts.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.features.slices import groups_of
from pipelines.models.tracking import figures

log = logging.getLogger(__name__)

IMPORTANCE_ARTIFACT = "explanations/importance.json"
TOP = 5


@dataclass(frozen=True)
class Explanation:
    values: np.ndarray            # rows x features, in the spec's features
    data: pd.DataFrame            # the explained rows (the spec's features)
    explainer: str

    @property
    def importance(self) -> pd.Series:
        """Mean |SHAP| per feature, largest first."""
        return pd.Series(np.abs(self.values).mean(axis=0), index=self.data.columns).sort_values(ascending=False)

    def top_by_slice(self, columns: list[str], bins: int = 4, top: int = TOP) -> dict[str, dict[str, float]]:
        """The ``top`` features by mean |SHAP| within each slice of ``columns`` (as the gate slices them)."""

        found = {}
        for column in columns:
            if column not in self.data.columns:
                continue
            groups = groups_of(self.data[column].reset_index(drop=True), bins)
            for value in sorted(groups.unique()):
                mask = (groups == value).to_numpy()
                share = pd.Series(np.abs(self.values[mask]).mean(axis=0), index=self.data.columns)
                found[f"{column}={value}"] = {k: round(float(v), 6) for k, v in share.nlargest(top).items()}
        return found


def explain(model, X: pd.DataFrame, predict_method: str, rows: int = 500, seed: int = 0) -> Explanation:
    """SHAP values of a fitted pipeline on (a sample of at most ``rows`` of) ``X``."""
    import shap

    sample = X.sample(n=min(rows, len(X)), random_state=seed) if len(X) > rows else X
    features, estimator = model[:-1], model[-1]
    transformed = np.asarray(features.transform(sample), dtype=float)
    try:
        explainer, name = shap.TreeExplainer(estimator), "tree"
        raw = explainer(transformed, check_additivity=False).values
    except Exception as exc:   # noqa: BLE001 - not a tree model shap knows: explain its predictions
        log.info("TreeExplainer does not take %s (%s); using a permutation explainer", type(estimator).__name__, exc)
        background = shap.sample(transformed, min(100, len(transformed)), random_state=seed)
        predict = getattr(estimator, predict_method)
        explainer, name = shap.Explainer(predict, shap.maskers.Independent(background)), "permutation"
        raw = explainer(transformed).values
    values = np.asarray(raw, dtype=float)
    if values.ndim == 3:   # rows x columns x classes: each row's predicted class
        chosen = np.asarray(estimator.predict(transformed))
        index = np.searchsorted(np.asarray(estimator.classes_), chosen)
        values = values[np.arange(len(values)), :, index] if values.shape[2] > 1 else values[:, :, 0]
    return Explanation(_per_feature(features, values, list(X.columns)), sample.reset_index(drop=True), name)


def _per_feature(features, values: np.ndarray, columns: list[str]) -> np.ndarray:
    """Sum the SHAP values of the transformed columns back into the features they came from."""
    pre = features[-1] if hasattr(features, "steps") else features   # the ColumnTransformer
    out = np.zeros((values.shape[0], len(columns)))
    position = 0
    for _, transformer, cols in pre.transformers_:
        if transformer == "drop" or not len(cols):
            continue
        onehot = transformer[-1] if hasattr(transformer, "steps") else transformer
        widths = [len(c) for c in onehot.categories_] if hasattr(onehot, "categories_") else [1] * len(cols)
        for col, width in zip(cols, widths):
            out[:, columns.index(col)] += values[:, position:position + width].sum(axis=1)
            position += width
    if position != values.shape[1]:
        raise ValueError(f"{values.shape[1]} explained columns, {position} mapped back to features")
    return out


def slice_columns(spec) -> list[str]:
    """The columns the promotion checks slice or group by (for per-slice explanations)."""
    columns: list[str] = []
    for check in spec.promotion.checks:
        columns += list(getattr(check, "columns", None) or []) + list(getattr(check, "sensitive", None) or [])
    return list(dict.fromkeys(columns))


def log_explanations(spec, explanation: Explanation) -> dict:
    """Into the active MLflow run: bar and beeswarm plots and ``importance.json``; returns the json."""
    import mlflow
    import shap

    plt = figures()
    data = explanation.data.copy()
    for column in data.columns:   # colours need numbers: categories as their codes
        if not pd.api.types.is_numeric_dtype(data[column]):
            data[column] = pd.factorize(data[column])[0].astype(float)
    shown = shap.Explanation(values=explanation.values, data=data.to_numpy(dtype=float),
                             feature_names=list(data.columns))
    for kind, draw in (("bar", shap.plots.bar), ("beeswarm", shap.plots.beeswarm)):
        plt.figure(figsize=(8, 6))
        draw(shown, max_display=15, show=False)
        fig = plt.gcf()
        fig.suptitle(f"{spec.name}: SHAP ({explanation.explainer}), {len(data)} holdout rows", fontsize=10)
        fig.tight_layout()
        mlflow.log_figure(fig, f"explanations/shap_{kind}.png")
        plt.close(fig)
    summary = {"explainer": explanation.explainer, "rows": len(data),
               "global": {k: round(float(v), 6) for k, v in explanation.importance.items()},
               "slices": explanation.top_by_slice(slice_columns(spec))}
    mlflow.log_text(json.dumps(summary, indent=2), IMPORTANCE_ARTIFACT)
    top = list(summary["global"])[:TOP]
    log.info("%s: SHAP (%s) top features %s", spec.name, explanation.explainer, top)
    return summary
