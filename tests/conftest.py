"""Shared fixtures: isolated state, a small variant of the churn spec, a local Spark session."""
from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHURN = ROOT / "include" / "churn"

# Nothing from the developer's shell may leak into the tests' deployment.
for _var in ("SPARK_REMOTE", "MLFLOW_TRACKING_URI", "MLOPS_LAKE", "MLOPS_REPORTS", "MLOPS_SCHEDULE_END",
             "MLOPS_MLFLOW_ARTIFACTS", "MLOPS_INCLUDE", "MLOPS_INBOX", "MLOPS_SERVING_AUTH"):
    os.environ.pop(_var, None)
# dropped files settle for 2 s in the tests (5 s by default): every writer here writes whole files
os.environ["MLOPS_INBOX_SETTLE_S"] = "2"
# the scoring service answers loopback names and Starlette's test client (Host: testserver)
os.environ["MLOPS_SERVING_ALLOWED_HOSTS"] = "127.0.0.1,localhost,::1,testserver"


def serving_headers() -> dict[str, str]:
    """The API key header of this deployment's scoring service."""
    from pipelines.serving.guard import client_headers

    return client_headers()


def serving_get(url: str, **kwargs):
    import httpx

    return httpx.get(url, headers=serving_headers(), **kwargs)


def serving_post(url: str, **kwargs):
    import httpx

    return httpx.post(url, headers=serving_headers(), **kwargs)


def small_spec_dict(name: str = "churn_small", **simulation) -> dict:
    """The churn spec, renamed and shrunk for fast tests (same features, rules and model family)."""
    raw = yaml.safe_load((CHURN / "spec.yaml").read_text())
    spec = copy.deepcopy(raw)
    spec["name"] = name
    spec["model"]["registered_name"] = f"{name}_classifier"
    spec["model"]["params"] = {"random_state": 7, "max_iter": 60}
    spec["model"]["search_space"] = {"max_leaf_nodes": [15]}
    spec["model"]["cv_folds"] = 2
    spec["training"].update({"window_days": 20, "holdout_days": 3, "reference_rows": 1000})
    spec["promotion"]["floor"] = 0.55
    for check in spec["promotion"]["checks"]:   # timings never decide a test: latency is recorded only,
        if check["kind"] == "latency":         # and measured briefly
            check.update(mode="warn", repeats=10, rounds=2, batch_rows=100)
    spec["deployment"] = {"strategy": "direct"}   # the batch story: a promotion moves the champion at once
    # every backfilled day is past a deadline, and each runs Airflow's deadline callback: the tests
    # that need a deadline set their own (test_live_performance_beyond_its_bound_...)
    spec["scoring"].pop("deadline", None)
    spec["simulation"].update({"customers": 400, "days": 30, "drift_start": "2026-01-24",
                               "first_training": "2026-01-20"})
    spec["simulation"].update(simulation)
    return spec


def assert_trainings_took_turns(name: str, known: set[str], previous_champion: str) -> list:
    """Trainings started at once left a consistent registry: the versions registered since
    ``known`` came from runs that did not overlap, each carries a truthful decision, and the
    champion alias points at the last promoted one (or stayed at ``previous_champion``)."""
    from pipelines.models import tracking
    c = tracking.client()
    new = sorted((v for v in c.search_model_versions(f"name = '{name}'") if v.version not in known),
                 key=lambda v: int(v.version))
    runs = sorted((c.get_run(v.run_id).info for v in new), key=lambda r: r.start_time)
    for earlier, later in zip(runs, runs[1:]):
        assert earlier.end_time <= later.start_time, "two trainings overlapped"
    promoted = []
    for v in new:
        tags = c.get_model_version(name, v.version).tags
        assert tags["promotion.decision"] in {"promoted", "rejected"}, (v.version, tags)
        assert ("champion.since" in tags) == (tags["promotion.decision"] == "promoted"), (v.version, tags)
        if tags["promotion.decision"] == "promoted":
            promoted.append(v.version)
    champion = tracking.resolve_alias(name, tracking.CHAMPION).version
    assert champion == (promoted[-1] if promoted else previous_champion), (champion, promoted)
    return new


@pytest.fixture()
def restore_champion(lifecycle, small_spec):
    """Whatever a case does to the alias, the champion of the lifecycle is put back afterwards."""
    from pipelines.models import tracking
    name = small_spec.model.registered_name
    before = tracking.resolve_alias(name, tracking.CHAMPION)
    yield before
    tracking.client().set_registered_model_alias(name, tracking.CHAMPION, before.version)
    tracking.record_champion(name, before.version)


