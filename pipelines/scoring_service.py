"""The scoring service: FastAPI over one :class:`pipelines.serving.ModelServer` per use case.

    mlops serve churn --port 8090       # one use case; without a name: every spec under include/
    MLOPS_SERVE_USE_CASES=churn uvicorn pipelines.scoring_service:app_from_env --factory --workers 2

Endpoints:

* ``POST /v1/<uc>/predict``: ``{"records": [{column: value, ...}, ...]}`` (the record carries its
  features; its entity column, if present, is logged), or ``{"entity_ids": ["c1", ...]}`` when the
  spec's ``deployment.input`` is ``entity`` (features come from the online store). Answers the
  outputs per record (the batch inference table's columns), the model name and version, and a
  request id. A record that does not fit the signature: 422 naming the field and the problem.
* ``GET /healthz``: the process answers. ``GET /readyz``: 200 once every use case serves a version
  (or has no champion yet), else 503; ``GET /v1/<uc>/readyz`` for one use case.
* ``GET /metrics``: Prometheus text: requests and errors by model version and outcome, a latency
  histogram, reloads, the served version.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Body, FastAPI, HTTPException, Response   # FastAPI reads the handlers' annotations

log = logging.getLogger(__name__)


@dataclass
class UseCaseEndpoint:
    """What the service keeps per use case: its spec, served model, request log and online store."""

    spec: object
    server: object       # serving.ModelServer
    request_log: object  # serving.RequestLog
    store: object        # Path of the online store
    by_entity: bool


def create_app(use_cases: str | list[str] | None = None, poll_s: float | None = None):
    """The service for ``use_cases`` (default: every spec in the include folder)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from pipelines import runtime
    from pipelines.config import settings
    from pipelines.online_store import store_path
    from pipelines.serving import ModelServer, RequestLog
    from pipelines.spec import ServingInput

    cfg = settings()
    names = [use_cases] if isinstance(use_cases, str) else list(use_cases or runtime.use_case_names())
    endpoints = {}
    for name in names:
        spec = runtime.spec(name)
        endpoints[name] = UseCaseEndpoint(spec, ModelServer(spec, poll_s=cfg.serving_poll_s if poll_s is None else poll_s),
                                          RequestLog(runtime.lake().online_inference(name)),
                                          store_path(cfg.online_store, name),
                                          spec.deployment.input is ServingInput.ENTITY)

    registry = CollectorRegistry()
    metrics = {
        "requests": Counter("mlops_requests", "Prediction requests by model version and outcome",
                            ["use_case", "model_version", "outcome"], registry=registry),
        "predictions": Counter("mlops_predictions", "Records scored", ["use_case", "model_version"], registry=registry),
        "latency": Histogram("mlops_request_seconds", "Prediction request latency", ["use_case", "model_version"],
                             buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=registry),
    }
    served_version = Gauge("mlops_served_model_version", "The model version served", ["use_case"], registry=registry)
    reloads = Gauge("mlops_model_reloads", "Model loads by outcome since start", ["use_case", "outcome"],
                    registry=registry)

    @asynccontextmanager
    async def lifespan(_app):
        for endpoint in endpoints.values():
            endpoint.server.start()
            endpoint.request_log.start()
        yield
        for endpoint in endpoints.values():
            endpoint.server.stop()
            endpoint.request_log.stop()

    app = FastAPI(title="airflow-mlops scoring service", lifespan=lifespan,
                  description="Online scoring of each use case's @champion: " + ", ".join(names))
    app.state.endpoints = endpoints
    if len(endpoints) == 1:
        only = next(iter(endpoints.values()))
        app.state.server, app.state.request_log = only.server, only.request_log

    def endpoint_of(use_case: str) -> UseCaseEndpoint:
        if use_case not in endpoints:
            raise HTTPException(404, f"no use case {use_case!r} here; served: {sorted(endpoints)}")
        return endpoints[use_case]

    def readiness(endpoint: UseCaseEndpoint) -> dict:
        current = endpoint.server.current
        return {"ready": endpoint.server.ready, "model": endpoint.spec.model.registered_name,
                "version": current.ref.version if current else None, "error": endpoint.server.last_error}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "use_cases": sorted(endpoints)}

    @app.get("/readyz")
    def readyz(response: Response):
        states = {name: readiness(e) for name, e in endpoints.items()}
        if not all(s["ready"] for s in states.values()):
            response.status_code = 503
        if len(states) == 1:
            return next(iter(states.values()))
        return {"ready": response.status_code != 503, "use_cases": states}

    @app.get("/v1/{use_case}/readyz")
    def use_case_readyz(use_case: str, response: Response):
        state = readiness(endpoint_of(use_case))
        if not state["ready"]:
            response.status_code = 503
        return state

    @app.get("/metrics")
    def prometheus():
        for name, endpoint in endpoints.items():
            current = endpoint.server.current
            served_version.labels(name).set(float(current.ref.version) if current else 0)
            for outcome, count in endpoint.server.reloads.items():
                reloads.labels(name, outcome).set(count)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/{use_case}/predict")
    def predict(use_case: str, body: dict = Body(..., examples=[{"records": [{"column": "value"}]}])):
        return answer(endpoint_of(use_case), body, metrics)

    return app


