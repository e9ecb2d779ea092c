"""The scoring service: FastAPI over one :class:`pipelines.serving.model_server.ModelServer` per use case.

    mlops serve churn --port 8090       # one use case; without a name: every spec under include/
    MLOPS_SERVE_USE_CASES=churn uvicorn pipelines.serving.service:app_from_env --factory --workers 2

Endpoints:

* ``POST /v1/<uc>/predict``: ``{"records": [{column: value, ...}, ...]}`` (the record carries its
  features; its entity column, if present, is logged), or ``{"entity_ids": ["c1", ...]}`` when the
  spec's ``deployment.input`` is ``entity`` (features come from the online store). Answers the
  outputs per record (the batch inference table's columns and the ``model_version`` that answered),
  the model name and version, and a request id. A record that does not fit the signature: 422
  naming the field and the problem. Under a running rollout (``mlops rollout status``) each
  record's entity decides whether the champion or the candidate answers, the other one scores it
  in the shadow (not waited for), and both are logged (``mode``, ``arm``). Concurrent requests
  are scored together, one model call per batch (:mod:`pipelines.serving.micro_batching`). A model that fails or
  is over its latency budget too often is skipped for a while (circuit breaker): the previous
  champion, else the spec's ``deployment.fallback`` answer, answers instead, flagged ``fallback``.
* ``GET /healthz``: the process answers. ``GET /readyz``: 200 once every use case serves a version
  (or has no champion yet), else 503; ``GET /v1/<uc>/readyz`` for one use case.
* ``GET /metrics``: Prometheus text: requests and errors by model version and outcome, a latency
  histogram, reloads, the served version, the rollout's share, circuit breaker trips.
"""
from __future__ import annotations

import logging
import os
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request, Response  # FastAPI reads the handlers' annotations
from fastapi.responses import JSONResponse

from pipelines.core import catalog
from pipelines.core.config import settings
from pipelines.core.errors import MissingData
from pipelines.core.spec import ServingInput
from pipelines.features.online_store import lookup, store_path
from pipelines.features.point_in_time import feature_columns
from pipelines.models.rollout_state import CANDIDATE_ARM, CHAMPION_ARM, arm_of
from pipelines.serving.guard import BodyTooLarge, Guard, KeyRing, allowed_hosts, auth_enabled, key_file
from pipelines.serving.model_server import Answer, ModelServer, NotReady
from pipelines.serving.records import InvalidRecords, calm_garbage_collector, check_records, encodable
from pipelines.serving.request_log import RequestLog, log_rows, log_types

log = logging.getLogger(__name__)


@dataclass
class UseCaseEndpoint:
    """What the service keeps per use case: its spec, served model, request log and online store."""

    spec: object
    server: object       # serving.ModelServer
    request_log: object  # serving.RequestLog
    store: object        # Path of the online store
    by_entity: bool


