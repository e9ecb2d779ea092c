"""The pre-deployment load test of a rollout's candidate: Locust (headless) against a staging
instance of the scoring service that serves the ``candidate`` alias alone.

The staging instance is the real service (``mlops serve`` in its own process, on a free port),
with its request log in a throwaway folder so the load never reaches the online inference table.
Records come from the newest feature partition (by entity id in ``entity`` mode, whole otherwise). The result
(throughput, p50/p99, error rate) is logged to the candidate's MLflow run and as ``gate.load_test.*``
tags on its version, and judged against ``deployment.load_test``.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines.core.config import PROJECT_ROOT, child_environment
from pipelines.core.errors import MissingData
from pipelines.core.lake import list_partitions, read_partition
from pipelines.core.spec import ServingInput
from pipelines.core.waiting import wait_until
from pipelines.models import tracking
from pipelines.models.signature import signature_inputs
from pipelines.serving.guard import client_headers

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass(frozen=True)
class LoadResult:
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p99_ms: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(argv: list[str], env: dict, ready_url: str, log_file: Path, timeout: float = 180) -> subprocess.Popen:
    """Start a server process and wait until ``ready_url`` answers 200 (its log's tail if it dies)."""
    import httpx

    process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log_file.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{argv[:4]} exited: {log_file.read_text()[-2000:]}")
        return httpx.get(ready_url, timeout=5).status_code == 200

    try:
        wait_until(ready, timeout, interval=0.5, what=f"{ready_url} answering 200", retry_on=(httpx.HTTPError,))
    except BaseException:
        stop_process(process)
        raise
    return process


def stop_process(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, 15)
        process.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, 9)


def run_locust(target: str, url: str, records: Path, users: int, rate: float, seconds: int, out: Path,
               use_case: str, env: dict | None = None) -> LoadResult:
    """Locust, headless, ``users`` users offering ``rate`` requests/s together for ``seconds``."""
    prefix = out / target
    done = subprocess.run([str(BIN / "locust"), "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r",
                           str(users), "-t", f"{seconds}s", "--host", url, "--csv", str(prefix), "--only-summary",
                           "--loglevel", "WARNING", "--exit-code-on-error", "0"],
                          env={**os.environ, **(env or {}), "BENCH_TARGET": target, "BENCH_RECORDS": str(records),
                               "BENCH_RATE": str(rate / users), "BENCH_USE_CASE": use_case,
                               # the service's API key, in the environment (never on a command line)
                               "BENCH_AUTHORIZATION": client_headers()["Authorization"]},
                          capture_output=True, text=True)
    if done.returncode != 0 or not Path(f"{prefix}_stats.csv").exists():
        raise RuntimeError(f"locust exited {done.returncode}: {(done.stderr or done.stdout)[-3000:]}")
    with open(f"{prefix}_stats.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    def ms(column: str) -> float:
        return float(row[column]) if row[column] not in ("N/A", "") else float("nan")

    return LoadResult(int(row["Request Count"]), int(row["Failure Count"]), float(row["Requests/s"]), ms("50%"),
                      ms("99%"))


def sample_records(lake, spec, columns: list[str], rows: int = 500) -> list[dict]:
    """Entities and their feature rows from the newest feature partition, for the Locust users."""
    import numpy as np

    table = lake.features(spec.name)
    days = list_partitions(table)
    if not days:
        raise MissingData(f"no features under {table} to load-test with: run the daily DAG first")
    frame = read_partition(table, days[-1], [spec.entity, *columns])
    frame = frame.sample(n=min(rows, len(frame)), random_state=0).astype(object)
    frame = frame.where(frame.notna(), None)
    return [{"id": str(r[spec.entity]), "record": {**{c: (v.item() if isinstance(v, np.generic) else v)
                                                     for c, v in r.items() if c != spec.entity},
                                                  spec.entity: str(r[spec.entity])}}   # routes it in a rollout
            for r in frame.to_dict("records")]


def judge_load(result: LoadResult, budget) -> tuple[bool, str]:
    """Whether a load test's result is within ``deployment.load_test``, and why not."""
    broken = []
    if result.requests == 0:
        broken.append("no request was answered")
    if result.error_rate > budget.max_error_rate:
        broken.append(f"error rate {result.error_rate:.1%} ({result.failures}/{result.requests}) over "
                      f"{budget.max_error_rate:.1%}")
    if not result.p99_ms <= budget.max_p99_ms:
        broken.append(f"p99 {result.p99_ms:.0f} ms over {budget.max_p99_ms:.0f} ms")
    summary = (f"{result.rps:.1f} req/s, p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms, "
               f"{result.failures} failed of {result.requests}")
    return (not broken), (summary if not broken else f"{'; '.join(broken)} ({summary})")


def load_test(spec, lake, version: str) -> tuple[LoadResult, bool, str]:
    """Load-test the ``candidate`` alias (``version``) of the spec's model; recorded in MLflow."""

    budget, name = spec.deployment.load_test, spec.model.registered_name
    ref = tracking.model_version(name, version)
    columns = list(signature_inputs(ref.uri))
    with tempfile.TemporaryDirectory(prefix="mlops-loadtest-") as tmp:
        folder = Path(tmp)
        records = folder / "records.json"
        records.write_text(json.dumps(sample_records(lake, spec, columns)))
        port = free_port()
        env = {**child_environment(), "MLOPS_SERVE_ALIAS": "candidate",
               "MLOPS_SERVE_STAGING_LOG": str(folder / "requests"),
               "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT),
                                             os.environ.get("PYTHONPATH", "")])}
        log.info("%s: load test of v%s: staging service on port %d, %d users at %.0f req/s for %d s", spec.name,
                 version, port, budget.users, budget.rate, budget.seconds)
        server = start_process([sys.executable, "-m", "pipelines.cli", "serve", spec.name, "--port", str(port)],
                               env, f"http://127.0.0.1:{port}/readyz", folder / "staging.log")
        try:
            target = "ours" if spec.deployment.input is ServingInput.ENTITY else "records"
            result = run_locust(target, f"http://127.0.0.1:{port}", records, budget.users, budget.rate,
                                budget.seconds, folder, spec.name)
        finally:
            stop_process(server)
    passed, reason = judge_load(result, budget)
    c = tracking.client()
    for key, value in {"load_test_rps": result.rps, "load_test_p50_ms": result.p50_ms,
                       "load_test_p99_ms": result.p99_ms, "load_test_error_rate": result.error_rate}.items():
        if value == value:   # NaN when nothing was answered
            c.log_metric(ref.run_id, key, value)
    tracking.tag_version(name, version, {
        "gate.load_test.decision": "passed" if passed else "failed", "gate.load_test.reason": reason,
        "gate.load_test.rps": f"{result.rps:.1f}", "gate.load_test.p99_ms": f"{result.p99_ms:.0f}",
        "gate.load_test.error_rate": f"{result.error_rate:.4f}"})
    log.info("%s: load test of v%s %s: %s", spec.name, version, "passed" if passed else "FAILED", reason)
    return result, passed, reason
