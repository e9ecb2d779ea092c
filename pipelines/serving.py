"""Online scoring of a use case's ``@champion``: the model behind the HTTP service.

:class:`ModelServer` keeps the served model version and swaps it when the registry alias moves:
a watcher thread resolves ``@champion`` every ``poll_s`` seconds, loads a new version completely
(model, signature) *beside* the one being served and then swaps one reference, so requests in
flight finish on the model they started with and the next request sees the new one. A version
that fails to load is never swapped in; the old one keeps serving and the failure is logged and
counted. Predictions are the batch scorer's (:meth:`ModelTask.outputs` on the same pipeline).

Records are checked against the served version's MLflow signature (every input column, each
of its type; missing values allowed: the pipeline imputes them), so a malformed record gets a
422 that names the field and the problem. In ``entity`` input mode a request names entities and
their features come from the online store (:mod:`pipelines.online_store`).

Every prediction is logged through :class:`RequestLog`: rows are buffered in memory and written
by a background thread as Parquet files under ``online_inference/<uc>/ds=<day>/``, never on the
request's path.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

TYPES = {"double": float, "float": float, "long": int, "integer": int, "string": str, "boolean": bool}


class InvalidRecords(ValueError):
    """Records that do not fit the model's signature; ``errors`` in FastAPI's 422 shape."""

    def __init__(self, errors: list[dict]):
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))


class UnknownEntities(LookupError):
    def __init__(self, ids: list[str]):
        self.ids = ids
        super().__init__(f"no features in the online store for {ids}")


class NotReady(RuntimeError):
    """No model version is loaded yet."""


@dataclass(frozen=True)
class ServedModel:
    ref: object                  # tracking.ModelRef
    model: object                # the fitted scikit-learn pipeline
    inputs: dict[str, str]       # signature: column -> MLflow type
    loaded_at: float


def check_records(records: list[dict], inputs: dict[str, str]) -> pd.DataFrame:
    """The records as a frame of the signature's columns; :class:`InvalidRecords` naming every
    missing column, unknown column and value of the wrong type (``None`` is a missing value)."""
    errors = []
    if not records:
        errors.append({"loc": ["records"], "msg": "at least one record is needed", "type": "too_short"})
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            errors.append({"loc": ["records", i], "msg": "a record is an object of column: value",
                           "type": "dict_type"})
            continue
        for column, kind in inputs.items():
            if column not in record:
                errors.append({"loc": ["records", i, column], "msg": f"field required ({kind})", "type": "missing"})
                continue
            value, wanted = record[column], TYPES.get(kind)
            if value is None or wanted is None:
                continue
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if wanted is float else \
                (isinstance(value, int) and not isinstance(value, bool)) if wanted is int else isinstance(value, wanted)
            if not ok:
                errors.append({"loc": ["records", i, column], "msg": f"expected {kind}, got {type(value).__name__} "
                                                                   f"{value!r}", "type": "type_error"})
    if errors:
        raise InvalidRecords(errors)
    frame = pd.DataFrame.from_records([{c: r[c] for c in inputs} for r in records], columns=list(inputs))
    for column, kind in inputs.items():
        if TYPES.get(kind) in (float, int):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        else:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


class ModelServer:
    """The served version of one use case's champion, reloaded when the alias moves."""

    def __init__(self, spec, poll_s: float = 2.0, alias: str | None = None):
        from pipelines import tracking
        from pipelines.model_tasks import ModelTask

        self.spec, self.poll_s = spec, poll_s
        self.alias = alias or tracking.CHAMPION
        self.task = ModelTask.of(spec)
        self.current: ServedModel | None = None
        self.has_champion: bool | None = None   # None: the registry was not asked yet
        self.last_error: str | None = None
        self.reloads = {"loaded": 0, "failed": 0}
        self._failed: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()   # one load at a time

    # ----------------------------------------------------------------- model lifecycle
    def refresh(self) -> bool:
        """Load the version the alias points at if it is not the one served; whether it swapped."""
        from pipelines import tracking
        from pipelines.gate import signature_inputs

        with self._lock:
            ref = tracking.resolve_alias(self.spec.model.registered_name, self.alias)
            self.has_champion = ref is not None
            if ref is None or (self.current is not None and self.current.ref.version == ref.version):
                return False
            try:
                model = tracking.load_model(ref)
                inputs = signature_inputs(ref.uri)
                if not inputs:
                    raise ValueError(f"{ref.uri} has no signature; the service cannot check records against it")
                example = pd.DataFrame([{c: (0.0 if TYPES.get(k) in (float, int) else None) for c, k in inputs.items()}])
                self.task.outputs(model, example)   # it answers before it serves
            except Exception as exc:   # noqa: BLE001 - whatever breaks the new version, the old one keeps serving
                self.reloads["failed"] += 1
                self.last_error = f"v{ref.version}: {type(exc).__name__}: {exc}"
                if ref.version not in self._failed:
                    log.error("%s: cannot serve %s (still serving %s): %s", self.spec.name, ref.uri,
                              self.current.ref.uri if self.current else "nothing", self.last_error)
                    self._failed.add(ref.version)
                return False
            previous = self.current
            self.current = ServedModel(ref, model, inputs, time.time())
            self.reloads["loaded"] += 1
            self.last_error = None
            log.info("%s: serving %s (was %s)", self.spec.name, ref.uri, previous.ref.uri if previous else "nothing")
            return True

    def start(self) -> "ModelServer":
        """Load the current version (if any) and watch the alias in a background thread."""
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

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception as exc:   # noqa: BLE001 - a registry hiccup must not end the watcher
                log.warning("%s: alias check failed: %s", self.spec.name, exc)

    # ----------------------------------------------------------------- predictions
    @property
    def ready(self) -> bool:
        """Serving a version, or sure there is none to serve yet (no champion was promoted)."""
        return self.current is not None or self.has_champion is False

    def predict(self, frame: pd.DataFrame) -> tuple[ServedModel, pd.DataFrame]:
        """The served model's outputs for a frame of its input columns (the model that answered, too)."""
        served = self.current
        if served is None:
            raise NotReady(f"{self.spec.name}: no {self.alias} version loaded yet"
                           + (f" (last error: {self.last_error})" if self.last_error else ""))
        return served, self.task.outputs(served.model, frame[list(served.inputs)])


