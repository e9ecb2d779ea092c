"""Deployment settings from the environment: defaults under MLOPS_HOME, empty means unset, and a
value that cannot be read is one line naming its variable."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.core.config import PROJECT_ROOT, Settings, SettingsError


def test_paths_left_unset_lie_under_home(tmp_path):
    s = Settings.from_env({"MLOPS_HOME": str(tmp_path), "MLOPS_LAKE": ""})
    assert (s.home, s.lake, s.reports, s.online_store) == (tmp_path, tmp_path / "lake", tmp_path / "reports",
                                                           tmp_path / "online")
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert s.include == PROJECT_ROOT / "include" and s.spark_master == "local[2]" and s.retry_delay_s == 20.0


def test_each_variable_is_read_with_its_type(tmp_path):
    s = Settings.from_env({"MLOPS_HOME": str(tmp_path), "MLOPS_LAKE": "/data/lake", "MLFLOW_TRACKING_URI": "http://m:5000",
                           "SPARK_REMOTE": "sc://s:15002", "MLOPS_RETRY_DELAY_S": "3", "MLOPS_SEARCH_JOBS": "0",
                           "MLOPS_SPARK_SHARED_SESSION": "off", "MLOPS_MODEL_THREADS": "2"})
    assert s.lake == Path("/data/lake") and s.mlflow_tracking_uri == "http://m:5000" and s.spark_remote == "sc://s:15002"
    assert s.retry_delay_s == 3.0 and s.search_jobs == 1 and s.spark_shared_session is False and s.model_threads == 2


@pytest.mark.parametrize("variable, value", [("MLOPS_RETRY_DELAY_S", "soon"), ("MLOPS_MODEL_THREADS", "0"),
                                             ("MLOPS_SPARK_SHARED_SESSION", "perhaps"),
                                             ("MLOPS_SERVING_POLL_S", "-1")])
def test_a_value_that_cannot_be_read_names_its_variable(variable, value):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: value})
    message = str(refused.value)
    assert message.startswith(f"{variable}: ") and repr(value) in message and "\n" not in message


def test_settings_follow_the_environment(monkeypatch, tmp_path):
    from pipelines.core.config import settings

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "a"))
    first = settings()
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "b"))
    assert first.home == tmp_path / "a" and settings().home == tmp_path / "b"
