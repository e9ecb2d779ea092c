"""The lifecycle on small data with real Spark, an MLflow tracking server, Great Expectations and Evidently,
called the way the DAG tasks call it (pipelines.runtime), without Airflow."""
import datetime as dt

import pandas as pd
import pytest

from pipelines import runtime
from pipelines.core.lake import list_partitions, read_partition, read_table
from pipelines.models import tracking
from pipelines.models.tasks import ModelTask
from tests.conftest import assert_scored_compiled_as_scikit_learn

pytestmark = [pytest.mark.e2e, pytest.mark.spark]
UC = "churn_small"
BROKEN = dt.date(2026, 1, 12)   # tests/conftest.py: BROKEN_DAY


@pytest.fixture(scope="module")
def played(lifecycle):
    return lifecycle


def test_broken_day_is_stopped_and_quarantined(played, small_spec):
    lake = runtime.lake()
    assert list(played["failures"]) == [BROKEN]
    message = played["failures"][BROKEN]
    assert "column 'channel'" in message and "expect_column_values_to_be_in_set" in message
    assert "carrier-pigeon" in message
    assert BROKEN.isoformat() not in list_partitions(lake.clean(UC, "transactions"))
    assert BROKEN.isoformat() in list_partitions(lake.quarantine(UC, "transactions"))
    assert BROKEN.isoformat() not in list_partitions(lake.features(UC))
    # the next day refused to build features from a window missing the broken day, naming it,
    # until the lost day was declared in the spec
    assert "transactions 2026-01-12 (rejected)" in played["refused"][BROKEN + dt.timedelta(days=1)]
    neighbours = {(BROKEN - dt.timedelta(days=1)).isoformat(), (BROKEN + dt.timedelta(days=1)).isoformat()}
    assert neighbours <= set(list_partitions(lake.features(UC)))


def test_first_model_is_registered_tracked_and_promoted(played, small_spec):
    challenger, decision, champion = played["challenger"], played["decision"], played["champion"]
    assert challenger["model_uri"] == f"models:/{small_spec.model.registered_name}/{challenger['version']}"
    assert decision["promoted"] and "first model" in decision["reason"]
    assert champion["version"] == challenger["version"]
    c = tracking.client()
    mv = c.get_model_version(small_spec.model.registered_name, challenger["version"])
    assert mv.tags["promotion.decision"] == "promoted" and "floor" in mv.tags["promotion.reason"]
    assert mv.tags["trigger"] == "manual"
    assert tracking.resolve_alias(small_spec.model.registered_name, "challenger").version == challenger["version"]
    run = c.get_run(challenger["run_id"])
    assert run.data.tags["training_data_digest"] and run.data.metrics["holdout_roc_auc"] > 0.5
    artifacts = {a.path for a in c.list_artifacts(challenger["run_id"], "plots")}
    assert {"plots/roc_curve.png", "plots/confusion_matrix.png"} <= artifacts
    assert run.inputs.dataset_inputs, "training data identity is logged as an MLflow dataset"


def test_the_gate_records_every_check_explanations_and_a_model_card(played, small_spec):
    from pathlib import Path

    from pipelines.report import summarize

    name, version = small_spec.model.registered_name, played["challenger"]["version"]
    checks = read_table(runtime.lake().monitoring(UC, "promotion_checks"))
    mine = checks[checks["model_version"] == version]
    wanted = {f"holdout_{small_spec.promotion.metric.value}"} | {c.name for c in small_spec.promotion.checks}
    assert set(mine["check"]) == wanted and len(wanted) >= 6
    assert set(mine["status"]) <= {"passed", "failed", "not_judged", "info"}
    slices = mine[mine["kind"] == "slices"]
    assert {s.split("=")[0] for s in slices["subject"]} == {"segment", "region"}
    latency = mine[(mine["kind"] == "latency") & (mine["subject"] == "single_row_p99_ms")]
    assert latency["value"].item() > 0 and latency["threshold"].item() == 250
    c = tracking.client()
    mv = c.get_model_version(name, version)
    assert {f"gate.check.{n}" for n in wanted} <= set(mv.tags) and mv.tags["gate.decision"] == "passed"
    run = c.get_run(played["challenger"]["run_id"])
    assert len(run.data.tags["code_version"].removesuffix("+dirty")) == 40        # the git commit
    artifacts = {a.path for folder in ("explanations", "gate", "model_card") for a in c.list_artifacts(run.info.run_id,
                                                                                                     folder)}
    assert {"explanations/shap_bar.png", "explanations/shap_beeswarm.png", "explanations/importance.json",
            "gate/checks.json", "gate/calibration.png", "model_card/model_card.html"} <= artifacts
    card = Path(mv.description.split("Model card: ")[1].split(" ")[0])
    html = card.read_text()
    assert card.name == "model_card.html" and html.count("data:image/png;base64,") >= 3
    assert all(n in html for n in wanted) and "Decision: promoted" in html
    summary = summarize(small_spec)
    assert "gate passed" in summary and str(card) in summary and "promotion_checks" in summary


