"""The scoring service against careless clients and attackers (threat model: docs/security.md),
on the lifecycle's champion, each case through a real HTTP server or Starlette's client: keys,
hosts, sizes, non-finite numbers, a hung model process, a lost champion, and a bounded fuzz from
the service's own OpenAPI document (schemathesis)."""
from __future__ import annotations

import json
import os
import signal
import time

import httpx
import numpy as np
import pytest

from pipelines import runtime
from pipelines.core import catalog
from pipelines.core.lake import read_partition
from tests.conftest import serve_in_thread, serving_headers

pytestmark = [pytest.mark.e2e, pytest.mark.spark]
UC = "churn_small"


def _records(small_spec, day, n=5) -> list[dict]:
    from pipelines.features.point_in_time import feature_columns

    cols = feature_columns(small_spec).all
    frame = read_partition(runtime.lake().features(UC), day, [small_spec.entity, *cols]).head(n)
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict("records")]


@pytest.fixture(scope="module")
def live(lifecycle, small_spec, mlflow_server):
    """The service on a free port, with a short model timeout (a hung process is found in 1 s)."""
    from pipelines.serving.service import create_app

    variant = small_spec.model_copy(update={"deployment": small_spec.deployment.model_copy(update={
        "limits": small_spec.deployment.limits.model_copy(update={"model_timeout_s": 2.0})})})
    real = catalog.spec   # where the service reads specs
    catalog.spec = lambda uc: variant if uc == UC else real(uc)
    try:
        app = create_app(UC, poll_s=60)
    finally:
        catalog.spec = real
    server, thread, url = serve_in_thread(app)
    day = max(lifecycle["scored"])
    yield {"url": url, "app": app, "records": _records(small_spec, day), "day": day}
    server.should_exit = True
    thread.join(15)


def _post(live, body, headers=None, **kwargs):
    return httpx.post(f"{live['url']}/v1/{UC}/predict", json=body, headers=serving_headers() if headers is None
                      else headers, timeout=30, **kwargs)


# ----------------------------------------------------------------- who may ask
def test_every_endpoint_but_the_probes_needs_a_key(live):
    for path in ("/metrics", "/docs", "/openapi.json"):
        assert httpx.get(f"{live['url']}{path}", timeout=10).status_code == 401, path
        assert httpx.get(f"{live['url']}{path}", headers=serving_headers(), timeout=10).status_code == 200, path
    assert _post(live, {"records": live["records"]}, headers={}).status_code == 401
    assert _post(live, {"records": live["records"]}, headers={"Authorization": "Bearer guess"}).status_code == 401
    assert _post(live, {"records": live["records"]}).status_code == 200
    for path in ("/healthz", "/readyz", f"/v1/{UC}/readyz"):
        assert httpx.get(f"{live['url']}{path}", timeout=10).status_code == 200, path


def test_the_key_file_is_private_and_rotation_takes_effect(live):
    import stat

    from pipelines.serving.guard import key_file, rotate_keys

    assert stat.S_IMODE(key_file().stat().st_mode) & 0o077 == 0
    old = serving_headers()
    rotate_keys()
    time.sleep(1.2)   # the service looks at the file at most once a second
    assert _post(live, {"records": live["records"]}, headers=old).status_code == 401
    assert _post(live, {"records": live["records"]}).status_code == 200


def test_an_unknown_host_is_refused(live):
    answer = _post(live, {"records": live["records"]}, headers={**serving_headers(), "Host": "evil.example"})
    assert answer.status_code == 400


# ----------------------------------------------------------------- how much
def test_a_large_body_is_refused_before_it_is_parsed(live):
    big = b'{"records": [' + b" " * 2_000_000 + b"]}"
    answer = httpx.post(f"{live['url']}/v1/{UC}/predict", content=big, timeout=30,
                        headers={**serving_headers(), "content-type": "application/json"})
    assert answer.status_code == 413

    def chunks():   # no Content-Length: counted as it arrives
        yield b'{"records": ['
        for _ in range(40):
            yield b" " * 50_000
        yield b"]}"
    answer = httpx.post(f"{live['url']}/v1/{UC}/predict", content=chunks(), timeout=30,
                        headers={**serving_headers(), "content-type": "application/json"})
    assert answer.status_code == 413


def test_many_records_get_a_short_error_quickly(live):
    started = time.perf_counter()
    answer = _post(live, {"records": [{}] * 100_000})
    assert answer.status_code in (413, 422) and len(answer.content) < 10_000
    assert time.perf_counter() - started < 5
    wrong = _post(live, {"records": [{}] * 50})   # within the count: every record lacks every field
    assert wrong.status_code == 422 and len(wrong.content) < 10_000
    assert "more problem" in wrong.text


def test_a_long_entity_id_is_refused_not_echoed(live, small_spec):
    record = {**live["records"][0], small_spec.entity: "x" * 5000}
    answer = _post(live, {"records": [record]})
    assert answer.status_code == 422 and "x" * 100 not in answer.text


