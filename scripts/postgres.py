"""A private PostgreSQL server for the cluster stack: installed from Debian's packages when
missing, initialised under ``$MLOPS_HOME/postgres``, listening on loopback only, with one
database and one password-protected role per client (Airflow, MLflow).

Passwords are generated on first start and kept in ``postgres-credentials.json`` (mode 0600);
nothing has a default password. When the stack runs as root the server runs as the
``postgres`` system user, since PostgreSQL refuses to run as root.
"""
from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DATABASES = ("airflow", "mlflow")
ADMIN = "mlops_admin"


class PostgresError(RuntimeError):
    """PostgreSQL could not be installed, initialised or reached; the message says what to do."""


def bin_dir() -> Path | None:
    """Directory of ``postgres``/``initdb``: ``$MLOPS_POSTGRES_BIN``, Debian's layout, or ``PATH``."""
    configured = os.environ.get("MLOPS_POSTGRES_BIN")
    if configured:
        return Path(configured)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_major, reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("postgres")
    return Path(found).parent if found else None


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


def ensure_installed() -> Path:
    """Return the PostgreSQL bin directory, installing the server with apt-get when missing."""
    found = bin_dir()
    if found and (found / "initdb").exists():
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PostgresError("PostgreSQL server not found: install it (e.g. `apt-get install postgresql`) "
                            "or set MLOPS_POSTGRES_BIN to the folder holding `postgres` and `initdb`")
    # Debian's package would create and start a cluster of its own on 5432; ours is private.
    conf = Path("/etc/postgresql-common/createcluster.conf")
    text = conf.read_text() if conf.exists() else ""
    if not any(line.strip().startswith("create_main_cluster") for line in text.splitlines()):
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(text + "create_main_cluster = false\n")
    print("postgres: installing the server from Debian's packages (apt-get install postgresql)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
        out = subprocess.run(argv, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise PostgresError(f"{' '.join(argv)} failed:\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}")
    found = bin_dir()
    if not found:
        raise PostgresError("apt-get installed postgresql but no `postgres` binary was found")
    return found


def _check_traversable(path: Path) -> None:
    """The ``postgres`` user must be able to reach the data folder through every parent."""
    for parent in path.resolve().parents:
        if not os.stat(parent).st_mode & 0o001:
            raise PostgresError(f"{parent} is not traversable by the `postgres` user (mode "
                                f"{oct(os.stat(parent).st_mode & 0o777)}): choose an MLOPS_HOME whose "
                                f"parents are world-executable, or `chmod o+x {parent}`")


@dataclass
class LocalPostgres:
    """One PostgreSQL data directory under the stack's home, served on ``127.0.0.1:port``."""

    root: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def credentials_file(self) -> Path:
        """Beside the data folder, not in it: the server's user owns that folder, root owns this file."""
        return self.root.parent / "postgres-credentials.json"

    def run_as(self) -> dict:
        """``subprocess`` keyword arguments that drop root to the ``postgres`` user."""
        if os.geteuid() != 0:
            return {}
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresError("running as root needs the `postgres` system user (created by Debian's "
                                "postgresql package)") from exc
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def credentials(self) -> dict[str, str]:
        """Passwords of the admin role and of one role per database, generated on first use."""
        if not self.credentials_file.exists():
            self.credentials_file.parent.mkdir(parents=True, exist_ok=True)
            creds = {role: secrets.token_urlsafe(24) for role in (ADMIN, *DATABASES)}
            self.credentials_file.write_text(json.dumps(creds, indent=1))
            self.credentials_file.chmod(0o600)
        return json.loads(self.credentials_file.read_text())

    def url(self, database: str, driver: str = "postgresql") -> str:
        """SQLAlchemy URL of ``database`` for its own role."""
        return f"{driver}://{database}:{self.credentials()[database]}@127.0.0.1:{self.port}/{database}"

    def initialise(self, bindir: Path) -> None:
        """``initdb`` the data directory once (password auth on TCP, no Unix socket)."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        creds = self.credentials()
        self.data_dir.mkdir(parents=True, exist_ok=True)  # creates self.root too
        self.data_dir.chmod(0o700)
        pwfile = self.root / ".initdb-password"
        pwfile.write_text(creds[ADMIN])
        as_user = self.run_as()
        if as_user:
            _check_traversable(self.root)
            for path in (self.root, self.data_dir, pwfile):
                shutil.chown(path, "postgres", "postgres")
        try:
            out = subprocess.run([str(bindir / "initdb"), "-D", str(self.data_dir), "-U", ADMIN,
                                  f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
                                  "--locale=C.UTF-8"], capture_output=True, text=True, **as_user)
        finally:
            pwfile.unlink(missing_ok=True)
        if out.returncode != 0:
            raise PostgresError(f"initdb failed:\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}")

    def server_argv(self, bindir: Path) -> list[str]:
        return [str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                "-c", "max_connections=200", "-c", "shared_buffers=256MB"]

    def connect(self, database: str = "postgres", role: str = ADMIN):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, dbname=database, user=role,
                                password=self.credentials()[role], connect_timeout=3)

    def ready(self) -> bool:
        try:
            self.connect().close()
            return True
        except Exception:
            return False

    def create_databases(self, timeout: float = 60) -> None:
        """Create each client's role and database (idempotent); waits for the server first."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise PostgresError(f"PostgreSQL on 127.0.0.1:{self.port} not reachable after {timeout:.0f}s")
            time.sleep(0.5)
        conn = self.connect()
        conn.autocommit = True
        creds = self.credentials()
        with conn.cursor() as cur:
            for name in DATABASES:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
                if not cur.fetchone():
                    cur.execute(f'CREATE ROLE "{name}" LOGIN PASSWORD %s', (creds[name],))
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if not cur.fetchone():
                    cur.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
        conn.close()

    def query(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of one read-only query, as the database's own role."""
        conn = self.connect(database, role=database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()
