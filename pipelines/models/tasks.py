"""What differs between task types: a model's outputs, their metrics, plots and monitored column.

One :class:`ModelTask` per spec (``ModelTask.of(spec)``), used by training, promotion, batch
scoring, live performance and drift monitoring alike, so the inference table, the holdout and
the live metrics of a use case always speak of the same outputs:

=============  ==============================================  ==============================
task           inference columns                               metrics
=============  ==============================================  ==============================
binary         ``score`` (P(class 1)), ``predicted_label``      roc_auc, average_precision,
                                                               brier, log_loss, accuracy,
                                                               precision, recall, f1
multiclass     ``score`` (P(predicted class)),                 accuracy, f1_macro, log_loss
               ``predicted_label``, ``proba_<class>`` each
regression     ``prediction``                                  rmse, mae, r2
=============  ==============================================  ==============================

Classes are the integer codes the spec's ``label`` section maps values to. Every metric is NaN
when it is undefined for the rows at hand (one class, fewer than two rows): NaN never passes a gate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.core.errors import FinalRefusal
from pipelines.core.spec import TaskType
from pipelines.models import tracking

NAN = float("nan")


class TrainingRefused(FinalRefusal, ValueError):
    """The labelled rows cannot train a model of the spec's task (one class, unknown classes)."""


@dataclass(frozen=True)
class ModelTask:
    kind: TaskType
    classes: tuple[int, ...] = ()     # classification: the class codes, in order
    threshold: float = 0.5            # binary: the score from which the predicted label is 1

    @classmethod
    def of(cls, spec) -> "ModelTask":
        task = spec.model.task
        if task is TaskType.REGRESSION:
            return cls(task)
        if task is TaskType.MULTICLASS:
            return cls(task, tuple(sorted(set((spec.label.values or {}).values()))))
        return cls(task, (0, 1), spec.model.threshold)

    # ------------------------------------------------------------- outputs
    @property
    def classifier(self) -> bool:
        return self.kind is not TaskType.REGRESSION

    @property
    def output_columns(self) -> dict[str, str]:
        """The inference table's output columns and their Spark SQL types."""
        if self.kind is TaskType.REGRESSION:
            return {"prediction": "double"}
        extra = {f"proba_{c}": "double" for c in self.classes} if self.kind is TaskType.MULTICLASS else {}
        return {"score": "double", "predicted_label": "int", **extra}

    @property
    def monitored_output(self) -> str:
        """The output column whose drift is watched beside the inputs."""
        return "predicted_label" if self.kind is TaskType.MULTICLASS else \
            "prediction" if self.kind is TaskType.REGRESSION else "score"

    @property
    def monitored_output_is_categorical(self) -> bool:
        return self.kind is TaskType.MULTICLASS

    @property
    def predict_method(self) -> str:
        """What the logged model's pyfunc calls."""
        return "predict_proba" if self.classifier else "predict"

    @property
    def label_type(self) -> str:
        """The Spark type labels are encoded to."""
        return "int" if self.classifier else "double"

    def outputs(self, model, X: pd.DataFrame) -> pd.DataFrame:
        """The model's outputs for ``X`` as the inference table's output columns (same index)."""
        return pd.DataFrame(self.output_arrays(model, X, len(X)), index=X.index)   # one frame made at once

    def output_arrays(self, model, X, rows: int) -> dict[str, np.ndarray]:
        """The output columns for ``rows`` rows of ``X``: a frame, or for a compiled model the
        columns themselves (:meth:`pipelines.models.compiled.FeedPlan.feed`)."""
        if self.kind is TaskType.REGRESSION:
            return {"prediction": np.asarray(model.predict(X) if rows else np.empty(0), dtype="float64")}
        proba = self.probabilities(model, X, rows)
        if self.kind is TaskType.BINARY:
            score = proba[:, 1]
            return {"score": score, "predicted_label": (score >= self.threshold).astype("int32")}
        columns = {"score": proba.max(axis=1),
                   "predicted_label": np.asarray(self.classes, dtype="int32")[proba.argmax(axis=1)]}
        columns.update({f"proba_{c}": proba[:, i] for i, c in enumerate(self.classes)})
        return columns

    def probabilities(self, model, X, rows: int | None = None) -> np.ndarray:
        """Class probabilities in the order of ``classes`` (0 for a class the model never saw)."""
        rows = len(X) if rows is None else rows
        proba = np.zeros((rows, len(self.classes)))
        if rows:
            fitted = model.predict_proba(X)
            position = {int(c): i for i, c in enumerate(self.classes)}
            for j, c in enumerate(model.classes_):
                if int(c) in position:
                    proba[:, position[int(c)]] = fitted[:, j]
        return proba

    # ------------------------------------------------------------- metrics
    def metrics(self, y_true, outputs: pd.DataFrame) -> dict[str, float]:
        """Metrics of ``outputs`` (as :meth:`outputs` shapes them) against the true labels."""
        if self.kind is TaskType.REGRESSION:
            return regression_metrics(y_true, outputs["prediction"])
        if self.kind is TaskType.BINARY:
            return classification_metrics(y_true, outputs["score"], self.threshold)
        proba = outputs[[f"proba_{c}" for c in self.classes]].to_numpy()
        return multiclass_metrics(y_true, proba, self.classes)

    def label_summary(self, y) -> dict[str, float]:
        """The training labels in a few numbers (class shares, or mean and spread)."""
        y = np.asarray(y, dtype=float)
        if self.kind is TaskType.REGRESSION:
            return {"train_label_mean": float(y.mean()), "train_label_std": float(y.std())}
        if self.kind is TaskType.BINARY:
            return {"train_positive_rate": float(y.mean())}
        return {f"train_class_{c}_share": float((y == c).mean()) for c in self.classes}

    def check_labels(self, name: str, y) -> None:
        """Refuse a training set a model cannot learn from (one class, or a constant target)."""
        present = np.unique(np.asarray(y))
        if len(present) < 2:
            what = "class" if self.classifier else "value"
            hint = (" (does label.positive name a value the target really holds? `mlops check` compares it "
                    "with the landed data)" if self.kind is TaskType.BINARY else "")
            raise TrainingRefused(f"{name}: the training labels have a single {what} ({present}); cannot fit{hint}")
        unknown = set(present.tolist()) - set(self.classes) if self.classifier else set()
        if unknown:
            raise TrainingRefused(f"{name}: training labels {sorted(unknown)} are not classes of the spec {self.classes}")

    # ------------------------------------------------------------- plots
    def log_plots(self, y_true, outputs: pd.DataFrame) -> None:
        """Figures of the active MLflow run that fit the task."""
        if self.kind is TaskType.BINARY:
            tracking.log_classifier_plots(np.asarray(y_true), outputs["score"].to_numpy(), self.threshold)
        elif self.kind is TaskType.MULTICLASS:
            tracking.log_confusion_matrix(np.asarray(y_true), outputs["predicted_label"].to_numpy(),
                                          labels=list(self.classes), title="holdout, most probable class")
        else:
            tracking.log_regression_plots(np.asarray(y_true, dtype=float), outputs["prediction"].to_numpy())


