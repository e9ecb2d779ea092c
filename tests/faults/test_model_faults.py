"""Faults around the model registry and the tracking server, on the lifecycle the e2e tests played
(tests/conftest.py ``lifecycle``: a real MLflow server, real Spark). Each case states what must
hold afterwards and checks it against the lake and the registry, then restores the champion.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipelines import runtime, tracking
from pipelines.lake import read_partition
from tests.conftest import assert_trainings_took_turns

pytestmark = [pytest.mark.faults, pytest.mark.spark]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def restore_champion(lifecycle, small_spec):
    """Whatever a case does to the alias, the champion of the lifecycle is put back afterwards."""
    name = small_spec.model.registered_name
    before = tracking.resolve_alias(name, tracking.CHAMPION)
    yield before
    tracking.client().set_registered_model_alias(name, tracking.CHAMPION, before.version)
    tracking.record_champion(name, before.version)


def _new_version(small_spec, champion) -> str:
    """Another registered version of the champion's model (same run, same files)."""
    import mlflow

    tracking.configure()
    source = tracking.client().get_model_version(small_spec.model.registered_name, champion.version).source
    return str(mlflow.register_model(source, small_spec.model.registered_name).version)


def _scored_day(lifecycle) -> dt.date:
    return max(lifecycle["scored"])


def test_mlflow_down_fails_fast_naming_the_uri_and_writes_nothing(lifecycle, small_spec, mlflow_server):
    """Scoring and training fail within seconds, naming the tracking URI; nothing partial is
    written; both succeed once the server is back."""
    uc, day = lifecycle["use_case"], _scored_day(lifecycle)
    table = runtime.lake().inference(uc)
    before = read_partition(table, day)
    versions_before = len(tracking.client().search_model_versions(f"name = '{small_spec.model.registered_name}'"))
    mlflow_server.stop()
    try:
        for step in (lambda: runtime.resolve_champion(uc),
                     lambda: runtime.score(uc, day, lifecycle["champion"], "while-mlflow-down"),
                     lambda: runtime.train(uc, lifecycle["first_training"], "while mlflow is down", "manual")):
            started = time.monotonic()
            with pytest.raises(tracking.TrackingUnavailable, match=mlflow_server.url):
                step()
            assert time.monotonic() - started < 30, "must fail in seconds, not after retries or a fit"
        pd.testing.assert_frame_equal(read_partition(table, day), before)
    finally:
        mlflow_server.start()
    assert runtime.score(uc, day, lifecycle["champion"], "after-mlflow-back") == len(before)
    assert set(read_partition(table, day)["run_id"]) == {"after-mlflow-back"}
    assert len(tracking.client().search_model_versions(
        f"name = '{small_spec.model.registered_name}'")) == versions_before, "no version from the failed run"


def test_champion_with_missing_artifacts_fails_before_writing(lifecycle, small_spec, mlflow_server,
                                                              restore_champion):
    uc, day = lifecycle["use_case"], _scored_day(lifecycle)
    name = small_spec.model.registered_name
    # a registered version whose files are gone: copy the model files to a new run, then delete them
    import mlflow

    with mlflow.start_run(experiment_id=tracking.ensure_experiment(f"{uc}-faults")) as run:
        mlflow.log_artifacts(mlflow.artifacts.download_artifacts(
            tracking.client().get_model_version(name, restore_champion.version).source), "model")
    mv = mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
    version = str(mv.version)
    experiment_dirs = [p for p in mlflow_server.artifacts.rglob(run.info.run_id) if p.is_dir()]
    assert experiment_dirs, "the run's artifacts are on the server's disk"
    for path in experiment_dirs:
        shutil.rmtree(path)
    tracking.client().set_registered_model_alias(name, tracking.CHAMPION, version)
    champion = runtime.resolve_champion(uc)
    before = read_partition(runtime.lake().inference(uc), day)
    with pytest.raises(tracking.ModelArtifactsMissing) as err:
        runtime.score(uc, day, champion, "missing-artifacts")
    message = str(err.value)
    assert f"{name} v{version}" in message and "missing or unreadable" in message
    assert "No such artifact: ''" not in message
    pd.testing.assert_frame_equal(read_partition(runtime.lake().inference(uc), day), before)


def test_lost_champion_fails_loudly_never_skips(lifecycle, small_spec, restore_champion):
    """A promoted champion whose version is deleted is not 'no champion yet'."""
    uc, name = lifecycle["use_case"], small_spec.model.registered_name
    version = _new_version(small_spec, restore_champion)
    tracking.client().set_registered_model_alias(name, tracking.CHAMPION, version)
    tracking.record_champion(name, version)
    tracking.client().delete_model_version(name, version)
    with pytest.raises(tracking.ChampionLost, match=f"{name}@champion .* v{version} is no longer in the registry"):
        runtime.resolve_champion(uc)
    assert tracking.resolve_champion("never_promoted_model") is None, "never promoted: no champion yet"


def test_alias_moved_during_evaluation_is_a_truthful_conflict(lifecycle, small_spec, restore_champion,
                                                              monkeypatch):
    """Compare-and-set: if the champion moves while a challenger is evaluated, the alias is left
    alone and the challenger's tags say 'conflict', never 'promoted'."""
    from pipelines import evaluation

    uc, name = lifecycle["use_case"], small_spec.model.registered_name
    challenger_version = _new_version(small_spec, restore_champion)
    intruder = _new_version(small_spec, restore_champion)
    real = tracking.resolve_alias
    calls = {"n": 0}

    def moving(model, alias=tracking.CHAMPION):
        calls["n"] += 1
        if calls["n"] == 2:   # between the evaluation and the compare-and-set, another run promotes
            tracking.client().set_registered_model_alias(name, tracking.CHAMPION, intruder)
        return real(model, alias)

    monkeypatch.setattr(tracking, "resolve_alias", moving)
    monkeypatch.setattr(evaluation, "decide_promotion", lambda *a, **k: evaluation.PromotionDecision(
        True, "forced win for the test", "roc_auc", 0.9, 0.5, restore_champion.version))
    with pytest.raises(evaluation.PromotionConflict, match=f"champion moved to v{intruder}"):
        runtime.promote(uc, {"version": challenger_version}, lifecycle["first_training"])
    tags = tracking.client().get_model_version(name, challenger_version).tags
    assert tags["promotion.decision"] == "conflict" and "champion moved" in tags["promotion.reason"]
    assert "champion.since" not in tags
    assert real(name, tracking.CHAMPION).version == intruder, "the alias was not overwritten"


def test_two_cli_trainings_at_once_run_one_after_the_other(lifecycle, small_spec, mlflow_server, restore_champion):
    """Two `mlops train` at once: the training lock makes them take turns; every new version has a
    truthful decision, and the alias points at the last promoted one (or stayed)."""
    uc, name = lifecycle["use_case"], small_spec.model.registered_name
    c = tracking.client()
    known = {v.version for v in c.search_model_versions(f"name = '{name}'")}
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    argv = [sys.executable, "-m", "pipelines.cli", "train", uc, "--as-of", lifecycle["first_training"].isoformat()]
    procs = [subprocess.Popen(argv + ["--reason", f"concurrent {i}"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outputs]
    new = assert_trainings_took_turns(name, known, restore_champion.version)
    assert len(new) == 2
    results = [json.loads(out) for out, _ in outputs]
    assert {r["challenger"]["version"] for r in results} == {v.version for v in new}
