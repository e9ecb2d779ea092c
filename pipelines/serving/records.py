"""Records as the scoring service takes them: checked against a model's signature, turned into a
frame, scored into JSON-ready rows. Shared by the service and its model process."""
from __future__ import annotations

import gc
import math

import numpy as np
import pandas as pd

from pipelines.models.compiled import CompiledModel

TYPES = {"double": float, "float": float, "long": int, "integer": int, "string": str, "boolean": bool}


class InvalidRecords(ValueError):
    """Records that do not fit the model's signature; ``errors`` in FastAPI's 422 shape."""

    outcome = "invalid"   # the requests metric's outcome of such a request

    def __init__(self, errors: list[dict]):
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))


MAX_ERRORS = 20   # an error body lists this many problems and counts the rest


def check_records(records: list[dict], inputs: dict[str, str], max_string_length: int = 1_000) -> list[dict]:
    """The records reduced to the signature's columns; :class:`InvalidRecords` naming the missing
    columns and the values of the wrong type, non-finite numbers (``Infinity``, ``NaN``, ``1e999``:
    a client's data, never a model fault) and text over ``max_string_length`` characters (``None``
    is a missing value). At most MAX_ERRORS problems are listed, then how many more there were."""
    errors: list[dict] = []
    more = 0

    def problem(loc: list, msg: str, kind: str) -> None:
        nonlocal more
        if len(errors) < MAX_ERRORS:
            errors.append({"loc": loc, "msg": msg, "type": kind})
        else:
            more += 1

    if not records:
        problem(["records"], "at least one record is needed", "too_short")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            problem(["records", i], "a record is an object of column: value", "dict_type")
            continue
        for column, kind in inputs.items():
            if column not in record:
                problem(["records", i, column], f"field required ({kind})", "missing")
                continue
            value, wanted = record[column], TYPES.get(kind)
            if value is None or wanted is None:
                continue
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if wanted is float else \
                (not isinstance(value, bool) and (isinstance(value, int) or isinstance(value, float)
                                                  and value.is_integer())) if wanted is int else isinstance(value, wanted)
            if not ok:
                shown = repr(value) if not isinstance(value, str) or len(value) <= 40 else repr(value[:40]) + "..."
                problem(["records", i, column], f"expected {kind}, got {type(value).__name__} {shown}", "type_error")
            elif wanted in (float, int) and not finite(value):
                shown = repr(value) if isinstance(value, float) else "a number beyond a double's range"
                problem(["records", i, column], f"expected a finite number, got {shown}", "finite_number")
            elif isinstance(value, str) and len(value) > max_string_length:
                problem(["records", i, column], f"at most {max_string_length} characters, got {len(value)}",
                        "string_too_long")
            elif isinstance(value, str) and not encodable(value):
                problem(["records", i, column], "not valid text (a lone surrogate)", "string_unicode")
    if errors:
        raise InvalidRecords(errors + ([{"loc": ["records"], "msg": f"and {more} more problem(s)",
                                         "type": "too_many_errors"}] if more else []))
    return [{column: record[column] for column in inputs} for record in records]


def finite(value) -> bool:
    """A number a model can take: finite, and within a double's range (a JSON integer may not be)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def encodable(text: str) -> bool:
    """Text that can be written back (a JSON string may hold a lone surrogate UTF-8 cannot encode)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def records_columns(records: list[dict], inputs: dict[str, str]) -> dict[str, np.ndarray]:
    """Checked records as the signature's columns, typed straight from the values (a number
    column is float64 with NaN for a missing value; text stays object with None)."""
    columns = {}
    for column, kind in inputs.items():
        values = [r[column] for r in records]
        if TYPES.get(kind) in (float, int):
            columns[column] = np.array([np.nan if v is None else v for v in values], dtype="float64")
        else:
            columns[column] = np.array(values, dtype=object)
    return columns


def records_frame(records: list[dict], inputs: dict[str, str]) -> pd.DataFrame:
    """Checked records as a frame of the signature's columns (typed as :func:`records_columns`)."""
    return pd.DataFrame(records_columns(records, inputs))


def calm_garbage_collector() -> None:
    """Keep the service's long-lived objects (models, libraries) out of garbage collections and
    collect the young generation less often. A full collection walks every object of the process;
    under load its pauses were the service's p99 (at 200 req/s: p99 280-370 ms before, 110-130 ms
    after). Called once the models are loaded; a model swapped in later is frozen too
    (``ModelServer(freeze_gc=True)``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def one_openmp_thread() -> None:
    """Limit OpenMP to one thread for the calling thread. Called from a thread other than the main
    one, HistGradientBoosting's predict on two OpenMP threads took 5.3 ms for one row; on one thread
    it took 0.5 ms. A micro-batch is small, and the service gets its parallelism from its requests
    and its workers."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="openmp")   # OpenMP's thread count is per thread: only this one


def score_records(task, model, inputs: dict[str, str], records: list[dict]) -> list[dict]:
    """A model's outputs for checked records, as JSON-ready dicts: in the service's process or
    in its model process (:mod:`pipelines.serving.model_process`). A compiled model is fed the
    records' columns (no frame made: a frame and its outputs' frame were 0.8 ms of a 1 ms call)."""
    if isinstance(model, CompiledModel):
        return json_rows(task.output_arrays(model, records_columns(records, inputs), len(records)))
    return to_json_rows(task.outputs(model, records_frame(records, inputs)))


def json_rows(columns: dict[str, np.ndarray]) -> list[dict]:
    """Output columns as rows of plain JSON values (numpy scalars to Python)."""
    names = list(columns)
    return [dict(zip(names, row)) for row in zip(*(np.asarray(values).tolist() for values in columns.values()))]


def to_json_rows(outputs: pd.DataFrame) -> list[dict]:
    """An outputs frame as rows of plain JSON values."""
    return json_rows({column: outputs[column].to_numpy() for column in outputs.columns})
