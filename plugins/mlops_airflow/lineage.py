"""OpenLineage for the project's tasks: the lake partitions and model versions each task read and wrote.

``apache-airflow-providers-openlineage`` emits a START and a COMPLETE (or FAIL) event for every
task. Its extractor for TaskFlow tasks knows no datasets; :class:`TaskLineageExtractor` (named in
``[openlineage] extractors`` by the stack) gives each event the datasets the task's step
recorded through ``pipelines.core.lineage``:

- a lake partition: namespace ``file``, name its absolute path, facets ``datasetType``
  (``PARTITION``) and ``tags`` (``ds``);
- a whole lake table: namespace ``file``, name its path, ``datasetType`` ``TABLE``;
- a model version: namespace the registry's URI (without credentials), name
  ``<registered name>/<version>``, facets ``datasetType`` ``MODEL``, ``version`` and ``tags``
  (``name``, ``version``, ``run_id``).

The embedded stack writes the events to ``$MLOPS_HOME/lineage/events.jsonl`` (the file transport);
any other transport (HTTP to Marquez, say) is the provider's own configuration.
"""
from __future__ import annotations

from airflow.providers.openlineage.extractors.base import BaseExtractor, OperatorLineage

from pipelines.core import lineage

# the operators TaskFlow's @task decorators make (the project's tasks are all TaskFlow tasks)
TASKFLOW_OPERATORS = ["_PythonDecoratedOperator", "_BranchPythonDecoratedOperator",
                      "_ShortCircuitDecoratedOperator", "_PythonSensorDecoratedOperator"]
DATASET_TYPES = {lineage.PARTITION: "PARTITION", lineage.TABLE: "TABLE", lineage.MODEL_VERSION: "MODEL"}


def openlineage_dataset(dataset: lineage.Dataset):
    """One recorded dataset as an OpenLineage dataset with its standard facets."""
    from openlineage.client.event_v2 import Dataset
    from openlineage.client.facet_v2 import dataset_type_dataset, dataset_version_dataset, tags_dataset

    facets = {"datasetType": dataset_type_dataset.DatasetTypeDatasetFacet(datasetType=DATASET_TYPES[dataset.kind])}
    if dataset.properties:
        facets["tags"] = tags_dataset.TagsDatasetFacet(tags=[
            tags_dataset.TagsDatasetFacetFields(key=key, value=value, source="mlops")
            for key, value in dataset.properties])
    if version := dataset.property("version"):
        facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=version)
    return Dataset(namespace=dataset.namespace, name=dataset.name, facets=facets)


def operator_lineage(recorded: lineage.Lineage) -> OperatorLineage:
    return OperatorLineage(inputs=[openlineage_dataset(d) for d in recorded.inputs],
                           outputs=[openlineage_dataset(d) for d in recorded.outputs])


class TaskLineageExtractor(BaseExtractor):
    """The datasets a TaskFlow task's step recorded, for its COMPLETE or FAIL event (none are known
    when it starts)."""

    @classmethod
    def get_operator_classnames(cls) -> list[str]:
        return TASKFLOW_OPERATORS

    def _execute_extraction(self) -> OperatorLineage | None:
        return OperatorLineage()

    def extract_on_complete(self, task_instance) -> OperatorLineage | None:
        return operator_lineage(lineage.recorded())

    def extract_on_failure(self, task_instance) -> OperatorLineage | None:
        return operator_lineage(lineage.recorded())
