"""MLflow access in one place: tracking URI, experiments, model logging, registry aliases.

The registry is the source of truth for which model serves: the alias ``champion`` points
at the serving version, ``challenger`` at the newest candidate. Scoring resolves the alias
to a concrete version once per run, so every row it writes names the version it used.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pipelines.core import lineage
from pipelines.core.config import PROJECT_ROOT, Settings, settings as current_settings
from pipelines.core.errors import FinalRefusal, Refusal
from pipelines.core.waiting import wait_until

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
REFERENCE_ARTIFACT = "reference/features.parquet"
CHAMPION_RECORD_TAG = "champion.version"   # on the registered model: who the alias should point at
CHAMPION_SINCE_TAG = "champion.since"      # on a version: when it last became champion
AIRFLOW_RUN_TAG = "airflow_run_id"         # on training runs and the versions they register
LOGGED_MODEL_TAG = "logged_model_uri"      # on a training run, once its model is logged whole
# MLflow retries a failed HTTP call 7 times with exponential backoff (minutes); a task that
# lost its tracking server should say so in seconds, and Airflow's own retries take over.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


class TrackingUnavailable(Refusal, RuntimeError):
    """The MLflow tracking server does not answer; the message names its URI."""


class ChampionLost(FinalRefusal, RuntimeError):
    """A champion was promoted once, but the alias no longer resolves to a usable version."""


class ModelArtifactsMissing(FinalRefusal, RuntimeError):
    """A registered version's model files cannot be loaded; the message names model, version and path."""


def configure(settings: Settings | None = None) -> str:
    """Point MLflow at the configured tracking/registry URI; returns it."""
    import mlflow

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    settings = settings or current_settings()
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def metric_key(name: str) -> str:
    """``name`` as an MLflow metric, parameter or tag key: a character MLflow refuses (brackets,
    commas, accents from a team's column names) becomes ``_``."""

    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def client():
    from mlflow import MlflowClient

    configure()
    return MlflowClient()


def require_tracking_server(timeout: float = 10.0) -> str:
    """Fail within ``timeout`` seconds, naming the URI, unless the tracking server answers its
    health check (a local store needs no server). Returns the tracking URI."""
    import requests

    uri = configure()
    if not uri.startswith(("http://", "https://")):
        return uri
    try:
        wait_until(lambda: requests.get(f"{uri.rstrip('/')}/health", timeout=3).raise_for_status() or True, timeout,
                   what=f"MLflow tracking server {uri}", retry_on=(requests.RequestException,))
    except requests.RequestException as exc:
        raise TrackingUnavailable(f"MLflow tracking server {uri} is not reachable ({type(exc).__name__}); "
                                  f"nothing was written. Start it (make ui) or fix MLFLOW_TRACKING_URI.") from None
    return uri


def ensure_experiment(name: str) -> str:
    """Id of experiment ``name``, created with an artifact root under the configured store."""
    import mlflow

    configure()
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    cfg = current_settings()
    location = None
    if not cfg.mlflow_tracking_uri.startswith(("http://", "https://", "databricks")):
        # embedded store: artifacts under the configured local (or object-store) root
        artifacts = cfg.mlflow_artifacts
        if "://" not in artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            location = Path(artifacts, name).resolve().as_uri()
        else:
            location = f"{artifacts.rstrip('/')}/{name}"
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another task
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@lru_cache(maxsize=1)
def code_version() -> tuple[str, bool]:
    """(commit, dirty) of the code that runs: ``MLOPS_CODE_VERSION`` when set (an image built
    without its .git), else the git checkout this package sits in; ("unknown", False) otherwise."""

    pinned = os.environ.get("MLOPS_CODE_VERSION")
    if pinned:
        return pinned, False
    root = PROJECT_ROOT
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit, bool(changes)


def code_version_tags() -> dict[str, str]:
    """Tags naming the code version of a run (MLflow's own git tag, so its UI shows it too)."""
    commit, dirty = code_version()
    return {"mlflow.source.git.commit": commit, "code_version": commit + ("+dirty" if dirty else "")}


TAG_LIMIT = 4900   # characters of a tag value MLflow keeps (its limit is 5000 bytes' worth, with room)


def tag_text(value) -> str:
    """A value as a tag's text, cut to what MLflow keeps."""
    return str(value)[:TAG_LIMIT]


