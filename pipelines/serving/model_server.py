"""Online scoring of a use case's ``@champion``: the model behind the HTTP service.

:class:`ModelServer` keeps the served model version and swaps it when the registry alias moves:
a watcher thread resolves ``@champion`` every ``poll_s`` seconds, loads a new version completely
(model, signature) *beside* the one being served and then swaps one reference, so requests in
flight finish on the model they started with and the next request sees the new one. A version
that fails to load is never swapped in; the old one keeps serving and the failure is logged and
counted. Predictions are the batch scorer's (:meth:`ModelTask.outputs` on the same pipeline);
concurrent requests' records are scored together by one call per model
(:mod:`pipelines.serving.micro_batching`, ``deployment.batching``).

Models score in a process of their own beside the HTTP server (:mod:`pipelines.serving.model_process`,
``deployment.model_process``), so scoring and serving do not share one interpreter lock; the
request path is asynchronous (:meth:`ModelServer.answer` awaits its batch), so the server's
event loop keeps taking requests in while a batch is scored.

Records are checked against the served version's MLflow signature (every input column, each
of its type; missing values allowed: the pipeline imputes them), so a malformed record gets a
422 that names the field and the problem. In ``entity`` input mode a request names entities and
their features come from the online store (:mod:`pipelines.features.online_store`).

Every prediction is logged through :class:`pipelines.serving.request_log.RequestLog`: rows are buffered in memory and written
by a background thread as Parquet files under ``online_inference/<uc>/ds=<day>/``, never on the
request's path.
"""
from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from pipelines.core.spec import Strategy
from pipelines.models import compiled, tracking
from pipelines.models.rollout_state import STATE_TAG, RolloutState
from pipelines.models.signature import signature_inputs
from pipelines.models.tasks import ModelTask
from pipelines.serving.micro_batching import MicroBatcher
from pipelines.serving.model_process import ModelProcess
from pipelines.serving.records import TYPES, one_openmp_thread, score_records

log = logging.getLogger(__name__)


class UnknownEntities(LookupError):
    def __init__(self, ids: list[str]):
        self.ids = ids
        super().__init__(f"no features in the online store for {ids}")


class NotReady(RuntimeError):
    """No model version is loaded yet."""

    outcome = "not_ready"   # the requests metric's outcome of such a request


class CircuitBreaker:
    """Counts a model's failed or slow answers in a row; after ``max_failures`` it opens for
    ``cooldown_s`` (the model is not asked; its requests go to the fallback), then lets requests
    through again (half-open): an answer in budget closes it, a failure opens it again."""

    def __init__(self, max_failures: int = 5, latency_budget_ms: float = 500.0, cooldown_s: float = 30.0,
                 clock=time.monotonic):
        self.max_failures, self.latency_budget_ms, self.cooldown_s = max_failures, latency_budget_ms, cooldown_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trips = 0
        self._lock = threading.Lock()

    @classmethod
    def of(cls, spec) -> "CircuitBreaker":
        b = spec.deployment.circuit_breaker
        return cls(b.max_failures, b.latency_budget_ms, b.cooldown_s)

    @property
    def open(self) -> bool:
        return self.opened_at is not None and self.clock() - self.opened_at < self.cooldown_s

    def allow(self) -> bool:
        return not self.open

    def record(self, ok: bool, ms: float | None = None) -> None:
        with self._lock:
            if ok and (ms is None or ms <= self.latency_budget_ms):
                self.failures, self.opened_at = 0, None
                return
            self.failures += 1
            if self.failures >= self.max_failures and not self.open:
                self.opened_at = self.clock()
                self.trips += 1


@dataclass(frozen=True)
class ServedModel:
    ref: object                  # tracking.ModelRef
    model: object                # the fitted scikit-learn pipeline
    inputs: dict[str, str]       # signature: column -> MLflow type
    loaded_at: float
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    batcher: object = None       # micro_batching.MicroBatcher of its outputs (None: score on a worker thread)
    shadow_batcher: object = None   # the same for shadow scoring, with a longer wait
    key: str | None = None       # its name in the model process (None: it scores in this process)

    def close(self) -> None:
        """Stop its batchers' threads (a late request scores inline)."""
        for batcher in (self.batcher, self.shadow_batcher):
            if batcher is not None:
                batcher.close()


@dataclass(frozen=True)
class Answer:
    """One model's outputs for some records, one dict per record (None when it could not
    answer, with the reason)."""

    served: ServedModel | None
    outputs: list[dict] | None
    model_ms: float
    error: str | None = None


