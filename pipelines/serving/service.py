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

import json
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
from pipelines.models import compiled
from pipelines.models.rollout_state import CANDIDATE_ARM, CHAMPION_ARM, arm_of
from pipelines.serving.guard import BodyTooLarge, Guard, KeyRing, allowed_hosts, auth_enabled, key_file
from pipelines.serving.model_server import Answer, ModelServer, NotReady
from pipelines.serving.openapi import ERROR_CONTENT, PREDICT_RESPONSES, service_openapi
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
    names = [use_cases] if isinstance(use_cases, str) else list(use_cases or catalog.use_case_names())
    endpoints = {name: use_case_endpoint(name, poll_s, alias, staging_log, own_process) for name in names}
    metrics = ServiceMetrics()

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
    add_health_routes(app, endpoints)

    @app.get("/metrics", responses={200: {"description": "Prometheus text format",
                                          "content": {"text/plain": {"schema": {"type": "string"}}}}})
    def prometheus():
        return Response(metrics.exposition(endpoints), media_type=metrics.content_type)

    for name, endpoint in endpoints.items():   # a route per use case: its OpenAPI names the record's fields
        app.add_api_route(f"/v1/{name}/predict", predict_handler(endpoint, metrics.per_request), methods=["POST"],
                          summary=f"Score records of {name}", responses=PREDICT_RESPONSES,
                          operation_id=f"predict_{name}")
    app.openapi = lambda: service_openapi(app)
    limits = [e.spec.deployment.limits for e in endpoints.values()] or [None]
    max_body = max(lim.max_body_bytes if lim else 1_000_000 for lim in limits)
    keys = KeyRing(key_file()) if auth_enabled() else None
    return Guard(app, max_body, keys, allowed_hosts())


def use_case_endpoint(name: str, poll_s: float | None, alias: str | None, staging_log: str | None,
                      own_process: bool) -> UseCaseEndpoint:
    """One use case's model server, request log (the staging folder's, for a staging instance) and
    online store."""
    cfg, spec = settings(), catalog.spec(name)
    server = ModelServer(spec, poll_s=cfg.serving_poll_s if poll_s is None else poll_s, alias=alias,
                         follow_rollout=alias is None, freeze_gc=own_process)
    table = Path(staging_log) / name if staging_log else catalog.lake().online_inference(name)
    return UseCaseEndpoint(spec, server, RequestLog(table, types=log_types(spec)), store_path(cfg.online_store, name),
                           spec.deployment.input is ServingInput.ENTITY)


class ServiceMetrics:
    """The service's Prometheus metrics: counted by the requests (``per_request``: requests by
    model version and outcome, records scored, latency) and read from the servers when scraped
    (served version, reloads, the rollout's share, circuit breaker trips)."""

    def __init__(self):
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram

        self.registry, self.content_type = CollectorRegistry(), CONTENT_TYPE_LATEST
        registry = self.registry
        self.per_request = {
            "requests": Counter("mlops_requests", "Prediction requests by model version and outcome",
                                ["use_case", "model_version", "outcome"], registry=registry),
            "predictions": Counter("mlops_predictions", "Records scored", ["use_case", "model_version"],
                                   registry=registry),
            "latency": Histogram("mlops_request_seconds", "Prediction request latency", ["use_case", "model_version"],
                                 buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=registry),
        }
        self.served_version = Gauge("mlops_served_model_version", "The model version served", ["use_case"],
                                    registry=registry)
        self.reloads = Gauge("mlops_model_reloads", "Model loads by outcome since start", ["use_case", "outcome"],
                             registry=registry)
        self.share = Gauge("mlops_rollout_candidate_share", "The running rollout's candidate share of traffic (0: "
                           "none or shadow)", ["use_case"], registry=registry)
        self.trips = Gauge("mlops_circuit_breaker_trips", "Times a model's circuit opened since it was loaded",
                           ["use_case", "model_version"], registry=registry)

    def exposition(self, endpoints: dict[str, UseCaseEndpoint]) -> bytes:
        """Every metric in Prometheus's text format, the servers' state read now."""
        from prometheus_client import generate_latest

        for name, endpoint in endpoints.items():
            current = endpoint.server.current
            self.served_version.labels(name).set(float(current.ref.version) if current else 0)
            for outcome, count in endpoint.server.reloads.items():
                self.reloads.labels(name, outcome).set(count)
            state = endpoint.server.rollout
            self.share.labels(name).set(state.share if state else 0.0)
            for served in (current, endpoint.server.candidate):
                if served is not None:
                    self.trips.labels(name, served.ref.version).set(served.breaker.trips)
        return generate_latest(self.registry)