def answer(endpoint: UseCaseEndpoint, body: dict, metrics: dict) -> dict:
    """One prediction request: records (or entity ids) in, the served version's outputs out."""
    from pipelines.online_store import lookup
    from pipelines.serving import InvalidRecords, NotReady, check_records, log_rows, to_json_rows

    spec, server = endpoint.spec, endpoint.server
    started = time.perf_counter()
    request_id = uuid.uuid4().hex
    version = server.current.ref.version if server.current else "none"
    count = metrics["requests"]
    try:
        key = "entity_ids" if endpoint.by_entity else "records"
        given = body.get(key)
        if not isinstance(given, list) or not given:
            raise InvalidRecords([{"loc": [key], "msg": f"a non-empty list of {key.replace('_', ' ')} is needed",
                                   "type": "missing"}])
        if server.current is None:
            raise NotReady(f"{spec.name}: no model loaded yet" + (f" ({server.last_error})" if server.last_error else ""))
        if endpoint.by_entity:
            frame, unknown = lookup(endpoint.store, spec.entity, given, list(server.current.inputs))
            if unknown:
                count.labels(spec.name, version, "unknown_entity").inc()
                raise HTTPException(404, {"unknown_entities": unknown[:50],
                                          "msg": f"no features in the online store for {len(unknown)} id(s)"})
            entities = frame[spec.entity].tolist()
            frame = frame.drop(columns=[spec.entity])
        else:
            frame = check_records(given, server.current.inputs)
            entities = [r.get(spec.entity) for r in given]
        served, outputs = server.predict(frame)
    except InvalidRecords as exc:
        count.labels(spec.name, version, "invalid").inc()
        raise HTTPException(422, exc.errors) from None
    except NotReady as exc:
        count.labels(spec.name, version, "not_ready").inc()
        raise HTTPException(503, str(exc)) from None
    except HTTPException:
        raise
    except Exception as exc:
        count.labels(spec.name, version, "error").inc()
        log.exception("%s: request %s failed", spec.name, request_id)
        raise HTTPException(500, f"request {request_id} failed: {type(exc).__name__}: {exc}") from None
    elapsed = time.perf_counter() - started
    version = served.ref.version
    count.labels(spec.name, version, "ok").inc()
    metrics["predictions"].labels(spec.name, version).inc(len(outputs))
    metrics["latency"].labels(spec.name, version).observe(elapsed)
    endpoint.request_log.add(log_rows(spec, served, entities, outputs, request_id, elapsed * 1000))
    rows = to_json_rows(outputs)
    for entity, row in zip(entities, rows):
        row[spec.entity] = None if entity is None else str(entity)
    return {"request_id": request_id, "model": served.ref.name, "version": version, "predictions": rows}


def app_from_env():
    """For ``uvicorn --factory``: the use cases in ``MLOPS_SERVE_USE_CASES`` (comma-separated;
    empty: every spec)."""
    names = [n for n in os.environ.get("MLOPS_SERVE_USE_CASES", "").split(",") if n]
    return create_app(names or None)


def serve(use_cases: list[str] | None = None, host: str = "127.0.0.1", port: int = 8090, workers: int = 1) -> None:
    """Run the service with uvicorn (``workers`` processes share the port, the store and the log folder)."""
    import uvicorn

    os.environ["MLOPS_SERVE_USE_CASES"] = ",".join(use_cases or [])
    uvicorn.run("pipelines.scoring_service:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="info")