def new_version(small_spec, champion) -> str:
    """Another registered version of the champion's model (same run, same files)."""
    import mlflow

    from pipelines.models import tracking
    tracking.configure()
    source = tracking.client().get_model_version(small_spec.model.registered_name, champion.version).source
    return str(mlflow.register_model(source, small_spec.model.registered_name).version)


def version_without_files(small_spec, champion, mlflow_server, experiment: str) -> str:
    """A registered version of the champion's model whose files are then deleted from the server."""
    import mlflow

    from pipelines.models import tracking
    name = small_spec.model.registered_name
    with mlflow.start_run(experiment_id=tracking.ensure_experiment(experiment)) as run:
        mlflow.log_artifacts(mlflow.artifacts.download_artifacts(
            tracking.client().get_model_version(name, champion.version).source), "model")
    gone = str(mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version)
    for path in [p for p in mlflow_server.artifacts.rglob(run.info.run_id) if p.is_dir()]:
        shutil.rmtree(path)
    return gone


def serve_in_thread(app, ready_status: int | None = 200):
    """uvicorn serving ``app`` on a free port in a thread; (server, thread, url) once /readyz
    answers ``ready_status`` (None: once it answers at all)."""
    import threading

    import httpx
    import uvicorn

    from scripts.airflow_api import wait_for

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def answer() -> str:
        try:
            got = httpx.get(f"{url}/readyz", timeout=5)
            return f"{got.status_code} {got.text}"
        except httpx.HTTPError as exc:
            return repr(exc)

    wait_for(lambda: answer()[:3] == str(ready_status) if ready_status else answer()[:1].isdigit(), 90, interval=0.3,
             what=lambda: f"scoring service at {url} ready (last answer: {answer()})")
    return server, thread, url


def free_port(pair: bool = False, span: int = 1) -> int:
    """A free loopback port (with ``pair``, one whose successor is free too; with ``span``, the
    ``span - 1`` ports after it as well)."""
    span = max(span, 2 if pair else 1)
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        taken = False
        for after in range(1, span):
            with socket.socket() as s:
                taken = taken or s.connect_ex(("127.0.0.1", port + after)) == 0
        if not taken:
            return port


def traversable_home(prefix: str) -> Path:
    """A fresh stack home whose parents the PostgreSQL server's own user can traverse (it runs as
    that user when the tests run as root; pytest's private temporary folders are mode 0700)."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    return home


@contextlib.contextmanager
def include_folder(include: Path):
    """Use-case specs read from ``include`` inside the block (``MLOPS_INCLUDE``), as before after it."""
    from pipelines import runtime
    saved = os.environ.get("MLOPS_INCLUDE")
    os.environ["MLOPS_INCLUDE"] = str(include)
    runtime.forget_specs()
    try:
        yield include
    finally:
        if saved is None:
            os.environ.pop("MLOPS_INCLUDE", None)
        else:
            os.environ["MLOPS_INCLUDE"] = saved
        runtime.forget_specs()


def write_spec(include: Path, spec: dict, expectations: Path = CHURN / "expectations.yaml") -> Path:
    folder = include / spec["name"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(expectations, folder / "expectations.yaml")
    return folder


@pytest.fixture(scope="session")
def state_home(tmp_path_factory) -> Path:
    """MLOPS_HOME of the test session, with a small spec in its own include folder."""
    home = tmp_path_factory.mktemp("mlops-home")
    include = home / "include"
    write_spec(include, small_spec_dict())
    os.environ["MLOPS_HOME"] = str(home)
    os.environ["MLOPS_INCLUDE"] = str(include)
    os.environ["MLOPS_SPARK_MASTER"] = "local[2]"
    from pipelines import runtime
    runtime.forget_specs()
    return home


@pytest.fixture(scope="session")
def small_spec(state_home):
    from pipelines import runtime
    return runtime.spec("churn_small")


@pytest.fixture(scope="session")
def spark(state_home):
    from pipelines import runtime
    session = runtime.spark("tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def validator_factory():
    """Validators are costly to build (GX context); one per (spec, lake)."""
    cache = {}

    def make(spec, lake):
        from pipelines.data.validation import PartitionValidator

        key = (spec.name, str(lake.root))
        if key not in cache:
            cache[key] = PartitionValidator(spec, lake)
        return cache[key]

    return make


class MlflowServer:
    """A real MLflow tracking server (SQLite store, local artifacts) that tests can stop and restart."""

    def __init__(self, home: Path):
        self.home, self.port, self.proc = home, free_port(), None
        self.artifacts = home / "artifacts"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        import subprocess
        import sys

        from scripts.airflow_api import wait_for

        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.home / 'mlflow.db'}", "--artifacts-destination",
             str(self.artifacts), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.healthy, 120, interval=0.5, what=f"MLflow server on {self.url}")
        return self

    def healthy(self) -> bool:
        import urllib.request

        if self.proc.poll() is not None:
            raise RuntimeError(f"MLflow server exited; see {self.home / 'server.log'}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        import os
        import signal
        import subprocess

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:   # a loaded machine: do not let teardown fail the session
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


@pytest.fixture(scope="session")
def mlflow_server(state_home):
    """The tests' tracking server: the lifecycle tests and the fault suite talk to it over HTTP."""
    server = MlflowServer(state_home / "mlflow-server").start()
    os.environ["MLFLOW_TRACKING_URI"] = server.url
    yield server
    server.stop()
    os.environ.pop("MLFLOW_TRACKING_URI", None)