def readiness(endpoint: UseCaseEndpoint) -> dict:
    """Whether a use case serves a version (or has no champion yet), and what it serves."""
    server = endpoint.server
    current, candidate, state = server.current, server.candidate, server.rollout
    found = {"ready": server.ready, "model": endpoint.spec.model.registered_name,
             "version": current.ref.version if current else None,
             "runtime": compiled.runtime_of(current.model) if current else None, "error": public(server.last_error),
             **({"model_process": "not answering; being replaced"} if server.stalled else {}),
             "circuit_open": bool(current and current.breaker.open)}
    if state is not None:
        found["rollout"] = {"id": state.id, "strategy": state.strategy, "share": state.share,
                            "candidate": state.candidate, "candidate_loaded": candidate is not None,
                            "candidate_circuit_open": bool(candidate and candidate.breaker.open)}
    return found


def add_health_routes(app, endpoints: dict[str, UseCaseEndpoint]) -> None:
    """``/healthz`` (the process answers), ``/readyz`` (every use case) and ``/v1/<uc>/readyz``."""

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
                                                        "content": ERROR_CONTENT},
                                                  503: {"description": "Not ready (see error)"}})
    def use_case_readyz(use_case: str, response: Response):
        if use_case not in endpoints:
            raise HTTPException(404, f"no use case {use_case!r} here; served: {sorted(endpoints)}")
        state = readiness(endpoints[use_case])
        if not state["ready"]:
            response.status_code = 503
        return state


def predict_handler(endpoint: UseCaseEndpoint, metrics: dict):
    """The predict route of one use case: the body read as JSON by hand (``Infinity``, ``NaN`` and
    ``1e999`` parse, to be refused by name in :func:`pipelines.serving.records.check_records`)."""

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


@dataclass(frozen=True)
class Served:
    """The models and rollout one request sees from start to end (a swap meanwhile is for the next)."""

    champion: object    # model_server.ServedModel or None
    candidate: object   # model_server.ServedModel or None
    rollout: object     # rollout_state.RolloutState or None


@dataclass(frozen=True)
class ArmAnswer:
    """What one arm of a request answered: for the records at ``positions``, by ``answer``
    (``fallback``: another model answered for the arm's own)."""

    arm: str
    positions: list[int]
    answer: Answer
    fallback: bool