def create_app(use_cases: str | list[str] | None = None, poll_s: float | None = None, alias: str | None = None,
               staging_log: str | None = None, own_process: bool = False):
    """The service for ``use_cases`` (default: every spec in the include folder). A *staging*
    instance (``alias``, e.g. ``candidate``, and ``staging_log``, a throwaway request-log folder)
    serves that alias alone, ignores rollouts and keeps its requests out of the online table.
    ``own_process``: the app is all its process runs (``mlops serve``), so it may tune the
    process's garbage collector (:func:`pipelines.serving.records.calm_garbage_collector`)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


    cfg = settings()
    names = [use_cases] if isinstance(use_cases, str) else list(use_cases or catalog.use_case_names())
    endpoints = {}
    for name in names:
        spec = catalog.spec(name)
        server = ModelServer(spec, poll_s=cfg.serving_poll_s if poll_s is None else poll_s, alias=alias,
                             follow_rollout=alias is None, freeze_gc=own_process)
        table = Path(staging_log) / name if staging_log else catalog.lake().online_inference(name)
        endpoints[name] = UseCaseEndpoint(spec, server, RequestLog(table, types=log_types(spec)),
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
    share = Gauge("mlops_rollout_candidate_share", "The running rollout's candidate share of traffic (0: none or "
                  "shadow)", ["use_case"], registry=registry)
    trips = Gauge("mlops_circuit_breaker_trips", "Times a model's circuit opened since it was loaded",
                  ["use_case", "model_version"], registry=registry)

    @asynccontextmanager
    async def lifespan(_app):
        for endpoint in endpoints.values():
            endpoint.server.start()
            endpoint.request_log.start()
        if own_process:
            calm_garbage_collector()
        yield
        for endpoint in endpoints.values():
            endpoint.server.stop()
            endpoint.request_log.stop()

    app = FastAPI(title="airflow-mlops scoring service", lifespan=lifespan,
                  description="Online scoring of each use case's @champion: " + ", ".join(names)
                  + ". Every endpoint but /healthz and /readyz needs `Authorization: Bearer <key>` "
                    "(the key file: `mlops api-key path`).")
    app.state.endpoints = endpoints
    app.add_exception_handler(BodyTooLarge, lambda _request, exc: JSONResponse({"detail": str(exc)}, 413))
    if len(endpoints) == 1:
        only = next(iter(endpoints.values()))
        app.state.server, app.state.request_log = only.server, only.request_log

    def endpoint_of(use_case: str) -> UseCaseEndpoint:
        if use_case not in endpoints:
            raise HTTPException(404, f"no use case {use_case!r} here; served: {sorted(endpoints)}")
        return endpoints[use_case]

    def readiness(endpoint: UseCaseEndpoint) -> dict:
        server = endpoint.server
        current, candidate, state = server.current, server.candidate, server.rollout
        found = {"ready": server.ready, "model": endpoint.spec.model.registered_name,
                 "version": current.ref.version if current else None, "error": public(server.last_error),
                 **({"model_process": "not answering; being replaced"} if server.stalled else {}),
                 "circuit_open": bool(current and current.breaker.open)}
        if state is not None:
            found["rollout"] = {"id": state.id, "strategy": state.strategy, "share": state.share,
                                "candidate": state.candidate, "candidate_loaded": candidate is not None,
                                "candidate_circuit_open": bool(candidate and candidate.breaker.open)}
        return found

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "use_cases": sorted(endpoints)}

    @app.get("/readyz", responses={503: {"description": "Not ready (see error)"}})
    def readyz(response: Response):
        states = {name: readiness(e) for name, e in endpoints.items()}
        if not all(s["ready"] for s in states.values()):
            response.status_code = 503
        if len(states) == 1:
            return next(iter(states.values()))
        return {"ready": response.status_code != 503, "use_cases": states}

    @app.get("/v1/{use_case}/readyz", responses={404: {"description": "Not a use case this service serves",
                                                        "content": _ERROR},
                                                  503: {"description": "Not ready (see error)"}})
    def use_case_readyz(use_case: str, response: Response):
        state = readiness(endpoint_of(use_case))
        if not state["ready"]:
            response.status_code = 503
        return state

    @app.get("/metrics", responses={200: {"description": "Prometheus text format",
                                          "content": {"text/plain": {"schema": {"type": "string"}}}}})
    def prometheus():
        for name, endpoint in endpoints.items():
            current = endpoint.server.current
            served_version.labels(name).set(float(current.ref.version) if current else 0)
            for outcome, count in endpoint.server.reloads.items():
                reloads.labels(name, outcome).set(count)
            state = endpoint.server.rollout
            share.labels(name).set(state.share if state else 0.0)
            for served in (current, endpoint.server.candidate):
                if served is not None:
                    trips.labels(name, served.ref.version).set(served.breaker.trips)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    for name, endpoint in endpoints.items():   # a route per use case: its OpenAPI names the record's fields
        app.add_api_route(f"/v1/{name}/predict", predict_handler(endpoint, metrics), methods=["POST"],
                          summary=f"Score records of {name}", responses=PREDICT_RESPONSES,
                          operation_id=f"predict_{name}")
    app.openapi = lambda: service_openapi(app)
    limits = [e.spec.deployment.limits for e in endpoints.values()] or [None]
    max_body = max(lim.max_body_bytes if lim else 1_000_000 for lim in limits)
    keys = KeyRing(key_file()) if auth_enabled() else None
    return Guard(app, max_body, keys, allowed_hosts())


def predict_handler(endpoint: UseCaseEndpoint, metrics: dict):
    """The predict route of one use case: the body read as JSON by hand (``Infinity``, ``NaN`` and
    ``1e999`` parse, to be refused by name in :func:`pipelines.serving.records.check_records`)."""
    import json

    async def predict(request: Request):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise HTTPException(422, [{"loc": ["body"], "msg": "the body is not JSON", "type": "json_invalid"}]) \
                from None
        if not isinstance(body, dict):
            raise HTTPException(422, [{"loc": ["body"], "msg": "the body is a JSON object", "type": "dict_type"}])
        # on the event loop: the batch is scored by the model process (the loop takes requests in
        # meanwhile); plain JSON values already, so JSONResponse skips FastAPI's encoder
        return JSONResponse(await answer(endpoint, body, metrics))
    return predict


_ERROR = {"application/json": {"schema": {"type": "object", "properties": {"detail": {}}}}}
PREDICT_RESPONSES = {
    200: {"description": "One prediction per record, in order"},
    400: {"description": "Host header not allowed", "content": _ERROR},
    401: {"description": "No or a wrong API key", "content": _ERROR},
    404: {"description": "Unknown entity ids (entity input)", "content": _ERROR},
    413: {"description": "Body over deployment.limits.max_body_bytes", "content": _ERROR},
    422: {"description": "Records that do not fit the served version's signature, or over the limits",
          "content": _ERROR},
    503: {"description": "No model can answer now (none loaded, champion lost, model process not answering); "
                         "see Retry-After", "content": _ERROR},
}


INT64 = {"type": "integer", "minimum": -2 ** 63, "maximum": 2 ** 63 - 1}
DOUBLE_MAX = 1.7976931348623157e308


def request_schema(endpoint: UseCaseEndpoint) -> dict:
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
            responses.setdefault("400", {"description": "Host header not allowed", "content": _ERROR})
            if path in ("/healthz", "/readyz") or path.endswith("/readyz"):
                continue
            operation["security"] = [{"apiKey": []}]
            responses.setdefault("401", {"description": "No or a wrong API key", "content": _ERROR})
            responses.setdefault("413", {"description": "Body too large", "content": _ERROR})
    return document


async def answer(endpoint: UseCaseEndpoint, body: dict, metrics: dict) -> dict:
    """One prediction request: records (or entity ids) in, the served versions' outputs out.

    Each record goes to the champion or, under a running rollout, to the candidate by its
    entity's bucket (:func:`pipelines.models.rollout_state.arm_of`). A model that fails (or whose circuit is
    open) is replaced by the fallback chain and the record is flagged ``fallback``. Under a
    shadowed rollout the other model scores the same records in the shadow, not waited for
    (:meth:`pipelines.serving.model_server.ModelServer.score_in_shadow`)."""

    spec, server = endpoint.spec, endpoint.server
    started = time.perf_counter()
    request_id = uuid.uuid4().hex
    champion, candidate, state = server.current, server.candidate, server.rollout
    version = champion.ref.version if champion else "none"
    count = metrics["requests"]
    limits = spec.deployment.limits
    try:
        key = "entity_ids" if endpoint.by_entity else "records"
        given = checked_list(body, key, limits)
        if champion is None:
            raise NotReady(f"{spec.name}: no model loaded yet"
                           + (f" ({server.last_error})" if server.last_error else ""))
        inputs = {**champion.inputs, **(candidate.inputs if candidate else {})}
        if endpoint.by_entity:
            try:
                records, unknown = lookup(endpoint.store, spec.entity, given, list(inputs))
            except MissingData:
                raise NotReady(f"{spec.name}: the online store is not ready (the daily DAG writes it)") from None
            if unknown:
                count.labels(spec.name, version, "unknown_entity").inc()
                raise HTTPException(404, {"unknown_entities": unknown[:50],
                                          "msg": f"no features in the online store for {len(unknown)} id(s)"})
            entities = [r.pop(spec.entity) for r in records]
        else:
            records = check_records(given, inputs, limits.max_string_length)
            entities = [r.get(spec.entity) for r in given]
            bad = [i for i, e in enumerate(entities) if not valid_id(e, limits, missing_ok=True)]
            if bad:
                raise InvalidRecords([{"loc": ["records", bad[0], spec.entity], "type": "entity_id",
                                       "msg": f"an id is text or a whole number of 1 to {limits.max_string_length} "
                                              f"characters"}])
        arms = [arm_of(e, state) for e in entities]
        picked = {arm: [i for i, a in enumerate(arms) if a == arm] for arm in (CHAMPION_ARM, CANDIDATE_ARM)}
        if len(picked[CHAMPION_ARM]) == len(records):
            parts = {CHAMPION_ARM: records, CANDIDATE_ARM: []}   # the common case: no copies
        else:
            parts = {arm: [records[i] for i in positions] for arm, positions in picked.items()}
        answers = []   # (arm, positions, answer, fallback)
        if picked[CHAMPION_ARM]:
            got = await server.answer(parts[CHAMPION_ARM])
            answers.append((CHAMPION_ARM, picked[CHAMPION_ARM], got, got.error is not None))
        if picked[CANDIDATE_ARM]:
            got = await server.score(candidate, parts[CANDIDATE_ARM], "candidate")
            if got.outputs is None:
                instead = await server.answer(parts[CANDIDATE_ARM])
                got = Answer(instead.served, instead.outputs, instead.model_ms, got.error)
                answers.append((CANDIDATE_ARM, picked[CANDIDATE_ARM], got, True))
            else:
                answers.append((CANDIDATE_ARM, picked[CANDIDATE_ARM], got, False))
    except InvalidRecords as exc:
        count.labels(spec.name, version, "invalid").inc()
        raise HTTPException(422, exc.errors) from None
    except NotReady as exc:
        count.labels(spec.name, version, "not_ready").inc()
        log.error("%s: request %s not answered: %s", spec.name, request_id, exc)
        raise HTTPException(503, public(str(exc)), headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except HTTPException:
        raise
    except Exception:
        count.labels(spec.name, version, "error").inc()
        log.exception("%s: request %s failed", spec.name, request_id)   # the details stay in the service's log
        raise HTTPException(500, f"request {request_id} failed; the service's log has the details") from None
    elapsed_ms = (time.perf_counter() - started) * 1000
    rollout_id = state.id if state else None
    rows: list[dict | None] = [None] * len(arms)
    for arm, positions, got, fallback in answers:
        answered = got.served.ref.version if got.served else "fallback"
        count.labels(spec.name, answered, "fallback" if fallback else "ok").inc()
        metrics["predictions"].labels(spec.name, answered).inc(len(positions))
        metrics["latency"].labels(spec.name, answered).observe(elapsed_ms / 1000)
        endpoint.request_log.add(log_rows(spec, server.task, got, [entities[i] for i in positions], parts[arm],
                                          request_id, elapsed_ms, "served", arm, rollout_id, fallback))
        for position, row in zip(positions, got.outputs):
            rows[position] = {**row, spec.entity: None if entities[position] is None else str(entities[position]),
                              "model_version": answered, **({"fallback": True} if fallback else {})}

    def shadow_logger(part: list[dict], ids: list, role: str):
        """What to do with a shadow answer once its batch is scored: log it."""
        return lambda extra: endpoint.request_log.add(log_rows(spec, server.task, extra, ids, part, request_id,
                                                                extra.model_ms, "shadow", role, rollout_id))

    if state is not None and state.live and state.shadowed:   # the other model of the rollout, not waited for
        for arm, positions, got, fallback in answers:
            other, role = ((candidate, CANDIDATE_ARM) if arm == CHAMPION_ARM and state.share <= 0 else
                           (champion, CHAMPION_ARM) if arm == CANDIDATE_ARM and not fallback else (None, None))
            if role is not None:
                server.score_in_shadow(other, parts[arm], role,
                                       shadow_logger(parts[arm], [entities[i] for i in positions], role))

    first = next(a for a in answers)[2]
    response = {"request_id": request_id, "model": spec.model.registered_name,
                "version": first.served.ref.version if first.served else "fallback", "predictions": rows}
    if state is not None:
        response["rollout"] = {"id": state.id, "strategy": state.strategy, "candidate": state.candidate,
                               "share": state.share}
    return response


RETRY_AFTER_S = 5
_PATH = re.compile(r"(file://)?(?<![\w.])/(?:[\w.+@-]+/)*[\w.+@-]+")


def public(message: str | None) -> str | None:
    """A message fit for any client: the server's file paths replaced by ``<path>``."""
    return None if message is None else _PATH.sub("<path>", message)


