"""Shared fixtures: isolated state, a small variant of the churn spec, a local Spark session."""
from __future__ import annotations

import copy
import datetime as dt
import os
import shutil
import socket
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHURN = ROOT / "include" / "churn"

# Nothing from the developer's shell may leak into the tests' deployment.
for _var in ("SPARK_REMOTE", "MLFLOW_TRACKING_URI", "MLOPS_LAKE", "MLOPS_REPORTS", "MLOPS_SCHEDULE_END",
             "MLOPS_MLFLOW_ARTIFACTS", "MLOPS_INCLUDE"):
    os.environ.pop(_var, None)


def small_spec_dict(name: str = "churn_small", **simulation) -> dict:
    """The churn spec, renamed and shrunk for fast tests (same features, rules and model family)."""
    raw = yaml.safe_load((CHURN / "spec.yaml").read_text())
    spec = copy.deepcopy(raw)
    spec["name"] = name
    spec["model"]["registered_name"] = f"{name}_classifier"
    spec["model"]["params"] = {"random_state": 7, "max_iter": 60}
    spec["model"]["search_space"] = {"max_leaf_nodes": [15]}
    spec["model"]["cv_folds"] = 2
    spec["training"].update({"window_days": 20, "holdout_days": 3, "reference_rows": 1000})
    spec["promotion"]["floor"] = 0.55
    spec["simulation"].update({"customers": 400, "days": 30, "drift_start": "2026-01-24",
                               "first_training": "2026-01-20"})
    spec["simulation"].update(simulation)
    return spec


def free_port(pair: bool = False) -> int:
    """A free loopback port (with ``pair``, one whose successor is free too)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not pair:
            return port
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port + 1)) != 0:
                return port


def write_spec(include: Path, spec: dict) -> Path:
    folder = include / spec["name"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(CHURN / "expectations.yaml", folder / "expectations.yaml")
    return folder


@pytest.fixture(scope="session")
def state_home(tmp_path_factory) -> Path:
    """MLOPS_HOME of the test session, with a small spec in its own include folder."""
    home = tmp_path_factory.mktemp("mlops-home")
    include = home / "include"
    write_spec(include, small_spec_dict())
    os.environ["MLOPS_HOME"] = str(home)
    os.environ["MLOPS_INCLUDE"] = str(include)
    os.environ["MLOPS_SPARK_MASTER"] = "local[2]"
    from pipelines import runtime

    runtime._specs.cache_clear()
    return home


@pytest.fixture(scope="session")
def small_spec(state_home):
    from pipelines import runtime

    return runtime.spec("churn_small")


@pytest.fixture(scope="session")
def spark(state_home):
    from pipelines import runtime

    session = runtime.spark("tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def validator_factory():
    """Validators are costly to build (GX context); one per (spec, lake)."""
    cache = {}

    def make(spec, lake):
        from pipelines.validation import PartitionValidator

        key = (spec.name, str(lake.root))
        if key not in cache:
            cache[key] = PartitionValidator(spec, lake)
        return cache[key]

    return make


def days(start: str, n: int) -> list[dt.date]:
    first = dt.date.fromisoformat(start)
    return [first + dt.timedelta(days=i) for i in range(n)]