def figures():
    """pyplot on a headless backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_figure(fig, name: str) -> None:
    import mlflow

    mlflow.log_figure(fig, f"plots/{name}")
    figures().close(fig)


def log_classifier_plots(y_true, scores, threshold: float) -> None:
    """ROC curve, precision-recall curve and confusion matrix as figures of the active run."""
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    plt = figures()
    if len(set(y_true)) < 2:
        log.warning("holdout has a single class: no ROC or PR curve")
    else:
        for name, display in (("roc_curve.png", RocCurveDisplay), ("precision_recall.png", PrecisionRecallDisplay)):
            fig, ax = plt.subplots(figsize=(5, 4))
            display.from_predictions(y_true, scores, ax=ax)
            _log_figure(fig, name)
    log_confusion_matrix(y_true, (scores >= threshold).astype(int), labels=[0, 1], title=f"threshold {threshold}")


def log_confusion_matrix(y_true, predicted, labels: list, title: str) -> None:
    """The confusion matrix of predicted classes, as a figure of the active run."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = figures().subplots(figsize=(4 + 0.4 * len(labels), 4 + 0.4 * len(labels)))
    ConfusionMatrixDisplay.from_predictions(y_true, predicted, labels=labels, ax=ax, colorbar=False)
    ax.set_title(title)
    _log_figure(fig, "confusion_matrix.png")


def log_regression_plots(y_true, predicted) -> None:
    """Predicted against actual values and residuals against predictions, as figures of the active run."""
    from sklearn.metrics import PredictionErrorDisplay

    for name, kind in (("predicted_vs_actual.png", "actual_vs_predicted"), ("residuals.png", "residual_vs_predicted")):
        fig, ax = figures().subplots(figsize=(5, 4))
        PredictionErrorDisplay.from_predictions(y_true, predicted, kind=kind, ax=ax,
                                                subsample=min(len(y_true), 2000), random_state=0)
        ax.set_title(f"holdout, {len(y_true)} rows")
        _log_figure(fig, name)


def log_reference_sample(frame) -> None:
    """Keep a sample of the training features with the run: the drift reference of this model."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "features.parquet")
        frame.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=os.path.dirname(REFERENCE_ARTIFACT))


def load_reference_sample(run_id: str):
    """The drift reference saved by :func:`log_reference_sample` for a training run."""
    import mlflow
    import pandas as pd

    configure()
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=tmp)
        return pd.read_parquet(local)


def log_sklearn_model(model, input_example, output_example, predict_method: str = "predict_proba"):
    """Log a fitted scikit-learn pipeline with signature, input example and pinned requirements."""
    import mlflow
    import numpy
    import pandas
    import sklearn
    import skops.io
    from mlflow.models import infer_signature

    requirements = [f"mlflow=={mlflow.__version__}", f"scikit-learn=={sklearn.__version__}",
                    f"pandas=={pandas.__version__}", f"numpy=={numpy.__version__}", f"skops=={skops.__version__}"]
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))  # types of the model we just fitted
    return mlflow.sklearn.log_model(
        model, name="model", signature=infer_signature(input_example, output_example),
        input_example=input_example, pip_requirements=requirements, skops_trusted_types=trusted,
        pyfunc_predict_fn=predict_method,
    )


def register_challenger(name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> str:
    """Register ``model_uri`` as a new version of ``name``, tag it and point ``challenger`` at it."""
    import mlflow

    configure()
    version = mlflow.register_model(model_uri, name, tags=tags, await_registration_for=60).version
    c = client()
    c.set_registered_model_alias(name, CHALLENGER, version)
    return str(version)


def _filter_value(value: str) -> str | None:
    """``value`` quoted for an MLflow search filter; None if it cannot be (a quote inside)."""
    return None if "'" in value or "\\" in value else f"'{value}'"


def versions_tagged(name: str, tag: str, value: str) -> list:
    """The versions of ``name`` whose ``tag`` is ``value`` (none for a value no filter can quote)."""
    quoted = _filter_value(value)
    if quoted is None:
        return []
    return list(client().search_model_versions(f"name = '{name}' and tags.`{tag}` = {quoted}"))


def newest_version_tagged(name: str, tag: str, value: str) -> ModelRef | None:
    """The newest version of ``name`` whose ``tag`` is ``value``, if any."""
    found = versions_tagged(name, tag, value)
    if not found:
        return None
    newest = max(found, key=lambda mv: int(mv.version))
    return ModelRef(name=name, version=str(newest.version), run_id=newest.run_id)


def tag_version(name: str, version: str, tags: dict) -> None:
    """Set each of ``tags`` on a model version (values cut to what MLflow keeps)."""
    c = client()
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, tag_text(value))


def version_registered_by(name: str, airflow_run_id: str) -> ModelRef | None:
    """The newest version of ``name`` that a training of this Airflow run registered, if any."""
    return newest_version_tagged(name, AIRFLOW_RUN_TAG, airflow_run_id)


def model_logged_by(experiment_id: str, airflow_run_id: str) -> tuple[str, str] | None:
    """(run id, model URI) of a training run of this Airflow run that logged its model whole but
    registered nothing (it failed just after), newest first; None if there is none."""
    quoted = _filter_value(airflow_run_id)
    if quoted is None:
        return None
    runs = client().search_runs([experiment_id], f"tags.{AIRFLOW_RUN_TAG} = {quoted}",
                                order_by=["attributes.start_time DESC"], max_results=20)
    for run in runs:
        uri = run.data.tags.get(LOGGED_MODEL_TAG)
        if uri:
            return run.info.run_id, uri
    return None


def point_challenger(ref: ModelRef) -> None:
    """Point the ``challenger`` alias at a version registered earlier."""
    client().set_registered_model_alias(ref.name, CHALLENGER, ref.version)


@dataclass(frozen=True)
class ModelRef:
    """A concrete registered model version (what an alias resolved to at one moment)."""

    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def as_xcom(self) -> dict:
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "model_uri": self.uri}

    @classmethod
    def from_xcom(cls, value: dict) -> "ModelRef":
        return cls(name=value["name"], version=str(value["version"]), run_id=value["run_id"])

    def as_dataset(self) -> lineage.Dataset:
        """This version as a lineage dataset of the configured registry (its URI without credentials)."""
        return lineage.model_version(registry_name(current_settings().mlflow_tracking_uri),
                                     self.name, self.version, self.run_id)


def registry_name(uri: str) -> str:
    """A tracking URI fit to be shown: a user and password in it are left out."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


