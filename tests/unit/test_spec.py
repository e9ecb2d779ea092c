"""Spec loading: the real spec loads; every kind of mistake gives one readable line naming the
file and the key (and a likely fix where there is one)."""
import copy
import datetime as dt
from pathlib import Path

import pytest
import yaml

from pipelines.core.spec import (Metric, SpecError, TaskType, check_spec, discover_specs, discover_specs_and_errors,
                                 load_spec)
from pipelines.features.point_in_time import feature_columns

ROOT = Path(__file__).resolve().parents[2]
CHURN = yaml.safe_load((ROOT / "include/churn/spec.yaml").read_text())


def test_churn_spec_loads():
    spec = load_spec(ROOT / "include" / "churn")
    assert spec.name == "churn"
    assert spec.source("transactions").key == ["transaction_id"]
    assert spec.expectations_path.exists()
    assert spec.model.task is TaskType.BINARY and spec.promotion.metric is Metric.ROC_AUC
    cols = feature_columns(spec)
    assert "txn_count_7d" in cols.numeric and "segment" in cols.categorical
    assert len(cols.all) == len(set(cols.all))
    assert check_spec(ROOT / "include" / "churn") == []


def test_discover_finds_every_spec(tmp_path):
    for name in ("b_case", "a_case"):
        _write(tmp_path / name, lambda r, n=name: r.update(name=n))
    assert [s.name for s in discover_specs(tmp_path)] == ["a_case", "b_case"]


def test_a_broken_spec_is_reported_beside_the_good_ones(tmp_path):
    _write(tmp_path / "good", lambda r: r.update(name="good"))
    _write(tmp_path / "bad", lambda r: r.update(name="bad", start_date="2026-13-01"))
    specs, errors = discover_specs_and_errors(tmp_path)
    assert [s.name for s in specs] == ["good"]
    assert len(errors) == 1 and "bad/spec.yaml: start_date:" in str(errors[0])
    with pytest.raises(SpecError, match="start_date"):
        discover_specs(tmp_path)


def _write(folder: Path, mutate) -> Path:
    raw = copy.deepcopy(CHURN)
    mutate(raw)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(raw))
    (folder / "expectations.yaml").write_text((ROOT / "include" / "churn" / "expectations.yaml").read_text())
    return folder


def _set(path: str, value):
    """A mutation that sets ``a.b[0].c`` (``del`` as value removes the key)."""
    def mutate(raw):
        *parents, last = _parts(path)
        node = raw
        for part in parents:
            node = node[part]
        if value == "del":
            del node[last]
        else:
            node[last] = value
    return mutate


def _parts(path: str) -> list:
    out = []
    for piece in path.split("."):
        name, _, index = piece.partition("[")
        out.append(name)
        if index:
            out.append(int(index.rstrip("]")))
    return out