async def answer(endpoint: UseCaseEndpoint, body: dict, metrics: dict) -> dict:
    """One prediction request: records (or entity ids) in, the served versions' outputs out.

    Each record goes to the champion or, under a running rollout, to the candidate by its
    entity's bucket (:func:`pipelines.models.rollout_state.arm_of`). A model that fails (or whose circuit is
    open) is replaced by the fallback chain and the record is flagged ``fallback``. Under a
    shadowed rollout the other model scores the same records in the shadow, not waited for
    (:meth:`pipelines.serving.model_server.ModelServer.score_in_shadow`). Expected refusals
    map to HTTP errors (:func:`http_error`); anything else is a 500 whose details stay in the log."""
    spec, server = endpoint.spec, endpoint.server
    started = time.perf_counter()
    request_id = uuid.uuid4().hex
    served = Served(server.current, server.candidate, server.rollout)   # as they are now, for the whole request
    state = served.rollout
    version = served.champion.ref.version if served.champion else "none"
    try:
        records, entities = request_records(endpoint, served, body, metrics, version)
        parts, picked = split_by_arm(records, [arm_of(e, state) for e in entities])
        answers = await answer_by_arm(server, served, parts, picked)
    except (InvalidRecords, NotReady) as exc:
        raise http_error(spec.name, request_id, exc, metrics["requests"].labels(spec.name, version, exc.outcome)) \
            from None
    except HTTPException:
        raise
    except Exception:
        metrics["requests"].labels(spec.name, version, "error").inc()
        log.exception("%s: request %s failed", spec.name, request_id)   # the details stay in the service's log
        raise HTTPException(500, f"request {request_id} failed; the service's log has the details") from None
    elapsed_ms = (time.perf_counter() - started) * 1000
    rows = record_answers(endpoint, served, metrics, answers, parts, entities, request_id, elapsed_ms)
    if state is not None and state.live and state.shadowed:
        score_in_shadow(endpoint, served, answers, parts, entities, request_id)
    first = answers[0].answer
    response = {"request_id": request_id, "model": spec.model.registered_name,
                "version": first.served.ref.version if first.served else "fallback", "predictions": rows}
    if state is not None:
        response["rollout"] = {"id": state.id, "strategy": state.strategy, "candidate": state.candidate,
                               "share": state.share}
    return response


def http_error(use_case: str, request_id: str, exc: InvalidRecords | NotReady, counter) -> HTTPException:
    """The answer to an expected refusal: 422 naming the records' problems, or 503 with Retry-After
    (the reason logged, the server's paths kept out of the client's message); counted."""
    counter.inc()
    if isinstance(exc, InvalidRecords):
        return HTTPException(422, exc.errors)
    log.error("%s: request %s not answered: %s", use_case, request_id, exc)
    return HTTPException(503, public(str(exc)), headers={"Retry-After": str(RETRY_AFTER_S)})


def request_records(endpoint: UseCaseEndpoint, served: Served, body: dict, metrics: dict,
                    version: str) -> tuple[list[dict], list]:
    """The request's checked records and the entity id of each: the records given, checked against
    the served versions' signatures, or (entity input) the online store's features of the ids."""
    spec, server, limits = endpoint.spec, endpoint.server, endpoint.spec.deployment.limits
    given = checked_list(body, "entity_ids" if endpoint.by_entity else "records", limits)
    champion, candidate = served.champion, served.candidate
    if champion is None:
        raise NotReady(f"{spec.name}: no model loaded yet" + (f" ({server.last_error})" if server.last_error else ""))
    inputs = {**champion.inputs, **(candidate.inputs if candidate else {})}
    if endpoint.by_entity:
        return looked_up(endpoint, given, inputs, metrics, version)
    records = check_records(given, inputs, limits.max_string_length)
    entities = [r.get(spec.entity) for r in given]
    bad = [i for i, e in enumerate(entities) if not valid_id(e, limits, missing_ok=True)]
    if bad:
        raise InvalidRecords([{"loc": ["records", bad[0], spec.entity], "type": "entity_id",
                               "msg": f"an id is text or a whole number of 1 to {limits.max_string_length} "
                                      f"characters"}])
    return records, entities


def looked_up(endpoint: UseCaseEndpoint, ids: list, inputs: dict, metrics: dict, version: str) -> tuple[list, list]:
    """The online store's feature records of ``ids`` (404 naming the unknown ones)."""
    spec = endpoint.spec
    try:
        records, unknown = lookup(endpoint.store, spec.entity, ids, list(inputs))
    except MissingData:
        raise NotReady(f"{spec.name}: the online store is not ready (the daily DAG writes it)") from None
    if unknown:
        metrics["requests"].labels(spec.name, version, "unknown_entity").inc()
        raise HTTPException(404, {"unknown_entities": unknown[:50],
                                  "msg": f"no features in the online store for {len(unknown)} id(s)"})
    return records, [r.pop(spec.entity) for r in records]


