"""`mlops init`: types inferred from the data, a spec that loads, features without the target,
the entity or identifiers, expectations learnt from the data, and clear refusals."""
import pandas as pd
import pytest
import yaml

from pipelines.core.spec import ColumnType, load_spec
from pipelines.data.spec_init import InitError, draft, infer_type, write_use_case


@pytest.mark.parametrize("values, kind", [
    (["1", "2", "3"], ColumnType.INT),
    (["1", None, "3"], ColumnType.DOUBLE),          # whole numbers with gaps: stored as double
    (["1.5", "2", "-3e2"], ColumnType.DOUBLE),
    (["true", "False", "yes"], ColumnType.BOOL),
    (["2026-01-01", "2026-01-02 10:00"], ColumnType.TIMESTAMP),
    (["a", "b", "1"], ColumnType.STRING),
    ([None, None], ColumnType.STRING),
    (["1", "0", "1"], ColumnType.INT),               # 0/1 is a number, not a boolean
])
def test_infer_type(values, kind):
    assert infer_type(pd.Series(values, dtype=object)) is kind


@pytest.fixture()
def applicants(tmp_path):
    frame = pd.DataFrame({
        "applicant_id": [f"a{i}" for i in range(60)],
        "age": [20 + i % 40 for i in range(60)],
        "income": [None if i % 7 == 0 else 1000.0 + 10 * i for i in range(60)],
        "job": ["clerk", "driver", "engineer"] * 20,
        "branch_code": [f"b{i}" for i in range(60)],      # unique text: an identifier, never a feature
        "country": ["NL"] * 60,                           # one value: carries nothing
        "Status": ["bad", "good", "good", None] * 15,
    })
    path = tmp_path / "applicants.csv"
    frame.to_csv(path, index=False)
    return path


def test_draft_writes_a_spec_that_loads(applicants, tmp_path):
    spec_text, rules_text = draft("credit", {"applicants": str(applicants)}, "Status", positive="bad")
    folder = write_use_case(tmp_path / "include", "credit", spec_text, rules_text)
    spec = load_spec(folder)
    assert spec.entity == "applicant_id" and spec.sources["applicants"].kind == "snapshot"
    assert spec.sources["applicants"].columns["age"] == "int"
    assert spec.sources["applicants"].columns["income"] == "double"
    assert spec.feature_names() == ["age", "income", "job"]
    assert spec.label.positive == "bad" and spec.training.split == "random"
    rules = yaml.safe_load(rules_text)["applicants"]
    kinds = {(r["type"], r["kwargs"].get("column")) for r in rules}
    assert ("ExpectColumnValuesToNotBeNull", "age") in kinds and ("ExpectColumnValuesToNotBeNull", "income") not in kinds
    job = next(r for r in rules if r["type"] == "ExpectColumnValuesToBeInSet" and r["kwargs"]["column"] == "job")
    assert job["kwargs"]["value_set"] == ["clerk", "driver", "engineer"]
    age = next(r for r in rules if r["type"] == "ExpectColumnValuesToBeBetween" and r["kwargs"]["column"] == "age")
    assert age["kwargs"]["min_value"] < 20 and age["kwargs"]["max_value"] > 59
    assert spec_text.count("\n# ") >= 8, "every section carries a comment"
    assert spec.scoring.schedule is None        # a snapshot is scored when it lands, not on a calendar


def test_event_data_is_scored_daily(applicants, tmp_path):
    frame = pd.read_csv(applicants).assign(applied_at=[f"2026-01-{1 + i % 28:02d} 10:00:00" for i in range(60)])
    frame.to_csv(applicants, index=False)
    spec_text, rules_text = draft("credit", {"applicants": str(applicants)}, "Status", positive="bad",
                                  timestamp="applied_at")
    spec = load_spec(write_use_case(tmp_path / "include", "credit", spec_text, rules_text))
    assert spec.sources["applicants"].kind == "events" and spec.scoring.schedule == "@daily"


@pytest.mark.parametrize("options, words", [
    (dict(target="Status"), "say which is the positive class with --positive"),
    (dict(target="Status", positive="awful"), "--positive awful: not a value of Status"),
    (dict(target="Outcome", positive="bad"), "--target Outcome: no source has that column"),
    (dict(target="Status", positive="bad", entity="customer"), "--entity customer: source applicants has no such"),
    (dict(target="Status", positive="bad", task="regression"), "--positive names the positive class of a binary"),
    (dict(target="Status", task="regression"), "Status holds string values; a regression target is a number"),
    (dict(target="country", task="multiclass"), "country has 1 distinct values; a multiclass target has 3 to 20"),
])
def test_draft_refusals(applicants, options, words):
    from pipelines.core.spec import TaskType

    if "task" in options:
        options["task"] = TaskType(options["task"])
    with pytest.raises(InitError, match=words.replace("(", r"\(")):
        draft("credit", {"applicants": str(applicants)}, **options)


@pytest.mark.parametrize("task, target, metric, estimator", [
    ("multiclass", "job", "f1_macro", "HistGradientBoostingClassifier"),
    ("regression", "income", "rmse", "HistGradientBoostingRegressor"),
])
def test_draft_for_other_tasks(applicants, tmp_path, task, target, metric, estimator):
    from pipelines.core.spec import TaskType, check_spec

    spec_text, rules_text = draft("credit", {"applicants": str(applicants)}, target, task=TaskType(task))
    folder = write_use_case(tmp_path / "include", "credit", spec_text, rules_text)
    spec = load_spec(folder)
    assert check_spec(folder) == []
    assert spec.model.task is TaskType(task) and spec.promotion.metric == metric
    assert spec.model.estimator.endswith(estimator) and target not in spec.feature_names()
    frame = pd.read_csv(applicants)
    if task == "multiclass":
        assert spec.label.values == {"clerk": 0, "driver": 1, "engineer": 2} and spec.promotion.floor == 0.33
    else:
        assert spec.label.values is None and spec.promotion.floor == pytest.approx(frame[target].std(), rel=1e-3)


def test_an_existing_spec_is_kept_without_force(applicants, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setenv("MLOPS_INCLUDE", str(tmp_path / "include"))
    args = ["init", "credit", "--source", f"applicants={applicants}", "--target", "Status", "--positive", "bad"]
    assert main(args) == 0
    assert main(args) == 1 and "exists; pass --force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