AGG0 = "features.groups[0].aggregates"
CASES = [
    # (what, mutation, key the message names, words it contains)
    ("unknown top-level key", _set("trainng", {}), "trainng", "unknown key (did you mean training?)"),
    ("unknown key in a section", _set("training.windw_days", 3), "training.windw_days",
     "did you mean window_days?"),
    ("unknown key in a feature group", _set("features.groups[1].cap_dayz", 3), "features.groups[1].cap_dayz",
     "did you mean cap_days?"),
    ("missing section", _set("label", "del"), "label", "required key is missing"),
    ("missing key", _set("label.target", "del"), "label.target", "required key is missing"),
    ("wrong type", _set("model.cv_folds", "three"), "model.cv_folds", "valid integer"),
    ("out of range", _set("model.threshold", 1.5), "model.threshold", "less than 1"),
    ("bad date", _set("start_date", "2026-02-30"), "start_date", "date"),
    ("bad date in a list", _set("features.allowed_missing_days", ["yesterday"]),
     "features.allowed_missing_days[0]", "date"),
    ("unknown aggregate", _set(f"{AGG0}[1].fn", "median"), f"{AGG0}[1].fn", "'count', 'sum'"),
    ("unknown feature kind", _set("features.groups[0].kind", "embeddings"), "features.groups[0]",
     "unknown kind 'embeddings'"),
    ("unknown column type", _set("sources.transactions.columns.amount", "money"),
     "sources.transactions.columns.amount", "'string'"),
    ("unknown metric", _set("promotion.metric", "auc"), "promotion.metric", "'roc_auc'"),
    ("metric that does not fit the task", _set("promotion.metric", "rmse"), "promotion.metric",
     "does not fit a binary task"),
    ("unknown task", _set("model.task", "ranking"), "model.task", "'binary', 'multiclass' or 'regression'"),
    ("unknown drift method", _set("monitoring.method", "psy"), "monitoring.method", "'psi'"),
    ("target listed as a feature", _set("features.groups[2].columns", ["segment", "churned"]),
     "features.groups[2].columns[1]", "not a column of source customers"),
    ("feature named like the target", _set("features.groups[1].name", "churned"), "features", "label's target"),
    ("reference to a missing source", _set("features.groups[0].source", "transaction"),
     "features.groups[0].source", "no source named 'transaction' (did you mean transactions?)"),
    ("reference to a missing column", _set(f"{AGG0}[1].column", "amt"), f"{AGG0}[1].column",
     "'amt' is not a column of source transactions (did you mean amount?)"),
    ("aggregate of a text column", _set(f"{AGG0}[1].column", "channel"), f"{AGG0}[1].column",
     "is string; expected"),
    ("label date column missing", _set("label.date_column", "label_day"), "label.date_column",
     "did you mean label_date?"),
    ("timestamp that is not a time", _set("sources.transactions.partition_by", "amount"),
     "sources.transactions.partition_by", "is double; expected date or timestamp"),
    ("bad schedule", _set("training.schedule", "every monday"), "training.schedule", "cron expression"),
    ("bad name", _set("name", "Churn Model"), "name", "pattern"),
    ("text label without its positive class", _set("sources.labels.columns.churned", "string"), "label.target",
     "name the positive class with label.positive"),
    ("both positive and a value map", lambda r: r["label"].update(positive="yes", values={"yes": 1, "no": 0}),
     "label.positive", "not both"),
    ("events source without a timestamp", _set("sources.transactions.timestamp", "del"),
     "sources.transactions.timestamp", "required for an events source (or declare kind: snapshot)"),
    ("events labels without a date column", _set("label.date_column", "del"), "label.date_column",
     "required when labels come from an events source"),
    ("unknown source kind", _set("sources.customers.kind", "stream"), "sources.customers.kind", "'events'"),
    ("unknown split", _set("training.split", "stratified"), "training.split", "'time' or 'random'"),
    ("binary value map to other classes", lambda r: r["label"].update(values={"a": 1, "b": 2}), "label.values",
     "0 or 1"),
    ("bad estimator path", _set("model.estimator", "HistGradientBoosting"), "model.estimator", "pattern"),
    ("multiclass without a value map", _set("model.task", "multiclass"), "label.values",
     "maps each value of the target to a class"),
    ("multiclass classes with a gap", lambda r: (r["model"].update(task="multiclass"),
                                                 r["label"].update(values={0: 0, 1: 1, 2: 5})),
     "label.values", "classes 0, 1, 2, ... (at least three), got [0, 1, 5]"),
    ("multiclass with a positive class", lambda r: (r["model"].update(task="multiclass"),
                                                    r["label"].update(positive=1)), "label.positive",
     "no positive class"),
    ("regression with a value map", lambda r: (r["model"].update(task="regression"),
                                               r["label"].update(values={0: 0, 1: 1})), "label.values",
     "it has no classes"),
    ("regression of a text target", lambda r: (r["model"].update(task="regression"),
                                               r["sources"]["labels"]["columns"].update(churned="string")),
     "label.target", "needs an int or double target"),
    ("unknown promotion check kind", _set("promotion.checks", [{"name": "x", "kind": "vibes"}]),
     "promotion.checks[0]", "vibes"),
    ("unknown check mode", _set("promotion.checks", [{"name": "x", "kind": "schema", "mode": "block"}]),
     "promotion.checks[0].mode", "'enforce' or 'warn'"),
    ("slice column that is not a feature", _set("promotion.checks", [{"name": "x", "kind": "slices",
                                                                      "columns": ["gender"]}]),
     "promotion.checks[0].columns", "'gender' is not a feature column"),
    ("two checks of one name", _set("promotion.checks", [{"name": "x", "kind": "schema"},
                                                         {"name": "x", "kind": "schema"}]),
     "promotion.checks[1].name", "names must be unique"),
    ("calibration without a ceiling", _set("promotion.checks", [{"name": "c", "kind": "calibration"}]),
     "promotion.checks[0]", "needs max_brier, max_ece or both"),
    ("fairness without its threshold", _set("promotion.checks", [{"name": "f", "kind": "fairness",
                                                                  "sensitive": ["region"]}]),
     "promotion.checks[0].max_difference", "required key is missing"),
    ("parity of a regression", lambda r: (r["model"].update(task="regression"), r["promotion"].update(
        metric="rmse", checks=[{"name": "f", "kind": "fairness", "sensitive": ["region"], "max_difference": 0.1}])),
     "promotion.checks[0].measure", "needs a binary task; use metric_difference"),
    ("unknown approval", _set("promotion.approval", "maybe"), "promotion.approval", "'none' or 'required'"),
    ("a range in a grid", _set("model.search_space", {"learning_rate": {"low": 0.01, "high": 0.3}}),
     "model.search_space.learning_rate", "needs model.search.method: optuna"),
    ("a range upside down", lambda r: r["model"].update(search={"method": "optuna"},
                                                        search_space={"learning_rate": {"low": 0.3, "high": 0.1}}),
     "model.search_space", "learning_rate: low (0.3) must be below high (0.1)"),
    ("unknown search method", _set("model.search", {"method": "random"}), "model.search.method", "'grid' or 'optuna'"),
    ("classification metric for a regression", lambda r: r["model"].update(task="regression"),
     "promotion.metric", "roc_auc does not fit a regression task; use one of ['mae', 'r2', 'rmse']"),
]


