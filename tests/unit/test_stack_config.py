"""The topology is chosen by configuration alone: what each one hands to the services."""
from __future__ import annotations

import json

import pytest

from scripts.stack import Stack, StackError


def test_embedded_is_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv("MLOPS_TOPOLOGY", raising=False)
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", raising=False)
    stack = Stack(home=tmp_path)
    env = stack.env()
    assert stack.topology == "embedded" and stack.infrastructure() == []
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")
    assert env["SPARK_REMOTE"] == f"sc://127.0.0.1:{stack.spark_port}"
    assert stack.mlflow_backend_url().startswith("sqlite:///")


def test_cluster_puts_airflow_and_mlflow_on_postgres(tmp_path):
    stack = Stack(home=tmp_path, topology="cluster", postgres_port=6543)
    env = stack.env()
    creds = json.loads(stack.postgres.credentials_file.read_text())
    assert env["MLOPS_TOPOLOGY"] == "cluster"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
        f"postgresql+psycopg2://airflow:{creds['airflow']}@127.0.0.1:6543/airflow")
    assert stack.mlflow_backend_url() == f"postgresql+psycopg2://mlflow:{creds['mlflow']}@127.0.0.1:6543/mlflow"
    assert stack.service_names()[:3] == ["postgres", "spark-master", "spark-worker"]
    assert oct(stack.postgres.credentials_file.stat().st_mode & 0o777) == "0o600"
    assert len(set(creds.values())) == len(creds), "each role has its own password"


def test_credentials_are_stable_across_restarts(tmp_path):
    first = Stack(home=tmp_path, topology="cluster").postgres.credentials()
    assert Stack(home=tmp_path, topology="cluster").postgres.credentials() == first


def test_unknown_topology_is_refused(tmp_path):
    with pytest.raises(StackError, match="MLOPS_TOPOLOGY='kubernetes'"):
        Stack(home=tmp_path, topology="kubernetes")


def test_postgres_refuses_an_unreachable_home(tmp_path):
    """Running as root, the server's user must reach its data folder; the error says how."""
    from scripts import postgres

    private = tmp_path / "private"
    (private / "home").mkdir(parents=True)
    private.chmod(0o700)
    with pytest.raises(postgres.PostgresError, match="not traversable"):
        postgres._check_traversable(private / "home" / "postgres")