BROKEN_DAY = dt.date(2026, 1, 12)


@pytest.fixture(scope="session")
def lifecycle(state_home, small_spec, spark, mlflow_server):
    """The small use case played like the DAGs do, on the CLI path: simulate, break one day's
    transactions, validate and featurize every day, train and promote the first model, then
    score and monitor each day from the first training on (days after the broken one declare it
    as a known gap, as an operator would)."""
    from pipelines import runtime
    from pipelines.core.lake import read_partition, replace_partition
    from pipelines.data.validation import DataValidationError

    uc = small_spec.name
    runtime.simulate(uc)
    lake = runtime.lake()
    tx = read_partition(lake.raw(uc, "transactions"), BROKEN_DAY)
    tx.loc[tx.index[0], "channel"] = "carrier-pigeon"
    replace_partition(lake.raw(uc, "transactions"), BROKEN_DAY, tx)
    start = small_spec.simulation.history_start
    all_days = [start + dt.timedelta(days=i) for i in range(small_spec.simulation.days)]
    first_training = small_spec.simulation.first_training
    failures, refused = {}, {}
    from pipelines.features.point_in_time import LookBackIncomplete

    for day in all_days:
        try:
            runtime.validate(uc, day)
        except DataValidationError as exc:
            failures[day] = str(exc)
            continue
        try:
            runtime.build_features(uc, day)
        except LookBackIncomplete as exc:
            refused[day] = str(exc)
    # the operator declares the lost day in the spec, and the refused days are built again
    spec_file = small_spec.directory / "spec.yaml"
    raw = yaml.safe_load(spec_file.read_text())
    raw["features"]["allowed_missing_days"] = [d.isoformat() for d in failures]
    spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    runtime.forget_specs()
    for day in refused:
        runtime.build_features(uc, day)
    challenger = runtime.train(uc, first_training, "first model", "manual")
    decision = runtime.promote(uc, challenger, first_training)
    champion = runtime.resolve_champion(uc)
    scored = {}
    for day in all_days:
        if day >= first_training and day not in failures:
            scored[day] = runtime.score(uc, day, champion, f"run-{day}")
            runtime.monitor_drift(uc, day, champion)
            runtime.live_performance(uc, day)
    return {"failures": failures, "refused": refused, "challenger": challenger, "decision": decision,
            "champion": champion, "scored": scored, "first_training": first_training, "use_case": uc}


STORY_UC = "churn_flow"
STORY_SHIPPED_UC = "breast_cancer"   # a shipped use case on real data, fed through its inbox by its test
STORY_REVIEWED_UC = "breast_cancer_reviewed"   # the same data, with promotions a person approves
STORY_CANARY_UC = "breast_cancer_canary"       # the same data, promotions rolled out to live traffic
STORY_START, STORY_FIRST_TRAINING, STORY_BROKEN = dt.date(2026, 1, 1), dt.date(2026, 1, 16), dt.date(2026, 1, 23)
# every story use case alerts the stack's own mailbox (SMTP) and a webhook the story starts
STORY_ALERTS = {"channels": [{"connection": "mlops_alerts"}, {"connection": "story_webhook"}]}


def reviewed_spec_dict() -> dict:
    """The shipped breast_cancer spec renamed, with approval required and a cheap search; no margin,
    so a second challenger on the same data passes the gate and goes to review too."""
    raw = yaml.safe_load((ROOT / "include" / STORY_SHIPPED_UC / "spec.yaml").read_text())
    raw["name"] = STORY_REVIEWED_UC
    raw["model"].update(registered_name=f"{STORY_REVIEWED_UC}_model", cv_folds=2,
                        search_space={"max_leaf_nodes": [7]})
    raw["promotion"].update(min_improvement=0.0, approval="required", approval_timeout_hours=1)
    raw["alerts"] = STORY_ALERTS
    return raw