def checked_list(body: dict, key: str, limits) -> list:
    """``body[key]``: a non-empty list of at most ``limits.max_records`` items (entity ids: text or
    whole numbers of at most ``max_string_length`` characters); InvalidRecords otherwise."""

    given = body.get(key)
    what = key.replace("_", " ")
    if not isinstance(given, list) or not given:
        raise InvalidRecords([{"loc": [key], "msg": f"a non-empty list of {what} is needed", "type": "missing"}])
    if len(given) > limits.max_records:
        raise InvalidRecords([{"loc": [key], "msg": f"at most {limits.max_records} {what} per request, got "
                                                   f"{len(given)}", "type": "too_long"}])
    if key == "entity_ids":
        for i, value in enumerate(given):
            if not valid_id(value, limits):
                raise InvalidRecords([{"loc": [key, i], "type": "entity_id", "msg": f"an id is text or a whole "
                                       f"number of 1 to {limits.max_string_length} characters"}])
    return given


def valid_id(value, limits, missing_ok: bool = False) -> bool:
    """An entity id: text or a whole number, 1 to ``max_string_length`` characters of valid text."""

    if value is None:
        return missing_ok
    if isinstance(value, float) and value.is_integer():   # JSON's 7.0 is a whole number too
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return False
    if isinstance(value, int):
        return -2 ** 63 <= value < 2 ** 63
    return 0 < len(value) <= limits.max_string_length and encodable(value)


def app_from_env():
    """For ``uvicorn --factory``: the use cases in ``MLOPS_SERVE_USE_CASES`` (comma-separated;
    empty: every spec)."""
    names = [n for n in os.environ.get("MLOPS_SERVE_USE_CASES", "").split(",") if n]
    return create_app(names or None, alias=os.environ.get("MLOPS_SERVE_ALIAS") or None,
                      staging_log=os.environ.get("MLOPS_SERVE_STAGING_LOG") or None, own_process=True)


def serve(use_cases: list[str] | None = None, host: str = "127.0.0.1", port: int = 8090, workers: int = 1) -> None:
    """Run the service with uvicorn (``workers`` processes share the port, the store and the log folder)."""
    import uvicorn

    os.environ["MLOPS_SERVE_USE_CASES"] = ",".join(use_cases or [])
    os.environ.setdefault("OMP_NUM_THREADS", "1")   # request threads scoring small frames: see one_openmp_thread
    uvicorn.run("pipelines.serving.service:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="info", access_log=False)   # every request is in the request log already
