"""What a step read and wrote: the lake's partitions and the model versions, as named datasets.

A step records each dataset when it reads or writes it (the lake's helpers do it for
partitions; the Spark reads and writes and the registry's steps say so themselves). The
records stay in the process: an Airflow task's OpenLineage events carry them as the job's
inputs and outputs (``plugins/mlops_airflow/lineage.py``), and a step run outside Airflow
(the CLI, a test) can read them with :func:`recorded`. One task runs in one process, and
:func:`forget` starts a fresh record.

A partition is named as OpenLineage names a local file: namespace ``file``, name its absolute
path (``/lake/clean/churn/events/ds=2026-01-02``). A model version is named by its registry
(the MLflow tracking URI) and ``<registered name>/<version>``, with its run as a property.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

FILE_NAMESPACE = "file"
MODEL_VERSION = "model_version"
PARTITION = "partition"
TABLE = "table"


@dataclass(frozen=True)
class Dataset:
    """One dataset a step read or wrote: its namespace, its name, what kind it is and a few
    string properties (a partition's date; a model version's name, version and run)."""

    namespace: str
    name: str
    kind: str
    properties: tuple[tuple[str, str], ...] = ()

    def property(self, key: str) -> str | None:
        return dict(self.properties).get(key)


@dataclass
class Lineage:
    """The datasets one step read and wrote, each once, in the order first recorded."""

    inputs: list[Dataset] = field(default_factory=list)
    outputs: list[Dataset] = field(default_factory=list)


_current = Lineage()


def partition(table: Path, date: dt.date | str) -> Dataset:
    """The ``ds`` partition of a lake table."""
    day = date if isinstance(date, str) else date.isoformat()
    return Dataset(FILE_NAMESPACE, str(Path(table).absolute() / f"ds={day}"), PARTITION, (("ds", day),))


def table(path: Path) -> Dataset:
    """A whole lake table (a step that reads every partition of it)."""
    return Dataset(FILE_NAMESPACE, str(Path(path).absolute()), TABLE)


def model_version(registry: str, name: str, version: str, run_id: str) -> Dataset:
    """A registered model version of the registry at ``registry`` (its tracking URI)."""
    return Dataset(registry, f"{name}/{version}", MODEL_VERSION,
                   (("name", name), ("version", str(version)), ("run_id", run_id)))


def read(*datasets: Dataset) -> None:
    """Record datasets the current step read."""
    _add(_current.inputs, datasets)


def wrote(*datasets: Dataset) -> None:
    """Record datasets the current step wrote (after they were written whole)."""
    _add(_current.outputs, datasets)


def _add(into: list[Dataset], datasets) -> None:
    for dataset in datasets:
        if dataset not in into:
            into.append(dataset)


def recorded() -> Lineage:
    """What the current step recorded so far."""
    return Lineage(list(_current.inputs), list(_current.outputs))


def forget() -> None:
    """Start a fresh record (a new step in this process)."""
    _current.inputs.clear()
    _current.outputs.clear()
