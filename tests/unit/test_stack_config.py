"""The topology is chosen by configuration alone: what each one hands to the services."""
from __future__ import annotations

import json

import pytest

from scripts.stack import SERVICES_ENV, Stack, StackError, service_settings
from scripts.supervision import render_config


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("MLOPS_TOPOLOGY", "MLOPS_METADATA_DB", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        monkeypatch.delenv(var, raising=False)


def test_embedded_default_keeps_metadata_on_postgres(tmp_path):
    stack = Stack(home=tmp_path, postgres_port=6543)
    env = stack.env()
    creds = json.loads(stack.postgres.credentials_file.read_text())
    assert stack.topology == "embedded" and stack.metadata_db == "postgres"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
        f"postgresql+psycopg2://airflow:{creds['airflow']}@127.0.0.1:6543/airflow")
    assert stack.mlflow_backend_url() == f"postgresql+psycopg2://mlflow:{creds['mlflow']}@127.0.0.1:6543/mlflow"
    assert env["SPARK_REMOTE"] == f"sc://127.0.0.1:{stack.spark_port}"
    assert stack.service_names() == ["postgres", "alerts-mailbox", "spark-connect", "mlflow", "airflow-api-server",
                                     "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                                     "scoring-service"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "mlops_airflow.executors.PreloadingLocalExecutor"


def test_alerts_go_to_the_local_mailbox_until_a_team_names_its_own(tmp_path, monkeypatch):
    """The shipped specs' ``mlops_alerts`` channel: the stack's own SMTP mailbox (a Maildir under
    its home, messages bounded) unless the environment already holds that connection; either
    way the connection is a secret to `stack env`."""
    monkeypatch.delenv("AIRFLOW_CONN_MLOPS_ALERTS", raising=False)
    stack = Stack(home=tmp_path, alerts_port=2526)
    mailbox = {p.name: p for p in stack.programs()}["alerts-mailbox"].command
    assert mailbox[-1] == str(tmp_path / "alerts") and "127.0.0.1:2526" in mailbox
    assert mailbox[mailbox.index("--size") + 1] == str(1 << 20)
    ours = json.loads(stack.env()["AIRFLOW_CONN_MLOPS_ALERTS"])
    assert ours["conn_type"] == "apprise" and ours["extra"]["config"][0]["path"].startswith("mailto://127.0.0.1:2526?")
    assert stack.public_env()["AIRFLOW_CONN_MLOPS_ALERTS"] == "<redacted>"
    theirs = json.dumps({"conn_type": "apprise", "extra": {"config": [{"path": "slack://T0/B0/secret"}]}})
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_ALERTS", theirs)
    assert stack.env()["AIRFLOW_CONN_MLOPS_ALERTS"] == theirs


def test_sqlite_is_an_explicit_opt_in(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_METADATA_DB", "sqlite")
    stack = Stack(home=tmp_path)
    assert stack.env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")
    assert stack.mlflow_backend_url().startswith("sqlite:///")
    assert "postgres" not in stack.service_names()
    with pytest.raises(StackError, match="cluster topology keeps its metadata on PostgreSQL"):
        Stack(home=tmp_path, topology="cluster")


def test_cluster_adds_spark_standalone_redis_and_celery_workers(tmp_path):
    stack = Stack(home=tmp_path, topology="cluster", postgres_port=6543, redis_port=6390)
    names = stack.service_names()
    assert names[:6] == ["postgres", "redis", "alerts-mailbox", "spark-master", "spark-worker", "spark-worker-2"]
    assert {"airflow-worker-spark", "airflow-worker-models"} <= set(names)
    programs = {p.name: p for p in stack.programs()}
    assert stack.spark_master_url in programs["spark-connect"].command
    for name, queues in (("airflow-worker-spark", "default,spark"), ("airflow-worker-models", "default,models")):
        assert f"--queues {queues}" in " ".join(programs[name].command)
        assert programs[name].environment["MLOPS_WORKER_NAME"] == name
    env = stack.env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] == "mlops_airflow.celery_config.CELERY_CONFIG"
    assert env["AIRFLOW__CELERY__BROKER_URL"].endswith("@127.0.0.1:6390/0")
    assert ":" not in env["AIRFLOW__CELERY__RESULT_BACKEND"].split("@")[0].split("//")[1], "no password in the URL"
    # the broker's password: in a private file and the environment, never on a command line or shown
    config = stack.write_redis_config()
    assert oct(config.stat().st_mode & 0o777) == "0o600" and "requirepass" in config.read_text()
    password = config.read_text().split("requirepass ")[1].split()[0]
    assert not any(password in " ".join(p.command) for p in stack.programs())
    assert stack.public_env()["AIRFLOW__CELERY__BROKER_URL"] == "<redacted>"
    assert "LocalExecutor" in Stack(home=tmp_path / "e", topology="embedded").env()["AIRFLOW__CORE__EXECUTOR"]


def test_each_role_has_its_own_private_password(tmp_path):
    stack = Stack(home=tmp_path, topology="cluster")
    creds = stack.postgres.credentials()
    assert oct(stack.postgres.credentials_file.stat().st_mode & 0o777) == "0o600"
    assert len(set(creds.values())) == len(creds)
    assert Stack(home=tmp_path, topology="cluster").postgres.credentials() == creds, "stable across restarts"


def test_unknown_topology_or_metadata_db_is_refused(tmp_path):
    with pytest.raises(StackError, match="MLOPS_TOPOLOGY='kubernetes'"):
        Stack(home=tmp_path, topology="kubernetes")
    with pytest.raises(StackError, match="MLOPS_METADATA_DB='mysql'"):
        Stack(home=tmp_path, metadata_db="mysql")


def test_postgres_refuses_an_unreachable_home(tmp_path):
    """Running as root, the server's user must reach its data folder; the error says how."""
    from scripts import postgres

    private = tmp_path / "private"
    (private / "home").mkdir(parents=True)
    private.chmod(0o700)
    with pytest.raises(postgres.PostgresError, match="not traversable"):
        postgres._check_traversable(private / "home" / "postgres")


def test_service_settings_come_from_the_shared_file_and_the_environment(monkeypatch):
    text = SERVICES_ENV.read_text()
    assert "MLOPS_SPARK_SHUFFLE_PARTITIONS=" in text and "MLOPS_MLFLOW_ALLOWED_HOSTS=" in text
    monkeypatch.setenv("MLOPS_MLFLOW_WORKERS", "3")
    settings = service_settings()
    assert settings["MLOPS_MLFLOW_WORKERS"] == "3"
    assert settings["MLOPS_SPARK_SHUFFLE_PARTITIONS"] == [line.split("=", 1)[1] for line in text.splitlines()
                                                           if line.startswith("MLOPS_SPARK_SHUFFLE_PARTITIONS=")][0]


def test_programs_use_the_shared_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_SPARK_SHUFFLE_PARTITIONS", "7")
    monkeypatch.setenv("MLOPS_MLFLOW_ALLOWED_HOSTS", "example.internal")
    stack = Stack(home=tmp_path)
    commands = {p.name: p.command for p in stack.programs()}
    assert "spark.sql.shuffle.partitions=7" in commands["spark-connect"]
    mlflow = commands["mlflow"]
    assert mlflow[mlflow.index("--allowed-hosts") + 1] == "example.internal"
    assert mlflow[mlflow.index("--host") + 1] == "127.0.0.1"


def test_supervisor_config_stops_whole_groups_and_escapes_percent(tmp_path):
    stack = Stack(home=tmp_path)
    text = render_config(stack.programs(), tmp_path / "run", tmp_path / "logs", stack.identifier)
    assert text.count("stopasgroup=true") == text.count("killasgroup=true") == len(stack.programs())
    assert "chmod=0700" in text
    assert "[program:postgres]" in text and "stopsignal=INT" in text
    from scripts.supervision import Program

    odd = render_config([Program("x", ["echo", "100%"], 1)], tmp_path, tmp_path, "id")
    assert "command=echo 100%%" in odd


def test_stack_env_prints_no_secret(tmp_path, capsys, monkeypatch):
    """`python -m scripts.stack env` redacts the JWT secret and every password."""
    from scripts import stack as stack_module

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    stack = Stack(home=tmp_path)
    secrets = [stack._secret(), *stack.postgres.credentials().values()]
    assert stack_module.main(["env"]) == 0
    out = capsys.readouterr().out
    assert "AIRFLOW__API_AUTH__JWT_SECRET=" in out and "<redacted>" in out
    for secret in secrets:
        assert secret not in out


def test_secret_files_are_private(tmp_path):
    stack = Stack(home=tmp_path)
    stack._secret()
    stack.admin_password()
    for path in (stack.airflow_home / "stack-secret", stack.password_file):
        assert oct(path.stat().st_mode & 0o777) == "0o600", path


@pytest.mark.parametrize("variable, value", [("MLOPS_MLFLOW_PORT", "http"), ("MLOPS_SPARK_UI_PORT", "70000"),
                                             ("MLOPS_MLFLOW_WORKERS", "0"),
                                             ("MLOPS_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT", "a minute")])
def test_a_service_setting_that_cannot_be_read_is_one_line_naming_it(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(StackError) as refused:
        service_settings()
    message = str(refused.value)
    assert message.startswith(f"{variable}: ") and repr(value) in message and "\n" not in message


def test_an_empty_variable_keeps_the_shared_value(monkeypatch):
    monkeypatch.setenv("MLOPS_SPARK_SHUFFLE_PARTITIONS", "")
    from dotenv import dotenv_values

    assert service_settings()["MLOPS_SPARK_SHUFFLE_PARTITIONS"] == dotenv_values(SERVICES_ENV)["MLOPS_SPARK_SHUFFLE_PARTITIONS"]


def test_the_mailbox_keeps_a_message_and_refuses_one_over_its_size(tmp_path):
    """The stack's own mailbox command, started for real: an alert lands as a file in its Maildir;
    a 2 MB message is refused (552) and leaves nothing behind."""
    import smtplib
    import subprocess
    from email.message import EmailMessage

    from pipelines.core.waiting import wait_until
    from tests.conftest import free_port

    stack = Stack(home=tmp_path, alerts_port=free_port())
    command = {p.name: p for p in stack.programs()}["alerts-mailbox"].command
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def connect():
            return smtplib.SMTP("127.0.0.1", stack.alerts_port, timeout=5)

        smtp = wait_until(connect, timeout=30, interval=0.2, retry_on=(OSError,), what="the mailbox to listen")

        def message(body: str) -> EmailMessage:
            mail = EmailMessage()
            mail["From"], mail["To"], mail["Subject"] = "mlops@localhost", "team@localhost", "[churn dev] test"
            mail.set_content(body)
            return mail

        with smtp:
            smtp.send_message(message("a small alert"))
            with pytest.raises(smtplib.SMTPException) as refused:
                smtp.send_message(message("x" * (2 << 20)))
        assert "552" in str(refused.value) or getattr(refused.value, "smtp_code", None) == 552
        kept = list((tmp_path / "alerts" / "new").iterdir())
        assert len(kept) == 1 and "a small alert" in kept[0].read_text()
    finally:
        server.terminate()
        server.wait(timeout=10)
