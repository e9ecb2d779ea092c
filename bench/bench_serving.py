"""Online scoring under load: our scoring service against ``mlflow models serve``, same model version.

    .venv/bin/python -m bench.bench_serving [--seconds 60] [--rate 200] [--users 40] [--workers 1]

Both serve the churn spec's pipeline (fitted on synthetic rows, registered as ``@champion`` in a
throwaway MLflow store), one uvicorn worker each by default. Locust (headless) sends single-record
requests at ``--rate`` requests/s for ``--seconds``: to ours by entity id (features looked up in the
online store, as in ``deployment.input: entity``), to MLflow's ``/invocations`` with the same
entity's feature row in the body. Then ours again with a shadow rollout running (a second
version scores every request in batches, not waited for): the shadow's cost on p99. Each timed run
follows a warm-up of the same load (``WARM_UP_S``), not counted. Last, the
floor: an empty FastAPI handler (``bench/empty_service.py``) under the same load, which is what
the measurement itself costs on a machine shared with the load generator. Prints throughput,
p50/p99 and failures of each, and the ratios; appends a dated row to docs/benchmarks.md. Timings
only; no pass/fail.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.report import append_row

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENTITY_DAY = "2026-01-31"


def prepare(home: Path, entities: int, served_by: str) -> tuple[dict, list[dict]]:
    """A throwaway deployment: the churn spec in entity mode, a champion, an online store."""
    import yaml

    include = home / "include" / "churn"
    shutil.copytree(ROOT / "include" / "churn", include)
    raw = yaml.safe_load((include / "spec.yaml").read_text())
    raw["deployment"] = {"input": "entity", "strategy": "shadow", "load_test": {"enabled": False}}
    (include / "spec.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {"MLOPS_HOME": str(home), "MLOPS_INCLUDE": str(home / "include"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow/mlflow.db",
           "MLOPS_MLFLOW_ARTIFACTS": str(home / "mlflow" / "artifacts"), "MLOPS_SERVING_POLL_S": "5",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}   # mlflow models serve runs `uvicorn`
    os.environ.update(env)

    from bench.synthetic import SyntheticChurn
    from pipelines import runtime
    from pipelines.core.lake import replace_partition
    from pipelines.features.point_in_time import feature_columns
    from pipelines.models import compiled, tracking
    from pipelines.models.tasks import ModelTask

    spec = runtime.spec("churn")
    cols = feature_columns(spec)
    synthetic = SyntheticChurn(spec)
    train, model = synthetic.train, synthetic.model
    import mlflow

    with mlflow.start_run(experiment_id=tracking.ensure_experiment("churn-training")) as run:
        info = tracking.log_sklearn_model(model, train.head(5), model.predict_proba(train.head(5)))
        tags = compiled.log_compilation(compiled.compile_checked(model, synthetic.frame(5000), ModelTask.of(spec)))
        if served_by == compiled.SKLEARN:   # the service as it was before compiling
            mlflow.set_tags(tags := tags | {compiled.RUNTIME_TAG: compiled.SKLEARN, compiled.REASON_TAG: "bench"})
    version = tracking.register_challenger(spec.model.registered_name, info.model_uri, run.info.run_id, tags)
    tracking.move_champion(spec.model.registered_name, version, None, dt.datetime.now(dt.timezone.utc).isoformat())
    features = synthetic.frame(entities)
    features.insert(0, spec.entity, [f"C{i:06d}" for i in range(entities)])
    replace_partition(runtime.lake().features("churn"), ENTITY_DAY, features)
    runtime.refresh_online_store("churn", ENTITY_DAY)
    sample = features.sample(n=min(2000, entities), random_state=1)
    rows = [{"id": r[spec.entity], "record": {c: r[c] for c in cols.all}}
            for r in json.loads(sample.to_json(orient="records"))]
    return env, rows


def shadow_on(url: str) -> None:
    """A shadow rollout of a second version of the same model; back once the service shadows with it."""
    import httpx
    import mlflow
    from tenacity import Retrying, stop_after_delay, wait_fixed

    from pipelines import runtime
    from pipelines.models import tracking
    from pipelines.release import rollout
    spec = runtime.spec("churn")
    name = spec.model.registered_name
    champion = tracking.resolve_alias(name)
    source = tracking.client().get_model_version(name, champion.version).source
    candidate = str(mlflow.register_model(source, name).version)
    rollout.start(spec, runtime.lake(), candidate, champion.version, "bench: shadow overhead", "bench")
    for attempt in Retrying(stop=stop_after_delay(60), wait=wait_fixed(0.5), reraise=True):
        with attempt:
            assert httpx.get(f"{url}/readyz", timeout=5).json()["rollout"]["candidate_loaded"]


WARM_UP_S = 5


def load(target: str, url: str, records: Path, args, out: Path, env: dict) -> dict:
    """Locust, headless, at ``args.rate`` requests/s (the rollout's load test runs the same users),
    after ``WARM_UP_S`` seconds of the same load that are not counted (connections, caches, the
    first batches: every service gets the same)."""
    from pipelines.release.load_test import run_locust

    (out / "warm-up").mkdir(exist_ok=True)
    run_locust(target, url, records, args.users, args.rate, WARM_UP_S, out / "warm-up", "churn", env)
    result = run_locust(target, url, records, args.users, args.rate, args.seconds, out, "churn", env)
    return {"requests": result.requests, "failures": result.failures, "rps": result.rps, "p50": result.p50_ms,
            "p99": result.p99_ms}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second, all users together")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--workers", type=int, default=1, help="server worker processes of each service")
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--runtime", choices=["onnxruntime", "scikit-learn"], default="onnxruntime",
                        help="what serves the version: its compiled model, or its scikit-learn pipeline")
    args = parser.parse_args()

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env, rows = prepare(home, args.entities, args.runtime)
        records = home / "records.json"
        records.write_text(json.dumps(rows))
        from pipelines.release.load_test import free_port, start_process, stop_process

        ours_port, peer_port, floor_port = free_port(), free_port(), free_port()
        ours = start_process([sys.executable, "-m", "pipelines.cli", "serve", "churn", "--port", str(ours_port),
                      "--workers", str(args.workers)], env, f"http://127.0.0.1:{ours_port}/readyz", home / "ours.log")
        peer = start_process([str(BIN / "mlflow"), "models", "serve", "-m", "models:/churn_classifier@champion",
                      "--env-manager", "local", "-p", str(peer_port), "-w", str(args.workers)], env,
                     f"http://127.0.0.1:{peer_port}/ping", home / "mlflow.log")
        try:
            results = {"ours": load("ours", f"http://127.0.0.1:{ours_port}", records, args, home, env),
                       "mlflow": load("mlflow", f"http://127.0.0.1:{peer_port}", records, args, home, env)}
            shadow_on(f"http://127.0.0.1:{ours_port}")
            results["ours+shadow"] = load("ours", f"http://127.0.0.1:{ours_port}", records, args, home, env)
        finally:
            for process in (ours, peer):
                stop_process(process)
        floor = start_process([str(BIN / "uvicorn"), "bench.empty_service:app", "--port", str(floor_port),
                               "--workers", str(args.workers), "--no-access-log"], env,
                              f"http://127.0.0.1:{floor_port}/readyz", home / "floor.log")
        try:
            results["floor"] = load("ours", f"http://127.0.0.1:{floor_port}", records, args, home, env)
        finally:
            stop_process(floor)
    mine, peer_stats = results["ours"], results["mlflow"]
    throughput = mine["rps"] / peer_stats["rps"]
    p99 = peer_stats["p99"] / mine["p99"] if mine["p99"] else float("nan")
    shadowed = results["ours+shadow"]
    shadow_cost = shadowed["p99"] / mine["p99"] - 1 if mine["p99"] else float("nan")
    for name, r in results.items():
        print(f"{name:11s} {r['rps']:7.1f} req/s  p50 {r['p50']:5.0f} ms  p99 {r['p99']:5.0f} ms  "
              f"{r['failures']} failed of {r['requests']}")
    print(f"shadow mode (the candidate scores every request, not waited for): p99 {shadow_cost:+.0%}")
    floor = results["floor"]
    print(f"the floor (an empty handler under the same load): p50 {floor['p50']:.0f} ms, p99 {floor['p99']:.0f} ms; "
          f"ours adds p50 {mine['p50'] - floor['p50']:+.0f} ms, p99 {mine['p99'] - floor['p99']:+.0f} ms")
    print(f"throughput ours / mlflow models serve: {throughput:.2f}x; p99 mlflow / ours: {p99:.2f}x "
          f"({args.rate:.0f} req/s offered for {args.seconds} s, {args.workers} worker(s) each)")
    command = (f".venv/bin/python -m bench.bench_serving --seconds {args.seconds} --rate {args.rate:.0f} "
               f"--users {args.users} --workers {args.workers} --runtime {args.runtime}")
    row = (f"| {dt.date.today()} | {os.cpu_count()} cores, {platform.machine()} | {args.rate:.0f} req/s, "
           f"{args.seconds} s | {mine['rps']:.0f} req/s, p50 {mine['p50']:.0f} ms, p99 {mine['p99']:.0f} ms, "
           f"{mine['failures']} failed; in shadow mode {shadowed['rps']:.0f} req/s, p99 {shadowed['p99']:.0f} ms "
           f"({shadow_cost:+.0%}); an empty handler in the same run: p50 {floor['p50']:.0f} ms, "
           f"p99 {floor['p99']:.0f} ms | {peer_stats['rps']:.0f} req/s, p50 {peer_stats['p50']:.0f} ms, "
           f"p99 {peer_stats['p99']:.0f} ms, {peer_stats['failures']} failed | {throughput:.2f}x | {p99:.2f}x | "
           f"`{command}` | {time.monotonic() - started:.0f} s |")
    append_row(SECTION, row, INTRO)
    print(row)


SECTION = "## Online scoring: our service against `mlflow models serve`"
INTRO = """
What it compares: our scoring service (`mlops serve`, FastAPI + uvicorn) answering single-record
requests by entity id, its features read from the online store, against `mlflow models serve`
of the same registered version answering the same entity's feature row sent in full. Locust
(headless, on the same machine) offers a steady request rate (each user paced at a phase of its
own); both run the same number of workers (`--workers`). Reported:
achieved throughput, p50 and p99 latency as Locust measures them, failed requests, and the ratios
(throughput ours / MLflow; p99 MLflow / ours: above 1 means ours is faster).

| date | machine | load | ours | `mlflow models serve` | throughput ratio | p99 ratio | command | wall time |
|---|---|---|---|---|---|---|---|---|
"""


if __name__ == "__main__":
    main()