# ----------------------------------------------------------------- what
@pytest.mark.parametrize("raw", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_non_finite_numbers_are_the_clients_fault_not_the_models(live, small_spec, raw):
    from pipelines.features.point_in_time import feature_columns

    column = feature_columns(small_spec).numeric[0]
    record = json.dumps({**live["records"][0], column: 0.0}).replace(f'"{column}": 0.0', f'"{column}": {raw}')
    for _ in range(8):   # more than the circuit breaker's max_failures (5)
        answer = httpx.post(f"{live['url']}/v1/{UC}/predict", content=f'{{"records": [{record}]}}', timeout=30,
                            headers={**serving_headers(), "content-type": "application/json"})
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["records", 0, column]
    ready = httpx.get(f"{live['url']}/readyz", timeout=10).json()
    assert ready["ready"] and not ready["circuit_open"]
    assert _post(live, {"records": live["records"]}).status_code == 200


def test_no_server_path_in_any_answer(live, small_spec, tmp_path):
    from fastapi.testclient import TestClient

    from pipelines.core.spec import ServingInput
    from pipelines.serving.service import create_app

    variant = small_spec.model_copy(update={"deployment": small_spec.deployment.model_copy(
        update={"input": ServingInput.ENTITY})})
    real = catalog.spec   # where the service reads specs
    catalog.spec = lambda uc: variant if uc == UC else real(uc)
    os.environ["MLOPS_ONLINE_STORE"] = str(tmp_path / "no-store-here")
    try:
        with TestClient(create_app(UC, poll_s=60), headers=serving_headers()) as client:
            answer = client.post(f"/v1/{UC}/predict", json={"entity_ids": ["c1"]})
            many = client.post(f"/v1/{UC}/predict", json={"entity_ids": [str(i) for i in range(300_000)]})
    finally:
        catalog.spec = real
        os.environ.pop("MLOPS_ONLINE_STORE")
    assert answer.status_code == 503 and str(tmp_path) not in answer.text and "/" not in answer.json()["detail"]
    assert many.status_code in (413, 422)


def test_entity_ids_are_looked_up_in_chunks(tmp_path):
    import sqlite3

    from pipelines.features.online_store import TABLE, lookup

    path = tmp_path / "store.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(f'create table {TABLE} ("id" text, "x" real)')
        conn.executemany(f"insert into {TABLE} values (?, ?)", [(str(i), float(i)) for i in range(40_000)])
    records, unknown = lookup(path, "id", [str(i) for i in range(35_000)] + ["nobody"], ["x"])
    assert len(records) == 35_000 and unknown == ["nobody"] and records[-1] == {"id": "34999", "x": 34999.0}


# ----------------------------------------------------------------- when the model cannot answer
def test_a_hung_model_process_fails_fast_and_is_replaced(live):
    server = live["app"].state.server
    assert _post(live, {"records": live["records"]}).status_code == 200
    hung = server.model_process.pid
    os.kill(hung, signal.SIGSTOP)
    try:
        first = _post(live, {"records": live["records"]})    # waits for the bound (2 s), then replaced
        started = time.perf_counter()
        answers, readiness = [], []
        while time.perf_counter() - started < 1.5 and server.model_process.pid == hung:
            answers.append(_post(live, {"records": live["records"]}))
            readiness.append(httpx.get(f"{live['url']}/readyz", timeout=10).status_code)
    finally:
        try:
            os.kill(hung, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert first.status_code in (200, 503)
    slow = [a for a in answers if a.elapsed.total_seconds() > 1.5]
    assert not slow, "requests queued behind a hung model process"
    for answer in answers:
        assert answer.status_code in (200, 503) and (answer.status_code == 200 or answer.headers["retry-after"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _post(live, {"records": live["records"]}).status_code != 200:
        time.sleep(0.5)
    assert server.model_process.pid != hung and _post(live, {"records": live["records"]}).status_code == 200


def test_a_lost_champion_is_not_ready_and_a_rollback_restores_it(live, small_spec, restore_champion):
    from fastapi.testclient import TestClient

    from pipelines.cli import main
    from pipelines.models import tracking
    from pipelines.serving.service import create_app

    name = small_spec.model.registered_name
    champion = restore_champion.version
    tracking.client().delete_registered_model_alias(name, tracking.CHAMPION)
    with TestClient(create_app(UC, poll_s=60), headers=serving_headers()) as client:   # a restarted service
        ready = client.get("/readyz")
        answer = client.post(f"/v1/{UC}/predict", json={"records": live["records"]})
    assert ready.status_code == 503 and f"{name}@champion is lost" in ready.json()["error"]
    assert "mlops rollback" in ready.json()["error"]
    assert answer.status_code == 503 and answer.headers["retry-after"]
    assert main(["rollback", UC, "--to", champion, "--reason", "restore the lost champion"]) == 0
    assert tracking.resolve_alias(name, tracking.CHAMPION).version == champion


# ----------------------------------------------------------------- fuzzing
def test_fuzzing_from_the_openapi_document_finds_no_5xx_and_no_schema_violation(live):
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{live['url']}/openapi.json", headers=serving_headers(), timeout=30)
    calls = []

    @settings(max_examples=550, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy())
    def fuzz(case):
        response = case.call_and_validate(base_url=live["url"], headers=serving_headers(), timeout=30)
        calls.append(response.status_code)
        assert response.status_code < 500, (case.path, case.body, response.text[:500])

    fuzz()
    assert len(calls) >= 500, len(calls)
