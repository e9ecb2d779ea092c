"""The scoring service's OpenAPI document: each use case's request body from the version it
serves now, the bearer key, and every status code the service answers."""
from __future__ import annotations

from pipelines.features.point_in_time import feature_columns

ERROR_CONTENT = {"application/json": {"schema": {"type": "object", "properties": {"detail": {}}}}}


PREDICT_RESPONSES = {
    200: {"description": "One prediction per record, in order"},
    400: {"description": "Host header not allowed", "content": ERROR_CONTENT},
    401: {"description": "No or a wrong API key", "content": ERROR_CONTENT},
    404: {"description": "Unknown entity ids (entity input)", "content": ERROR_CONTENT},
    413: {"description": "Body over deployment.limits.max_body_bytes", "content": ERROR_CONTENT},
    422: {"description": "Records that do not fit the served version's signature, or over the limits",
          "content": ERROR_CONTENT},
    503: {"description": "No model can answer now (none loaded, champion lost, model process not answering); "
                         "see Retry-After", "content": ERROR_CONTENT},
}


INT64 = {"type": "integer", "minimum": -2 ** 63, "maximum": 2 ** 63 - 1}


DOUBLE_MAX = 1.7976931348623157e308


def request_schema(endpoint) -> dict:
    """The request body's JSON schema: each input's type from the served version's signature (the
    spec's features before one is loaded), null for a missing value, and the limits."""

    spec, limits = endpoint.spec, endpoint.spec.deployment.limits
    text = {"type": "string", "maxLength": limits.max_string_length}
    entity = {"anyOf": [{**text, "minLength": 1}, INT64]}
    if endpoint.by_entity:
        body = {"type": "object", "required": ["entity_ids"], "properties": {
            "entity_ids": {"type": "array", "items": entity, "minItems": 1, "maxItems": limits.max_records}}}
    else:
        served = endpoint.server.current
        if served is not None:
            inputs = dict(served.inputs)
        else:
            columns = feature_columns(spec)
            inputs = {**{c: "double" for c in columns.numeric}, **{c: "string" for c in columns.categorical}}
        number = {"type": "number", "minimum": -DOUBLE_MAX, "maximum": DOUBLE_MAX}   # finite, as a double
        kinds = {"double": number, "float": number, "long": INT64, "integer": INT64,
                 "boolean": {"type": "boolean"}, "string": text}
        properties = {c: {"anyOf": [kinds.get(kind, {}), {"type": "null"}]} for c, kind in inputs.items()}
        properties.setdefault(spec.entity, {"anyOf": [*entity["anyOf"], {"type": "null"}]})
        record = {"type": "object", "required": list(inputs), "properties": properties}
        body = {"type": "object", "required": ["records"], "properties": {
            "records": {"type": "array", "items": record, "minItems": 1, "maxItems": limits.max_records}}}
    return {"required": True, "content": {"application/json": {"schema": body}}}


def service_openapi(app) -> dict:
    """FastAPI's document with each use case's request body (from the version it serves now), the
    bearer key declared and every status code the service answers outside the handlers (400,
    401, 413 from the guard). Made again on each call: a new champion may take other inputs."""
    from fastapi.openapi.utils import get_openapi

    document = get_openapi(title=app.title, version="1", description=app.description, routes=app.routes)
    for name, endpoint in app.state.endpoints.items():
        document["paths"][f"/v1/{name}/predict"]["post"]["requestBody"] = request_schema(endpoint)
    document.setdefault("components", {})["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.setdefault("400", {"description": "Host header not allowed", "content": ERROR_CONTENT})
            if path in ("/healthz", "/readyz") or path.endswith("/readyz"):
                continue
            operation["security"] = [{"apiKey": []}]
            responses.setdefault("401", {"description": "No or a wrong API key", "content": ERROR_CONTENT})
            responses.setdefault("413", {"description": "Body too large", "content": ERROR_CONTENT})
    return document
