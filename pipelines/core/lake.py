"""The Parquet lake: table locations and whole-partition writes.

Every table is Hive-partitioned by ``ds=YYYY-MM-DD``. A partition is always replaced
whole: the new files are written next to the table and swapped in by rename, so a
reader sees the old partition or the new one, never half of one, and a rerun never
duplicates rows. Spark writes use dynamic partition overwrite for the same guarantee.

Layout under the lake root, per use case::

    raw/<uc>/<source>/ds=.../          landing zone (what source systems deliver)
    clean/<uc>/<source>/ds=.../        validated raw data
    quarantine/<uc>/<source>/ds=.../attempt=<utc>/   rejected partitions, never deleted
    features/<uc>/ds=.../              point-in-time features, one row per entity
    inference/<uc>/ds=.../             batch scores
    online_inference/<uc>/ds=.../      online predictions (the scoring service's request log)
    monitoring/<uc>/<table>/ds=.../    drift summary, drift per column, live performance
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines.core import lineage

ARROW_TYPES = {
    "string": pa.string(),
    "timestamp": pa.timestamp("us"),
    "date": pa.date32(),
    "int": pa.int64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
}


def ds(date: dt.date | str) -> str:
    """Partition value for a date."""
    return date if isinstance(date, str) else date.isoformat()


@dataclass(frozen=True)
class Lake:
    """Locations of every table of a use case under one lake root."""

    root: Path

    def raw(self, uc: str, source: str) -> Path:
        return self.root / "raw" / uc / source

    def clean(self, uc: str, source: str) -> Path:
        return self.root / "clean" / uc / source

    def quarantine(self, uc: str, source: str) -> Path:
        return self.root / "quarantine" / uc / source

    def features(self, uc: str) -> Path:
        return self.root / "features" / uc

    def inference(self, uc: str) -> Path:
        return self.root / "inference" / uc

    def online_inference(self, uc: str) -> Path:
        """Online predictions of the scoring service (request log), Parquet files per ``ds``."""
        return self.root / "online_inference" / uc

    def monitoring(self, uc: str, table: str) -> Path:
        return self.root / "monitoring" / uc / table

    @staticmethod
    def partition(table: Path, date: dt.date | str) -> Path:
        return table / f"ds={ds(date)}"


def arrow_schema(columns: dict[str, str]) -> pa.Schema:
    """Arrow schema for a spec's ``columns`` mapping."""
    try:
        return pa.schema([(name, ARROW_TYPES[kind]) for name, kind in columns.items()])
    except KeyError as exc:
        raise ValueError(f"unknown column type {exc.args[0]!r}; known: {sorted(ARROW_TYPES)}") from None


def replace_partition(table: Path, date: dt.date | str, data: pd.DataFrame | pa.Table,
                      schema: pa.Schema | None = None) -> Path:
    """Write ``data`` as the whole ``ds`` partition of ``table``, replacing any previous one."""
    if isinstance(data, pd.DataFrame):
        data = pa.Table.from_pandas(data, schema=schema, preserve_index=False)
    target = Lake.partition(table, date)
    table.mkdir(parents=True, exist_ok=True)
    staging = table / f"_staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        pq.write_table(data, staging / "part-0.parquet")
        _swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    lineage.wrote(lineage.partition(table, date))
    return target


def _swap_in(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target`` by rename; the old directory is removed afterwards."""
    trash = None
    if target.exists():
        trash = target.parent / f"_trash-{uuid.uuid4().hex}"
        os.replace(target, trash)
    os.replace(staging, target)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def copy_partitions(source: Path, target: Path) -> list[str]:
    """Copy every ``ds`` partition of table ``source`` into table ``target``, each swapped in whole
    (a partition of ``target`` not in ``source`` stays); the dates copied."""
    dates = list_partitions(source)
    target.mkdir(parents=True, exist_ok=True)
    for date in dates:
        staging = target / f"_staging-{uuid.uuid4().hex}"
        try:
            shutil.copytree(Lake.partition(source, date), staging)
            _swap_in(staging, Lake.partition(target, date))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dates


def drop_partition(table: Path, date: dt.date | str) -> bool:
    """Remove one partition if present; returns whether it existed."""
    target = Lake.partition(table, date)
    if not target.exists():
        return False
    trash = target.parent / f"_trash-{uuid.uuid4().hex}"
    os.replace(target, trash)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def partition_files(table: Path, date: dt.date | str) -> list[str]:
    """The Parquet files of one partition, in name order. Raises FileNotFoundError if absent."""
    path = Lake.partition(table, date)
    if not path.exists():
        raise FileNotFoundError(f"no partition {path}")
    lineage.read(lineage.partition(table, date))
    return sorted(str(p) for p in path.glob("*.parquet"))


def read_partition(table: Path, date: dt.date | str, columns: list[str] | None = None) -> pd.DataFrame:
    """One partition as pandas (without the ``ds`` column). Raises FileNotFoundError if absent."""
    files = partition_files(table, date)
    if not files:
        return pd.DataFrame(columns=columns or [])
    return read_files(files, columns).to_pandas()


def read_files(files: list[str], columns: list[str] | None = None) -> pa.Table:
    """Parquet files as one Arrow table, without inferring partition columns from their paths."""
    return pq.ParquetDataset(files, partitioning=None).read(columns=columns)


def read_table(table: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A whole (small) table as pandas, with ``ds`` as a string column. Empty frame if absent."""
    if not table.exists() or not list_partitions(table):
        return pd.DataFrame(columns=(columns or []) + ["ds"])
    lineage.read(lineage.table(table))
    try:
        frame = pq.read_table(table, columns=columns + ["ds"] if columns else None,
                              partitioning=pads.partitioning(pa.schema([("ds", pa.string())]), flavor="hive"))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        frame = _read_evolved(table, columns)   # a column all-null in one partition, text in another
    return frame.to_pandas()


def _read_evolved(table: Path, columns: list[str] | None) -> pa.Table:
    """A table whose partitions' schemas differ, partition by partition, their types widened to fit."""
    pieces = []
    for date in list_partitions(table):
        piece = read_files(sorted(str(p) for p in Lake.partition(table, date).glob("*.parquet")))
        pieces.append(piece.append_column("ds", pa.array([date] * piece.num_rows, pa.string())))
    frame = pa.concat_tables(pieces, promote_options="permissive")
    return frame.select([c for c in columns if c in frame.column_names] + ["ds"]) if columns else frame


def partition_rows(table: Path, date: dt.date | str) -> int:
    """Row count of one partition from Parquet footers (0 if absent)."""
    path = Lake.partition(table, date)
    if not path.exists():
        return 0
    return sum(pq.ParquetFile(p).metadata.num_rows for p in path.glob("*.parquet"))


def list_partitions(table: Path) -> list[str]:
    """The ``ds`` values present in a table, sorted."""
    if not table.exists():
        return []
    return sorted(p.name[3:] for p in table.iterdir() if p.is_dir() and p.name.startswith("ds="))


def write_raw_partition(lake: Lake, spec, source: str, date: dt.date, frame: pd.DataFrame) -> Path:
    """Land one day of a source in the raw zone, typed by the spec's column types."""
    schema = arrow_schema(spec.source(source).columns)
    return replace_partition(lake.raw(spec.name, source), date, frame, schema=schema)


def write_json(path: Path, payload: dict) -> Path:
    """Write a small JSON document atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)
    return path
