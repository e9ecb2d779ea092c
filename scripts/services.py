"""The services of the native stack, as supervisord starts them: PostgreSQL, Spark (standalone
master and two workers in the cluster topology, and the Spark Connect server), MLflow, Airflow
(in the cluster topology with Redis and two Celery workers, one per queue) and the scoring service. ``docker-compose.yaml`` describes the same services for containers; a test
compares every flag and Spark setting they share (``tests/deploy/test_compose.py``)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from scripts.supervision import Program

BIN = Path(sys.executable).parent
SERVICES_ENV = Path(__file__).resolve().parent.parent / "include" / "stack" / "services.env"
REDIS_SERVER = "/usr/bin/redis-server"   # Debian's redis-server package (scripts/bootstrap.sh installs it)
SPARK_WORKERS = ("spark-worker", "spark-worker-2")
# each Celery worker's queues (mlops_airflow.common: SPARK_QUEUE, MODELS_QUEUE; default for the rest)
CELERY_WORKERS = {"airflow-worker-spark": "default,spark", "airflow-worker-models": "default,models"}
MAILBOX_MESSAGE_BYTES = 1 << 20     # the local mailbox refuses a larger message (SMTP SIZE)
# the users of Airflow's simple auth manager and their roles: viewer reads every page, triggers nothing
AIRFLOW_USERS = {"admin": "admin", "viewer": "viewer"}
ALERTS_CONNECTION = "mlops_alerts"   # the alert channel of the shipped specs (an Airflow connection)


class StackError(RuntimeError):
    """A service failed to start or to become healthy, or a service setting cannot be read; the
    message names its log or the setting."""


Port = Annotated[int, Field(ge=1, le=65535)]


class ServiceSettings(BaseSettings):
    """The services' shared settings: ``include/stack/services.env`` (docker-compose.yaml reads it
    too), each overridden by a non-empty environment variable of its name; read and checked by
    pydantic-settings, so a bad value is one line naming the variable."""

    model_config = SettingsConfigDict(env_file=SERVICES_ENV, case_sensitive=True, env_ignore_empty=True,
                                      extra="forbid", frozen=True)

    MLOPS_AIRFLOW_PORT: Port
    MLOPS_MLFLOW_PORT: Port
    MLOPS_SPARK_CONNECT_PORT: Port
    MLOPS_SPARK_MASTER_PORT: Port
    MLOPS_SPARK_UI_PORT: Port
    MLOPS_POSTGRES_PORT: Port
    MLOPS_SERVING_PORT: Port
    MLOPS_REDIS_PORT: Port
    MLOPS_ALERTS_SMTP_PORT: Port
    MLOPS_CELERY_WORKER_CONCURRENCY: int = Field(ge=1)
    MLOPS_SPARK_WORKER_CORES: int = Field(ge=1)
    MLOPS_SPARK_SHUFFLE_PARTITIONS: int = Field(ge=1)
    MLOPS_MLFLOW_WORKERS: int = Field(ge=1)
    MLOPS_MLFLOW_ALLOWED_HOSTS: str = Field(min_length=1)
    MLOPS_MODEL_THREADS: int = Field(ge=1)
    AIRFLOW__CORE__PARALLELISM: int = Field(ge=1)
    AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL: int = Field(ge=1)
    MLOPS_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT: str = Field(pattern=r"^\d+(ms|s|min|h)?$")


def service_settings() -> dict[str, str]:
    """The shared service settings as the services' environment takes them (text)."""
    try:
        values = ServiceSettings()
    except ValidationError as exc:
        raise StackError("; ".join(f"{e['loc'][0]}: {e['msg']}, got {e.get('input')!r}" for e in exc.errors())
                         + f" (from the environment or {SERVICES_ENV})") from None
    return {name: str(value) for name, value in values.model_dump().items()}



def env_default(key: str, default: str) -> str:
    return os.environ.get(key) or default


def programs(stack) -> list[Program]:
    """Every service of ``stack``'s topology, in start order (stopped in reverse)."""
    found: list[Program] = []
    if stack.on_postgres:
        found.append(Program("postgres", stack.postgres.server_argv(), 10, user=stack.postgres.server_user(),
                             directory="/", stop_signal="INT", environment={"LC_ALL": "C.UTF-8"}))
    if stack.clustered:
        found.append(Program("redis", [REDIS_SERVER, str(stack.redis_config)], 15))
    return found + [alerts_mailbox(stack)] + spark_programs(stack) + [mlflow_program(stack)] + airflow_programs(stack)


