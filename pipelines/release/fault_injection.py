"""Rollout drills: a deliberately bad copy of a model version, to prove that a rollout stops it.

``mlops rollout drill churn --slow-ms 1500`` registers the champion's model behind a step that
sleeps before every prediction (same answers, far over any latency budget) and starts its rollout
by the spec's strategy. The rollout DAG's load test or its step judge must then roll it back on
its own, with the reason recorded: a game-day check of the safety net, run against the real
registry and service. The versions it registers are tagged ``drill``.
"""
from __future__ import annotations

import time

from pipelines.core.errors import MissingData
from pipelines.core.lake import list_partitions, read_partition
from pipelines.models import tracking
from pipelines.models.signature import signature_inputs


def slow_identity(frame, delay_s: float = 1.5):
    """The drill's extra pipeline step: wait, then pass the rows through unchanged."""
    time.sleep(delay_s)
    return frame


def register_slowed_copy(spec, lake, version: str, delay_ms: float) -> str:
    """Register ``version``'s model behind a ``delay_ms`` sleep as a new version (no alias moves);
    its number. Its input example is a few rows of the newest feature partition."""
    import mlflow
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    name = spec.model.registered_name
    ref = tracking.model_version(name, version)
    model = tracking.load_model(ref)
    days = list_partitions(lake.features(spec.name))
    if not days:
        raise MissingData(f"no features of {spec.name} yet: a drill needs rows to describe the model's input")
    example = read_partition(lake.features(spec.name), days[-1], list(signature_inputs(ref.uri))).head(5)
    slowed = make_pipeline(FunctionTransformer(slow_identity, kw_args={"delay_s": delay_ms / 1000.0}), model)
    drill = f"v{version} slowed by {delay_ms:.0f} ms"
    with mlflow.start_run(experiment_id=tracking.ensure_experiment(spec.experiment("drills")),
                          run_name=f"drill: {drill}") as run:
        info = tracking.log_sklearn_model(slowed, example, model.predict_proba(example))
    return str(mlflow.register_model(info.model_uri, name, tags={"drill": drill}, await_registration_for=60).version)
