"""Security defaults of the running embedded stack (the shared story's stack), checked live."""
from __future__ import annotations

import ipaddress
import stat
import urllib.error
import urllib.request

import psutil
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("in_story")]


def test_api_refuses_unauthenticated_requests(story):
    stack = story["stack"]
    for path in ("/api/v2/dags", "/api/v2/dags/churn_flow_daily/dagRuns", "/api/v2/variables"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{stack.airflow_url}{path}", timeout=10)
        assert err.value.code in (401, 403), path
    with pytest.raises(PermissionError):
        from scripts.airflow_api import AirflowClient

        AirflowClient(stack.airflow_url, "admin", "not-the-password")


def test_every_listener_is_on_loopback(story):
    stack = story["stack"]
    procs = stack.leftover_processes()   # every process started for this stack, running now
    assert len(procs) >= len([pid for pid in stack.status().values() if pid])
    listening = []
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                listening.append((proc.name(), conn.laddr.ip, conn.laddr.port))
    assert listening, "found no listener at all"
    for name, ip, port in listening:
        address = ipaddress.ip_address(ip)
        if getattr(address, "ipv4_mapped", None):
            address = address.ipv4_mapped
        assert address.is_loopback, f"{name} listens on {ip}:{port}"


def test_secret_files_are_readable_by_their_owner_only(story):
    stack = story["stack"]
    secret_files = [stack.password_file, stack.airflow_home / "stack-secret", stack.postgres.credentials_file,
                    stack.postgres.pgpass_path, stack.supervisor.socket_path]
    for path in secret_files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is mode {oct(mode)}"
    assert stat.S_IMODE(stack.postgres.data_dir.stat().st_mode) == 0o700, "PostgreSQL's data folder"
    assert not (stack.airflow_home / "simple_auth_manager_passwords.json.generated").exists()


def test_no_secret_on_any_command_line(story):
    """Any local user reads every process's arguments (`ps`): no password, token or key may be there."""
    stack = story["stack"]
    secrets = [v for v in stack.postgres.credentials().values()]
    secrets += [stack.admin_password(), (stack.airflow_home / "stack-secret").read_text().strip()]
    procs = stack.leftover_processes()
    assert any("mlflow" in " ".join(p.cmdline()) for p in procs), "the MLflow server is part of the stack"
    for proc in procs:
        try:
            line = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for secret in secrets:
            assert secret not in line, f"a secret on the command line of {proc.name()} (pid {proc.pid})"


def test_what_the_services_write_is_not_world_readable(story):
    """Files the stack's services wrote (task logs, MLflow's artifacts, the alerts mailbox's mails)
    are closed to other users."""
    stack = story["stack"]
    written = [p for p in (stack.airflow_home / "logs").rglob("*.log")][:50]
    written += [p for p in (stack.home / "mlflow" / "artifacts").rglob("*") if p.is_file()][:50]
    alerts = [p for p in (stack.home / "alerts").rglob("*") if p.is_file()][:20]   # the local mailbox's mails
    assert written and alerts, "the story wrote files and sent alerts"
    written += alerts
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0, f"{path} is world-readable"
