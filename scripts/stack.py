"""Start and stop the project's services on loopback, in one of two topologies.

``MLOPS_TOPOLOGY=embedded`` (default): a Spark Connect server on ``local[2]``, an MLflow
server on SQLite with local artifacts, Airflow (api-server, scheduler, dag-processor) on
SQLite with the LocalExecutor. State under ``$MLOPS_HOME`` (default ``<project>/.state``).

``MLOPS_TOPOLOGY=cluster``: the production shape on one machine. A private PostgreSQL
(installed from Debian's packages when missing) with one database for Airflow and one for
MLflow; a Spark standalone master and worker started from pyspark's own ``spark-class``, with
the Spark Connect server running as an application on that master; the MLflow tracking
server on PostgreSQL; Airflow's services on PostgreSQL. State under ``$MLOPS_HOME`` (default
``<project>/.stack``). The DAGs and pipelines are the same; only the environment differs.

Logs go to ``logs/<service>.log`` and pid files to ``run/<service>.pid``. Each service runs in
its own process group and is stopped by that group's id, so no child is left behind; state
(databases, artifacts, lake) stays in place, and ``up`` after ``down`` carries on from it.

    python -m scripts.stack up       # start (idempotent), wait until healthy
    python -m scripts.stack down     # stop everything this home started
    python -m scripts.stack status
    python -m scripts.stack env      # the environment, as shell exports
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from scripts.postgres import LocalPostgres, ensure_installed

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOPOLOGIES = ("embedded", "cluster")
DEFAULT_HOMES = {"embedded": ".state", "cluster": ".stack"}
SERVICES = ("spark-connect", "mlflow", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor")


class StackError(RuntimeError):
    """A service failed to start or to become healthy; the message names its log."""


class Stack:
    """One deployment on loopback: a topology, one folder of state, one set of ports."""

    def __init__(self, home: Path | None = None, airflow_port: int | None = None, mlflow_port: int | None = None,
                 spark_port: int | None = None, topology: str | None = None, postgres_port: int | None = None,
                 spark_master_port: int | None = None, spark_ui_port: int | None = None):
        env = os.environ
        self.topology = topology or env.get("MLOPS_TOPOLOGY") or "embedded"
        if self.topology not in TOPOLOGIES:
            raise StackError(f"MLOPS_TOPOLOGY={self.topology!r}: expected one of {', '.join(TOPOLOGIES)}")
        self.home = Path(home or env.get("MLOPS_HOME") or ROOT / DEFAULT_HOMES[self.topology]).resolve()
        self.airflow_port = int(airflow_port or env.get("MLOPS_AIRFLOW_PORT", 8080))
        self.mlflow_port = int(mlflow_port or env.get("MLOPS_MLFLOW_PORT", 5000))
        self.spark_port = int(spark_port or env.get("MLOPS_SPARK_CONNECT_PORT", 15002))
        self.spark_master_port = int(spark_master_port or env.get("MLOPS_SPARK_MASTER_PORT", 7077))
        # the worker's UI takes the next port
        self.spark_ui_port = int(spark_ui_port or env.get("MLOPS_SPARK_UI_PORT", 8090))
        self.postgres = LocalPostgres(self.home / "postgres", int(postgres_port or env.get("MLOPS_POSTGRES_PORT", 5433)))
        self.run_dir = self.home / "run"
        self.log_dir = self.home / "logs"

    @property
    def clustered(self) -> bool:
        return self.topology == "cluster"

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
    def spark_master_url(self) -> str:
        """``spark://`` URL of the standalone master (cluster topology)."""
        return f"spark://127.0.0.1:{self.spark_master_port}"

    @property
    def spark_master_ui(self) -> str:
        """The master's web UI; ``/json/`` lists workers and applications."""
        return f"http://127.0.0.1:{self.spark_ui_port}"

    def airflow_db_url(self) -> str:
        if self.clustered:
            return self.postgres.url("airflow", "postgresql+psycopg2")
        return env_default("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{self.airflow_home / 'airflow.db'}")

    def mlflow_backend_url(self) -> str:
        if self.clustered:
            return self.postgres.url("mlflow", "postgresql+psycopg2")
        return f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    def _secret(self) -> str:
        path = self.airflow_home / "stack-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip()

    @property
    def env_file(self) -> Path:
        """KEY=VALUE defaults saved with the state (the demo records its schedule window here)."""
        return self.home / "stack.env"

    def save_defaults(self, values: dict[str, str]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in sorted(values.items())))

    def env(self) -> dict[str, str]:
        """Environment shared by every service and task (a superset of os.environ)."""
        secret = self._secret()
        env = {}
        if self.env_file.exists():
            for line in self.env_file.read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip() and not key.startswith("#"):
                    env[key.strip()] = value.strip()
        env.update(os.environ)
        env.update({
            "MLOPS_HOME": str(self.home),
            "MLOPS_TOPOLOGY": self.topology,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "SPARK_REMOTE": f"sc://127.0.0.1:{self.spark_port}",
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": env_default("AIRFLOW__CORE__PARALLELISM", "4"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.airflow_db_url(),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.airflow_port),
            "AIRFLOW__API__BASE_URL": self.airflow_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secret,
            "AIRFLOW__API_AUTH__JWT_SECRET": secret,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "plugins"), env.get("PYTHONPATH")])),
        })
        return env

    # ----------------------------------------------------------------- processes
    def _services(self) -> dict[str, list[str]]:
        """Every service of the topology, in start order (stopped in reverse)."""
        spark_home = Path(__import__("pyspark").__file__).parent
        spark_class = str(spark_home / "bin" / "spark-class")
        mlflow_dir = self.home / "mlflow"
        services: dict[str, list[str]] = {}
        if self.clustered:
            bindir = ensure_installed()
            services["postgres"] = self.postgres.server_argv(bindir)
            services["spark-master"] = [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                        "--port", str(self.spark_master_port),
                                        "--webui-port", str(self.spark_ui_port)]
            services["spark-worker"] = [spark_class, "org.apache.spark.deploy.worker.Worker", self.spark_master_url,
                                        "--host", "127.0.0.1", "--webui-port", str(self.spark_ui_port + 1),
                                        "--cores", env_default("MLOPS_SPARK_WORKER_CORES", str(os.cpu_count() or 2)),
                                        "--memory", env_default("MLOPS_SPARK_WORKER_MEMORY", "4g"),
                                        "--work-dir", str(self.home / "spark" / "work")]
        master = self.spark_master_url if self.clustered else os.environ.get("MLOPS_SPARK_MASTER", "local[2]")
        services["spark-connect"] = [
            str(spark_home / "bin" / "spark-submit"),
            "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
            "--name", "mlops-spark-connect",
            "--master", master,
            "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
            "--conf", f"spark.connect.grpc.binding.port={self.spark_port}",
            "--conf", "spark.sql.shuffle.partitions=4",
            "--conf", "spark.ui.enabled=false",
            "--conf", f"spark.driver.memory={os.environ.get('MLOPS_SPARK_DRIVER_MEMORY', '2g')}",
            "--conf", f"spark.pyspark.python={sys.executable}",
        ]
        if self.clustered:
            services["spark-connect"] += [
                "--conf", f"spark.executor.memory={env_default('MLOPS_SPARK_EXECUTOR_MEMORY', '2g')}",
                "--conf", "spark.driver.host=127.0.0.1"]
        services["mlflow"] = [
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", self.mlflow_backend_url(),
            "--artifacts-destination", str(mlflow_dir / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1",
        ]
        services["airflow-api-server"] = [str(BIN / "airflow"), "api-server", "--port", str(self.airflow_port)]
        services["airflow-scheduler"] = [str(BIN / "airflow"), "scheduler"]
        services["airflow-dag-processor"] = [str(BIN / "airflow"), "dag-processor"]
        return services

    def infrastructure(self) -> list[str]:
        """Services the others depend on (cluster topology only), in start order."""
        return ["postgres", "spark-master", "spark-worker"] if self.clustered else []

    def service_names(self) -> list[str]:
        """Every service of the topology, in start order."""
        return self.infrastructure() + list(SERVICES)

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        path = self._pid_file(name)
        if not path.exists():
            return None
        pid = int(path.read_text().strip())
        _reap(pid)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            return None
        return pid

    def _start(self, name: str, argv: list[str], env: dict[str, str], **popen) -> None:
        if self.pid(name):
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=popen.pop("cwd", self.home), start_new_session=True, **popen)
        self._pid_file(name).write_text(str(proc.pid))

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
        self.status()  # forgets pid files of services that died since the last run
        (self.home / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)
        services = self._services()
        server_env = {k: v for k, v in env.items() if k != "SPARK_REMOTE"}  # the servers are not clients
        if self.clustered:
            bindir = ensure_installed()
            self.postgres.initialise(bindir)
            self._start("postgres", services["postgres"], {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8"},
                        cwd="/", **self.postgres.run_as())
            self.postgres.create_databases()
            (self.home / "spark" / "work").mkdir(parents=True, exist_ok=True)
            self._start("spark-master", services["spark-master"], server_env)
            self._start("spark-worker", services["spark-worker"], server_env)
            self._wait(timeout, {"spark-master": self._spark_workers_alive})
        self._start("spark-connect", services["spark-connect"], server_env)
        self._start("mlflow", services["mlflow"], env)
        if not self.pid("airflow-api-server"):
            self.migrate(env)
        for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor"):
            self._start(name, services[name], env)
        self.wait_healthy(timeout)
        print(f"stack ({self.topology}) up in {time.monotonic() - started:.1f}s: Airflow {self.airflow_url}, "
              f"MLflow {self.mlflow_url}, Spark Connect sc://127.0.0.1:{self.spark_port}"
              + (f" on {self.spark_master_url} (UI {self.spark_master_ui}), PostgreSQL 127.0.0.1:{self.postgres.port}"
                 if self.clustered else ""), flush=True)
        return self

    def spark_master_status(self) -> dict:
        """The standalone master's JSON status: workers, active and completed applications."""
        import urllib.request

        with urllib.request.urlopen(f"{self.spark_master_ui}/json/", timeout=3) as resp:
            return json.load(resp)

    def _spark_workers_alive(self) -> bool:
        try:
            return self.spark_master_status().get("aliveworkers", 0) > 0
        except Exception:
            return False

    def wait_healthy(self, timeout: float) -> None:
        checks = {
            "spark-connect": lambda: _port_open(self.spark_port),
            "mlflow": lambda: _http_ok(f"{self.mlflow_url}/health"),
            "airflow-api-server": lambda: _airflow_healthy(self.airflow_url),
        }
        if self.clustered:
            checks["postgres"] = self.postgres.ready
            checks["spark-master"] = self._spark_workers_alive
        self._wait(timeout, checks)

    def _wait(self, timeout: float, checks: dict) -> None:
        """Poll ``checks`` until all pass; fail fast, naming the log, when a service has exited."""
        deadline = time.monotonic() + timeout
        pending = dict(checks)
        while pending:
            for name, check in list(pending.items()):
                if check():
                    pending.pop(name)
            for name in self.service_names():
                if (self._pid_file(name).exists() or name in pending) and not self.pid(name):
                    raise StackError(f"{name} exited; see {self.log_dir / (name + '.log')}:\n{self.tail(name)}")
            if not pending:
                break
            if time.monotonic() > deadline:
                raise StackError(f"not healthy after {timeout:.0f}s: {sorted(pending)}; logs in {self.log_dir}")
            time.sleep(1)

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def down(self, grace: float = 30.0) -> None:
        """Stop every service of this home by process group, in reverse start order: SIGTERM
        (SIGINT, a fast shutdown, for PostgreSQL), then SIGKILL after ``grace`` seconds."""
        if not self.run_dir.exists():
            return
        for tier in (SERVICES[::-1], self.infrastructure()[::-1]):  # clients first, then what they need
            running = {n: p for n in tier if (p := self.pid(n))}
            for name, pid in running.items():
                _signal_group(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
            deadline = time.monotonic() + grace
            while running and time.monotonic() < deadline:
                running = {n: p for n, p in running.items() if _group_alive(p)}
                time.sleep(0.5)
            for pid in running.values():
                _signal_group(pid, signal.SIGKILL)
            for name in tier:
                self._pid_file(name).unlink(missing_ok=True)

    def status(self) -> dict[str, int | None]:
        return {name: self.pid(name) for name in self.service_names()}

    def admin_password(self) -> str:
        """Password of the generated ``admin`` user of Airflow's simple auth manager."""
        path = self.airflow_home / "simple_auth_manager_passwords.json.generated"
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        return json.loads(path.read_text())["admin"]


def env_default(key: str, default: str) -> str:
    return os.environ.get(key) or default


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is an exited child of this process (no zombie left)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _group_alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except Exception:
        return False


def _airflow_healthy(base: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=2) as resp:
            health = json.load(resp)
    except Exception:
        return False
    parts = ("metadatabase", "scheduler", "dag_processor")
    return all((health.get(p) or {}).get("status") == "healthy" for p in parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    args = parser.parse_args(argv)
    stack = Stack()
    if args.command == "up":
        stack.up()
        print(f"Airflow UI: {stack.airflow_url} (user admin, password {stack.admin_password()})")
        print(f"MLflow UI:  {stack.mlflow_url}")
    elif args.command == "down":
        stack.down()
        print("stack stopped")
    elif args.command == "status":
        for name, pid in stack.status().items():
            print(f"{name:24s} {'running (pid %d)' % pid if pid else 'stopped'}")
    else:
        for key, value in sorted(stack.env().items()):
            if key.startswith(("AIRFLOW", "MLOPS", "MLFLOW", "SPARK", "PYSPARK")):
                print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