def mailbox_folder(stack) -> Path:
    """The Maildir the local alerts mailbox keeps every message in."""
    return stack.home / "alerts"


def alerts_mailbox(stack) -> Program:
    """A local SMTP receiver (aiosmtpd) keeping every alert as a file in a Maildir under the
    stack's home: where the ``mlops_alerts`` channel of the shipped specs delivers until a team
    points that connection at its own mail server, Slack or Teams."""
    return Program("alerts-mailbox", [sys.executable, "-m", "aiosmtpd", "--nosetuid", "--listen",
                                      f"127.0.0.1:{stack.alerts_port}", "--size", str(MAILBOX_MESSAGE_BYTES),
                                      "--class", "aiosmtpd.handlers.Mailbox",
                                      str(mailbox_folder(stack))], 12)


def alerts_connection(stack) -> dict[str, str]:
    """``mlops_alerts`` as an Airflow connection (Apprise type) to the local mailbox; a team's own
    ``AIRFLOW_CONN_MLOPS_ALERTS`` (or a secrets backend's, named in the specs) replaces it."""
    url = f"mailto://127.0.0.1:{stack.alerts_port}?from=mlops@localhost&to=team@localhost&mode=insecure"
    return {f"AIRFLOW_CONN_{ALERTS_CONNECTION.upper()}": json.dumps(
        {"conn_type": "apprise", "extra": {"config": [{"path": url}]}})}


def lineage_file(stack) -> Path:
    """Where the stack's tasks append their OpenLineage events, one JSON document per line."""
    return stack.home / "lineage" / "events.jsonl"


def lineage_settings(stack) -> dict[str, str]:
    """OpenLineage for every task: the project's extractor, and a file transport into the stack's
    home unless the team configured a transport of its own (``OPENLINEAGE_URL`` for HTTP,
    ``AIRFLOW__OPENLINEAGE__TRANSPORT`` or ``OPENLINEAGE_CONFIG``)."""
    found = {"AIRFLOW__OPENLINEAGE__EXTRACTORS": "mlops_airflow.lineage.TaskLineageExtractor",
             "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",   # no fork of a task holding Spark's gRPC channel
             "AIRFLOW__OPENLINEAGE__NAMESPACE": env_default("MLOPS_LINEAGE_NAMESPACE", "mlops")}
    if not any(os.environ.get(key) for key in ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG",
                                               "AIRFLOW__OPENLINEAGE__TRANSPORT")):
        lineage_file(stack).parent.mkdir(parents=True, exist_ok=True)
        found["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(
            {"type": "file", "log_file_path": str(lineage_file(stack)), "append": True})
    return found


def observability_defaults(stack) -> dict[str, str]:
    """The stack's alerts connection and lineage transport, which a team's own settings replace."""
    return {**alerts_connection(stack), **lineage_settings(stack)}


def spark_programs(stack) -> list[Program]:
    """The standalone master and worker (cluster topology only), and the Spark Connect server."""
    spark_home = Path(__import__("pyspark").__file__).parent
    spark_class = str(spark_home / "bin" / "spark-class")
    found: list[Program] = []
    if stack.clustered:
        found.append(Program("spark-master", [spark_class, "org.apache.spark.deploy.master.Master", "--host",
                                              "127.0.0.1", "--port", str(stack.spark_master_port),
                                              "--webui-port", str(stack.spark_ui_port)], 20))
        found += [Program(name, [spark_class, "org.apache.spark.deploy.worker.Worker", stack.spark_master_url,
                                 "--host", "127.0.0.1", "--webui-port", str(stack.spark_ui_port + number),
                                 "--cores", stack.settings["MLOPS_SPARK_WORKER_CORES"],
                                 "--memory", env_default("MLOPS_SPARK_WORKER_MEMORY", "4g"),
                                 "--work-dir", str(stack.home / "spark" / f"work-{number}")], 30)
                  for number, name in enumerate(SPARK_WORKERS, start=1)]
    master = stack.spark_master_url if stack.clustered else os.environ.get("MLOPS_SPARK_MASTER", "local[2]")
    connect = [
        str(spark_home / "bin" / "spark-submit"),
        "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
        "--name", "mlops-spark-connect",
        "--master", master,
        "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf", f"spark.connect.grpc.binding.port={stack.spark_port}",
        "--conf", f"spark.sql.shuffle.partitions={stack.settings['MLOPS_SPARK_SHUFFLE_PARTITIONS']}",
        "--conf", "spark.ui.enabled=false",
        "--conf", "spark.log.level=WARN",
        "--conf", "spark.python.daemon.module=pipelines.core.spark_daemon",   # workers start warm
        "--conf", f"spark.driver.memory={env_default('MLOPS_SPARK_DRIVER_MEMORY', '2g')}",
        "--conf", f"spark.pyspark.python={sys.executable}",
    ]
    if stack.clustered:
        connect += ["--conf", f"spark.executor.memory={env_default('MLOPS_SPARK_EXECUTOR_MEMORY', '2g')}",
                    "--conf", "spark.driver.host=127.0.0.1"]
    return found + [Program("spark-connect", connect, 40, start_seconds=3)]