def test_inference_table_rows(played, small_spec):
    lake = runtime.lake()
    day = played["first_training"]
    rows = read_partition(lake.inference(UC), day)
    assert len(rows) == played["scored"][day] > 0
    assert rows["customer_id"].is_unique
    assert set(rows["model_version"]) == {played["champion"]["version"]}
    assert rows["score"].between(0, 1).all() and set(rows["run_id"]) == {f"run-{day}"}
    features = read_partition(lake.features(UC), day)
    assert set(rows["customer_id"]) == set(features["customer_id"])
    # the churn spec's pipeline (quantile bins, text columns) was compiled and scored as scikit-learn does
    assert_scored_compiled_as_scikit_learn(small_spec, ModelTask.of(small_spec), played["champion"], day, rows)


def test_monitoring_tables_and_reports(played, small_spec, state_home):
    lake = runtime.lake()
    drift = read_table(lake.monitoring(UC, "drift_summary"))
    assert sorted(drift["ds"]) == sorted(d.isoformat() for d in played["scored"])
    drift_start = small_spec.simulation.drift_start
    before = drift[drift["ds"] < drift_start.isoformat()]["drift_share"].mean()
    after = drift[drift["ds"] >= (drift_start + dt.timedelta(days=3)).isoformat()]["drift_share"]
    assert after.mean() > before, "the simulated drift shows in the monitoring table"
    assert (state_home / "reports" / UC / "drift" / f"{played['first_training']}.html").exists()
    perf = read_table(lake.monitoring(UC, "performance"))
    assert len(perf) and set(perf["model_version"]) == {played["champion"]["version"]}


def test_reruns_are_idempotent(played, small_spec):
    lake = runtime.lake()
    day = played["first_training"] + dt.timedelta(days=1)
    tables = {"features": lake.features(UC), "inference": lake.inference(UC), "clean": lake.clean(UC, "transactions"),
              "drift": lake.monitoring(UC, "drift_summary")}
    before = {k: read_partition(t, day) for k, t in tables.items()}
    runtime.validate(UC, day)
    runtime.build_features(UC, day)
    runtime.score(UC, day, played["champion"], "rerun")
    runtime.monitor_drift(UC, day, played["champion"])
    volatile = {"scored_at", "run_id", "computed_at"}
    for name, table in tables.items():
        after = read_partition(table, day)
        cols = [c for c in after.columns if c not in volatile]
        pd.testing.assert_frame_equal(before[name][cols].sort_values(cols).reset_index(drop=True),
                                      after[cols].sort_values(cols).reset_index(drop=True), obj=name)
        assert len(after) == len(before[name]), f"{name} rows duplicated"
    assert list(read_partition(tables["inference"], day)["run_id"].unique()) == ["rerun"]


def test_challenger_without_margin_is_rejected(played, small_spec):
    as_of = played["first_training"]
    again = runtime.train(UC, as_of, "same data again", "manual")
    decision = runtime.promote(UC, again, as_of)
    assert not decision["promoted"] and "does not beat" in decision["reason"]
    assert runtime.resolve_champion(UC)["version"] == played["champion"]["version"]
    mv = tracking.client().get_model_version(small_spec.model.registered_name, again["version"])
    assert mv.tags["promotion.decision"] == "rejected"


def test_optuna_search_logs_each_trial_as_a_nested_run(played, small_spec, spark):
    """model.search: optuna over ranges, with the spec's time-ordered folds: each trial a nested run,
    the best parameters on the parent run (a separate registered model, so the others' stay as they are)."""
    from pipelines.training.fit import train_challenger

    raw = small_spec.model.model_dump()
    raw.update(registered_name=f"{UC}_optuna", search={"method": "optuna", "trials": 3, "timeout_s": 600},
               search_space={"max_leaf_nodes": {"low": 7, "high": 31},
                             "learning_rate": {"low": 0.05, "high": 0.2, "log": True}})
    spec = small_spec.model_copy(update={"model": type(small_spec.model).model_validate(raw)})
    out = train_challenger(spark, spec, runtime.lake(), played["first_training"], "optuna search", "manual")
    c = tracking.client()
    run = c.get_run(out["run_id"])
    assert run.data.params["search_method"] == "optuna" and run.data.metrics["search_candidates"] == 3
    trials = c.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(trials) == 3 and all({"max_leaf_nodes", "learning_rate"} <= set(t.data.params) for t in trials)
    best = max(trials, key=lambda t: t.data.metrics["cv_roc_auc"])
    assert best.data.params["max_leaf_nodes"] == run.data.params["best.max_leaf_nodes"]
    assert 7 <= int(best.data.params["max_leaf_nodes"]) <= 31
    assert run.data.metrics["cv_roc_auc"] == pytest.approx(best.data.metrics["cv_roc_auc"])