def classification_metrics(y_true, scores, threshold: float) -> dict[str, float]:
    """Binary holdout metrics of P(class 1) scores; undefined ones (single-class holdout) are NaN."""
    from sklearn.metrics import (accuracy_score, average_precision_score, brier_score_loss, f1_score, log_loss,
                                 precision_score, recall_score, roc_auc_score)

    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=float)
    pred = (scores >= threshold).astype(int)
    two_classes = len(np.unique(y_true)) == 2
    return {
        "roc_auc": float(roc_auc_score(y_true, scores)) if two_classes else NAN,
        "average_precision": float(average_precision_score(y_true, scores)) if two_classes else NAN,
        "brier": float(brier_score_loss(y_true, scores)) if len(y_true) else NAN,
        "log_loss": float(log_loss(y_true, scores, labels=[0, 1])) if len(y_true) else NAN,
        "accuracy": float(accuracy_score(y_true, pred)) if len(y_true) else NAN,
        "precision": float(precision_score(y_true, pred, zero_division=0)),
        "recall": float(recall_score(y_true, pred, zero_division=0)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "positive_rate": float(y_true.mean()) if len(y_true) else NAN,
        "rows": float(len(y_true)),
    }


def multiclass_metrics(y_true, proba: np.ndarray, classes: tuple[int, ...]) -> dict[str, float]:
    """Accuracy, macro F1 and log loss of class probabilities (columns in the order of ``classes``)."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    y_true = np.asarray(y_true).astype(int)
    if not len(y_true):
        return {"accuracy": NAN, "f1_macro": NAN, "log_loss": NAN, "rows": 0.0}
    pred = np.asarray(classes)[np.asarray(proba).argmax(axis=1)]
    return {
        "accuracy": float(accuracy_score(y_true, pred)),
        "f1_macro": float(f1_score(y_true, pred, labels=list(classes), average="macro", zero_division=0)),
        "log_loss": float(log_loss(y_true, np.clip(proba, 1e-15, 1), labels=list(classes))),
        "rows": float(len(y_true)),
    }


def regression_metrics(y_true, predicted) -> dict[str, float]:
    """RMSE, MAE and R² (NaN with fewer than two rows), and the means they are read against."""
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    y_true, predicted = np.asarray(y_true, dtype=float), np.asarray(predicted, dtype=float)
    if not len(y_true):
        return {"rmse": NAN, "mae": NAN, "r2": NAN, "label_mean": NAN, "prediction_mean": NAN, "rows": 0.0}
    return {
        "rmse": float(root_mean_squared_error(y_true, predicted)),
        "mae": float(mean_absolute_error(y_true, predicted)),
        "r2": float(r2_score(y_true, predicted)) if len(y_true) > 1 else NAN,
        "label_mean": float(y_true.mean()),
        "prediction_mean": float(predicted.mean()),
        "rows": float(len(y_true)),
    }


def finite_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN metrics as None (JSON, XCom and Parquet friendly)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