@dataclass
class RequestLog:
    """Buffered writer of online predictions: ``add`` only appends to memory; a thread writes
    what accumulated every ``flush_s`` seconds as one Parquet file per day and flush."""

    table: object                # Path of the online inference table
    flush_s: float = 1.0
    _rows: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    written: int = 0

    def add(self, frame: pd.DataFrame) -> None:
        with self._lock:
            self._rows.append(frame)

    def start(self) -> "RequestLog":
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.flush_s + 10)
        self.flush()

    def flush(self) -> int:
        with self._lock:
            pending, self._rows = self._rows, []
        if not pending:
            return 0
        frame = pd.concat(pending, ignore_index=True)
        try:
            for day, rows in frame.groupby("ds"):
                folder = self.table / f"ds={day}"
                folder.mkdir(parents=True, exist_ok=True)
                name = f"part-{dt.datetime.now(dt.timezone.utc):%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
                staging = folder / f".{name}.tmp"
                rows.drop(columns=["ds"]).to_parquet(staging, index=False)
                staging.rename(folder / name)   # readers never see a half-written file
        except Exception:   # noqa: BLE001 - keep the rows for the next flush rather than lose them
            log.exception("request log: writing %d rows failed; retrying on the next flush", len(frame))
            with self._lock:
                self._rows.insert(0, frame)
            return 0
        self.written += len(frame)
        return len(frame)


def log_rows(spec, served: ServedModel, entities: list, outputs: pd.DataFrame, request_id: str,
             latency_ms: float, mode: str = "served", arm: str = "champion") -> pd.DataFrame:
    """The request log's rows: the batch inference table's columns plus request id, latency, mode and arm."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = pd.concat([pd.DataFrame({spec.entity: [None if e is None else str(e) for e in entities]},
                                   index=outputs.index), outputs], axis=1)
    rows["model_name"], rows["model_version"] = served.ref.name, served.ref.version
    rows["model_run_id"], rows["run_id"] = served.ref.run_id, f"online:{request_id}"
    rows["scored_at"] = pd.Timestamp(now)
    rows["request_id"], rows["latency_ms"], rows["mode"], rows["arm"] = request_id, float(latency_ms), mode, arm
    rows["ds"] = now.date().isoformat()
    return rows


def to_json_rows(outputs: pd.DataFrame) -> list[dict]:
    """Outputs as plain JSON values (numpy scalars to Python)."""
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            for row in outputs.to_dict("records")]
