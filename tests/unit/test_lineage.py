"""Lineage: what a step read and wrote, recorded by the lake's helpers and the steps themselves,
and turned into the datasets of the task's OpenLineage events; the stack's default transport
(a file) gives way to a team's own. The chain through a real scheduler is checked in
tests/e2e/test_through_scheduler.py."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.core import lineage
from pipelines.core.lake import Lake, read_partition, read_table, replace_partition


@pytest.fixture(autouse=True)
def fresh_record():
    lineage.forget()
    yield
    lineage.forget()


def test_the_lakes_helpers_record_each_partition_once(tmp_path):
    table = tmp_path / "clean" / "churn" / "events"
    replace_partition(table, "2026-01-02", pd.DataFrame({"x": [1]}))
    replace_partition(table, "2026-01-02", pd.DataFrame({"x": [2]}))   # a retry: still one output
    read_partition(table, "2026-01-02")
    read_table(table)
    recorded = lineage.recorded()
    partition = lineage.partition(table, "2026-01-02")
    assert recorded.outputs == [partition] and recorded.inputs == [partition, lineage.table(table)]
    assert partition.namespace == "file" and partition.name == str(Lake.partition(table, "2026-01-02").absolute())
    assert partition.property("ds") == "2026-01-02" and partition.kind == lineage.PARTITION
    lineage.forget()
    assert lineage.recorded().inputs == [] == lineage.recorded().outputs


def test_a_missing_partition_is_not_recorded_as_read(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_partition(tmp_path / "features" / "churn", "2026-01-02")
    assert lineage.recorded().inputs == []


@pytest.mark.parametrize("uri, shown", [
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("https://ml:s3cr3t@mlflow.example.org:8443/base", "https://mlflow.example.org:8443/base"),
    ("https://token@mlflow.example.org", "https://mlflow.example.org"),
    ("sqlite:////state/mlflow.db", "sqlite:////state/mlflow.db"),
])
def test_a_model_version_is_named_by_its_registry_without_credentials(monkeypatch, uri, shown):
    from pipelines.models import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(tracking, "current_settings", lambda: type("S", (), {"mlflow_tracking_uri": uri})())
    dataset = tracking.ModelRef("churn_classifier", "3", "abc123").as_dataset()
    assert dataset.namespace == shown and "s3cr3t" not in repr(dataset)
    assert dataset.name == "churn_classifier/3" and dataset.kind == lineage.MODEL_VERSION
    assert dict(dataset.properties) == {"name": "churn_classifier", "version": "3", "run_id": "abc123"}


def test_the_extractor_gives_a_tasks_events_what_its_step_recorded(tmp_path):
    from openlineage.client.serde import Serde

    from mlops_airflow.lineage import TASKFLOW_OPERATORS, TaskLineageExtractor

    features = lineage.partition(tmp_path / "features" / "churn", "2026-01-03")
    model = lineage.model_version("http://127.0.0.1:5000", "churn_classifier", "3", "abc123")
    lineage.read(features, model)
    lineage.wrote(lineage.partition(tmp_path / "inference" / "churn", "2026-01-03"))
    extractor = TaskLineageExtractor(operator=type("Task", (), {"task_type": "_PythonDecoratedOperator"})())
    assert "_PythonDecoratedOperator" in TASKFLOW_OPERATORS == TaskLineageExtractor.get_operator_classnames()
    assert extractor.extract().inputs == []   # a task's START knows nothing yet
    done = extractor.extract_on_complete(task_instance=None)
    inputs = [json.loads(Serde.to_json(d)) for d in done.inputs]
    assert [(d["namespace"], d["name"]) for d in inputs] == [("file", features.name),
                                                            ("http://127.0.0.1:5000", "churn_classifier/3")]
    assert inputs[0]["facets"]["datasetType"]["datasetType"] == "PARTITION"
    assert inputs[1]["facets"]["datasetType"]["datasetType"] == "MODEL"
    assert inputs[1]["facets"]["version"]["datasetVersion"] == "3"
    assert {t["key"]: t["value"] for t in inputs[1]["facets"]["tags"]["tags"]} == {
        "name": "churn_classifier", "version": "3", "run_id": "abc123"}
    assert [d.name for d in extractor.extract_on_failure(task_instance=None).outputs] == [
        str((tmp_path / "inference" / "churn" / "ds=2026-01-03").absolute())]


def test_the_stack_writes_events_to_a_file_unless_the_team_set_a_transport(tmp_path, monkeypatch):
    from scripts.services import lineage_file, lineage_settings

    stack = type("Stack", (), {"home": tmp_path})()
    for key in ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG", "AIRFLOW__OPENLINEAGE__TRANSPORT"):
        monkeypatch.delenv(key, raising=False)
    found = lineage_settings(stack)
    assert json.loads(found["AIRFLOW__OPENLINEAGE__TRANSPORT"]) == {
        "type": "file", "log_file_path": str(lineage_file(stack)), "append": True}
    assert found["AIRFLOW__OPENLINEAGE__EXTRACTORS"] == "mlops_airflow.lineage.TaskLineageExtractor"
    monkeypatch.setenv("OPENLINEAGE_URL", "http://marquez:5000")   # HTTP, the team's own
    assert "AIRFLOW__OPENLINEAGE__TRANSPORT" not in lineage_settings(stack)


def _event(job: str, inputs: list[tuple[str, str, str]], outputs: list[tuple[str, str, str]]) -> dict:
    def dataset(ns, name, kind):
        return {"namespace": ns, "name": name, "facets": {"datasetType": {"datasetType": kind}}}

    return {"eventType": "COMPLETE", "job": {"namespace": "mlops", "name": job},
            "inputs": [dataset(*d) for d in inputs], "outputs": [dataset(*d) for d in outputs]}


def test_walking_back_from_scores_reaches_the_raw_partition_through_the_model(tmp_path):
    """The demo's lineage: scores <- model version <- features <- clean <- raw; a half-written
    last line (a task still appending) is skipped, and a dataset nothing wrote has no chain."""
    from scripts.lineage import completed, describe, walk_back

    reg = "http://127.0.0.1:5000"
    events = [
        _event("churn_daily.validate_raw", [("file", "/lake/raw/churn/tx/ds=01", "PARTITION")],
               [("file", "/lake/clean/churn/tx/ds=01", "PARTITION")]),
        _event("churn_daily.build_features", [("file", "/lake/clean/churn/tx/ds=01", "PARTITION")],
               [("file", "/lake/features/churn/ds=02", "PARTITION")]),
        _event("churn_training.train_challenger", [("file", "/lake/features/churn/ds=02", "PARTITION")],
               [(reg, "churn_classifier/1", "MODEL")]),
        _event("churn_daily.score_batch", [("file", "/lake/features/churn/ds=03", "PARTITION"),
                                           (reg, "churn_classifier/1", "MODEL")],
               [("file", "/lake/inference/churn/ds=03", "PARTITION")]),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"eventType": "COMPLETE", "job": {"na')
    read = completed(path)
    assert len(read) == 4
    chain = walk_back(read, "file", "/lake/inference/churn/ds=03")
    assert [event["job"]["name"].split(".")[1] for event, _ in chain] == [
        "score_batch", "train_challenger", "build_features", "validate_raw"]
    assert chain[-1][1]["name"] == "/lake/raw/churn/tx/ds=01"
    lines = describe(chain, tmp_path.parent)
    assert "wrote model churn_classifier/1 from 1 input(s)" in lines[1]
    assert walk_back(read, "file", "/lake/raw/churn/tx/ds=01") == []