@pytest.mark.parametrize("what, mutate, key, words", CASES, ids=[c[0] for c in CASES])
def test_spec_mistakes_are_named(tmp_path, what, mutate, key, words):
    folder = _write(tmp_path / "case", mutate)
    with pytest.raises(SpecError) as caught:
        load_spec(folder)
    lines = str(caught.value).splitlines()
    hits = [line for line in lines if f"spec.yaml: {key}: " in line and words in line]
    assert hits, f"{what}: no line names {key!r} with {words!r}:\n" + "\n".join(lines)
    assert all(line.count("spec.yaml: ") == 1 for line in lines)


def test_every_problem_is_reported_at_once(tmp_path):
    def mutate(raw):
        raw["training"]["windw_days"] = 3
        raw["model"]["cv_folds"] = "three"
        raw["promotion"]["metric"] = "auc"
    lines = str(pytest.raises(SpecError, load_spec, _write(tmp_path / "case", mutate)).value).splitlines()
    assert len(lines) == 3, lines


ESTIMATOR_CASES = [
    ("unknown estimator", _set("model.estimator", "sklearn.ensemble.GradientBoostedTrees"), "model.estimator",
     "cannot be imported"),
    ("unknown estimator parameter", _set("model.search_space", {"max_depht": [3]}), "model.search_space.max_depht",
     "unknown parameter of HistGradientBoostingClassifier (did you mean max_depth?)"),
    ("unknown fixed parameter", _set("model.params", {"random_stat": 1}), "model.params.random_stat",
     "did you mean random_state?"),
    ("regressor for a classification task", _set("model.estimator", "sklearn.linear_model.Ridge"), "model.estimator",
     "a binary task needs a classifier"),
]


@pytest.mark.parametrize("what, mutate, key, words", ESTIMATOR_CASES, ids=[c[0] for c in ESTIMATOR_CASES])
def test_estimator_mistakes_are_named_by_check(tmp_path, what, mutate, key, words):
    lines = check_spec(_write(tmp_path / "case", mutate))
    assert [line for line in lines if f"spec.yaml: {key}: " in line and words in line], lines


def test_metric_directions():
    assert Metric.ROC_AUC.higher_is_better and Metric.R2.higher_is_better
    assert not Metric.BRIER.higher_is_better and not Metric.RMSE.higher_is_better


