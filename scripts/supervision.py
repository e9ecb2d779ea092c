"""Process supervision of the stack's services by supervisord (the ``supervisor`` package).

The stack describes its services as :class:`Program` values; this module writes them into
one supervisord configuration under the stack's ``run/`` folder, starts supervisord (which
daemonizes itself), and talks to it over its private Unix socket (mode 0700) with the
package's own XML-RPC transport. supervisord starts each program in its own process group,
restarts one that crashes, writes its output to ``logs/<name>.log``, and on stop signals the
whole group, escalating to SIGKILL after ``stop_wait`` seconds.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent

# supervisord's process states (supervisor.states.ProcessStates names)
RUNNING, STARTING, BACKOFF, FATAL, EXITED, STOPPED = "RUNNING", "STARTING", "BACKOFF", "FATAL", "EXITED", "STOPPED"


class SupervisionError(RuntimeError):
    """supervisord could not be started or reached; the message names its log."""


@dataclass(frozen=True)
class Program:
    """One long-running service: what to run, as whom, how to stop it."""

    name: str
    command: list[str]
    priority: int                  # start order (low first); stopped in reverse
    environment: dict[str, str] = field(default_factory=dict)   # on top of supervisord's own
    user: str | None = None
    directory: str | None = None
    stop_signal: str = "TERM"
    stop_wait: int = 30
    start_seconds: int = 2         # up this long counts as started
    start_retries: int = 3


def _quote(arg: str) -> str:
    """One argument for supervisord's shell-like command parser (``%`` escaped for its interpolation)."""

    return shlex.quote(arg).replace("%", "%%")


def render_config(programs: list[Program], run_dir: Path, log_dir: Path, identifier: str) -> str:
    """The supervisord configuration for ``programs`` (every program starts only when asked)."""
    lines = [
        "[unix_http_server]", f"file={run_dir / 'supervisor.sock'}", "chmod=0700", "",
        "[supervisord]", f"logfile={log_dir / 'supervisord.log'}", f"pidfile={run_dir / 'supervisord.pid'}",
        f"childlogdir={log_dir}", f"identifier={identifier}", "loglevel=info", "logfile_maxbytes=10MB",
        "umask=027",   # what the services write (lake, logs, artifacts, inbox errors) is not world-readable
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{run_dir / 'supervisor.sock'}", "",
    ]
    for p in programs:
        lines += [
            f"[program:{p.name}]",
            "command=" + " ".join(_quote(a) for a in p.command),
            f"priority={p.priority}", "autostart=false", "autorestart=unexpected", "exitcodes=0",
            f"startsecs={p.start_seconds}", f"startretries={p.start_retries}",
            f"stopsignal={p.stop_signal}", f"stopwaitsecs={p.stop_wait}", "stopasgroup=true", "killasgroup=true",
            f"stdout_logfile={log_dir / (p.name + '.log')}", "redirect_stderr=true",
            "stdout_logfile_maxbytes=20MB", "stdout_logfile_backups=2",
        ]
        if p.user:
            lines.append(f"user={p.user}")
        if p.directory:
            lines.append(f"directory={p.directory}")
        if p.environment:
            env = ",".join(f'{k}="{v}"'.replace("%", "%%") for k, v in p.environment.items())
            lines.append(f"environment={env}")
        lines.append("")
    return "\n".join(lines)


class Supervisor:
    """One supervisord instance, owned by one stack home."""

    def __init__(self, run_dir: Path, log_dir: Path, identifier: str):
        self.run_dir, self.log_dir, self.identifier = run_dir, log_dir, identifier

    @property
    def config_path(self) -> Path:
        return self.run_dir / "supervisord.conf"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "supervisor.sock"

    def rpc(self):
        """The ``supervisor`` namespace of supervisord's XML-RPC interface."""
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def running(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return self.rpc().getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            return False

    def pid(self) -> int | None:
        """supervisord's own pid while it runs."""
        return int(self.rpc().getPID()) if self.running() else None

    def ensure_started(self, programs: list[Program], env: dict[str, str]) -> None:
        """Write the configuration and start supervisord with ``env`` (inherited by every program);
        a running supervisord rereads the configuration instead."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o700)
        self.config_path.write_text(render_config(programs, self.run_dir, self.log_dir, self.identifier))
        if self.running():
            added, changed, removed = self.rpc().reloadConfig()[0]
            for name in removed + changed:
                self._stop_quietly(name)
                self.rpc().removeProcessGroup(name)
            for name in changed + added:
                self.rpc().addProcessGroup(name)
            return
        self.socket_path.unlink(missing_ok=True)
        out = subprocess.run([str(BIN / "supervisord"), "-c", str(self.config_path)], env=env,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise SupervisionError(f"supervisord failed to start: {out.stdout}{out.stderr}; "
                                   f"see {self.log_dir / 'supervisord.log'}")

    def _stop_quietly(self, name: str) -> None:
        try:
            self.rpc().stopProcess(name, True)
        except xmlrpc.client.Fault:
            pass  # not running

    def start(self, name: str) -> None:
        """Start one program unless it already runs (returns once it is past STARTING)."""
        info = self.rpc().getProcessInfo(name)
        if info["statename"] in (RUNNING, STARTING):
            return
        try:
            self.rpc().startProcess(name, True)
        except xmlrpc.client.Fault as exc:
            raise SupervisionError(f"{name} failed to start ({exc.faultString}); "
                                   f"see {self.log_dir / (name + '.log')}") from None

    def states(self) -> dict[str, dict]:
        """Every program's process info (state name, pid, exit status) by name."""
        if not self.running():
            return {}
        return {info["name"]: info for info in self.rpc().getAllProcessInfo()}

    def shutdown(self, order: list[str] | None = None) -> None:
        """Stop the programs named in ``order`` one after the other (each whole process group; the
        database last, so nothing loses it while stopping), then any other, then supervisord."""
        if not self.running():
            return
        rpc = self.rpc()
        for name in order or []:
            try:
                rpc.stopProcess(name, True)
            except xmlrpc.client.Fault:
                pass  # not running, or not a program of this configuration
        rpc.stopAllProcesses(True)
        rpc.shutdown()
