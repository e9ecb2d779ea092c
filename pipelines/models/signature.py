"""A logged model's input signature, as the gate, the load test and the scoring service read it."""
from __future__ import annotations

from pipelines.models import tracking


def signature_inputs(model_uri: str) -> dict[str, str] | None:
    """A logged model's signature inputs as name -> MLflow type (None without a signature)."""
    from mlflow.models import get_model_info

    tracking.configure()
    signature = get_model_info(model_uri).signature
    if signature is None or signature.inputs is None:
        return None
    return {spec.name: str(spec.type.name if hasattr(spec.type, "name") else spec.type)
            for spec in signature.inputs.inputs}