def resolve_alias(name: str, alias: str = CHAMPION) -> ModelRef | None:
    """The version an alias points at now, or None if the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
            return None
        raise
    return ModelRef(name=name, version=str(mv.version), run_id=mv.run_id)


def model_version(name: str, version: str) -> ModelRef:
    mv = client().get_model_version(name, str(version))
    return ModelRef(name=name, version=str(mv.version), run_id=mv.run_id)


def load_model(ref: ModelRef):
    """The scikit-learn model of a registered version (recorded as read, for lineage);
    :class:`ModelArtifactsMissing` names the model, the version and the artifact location when its
    files cannot be loaded."""
    import mlflow
    from mlflow.exceptions import MlflowException

    configure()
    try:
        model = mlflow.sklearn.load_model(ref.uri)
    except (MlflowException, OSError) as exc:
        try:
            source = client().get_model_version(ref.name, ref.version).source
        except MlflowException:
            source = "unknown (the version is not in the registry)"
        raise ModelArtifactsMissing(f"cannot load {ref.name} v{ref.version} ({ref.uri}, run {ref.run_id}): its "
                                    f"artifacts at {source} are missing or unreadable: {exc}") from None
    lineage.read(ref.as_dataset())
    return model


def move_champion(name: str, version: str, replaced: str | None, at: str) -> None:
    """Point ``@champion`` at ``version`` and record the move (promotion and rollback alike): the
    registered model remembers the version (see :func:`resolve_champion`), ``version`` is champion
    since ``at``, and the version it replaced is champion until ``at``, replaced by ``version``."""
    c = client()
    c.set_registered_model_alias(name, CHAMPION, version)
    record_champion(name, version)
    c.set_model_version_tag(name, version, CHAMPION_SINCE_TAG, at)
    if replaced is not None:
        c.set_model_version_tag(name, replaced, "champion.replaced_by", version)
        c.set_model_version_tag(name, replaced, "champion.until", at)


def record_champion(name: str, version: str) -> None:
    """Remember on the registered model which version the champion alias was moved to."""
    client().set_registered_model_tag(name, CHAMPION_RECORD_TAG, str(version))


def recorded_champion(name: str) -> str | None:
    """The version last recorded as champion (None: no champion was ever promoted)."""
    from mlflow.exceptions import MlflowException

    try:
        return (client().get_registered_model(name).tags or {}).get(CHAMPION_RECORD_TAG)
    except MlflowException:
        return None


def resolve_champion(name: str) -> ModelRef | None:
    """The champion as a concrete version; None only if no champion was ever promoted.

    A champion that was promoted but whose alias no longer resolves (the version was deleted,
    or the alias removed) raises :class:`ChampionLost`: scoring must not silently stop.
    """
    ref = resolve_alias(name, CHAMPION)
    if ref is not None:
        return ref
    recorded = recorded_champion(name)
    if recorded is None:
        return None
    try:
        client().get_model_version(name, recorded)
        state = f"v{recorded} still exists but the alias was removed"
    except Exception:
        state = f"v{recorded} is no longer in the registry (deleted?)"
    raise ChampionLost(f"{name}@{CHAMPION} does not resolve: the last promoted champion was v{recorded} and "
                       f"{state}. Point the alias at a former champion that still loads: "
                       f"mlops rollback <use case> --to VERSION --reason TEXT")