class ModelServer:
    """The versions one use case serves: ``@champion``, the champion before it (the fallback), and
    the candidate of a running rollout (:mod:`pipelines.release.rollout`), reloaded when the registry's
    alias or rollout state changes. ``follow_rollout=False`` serves the alias alone (the staging
    instance of a load test)."""

    def __init__(self, spec, poll_s: float = 2.0, alias: str | None = None, follow_rollout: bool = True,
                 freeze_gc: bool = False):
        self.spec, self.poll_s = spec, poll_s
        self.alias = alias or tracking.CHAMPION
        self.follow_rollout = follow_rollout
        self.freeze_gc = freeze_gc   # the process is the service's own: see calm_garbage_collector
        self.task = ModelTask.of(spec)
        self.current: ServedModel | None = None
        self.previous: ServedModel | None = None
        self.candidate: ServedModel | None = None
        self.rollout = None                     # rollout.RolloutState of a running rollout
        self.has_champion: bool | None = None   # None: the registry was not asked yet
        self.last_error: str | None = None
        self.reloads = {"loaded": 0, "failed": 0}
        self._failed: set[str] = set()
        self.model_process = None    # model_process.ModelProcess, started with the first version loaded
        self.shadow_process = None   # the same for shadow scoring, started with the first shadow batch
        self._keys = itertools.count(1)
        self._lock_shadow = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()   # one load at a time

    # ----------------------------------------------------------------- model lifecycle
    def refresh(self) -> bool:
        """Load what the registry says to serve (the alias, and a running rollout's candidate)
        where it is not loaded yet; whether anything was swapped in."""
        from mlflow.exceptions import MlflowException

        with self._lock:
            held = [self.current, self.previous, self.candidate]
            try:
                registered = tracking.client().get_registered_model(self.spec.model.registered_name)
                aliases, tags = dict(registered.aliases or {}), dict(registered.tags or {})
            except MlflowException as exc:
                if getattr(exc, "error_code", "") not in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}:
                    raise
                aliases, tags = {}, {}
            wanted = aliases.get(self.alias)
            recorded = tags.get(tracking.CHAMPION_RECORD_TAG) if self.alias == tracking.CHAMPION else None
            self.has_champion = wanted is not None or recorded is not None
            if wanted is None and recorded is not None:   # promoted once, now pointing nowhere: not ready
                self.last_error = (f"{self.spec.model.registered_name}@{self.alias} is lost: it was v{recorded}, "
                                   f"which the registry no longer resolves; restore it with `mlops rollback "
                                   f"{self.spec.name} --to VERSION --reason TEXT`")
            swapped = False
            if wanted is not None and (self.current is None or self.current.ref.version != str(wanted)):
                ready = self.candidate if self.candidate and self.candidate.ref.version == str(wanted) else None
                loaded = ready or self._load(str(wanted))   # a rollout that completed: its candidate, as loaded
                if loaded is not None:
                    self.previous, self.current, swapped = self.current, loaded, True
                    log.info("%s: serving %s (was %s)", self.spec.name, loaded.ref.uri,
                             self.previous.ref.uri if self.previous else "nothing")
            state = RolloutState.from_json(tags.get(STATE_TAG)) if self.follow_rollout else None
            state = state if state is not None and state.running else None
            if state is None:
                self.candidate = None
            elif self.candidate is None or self.candidate.ref.version != state.candidate:
                self.candidate = self._load(state.candidate)   # None if it fails: its requests go to the champion
                swapped = swapped or self.candidate is not None
                if self.candidate is not None:
                    log.info("%s: rollout %s: candidate %s loaded (%s, share %.0f%%)", self.spec.name, state.id,
                             self.candidate.ref.uri, state.strategy, state.share * 100)
            self.rollout = state
            self._retire(held)
            if swapped and self.freeze_gc:
                gc.freeze()   # the new model's objects are long-lived too (see calm_garbage_collector)
            return swapped

    def _load(self, version: str) -> ServedModel | None:
        """A version loaded and test-scored, or None (logged once per version, and counted)."""

        try:
            ref = tracking.model_version(self.spec.model.registered_name, version)
            model = compiled.load_for_inference(ref)
            inputs = signature_inputs(ref.uri)
            if not inputs:
                raise ValueError(f"{ref.uri} has no signature; the service cannot check records against it")
            example = [{c: (0.0 if TYPES.get(k) in (float, int) else None) for c, k in inputs.items()}]
            key = self._to_model_process(version, model, inputs, example)   # tested there: it answers before it serves
            if key is None:
                self.outputs(model, inputs, example)   # tested here
        except Exception as exc:   # noqa: BLE001 - whatever breaks the new version, the old one keeps serving
            self.reloads["failed"] += 1
            self.last_error = f"v{version}: {type(exc).__name__}: {exc}"
            if version not in self._failed:
                log.error("%s: cannot serve v%s (still serving %s): %s", self.spec.name, version,
                          self.current.ref.uri if self.current else "nothing", self.last_error)
                self._failed.add(version)
            return None
        self.reloads["loaded"] += 1
        self.last_error = None
        batching = self.spec.deployment.batching
        here = functools.partial(self.outputs, model, inputs)
        score = functools.partial(self.model_process.score, key) if key else here
        in_shadow = functools.partial(self._score_in_shadow_process, key, model, inputs) if key else here
        name = f"{self.spec.name}-v{version}"
        return ServedModel(ref, model, inputs, time.time(), CircuitBreaker.of(self.spec),
                           MicroBatcher(score, batching.max_rows, batching.max_wait_ms, name, one_openmp_thread),
                           MicroBatcher(in_shadow, max(batching.max_rows, 1024), batching.shadow_wait_ms,
                                        f"{name}-shadow", one_openmp_thread), key)

    def _to_model_process(self, version: str, model, inputs: dict[str, str], example: list[dict]) -> str | None:
        """Hand a loaded version to the model process (started on first use); its key there, or
        None when the spec scores in this process (``deployment.model_process: false``)."""

        if not self.spec.deployment.model_process:
            return None
        if self.model_process is None:
            self.model_process = ModelProcess(self.spec.name, self.spec.deployment.limits.model_timeout_s)
        key = f"v{version}-{next(self._keys)}"
        self.model_process.load(key, model, inputs, self.task, example)   # raises what scoring there raises
        if self.follow_rollout and self.spec.deployment.strategy is not Strategy.DIRECT:
            self._shadow_process().load(key, model, inputs, self.task, None)   # ready before a shadow needs it
        return key

    def _shadow_process(self):
        with self._lock_shadow:
            if self.shadow_process is None:
                self.shadow_process = ModelProcess(f"{self.spec.name}-shadow", niceness=10)   # nobody waits
            return self.shadow_process

    def _score_in_shadow_process(self, key: str, model, inputs: dict[str, str], records: list[dict]) -> list[dict]:
        """Shadow batches score in a second model process: a shadow batch (hundreds of records,
        gathered for ``shadow_wait_ms``) never holds up the answers requests wait for. Under a
        rollout strategy every version is sent there when it loads: starting the process and
        loading it on the first shadow batch took seconds, counted as that batch's scoring time."""
        process = self._shadow_process()
        if not process.holds(key):
            process.load(key, model, inputs, self.task, None)
        return process.score(key, records)

    def drain_shadows(self, timeout: float = 60.0) -> None:
        """Wait until every shadow request submitted so far is scored and logged."""
        for served in (self.current, self.previous, self.candidate):
            if served is not None and served.shadow_batcher is not None:
                served.shadow_batcher.drain(timeout)

    def _retire(self, held: list[ServedModel | None]) -> None:
        """Stop the batchers of the models in ``held`` that are no longer served."""
        kept = {id(m) for m in (self.current, self.previous, self.candidate) if m is not None}
        for served in held:
            if served is not None and id(served) not in kept:
                served.close()
                for process in (self.model_process, self.shadow_process):
                    if served.key and process is not None:
                        process.unload(served.key)

    def start(self) -> "ModelServer":
        """Load the current version (if any) and watch the registry in a background thread."""
        try:
            self.refresh()
        except Exception as exc:   # noqa: BLE001 - the registry may be away at start; the watcher retries
            log.error("%s: registry not reachable at start: %s", self.spec.name, exc)
        self._thread = threading.Thread(target=self._watch, name=f"{self.spec.name}-model-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.poll_s + 5)
        for served in (self.current, self.previous, self.candidate):
            if served is not None:
                served.close()
        for process in (self.model_process, self.shadow_process):
            if process is not None:
                process.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception as exc:   # noqa: BLE001 - a registry hiccup must not end the watcher
                log.warning("%s: registry check failed: %s", self.spec.name, exc)

    # ----------------------------------------------------------------- predictions
    @property
    def stalled(self) -> bool:
        """The model process does not answer (hung, or being replaced)."""
        return self.model_process is not None and self.model_process.stalled

    @property
    def ready(self) -> bool:
        """Serving a version whose model process answers, or sure there is none to serve yet (no
        champion was promoted)."""
        return (self.current is not None and not self.stalled) or self.has_champion is False

    def outputs(self, model, inputs: dict[str, str], records: list[dict]) -> list[dict]:
        """A model's outputs for checked records, as JSON-ready dicts (one frame for them all)."""
        return score_records(self.task, model, inputs, records)

    async def score(self, served: ServedModel | None, records: list[dict], role: str = "model",
                    last_resort: bool = False) -> Answer:
        """One model's answer for ``records`` (through its micro-batcher and its circuit breaker,
        unless it is the ``last_resort``: a slow answer beats none); never raises. The caller's
        event loop is free while the batch is scored."""
        if served is None:
            return Answer(None, None, 0.0, f"no {role} loaded" + (f" ({self.last_error})" if self.last_error else ""))
        if not served.breaker.allow() and not last_resort:
            return Answer(served, None, 0.0, f"v{served.ref.version} circuit open after {served.breaker.failures} "
                                              f"failed or slow answers in a row")
        if served.key is not None and self.stalled:   # fail fast: queueing behind a hung process helps nobody
            return Answer(served, None, 0.0, "the model process does not answer; it is being replaced")
        started = time.perf_counter()
        try:
            outputs = await (asyncio.wrap_future(served.batcher.submit(records)) if served.batcher is not None else
                             asyncio.to_thread(self.outputs, served.model, served.inputs, records))
        except Exception as exc:   # noqa: BLE001 - the caller falls back and logs why
            served.breaker.record(False)
            log.warning("%s: v%s failed to score %d record(s): %s: %s", self.spec.name, served.ref.version,
                        len(records), type(exc).__name__, exc)
            return Answer(served, None, (time.perf_counter() - started) * 1000,
                          f"v{served.ref.version} failed: {type(exc).__name__}: {exc}")
        ms = (time.perf_counter() - started) * 1000
        served.breaker.record(True, ms)
        return Answer(served, outputs, ms)

    def score_in_shadow(self, served: ServedModel | None, records: list[dict], role: str,
                        then: Callable[[Answer], None]) -> None:
        """Score ``records`` for the shadow log without waiting: ``then(answer)`` runs once its
        batch is scored (on the batcher's thread). The answer's ``model_ms`` is its batch's scoring
        time, without the wait. Shadow answers leave the circuit breaker alone: nobody waits for them."""
        if served is None:
            then(Answer(None, None, 0.0, f"no {role} loaded"))
            return
        batcher = served.shadow_batcher or MicroBatcher.inline(functools.partial(self.outputs, served.model,
                                                                                 served.inputs))

        def scored(future) -> None:
            try:
                error = future.exception()
                answer = (Answer(served, future.result(), future.model_ms) if error is None else
                          Answer(served, None, future.model_ms,
                                 f"v{served.ref.version} failed: {type(error).__name__}: {error}"))
                then(answer)
            except Exception:   # noqa: BLE001 - a shadow's bookkeeping must not end the batcher's thread
                log.exception("%s: logging a shadow answer of v%s failed", self.spec.name, served.ref.version)

        batcher.submit(records).add_done_callback(scored)

    async def answer(self, records: list[dict]) -> Answer:
        """The champion's answer, else the previous champion's, else the spec's fallback answer
        (:class:`NotReady` when there is none of those). With nothing to fall back on, the
        champion answers even with its circuit open: overload makes it slow, not absent."""
        alone = self.previous is None and not self.spec.deployment.fallback   # nothing to fall back on
        first = await self.score(self.current, records, "champion", last_resort=alone)
        if first.outputs is not None:
            return first
        if self.previous is not None:
            second = await self.score(self.previous, records, "previous champion")
            if second.outputs is not None:
                return Answer(second.served, second.outputs, second.model_ms, first.error)
        default = self.spec.deployment.fallback
        if default:
            row = {c: default.get(c) for c in self.task.output_columns}
            return Answer(None, [dict(row) for _ in records], 0.0, first.error)
        raise NotReady(f"{self.spec.name}: no model can answer: {first.error}")


