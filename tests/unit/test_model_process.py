"""The model process: versions are scored in a process of their own, give the same outputs as in
the service's process, a version that cannot score is refused, and a process that dies is replaced
with every version it held."""
import os
import signal

import numpy as np
import pandas as pd
import pytest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from pipelines.core.spec import TaskType
from pipelines.models.tasks import ModelTask
from pipelines.serving.model_process import ModelProcess, ModelProcessLost
from pipelines.serving.records import records_frame, to_json_rows

INPUTS = {"x": "double", "z": "double"}


def _model(shift: float):
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.normal(size=200), "z": rng.normal(size=200)})
    return make_pipeline(SimpleImputer(), LogisticRegression()).fit(X, (X["x"] + shift > 0).astype(int))


class Broken:
    """Unpickles fine, fails to score."""

    def predict_proba(self, frame):
        raise ValueError("this model cannot score")


@pytest.fixture
def process():
    models = ModelProcess("test", timeout_s=30)
    yield models
    models.close()


def test_versions_score_there_as_they_score_here_and_are_dropped_when_unloaded(process):
    task = ModelTask(TaskType.BINARY, (0, 1), 0.5)
    records = [{"x": 0.3, "z": -1.0}, {"x": -2.0, "z": None}, {"x": None, "z": 0.0}]
    one, two = _model(0.0), _model(1.5)
    process.load("v1", one, INPUTS, task, records)
    process.load("v2", two, INPUTS, task, records)
    assert process.pid is not None and process.pid != os.getpid()
    for key, model in (("v1", one), ("v2", two)):
        assert process.score(key, records) == to_json_rows(task.outputs(model, records_frame(records, INPUTS)))
    assert process.score("v1", records) != process.score("v2", records)
    process.unload("v1")
    with pytest.raises(KeyError):
        process.score("v1", records)
    pid = process.pid
    process.close()
    with pytest.raises(ModelProcessLost, match="closed"):
        process.score("v2", records)
    assert process.pid is None and not _alive(pid), "closed means stopped, and no new process"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_version_that_cannot_score_is_refused_with_its_error(process):
    task = ModelTask(TaskType.BINARY, (0, 1), 0.5)
    with pytest.raises(ValueError, match="cannot score"):
        process.load("broken", Broken(), INPUTS, task, [{"x": 1.0, "z": 1.0}])
    with pytest.raises(KeyError):
        process.score("broken", [{"x": 1.0, "z": 1.0}])


def test_a_process_that_dies_is_replaced_with_every_version_it_held(process):
    task = ModelTask(TaskType.BINARY, (0, 1), 0.5)
    records = [{"x": 0.5, "z": 0.5}]
    process.load("v1", _model(0.0), INPUTS, task, records)
    before, first = process.pid, process.score("v1", records)
    os.kill(before, signal.SIGKILL)
    assert process.score("v1", records) == first, "the call that found it dead was answered by the new one"
    assert process.pid not in (None, before) and process.restarts == 1


def test_a_lower_priority_process_runs_at_the_niceness_asked():
    low = ModelProcess("shadow", timeout_s=30, niceness=5)
    try:
        low.load("v1", _model(0.0), INPUTS, ModelTask(TaskType.BINARY, (0, 1), 0.5), [{"x": 0.0, "z": 0.0}])
        assert os.getpriority(os.PRIO_PROCESS, low.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)
    finally:
        low.close()