def canary_spec_dict() -> dict:
    """The shipped breast_cancer spec renamed, its promotions rolled out as a canary (a shadow
    step, half, all) judged on every run of its rollout DAG, with a short load test first."""
    raw = yaml.safe_load((ROOT / "include" / STORY_SHIPPED_UC / "spec.yaml").read_text())
    raw["name"] = STORY_CANARY_UC
    raw["model"].update(registered_name=f"{STORY_CANARY_UC}_model", cv_folds=2, search_space={"max_leaf_nodes": [7]})
    raw["promotion"].update(min_improvement=0.0)
    raw["deployment"] = {"strategy": "canary", "steps": [0.0, 0.5, 1.0], "window_minutes": 0, "min_requests": 30,
                         "budgets": {"max_p99_ms": 2000, "min_agreement": 0.8},
                         "load_test": {"users": 2, "rate": 10, "seconds": 6, "max_p99_ms": 1000}}
    raw["alerts"] = STORY_ALERTS
    return raw


@pytest.fixture(scope="session")
def story(tmp_path_factory):
    """One real-scheduler story for every test that needs Airflow itself (e2e and fault suite):
    the embedded stack in its own home and ports, a small use case played through it; a shipped
    use case beside it, untouched until its test drops files into its inbox."""
    from pytest_httpserver import HTTPServer

    from pipelines import runtime
    from pipelines.core.lake import read_partition, replace_partition
    from scripts.demo import play_story
    from scripts.stack import Stack

    home = traversable_home("mlops-story-")
    spec = small_spec_dict(STORY_UC, days=23, customers=700, first_training=STORY_FIRST_TRAINING.isoformat(),
                           drift_start="2026-01-13")
    # sensitive policy, so the sensor fires and retrains within the few scored days of this test
    spec["monitoring"].update({"drift_share_threshold": 0.1, "column_threshold": 0.1, "consecutive_days": 1,
                               "cooldown_days": 30})
    spec["alerts"] = STORY_ALERTS
    include = home / "include"
    write_spec(include, spec)
    shutil.copytree(ROOT / "include" / STORY_SHIPPED_UC, include / STORY_SHIPPED_UC)
    shipped = include / STORY_SHIPPED_UC / "spec.yaml"   # as shipped, telling the story's receivers
    shipped.write_text(yaml.safe_dump({**yaml.safe_load(shipped.read_text()), "alerts": STORY_ALERTS}, sort_keys=False))
    write_spec(include, reviewed_spec_dict(), expectations=ROOT / "include" / STORY_SHIPPED_UC / "expectations.yaml")
    write_spec(include, canary_spec_dict(), expectations=ROOT / "include" / STORY_SHIPPED_UC / "expectations.yaml")
    end = STORY_START + dt.timedelta(days=spec["simulation"]["days"] - 1)
    mp = pytest.MonkeyPatch()
    stack = Stack(home=home, airflow_port=free_port(), mlflow_port=free_port(), spark_port=free_port(),
                  postgres_port=free_port(), alerts_port=free_port())
    webhook = HTTPServer(host="127.0.0.1", port=free_port())   # a team's chat hook, as Apprise posts to it
    webhook.expect_request("/hooks/story", method="POST").respond_with_data("ok")
    webhook.start()
    stack.save_defaults({"AIRFLOW_CONN_STORY_WEBHOOK": json.dumps({"conn_type": "apprise", "extra": {
        "config": [{"path": webhook.url_for("/hooks/story").replace("http://", "json://")}]}})})
    mp.setenv("MLOPS_HOME", str(home))
    mp.setenv("MLOPS_INCLUDE", str(include))
    mp.setenv("MLOPS_SCHEDULE_END", end.isoformat())
    mp.setenv("MLOPS_RETRY_DELAY_S", "3")   # the fault suite kills tasks: their retries come soon
    runtime.forget_specs()
    runtime.simulate(STORY_UC)
    raw = runtime.lake().raw(STORY_UC, "transactions")
    broken = read_partition(raw, STORY_BROKEN)
    broken.loc[broken.index[:5], "customer_id"] = None             # nulls in a key column
    replace_partition(raw, STORY_BROKEN, broken)
    env = {"MLOPS_HOME": str(home), "MLOPS_INCLUDE": str(include), "MLOPS_SCHEDULE_END": end.isoformat(),
           "MLFLOW_TRACKING_URI": stack.mlflow_url, "MLOPS_RETRY_DELAY_S": "3"}
    try:
        stack.up()
        timings = play_story(stack, STORY_UC, STORY_START, STORY_FIRST_TRAINING, end)
        from scripts.airflow_api import AirflowClient

        client = AirflowClient(stack.airflow_url, "admin", stack.admin_password())
        story = {"stack": stack, "client": client, "timings": timings, "end": end, "env": env,
                 "spec": runtime.spec(STORY_UC), "webhook": webhook}
        mp.undo()   # the stack keeps running; tests enter its environment with `in_story`
        runtime.forget_specs()
        yield story
    finally:
        stack.down()
        webhook.stop()
        mp.undo()
        runtime.forget_specs()
        shutil.rmtree(home, ignore_errors=True)


