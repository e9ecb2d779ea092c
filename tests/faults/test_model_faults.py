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

from pipelines import runtime
from pipelines.core.lake import read_partition
from pipelines.models import tracking
from tests.conftest import assert_trainings_took_turns, new_version

pytestmark = [pytest.mark.faults, pytest.mark.spark]
ROOT = Path(__file__).resolve().parents[2]


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
    version = new_version(small_spec, restore_champion)
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
    from pipelines.release import decision, gate
    uc, name = lifecycle["use_case"], small_spec.model.registered_name
    challenger_version = new_version(small_spec, restore_champion)
    intruder = new_version(small_spec, restore_champion)
    real = tracking.resolve_alias
    calls = {"n": 0}

    def moving(model, alias=tracking.CHAMPION):
        calls["n"] += 1
        if calls["n"] == 2:   # between the evaluation and the compare-and-set, another run promotes
            tracking.client().set_registered_model_alias(name, tracking.CHAMPION, intruder)
        return real(model, alias)

    monkeypatch.setattr(tracking, "resolve_alias", moving)
    monkeypatch.setattr(gate, "decide_promotion", lambda *a, **k: decision.PromotionDecision(
        True, "forced win for the test", "roc_auc", 0.9, 0.5, restore_champion.version))
    with pytest.raises(decision.PromotionConflict, match=f"champion moved to v{intruder}"):
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


@pytest.mark.parametrize("fails", ["after registering", "between logging and registering"])
def test_a_retried_training_of_the_same_airflow_run_leaves_one_version(lifecycle, small_spec, mlflow_server,
                                                                      monkeypatch, fails):
    """A training task that fails late (after its version is registered, or after its model is
    logged whole) and is retried registers no second version and fits nothing again: the retry
    hands on the version (and MLflow run) the first try produced, with @challenger on it."""
    from pipelines.training import fit as training
    uc, name = lifecycle["use_case"], small_spec.model.registered_name
    airflow_run = f"manual__retry-{fails.split()[0]}"
    experiment = tracking.ensure_experiment(f"{uc}-training")
    real_register = tracking.register_challenger

    def failing_register(*args, **kwargs):
        if fails == "after registering":
            real_register(*args, **kwargs)
        raise RuntimeError("worker lost")

    monkeypatch.setattr(tracking, "register_challenger", failing_register)
    with pytest.raises(RuntimeError, match="worker lost"):
        runtime.train(uc, lifecycle["first_training"], "retry test", "manual", run_id=airflow_run)
    monkeypatch.undo()
    [first_run] = tracking.client().search_runs([experiment], f"tags.airflow_run_id = '{airflow_run}'")

    def no_fit(*args, **kwargs):
        raise AssertionError("the retry fitted a model again")

    monkeypatch.setattr(training, "fit_model", no_fit)
    retried = runtime.train(uc, lifecycle["first_training"], "retry test", "manual", run_id=airflow_run)
    again = runtime.train(uc, lifecycle["first_training"], "retry test", "manual", run_id=airflow_run)   # a rerun
    versions = tracking.client().search_model_versions(f"name = '{name}' and tags.airflow_run_id = '{airflow_run}'")
    assert [v.version for v in versions] == [retried["version"]] and again["version"] == retried["version"]
    assert retried["run_id"] == again["run_id"] == first_run.info.run_id
    assert len(tracking.client().search_runs([experiment], f"tags.airflow_run_id = '{airflow_run}'")) == 1
    assert tracking.resolve_alias(name, tracking.CHALLENGER).version == retried["version"]
    assert retried["as_of"] == str(lifecycle["first_training"])
    assert retried["metrics"][small_spec.promotion.metric.value] == pytest.approx(
        first_run.data.metrics[f"holdout_{small_spec.promotion.metric.value}"])
    tags = tracking.client().get_model_version(name, retried["version"]).tags
    assert tags["airflow_run_id"] == airflow_run and tags["as_of"] == str(lifecycle["first_training"])


def _promote_by_hand(name: str, version: str) -> None:
    """What a promotion records, without evaluating: the alias and the champion tags."""
    import datetime as dt

    tracking.move_champion(name, version, None, dt.datetime.now(dt.timezone.utc).isoformat())


def _mlops(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from pipelines.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_cli_rollback_moves_the_champion_back_and_the_next_scoring_uses_it(lifecycle, small_spec, restore_champion):
    from pipelines.report import champion_history

    uc, name, day = lifecycle["use_case"], small_spec.model.registered_name, _scored_day(lifecycle)
    _promote_by_hand(name, restore_champion.version)   # earlier cases moved the alias back without a record
    newer = new_version(small_spec, restore_champion)
    _promote_by_hand(name, newer)
    code, out, err = _mlops("rollback", uc, "--reason", "complaints since the new model", "--by", "on-call")
    assert code == 0, err
    done = json.loads(out)
    assert (done["from_version"], done["to_version"]) == (newer, restore_champion.version)
    assert tracking.resolve_alias(name, tracking.CHAMPION).version == restore_champion.version
    runtime.score(uc, day, runtime.resolve_champion(uc), "after-rollback")
    assert set(read_partition(runtime.lake().inference(uc), day)["model_version"]) == {restore_champion.version}
    history = {row["version"]: row for row in champion_history(small_spec)}
    assert "on-call: complaints since the new model" in history[newer]["rolled_back"]
    assert f"rolled back from v{newer} by on-call" in history[restore_champion.version]["rollback"]
    # refused, with the alias left alone: a version that never served, and no reason
    code, _, err = _mlops("rollback", uc, "--reason", "try", "--to", "99999")
    assert code == 1 and "v99999 was never champion" in err
    code, _, err = _mlops("rollback", uc, "--reason", " ")
    assert code == 1 and "needs a reason" in err
    assert tracking.resolve_alias(name, tracking.CHAMPION).version == restore_champion.version


def test_rollback_to_a_version_whose_files_are_gone_is_refused(lifecycle, small_spec, mlflow_server,
                                                                restore_champion):
    import mlflow

    uc, name = lifecycle["use_case"], small_spec.model.registered_name
    with mlflow.start_run(experiment_id=tracking.ensure_experiment(f"{uc}-faults")) as run:
        mlflow.log_artifacts(mlflow.artifacts.download_artifacts(
            tracking.client().get_model_version(name, restore_champion.version).source), "model")
    gone = str(mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version)
    _promote_by_hand(name, gone)                  # it served once ...
    _promote_by_hand(name, restore_champion.version)
    for path in [p for p in mlflow_server.artifacts.rglob(run.info.run_id) if p.is_dir()]:
        shutil.rmtree(path)                       # ... and its files are gone now
    code, _, err = _mlops("rollback", uc, "--reason", "back to the old one", "--to", gone)
    assert code == 1 and f"cannot roll back to v{gone}" in err and "missing or unreadable" in err
    assert tracking.resolve_alias(name, tracking.CHAMPION).version == restore_champion.version