@pytest.mark.parametrize("task", list(TaskType))
def test_every_metric_of_a_task_is_computed(task):
    import numpy as np
    import pandas as pd

    from pipelines.models.tasks import ModelTask

    model_task = ModelTask(task, () if task is TaskType.REGRESSION else (0, 1) if task is TaskType.BINARY
                           else (0, 1, 2))
    y = np.array([0, 1, 2, 1, 0, 2]) if task is TaskType.MULTICLASS else np.array([0, 1, 0, 1, 1, 0])
    proba = np.full((6, len(model_task.classes)), 1 / max(len(model_task.classes), 1))
    outputs = pd.DataFrame({"prediction": y + 0.5, "score": [0.2, 0.7, 0.4, 0.9, 0.6, 0.1],
                            **{f"proba_{c}": proba[:, i] for i, c in enumerate(model_task.classes)}})
    computed = model_task.metrics(y, outputs)
    wanted = {m.value for m in Metric if task in m.tasks}
    assert wanted <= set(computed) and all(np.isfinite(computed[m]) for m in wanted), computed
    assert Metric.default_for(task).value in wanted


@pytest.mark.parametrize("task, metric", [("binary", Metric.ROC_AUC), ("multiclass", Metric.F1_MACRO),
                                          ("regression", Metric.RMSE)])
def test_the_promotion_metric_defaults_to_the_tasks(tmp_path, task, metric):
    def mutate(raw):
        raw["model"]["task"] = task
        del raw["promotion"]["metric"]
        raw["promotion"]["checks"] = []   # churn's checks are a binary task's (parity, calibration)
        raw["label"]["values"] = {0: 0, 1: 1, 2: 2} if task == "multiclass" else None
        raw["sources"]["labels"]["columns"]["churned"] = "double" if task == "regression" else "int"
    spec = load_spec(_write(tmp_path / "case", mutate))
    assert spec.promotion.metric is metric and spec.promotion.floor == CHURN["promotion"]["floor"]


def test_mlops_check_prints_every_problem_and_fails(tmp_path, capsys):
    from pipelines.cli import main

    folder = _write(tmp_path / "case", lambda r: (r["training"].update(windw_days=3),
                                                  r["model"].update(search_space={"max_depht": [3]})))
    assert main(["check", str(folder)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and any("training.windw_days" in line for line in out)
    assert any("model.search_space.max_depht" in line and "did you mean max_depth?" in line for line in out)
    assert main(["check", str(ROOT / "include" / "churn")]) == 0


def test_mlops_check_fails_without_the_expectations_file(tmp_path, capsys):
    from pipelines.cli import main

    folder = _write(tmp_path / "case", lambda r: None)
    assert main(["check", str(folder)]) == 0
    (folder / "expectations.yaml").unlink()
    assert main(["check", str(folder)]) == 1
    assert "expectations.yaml not found" in capsys.readouterr().out


def test_every_column_type_has_a_storage_type():
    from pipelines.core.lake import ARROW_TYPES
    from pipelines.core.spec import ColumnType

    assert {t.value for t in ColumnType} == set(ARROW_TYPES)


@pytest.mark.parametrize("scoring, wait", [
    ({"schedule": "@daily", "deadline": "06:00"}, dt.timedelta(hours=6)),
    ({"schedule": "30 2 * * *", "deadline": "06:00"}, dt.timedelta(hours=3, minutes=30)),
    ({"schedule": "0 22 * * *", "deadline": "01:15"}, dt.timedelta(hours=3, minutes=15)),   # the next morning
    ({"schedule": "0 6 * * *", "deadline": "06:00"}, dt.timedelta(days=1)),
    ({"schedule": "@daily"}, None),
])
def test_a_deadline_is_a_wait_from_the_schedules_start(scoring, wait):
    from pipelines.core.spec import ScoringSpec

    assert ScoringSpec(**scoring).deadline_after_start() == wait


@pytest.mark.parametrize("scoring, problem", [
    ({"deadline": "6am"}, "scoring.deadline"),
    ({"deadline": "24:00"}, "scoring.deadline"),
    ({"schedule": None, "deadline": "06:00"}, "needs a schedule that runs once a day"),
    ({"schedule": "@hourly", "deadline": "06:00"}, "needs a schedule that runs once a day"),
    ({"schedule": "0 */2 * * *", "deadline": "06:00"}, "needs a schedule that runs once a day"),
    ({"schedule": "0 6 * * 1", "deadline": "07:00"}, "needs a schedule that runs once a day"),
])
def test_a_deadline_needs_a_time_of_day_and_a_daily_schedule(tmp_path, scoring, problem):
    from pipelines.core.spec import load_spec

    raw = copy.deepcopy(CHURN)
    raw["scoring"] = scoring
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "spec.yaml")
    assert problem in str(err.value) and "scoring.deadline" in str(err.value)