def mlflow_program(stack) -> Program:
    """The MLflow tracking server, its metadata on the stack's database, artifacts under its home."""
    return Program("mlflow", [
        str(BIN / "mlflow"), "server",
        "--backend-store-uri", stack.mlflow_backend_url(password=False),   # no secret in `ps`
        "--artifacts-destination", str(stack.home / "mlflow" / "artifacts"),
        "--host", "127.0.0.1", "--port", str(stack.mlflow_port),
        "--workers", stack.settings["MLOPS_MLFLOW_WORKERS"],
        "--allowed-hosts", stack.settings["MLOPS_MLFLOW_ALLOWED_HOSTS"],
    ], 50)


def celery_workers(stack) -> list[Program]:
    """Airflow's Celery workers (cluster topology): one per queue, both taking the default queue."""
    airflow = {"SPARK_REMOTE": stack.spark_remote}
    return [Program(name, [str(BIN / "airflow"), "celery", "worker", "--queues", queues,
                           "--concurrency", stack.settings["MLOPS_CELERY_WORKER_CONCURRENCY"],
                           "--celery-hostname", f"{name}@%h", "--skip-serve-logs"], 75,
                    environment={**airflow, "MLOPS_WORKER_NAME": name}, stop_wait=60)
            for name, queues in CELERY_WORKERS.items()]


def airflow_programs(stack) -> list[Program]:
    """Airflow's api-server, scheduler, dag-processor and triggerer (and the Celery workers of the
    cluster topology), and the scoring service."""
    airflow = {"SPARK_REMOTE": stack.spark_remote}   # the Spark servers must not see it
    workers = celery_workers(stack) if stack.clustered else []
    return workers + [
        Program("airflow-api-server", [str(BIN / "airflow"), "api-server", "--port", str(stack.airflow_port)],
                60, environment=airflow),
        # no log server: the api-server reads task logs from the shared logs folder
        Program("airflow-scheduler", [str(BIN / "airflow"), "scheduler", "--skip-serve-logs"], 70,
                environment=airflow, stop_wait=60),
        Program("airflow-dag-processor", [str(BIN / "airflow"), "dag-processor"], 80, environment=airflow),
        # runs the inbox watchers of the ingest DAGs (AssetWatcher triggers) and deferred tasks
        Program("airflow-triggerer", [str(BIN / "airflow"), "triggerer", "--skip-serve-logs"], 90,
                environment=airflow),
        # started by `serve` only (make ui, make serve): each use case's @champion over HTTP
        Program("scoring-service", [sys.executable, "-m", "pipelines.cli", "serve", "--host", "127.0.0.1",
                                    "--port", str(stack.serving_port),
                                    "--workers", env_default("SCORING_WORKERS", "1")], 100),
    ]


def mailbox_messages(stack) -> list:
    """The messages the local alerts mailbox received, oldest first (``email.message.EmailMessage``)."""
    import mailbox
    from email import message_from_bytes
    from email.policy import default

    folder = mailbox_folder(stack)
    if not (folder / "new").is_dir():
        return []
    box = mailbox.Maildir(folder, create=False)
    found = [message_from_bytes(box.get_bytes(key), policy=default) for key in box.keys()]
    return sorted(found, key=lambda m: (m["date"].datetime if m["date"] else 0, m["message-id"] or ""))