def story_alerts(story, event: str, use_case: str = STORY_UC) -> list[dict]:
    """The alerts of ``event`` (an AlertEvent value) of ``use_case`` the story's webhook received,
    as Apprise posted them (title, message, type), in order."""
    posted = [json.loads(request.get_data()) for request, _ in list(story["webhook"].log)]
    return [p for p in posted if f"use case: {use_case} |" in p["message"] and f"| event: {event}" in p["message"]]


@pytest.fixture()
def in_story(story, monkeypatch):
    """The story's deployment as this test's environment (lake, specs, MLflow server), with its
    stack running (a test before may have stopped it on purpose; `up` is idempotent)."""
    from pipelines import runtime
    story["stack"].up()
    for key, value in story["env"].items():
        monkeypatch.setenv(key, value)
    runtime.forget_specs()
    yield story
    runtime.forget_specs()



@contextlib.contextmanager
def newer_champion(name: str):
    """A copy of ``name``'s @champion registered and made champion after it (as promotions record
    it), for a rollback to undo; @champion is back on the original afterwards. Yields (original
    version, newer version)."""
    import mlflow

    from pipelines.models import tracking

    original = tracking.resolve_alias(name, tracking.CHAMPION).version
    c = tracking.client()
    tracking.configure()
    newer = str(mlflow.register_model(c.get_model_version(name, original).source, name).version)
    for version in (original, newer):
        tracking.move_champion(name, version, None, dt.datetime.now(dt.timezone.utc).isoformat())
    try:
        yield original, newer
    finally:
        c.set_registered_model_alias(name, tracking.CHAMPION, original)
        tracking.record_champion(name, original)


def land_breast_cancer(use_case: str, folder: Path, day: dt.date) -> None:
    """scikit-learn's breast cancer table as ``use_case``'s snapshot of ``day``: ingested, validated,
    its features built (a story use case fed through the CLI path)."""
    from pipelines import runtime
    from pipelines.data.example_data import export

    runtime.ingest(use_case, "patients", str(export("breast_cancer", folder)), as_of=day)
    runtime.validate(use_case, day)
    runtime.build_features(use_case, day)


def days(start: str, n: int) -> list[dt.date]:
    first = dt.date.fromisoformat(start)
    return [first + dt.timedelta(days=i) for i in range(n)]


def assert_scored_compiled_as_scikit_learn(spec, task, challenger: dict, day: dt.date, table) -> None:
    """The version was compiled at registration, and the inference table (scored with the compiled
    graph) holds scikit-learn's outputs for ``day``'s features: within the tolerance, same labels."""
    from pipelines import runtime
    from pipelines.core.lake import read_partition
    from pipelines.features.point_in_time import feature_columns
    from pipelines.models import compiled, tracking

    ref = tracking.ModelRef.from_xcom(challenger)
    tags = tracking.client().get_model_version(ref.name, ref.version).tags
    assert tags[compiled.RUNTIME_TAG] == compiled.ONNX, tags.get(compiled.REASON_TAG)
    assert int(tags[compiled.ROWS_TAG]) > 0 and float(tags[compiled.DIFF_TAG]) <= compiled.TOLERANCE * 1000
    assert compiled.runtime_of(compiled.load_for_inference(ref)) == compiled.ONNX
    features = read_partition(runtime.lake().features(spec.name), day).set_index(spec.entity)
    scored = table.set_index(spec.entity).loc[features.index, list(task.output_columns)]
    expected = task.outputs(tracking.load_model(ref), features[feature_columns(spec).all])
    verdict = compiled.judge(expected.reset_index(drop=True), scored.reset_index(drop=True))
    assert verdict.compiled, verdict.reason