def split_by_arm(records: list[dict], arms: list[str]) -> tuple[dict[str, list[dict]], dict[str, list[int]]]:
    """The records of each arm, and their positions in the request (no copies when the champion
    takes them all, the common case)."""
    picked = {arm: [i for i, a in enumerate(arms) if a == arm] for arm in (CHAMPION_ARM, CANDIDATE_ARM)}
    if len(picked[CHAMPION_ARM]) == len(records):
        return {CHAMPION_ARM: records, CANDIDATE_ARM: []}, picked
    return {arm: [records[i] for i in positions] for arm, positions in picked.items()}, picked


async def answer_by_arm(server: ModelServer, served: Served, parts: dict[str, list[dict]],
                        picked: dict[str, list[int]]) -> list[ArmAnswer]:
    """Each arm's answer: the champion's through its fallback chain; the candidate's, or (when it
    fails) the champion chain's, flagged as a fallback."""
    answers = []
    if picked[CHAMPION_ARM]:
        got = await server.answer(parts[CHAMPION_ARM])
        answers.append(ArmAnswer(CHAMPION_ARM, picked[CHAMPION_ARM], got, got.error is not None))
    if picked[CANDIDATE_ARM]:
        got = await server.score(served.candidate, parts[CANDIDATE_ARM], "candidate")
        failed = got.outputs is None
        if failed:
            instead = await server.answer(parts[CANDIDATE_ARM])
            got = Answer(instead.served, instead.outputs, instead.model_ms, got.error)
        answers.append(ArmAnswer(CANDIDATE_ARM, picked[CANDIDATE_ARM], got, failed))
    return answers


def record_answers(endpoint: UseCaseEndpoint, served: Served, metrics: dict, answers: list[ArmAnswer], parts: dict,
                   entities: list, request_id: str, elapsed_ms: float) -> list[dict]:
    """The response's rows, in the request's order; each arm's answer counted, timed and logged."""
    spec, server, state = endpoint.spec, endpoint.server, served.rollout
    rows: list[dict | None] = [None] * len(entities)
    for part in answers:
        answered = part.answer.served.ref.version if part.answer.served else "fallback"
        metrics["requests"].labels(spec.name, answered, "fallback" if part.fallback else "ok").inc()
        metrics["predictions"].labels(spec.name, answered).inc(len(part.positions))
        metrics["latency"].labels(spec.name, answered).observe(elapsed_ms / 1000)
        endpoint.request_log.add(log_rows(spec, server.task, part.answer, [entities[i] for i in part.positions],
                                          parts[part.arm], request_id, elapsed_ms, "served", part.arm,
                                          state.id if state else None, part.fallback))
        for position, row in zip(part.positions, part.answer.outputs):
            entity = entities[position]
            rows[position] = {**row, spec.entity: None if entity is None else str(entity),
                              "model_version": answered, **({"fallback": True} if part.fallback else {})}
    return rows


def score_in_shadow(endpoint: UseCaseEndpoint, served: Served, answers: list[ArmAnswer], parts: dict,
                    entities: list, request_id: str) -> None:
    """Under a shadowed rollout, the other model scores each arm's records, not waited for; its
    answer is logged as ``shadow`` once its batch is scored."""
    spec, server, state = endpoint.spec, endpoint.server, served.rollout

    def logger(part: list[dict], ids: list, role: str):
        return lambda extra: endpoint.request_log.add(log_rows(spec, server.task, extra, ids, part, request_id,
                                                                extra.model_ms, "shadow", role, state.id))

    for part in answers:
        other, role = ((served.candidate, CANDIDATE_ARM) if part.arm == CHAMPION_ARM and state.share <= 0 else
                       (served.champion, CHAMPION_ARM) if part.arm == CANDIDATE_ARM and not part.fallback else
                       (None, None))
        if role is not None:
            server.score_in_shadow(other, parts[part.arm], role,
                                   logger(parts[part.arm], [entities[i] for i in part.positions], role))


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
