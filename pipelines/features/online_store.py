"""The online feature store: the newest feature row of every entity, for the scoring service.

One SQLite file per use case (``$MLOPS_ONLINE_STORE/<uc>.sqlite``, default under
``$MLOPS_HOME/online``), holding the features of the newest date built (a feature partition has
one row per entity of the population, so the newest partition *is* the latest row per entity).
The daily DAG refreshes it after ``build_features``. A refresh writes a new file beside the old
one and swaps it in by rename: a reader sees the old store or the new one, never a half-written
one, and any number of service workers read it at once (read-only). A lookup keeps the file
open for the next one on its thread (opening it cost half of a lookup's time under load) and opens
the new file once a refresh has swapped it in. A refresh for a date older than the store's (a
backfill) leaves it as it is.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import threading
import uuid
from contextlib import closing
from pathlib import Path

from pipelines.core.errors import MissingData
from pipelines.core.lake import Lake, ds, read_partition
from pipelines.features.point_in_time import feature_columns

log = logging.getLogger(__name__)

TABLE, META = "features", "meta"


def store_path(folder: Path, use_case: str) -> Path:
    return folder / f"{use_case}.sqlite"


def store_date(path: Path) -> str | None:
    """The feature date the store holds (None: no store yet)."""
    if not path.exists():
        return None
    with closing(_connect(path)) as conn:
        row = conn.execute(f"select value from {META} where key = 'ds'").fetchone()
    return row[0] if row else None


def refresh(spec, lake: Lake, date: dt.date | str, path: Path, force: bool = False) -> dict:
    """Load the features of ``date`` into the store unless it holds a newer date; what it did.
    One refresh of a store at a time (a file lock beside it): the runs of a backfill refresh it
    concurrently, and without the lock an older day that checked the date first could swap its
    file in after a newer day's."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(f".{path.name}.lock")), timeout=600):
        return _refresh(spec, lake, date, path, force)


def _refresh(spec, lake: Lake, date: dt.date | str, path: Path, force: bool) -> dict:
    held = store_date(path)
    tomorrow = ds(dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=1))
    if held is not None and held > tomorrow:   # a date from the future would freeze the store for good
        log.warning("%s: online store holds %s, a date in the future; replaced by %s", spec.name, held, ds(date))
    elif held is not None and held > ds(date) and not force:
        log.info("%s: online store holds %s, newer than %s; left as it is", spec.name, held, ds(date))
        return {"refreshed": False, "ds": held, "rows": None, "path": str(path)}
    columns = [spec.entity, *feature_columns(spec).all]
    frame = read_partition(lake.features(spec.name), date, columns)
    frame[spec.entity] = frame[spec.entity].astype(str)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        conn = sqlite3.connect(staging)
        try:
            frame.to_sql(TABLE, conn, index=False)
            conn.execute(f"create unique index entity_key on {TABLE} ({_quote(spec.entity)})")
            conn.execute(f"create table {META} (key text primary key, value text)")
            conn.executemany(f"insert into {META} values (?, ?)",
                             [("ds", ds(date)), ("entity", spec.entity), ("refreshed_at",
                              dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))])
            conn.commit()
        finally:
            conn.close()
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    log.info("%s: online store %s now holds the features of %s (%d entities)", spec.name, path, ds(date), len(frame))
    return {"refreshed": True, "ds": ds(date), "rows": len(frame), "path": str(path)}


def lookup(path: Path, entity: str, ids: list[str], columns: list[str]) -> tuple[list[dict], list[str]]:
    """The feature records of ``ids`` in the order asked (``entity`` plus ``columns``, plain
    values), and the ids the store does not know."""
    if not path.exists():
        raise MissingData(f"no online store at {path}; the daily DAG writes it after build_features")
    wanted = [str(i) for i in ids]
    quoted = ", ".join(_quote(c) for c in [entity, *columns])
    reader, rows = _reader(path), []
    for start in range(0, len(wanted), LOOKUP_CHUNK):   # SQLite caps the variables of one statement
        chunk = wanted[start:start + LOOKUP_CHUNK]
        rows += reader.execute(f'select {quoted} from {TABLE} where {_quote(entity)} in '
                               f'({", ".join("?" * len(chunk))})', chunk).fetchall()
    names = [entity, *columns]
    by_id = {row[0]: row for row in rows}
    missing = [i for i in wanted if i not in by_id]
    return [dict(zip(names, by_id[i])) for i in wanted if i in by_id], missing


LOOKUP_CHUNK = 500


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_readers = threading.local()   # per thread: path -> (the file's identity, its open connection)


def _reader(path: Path) -> sqlite3.Connection:
    """This thread's open connection to the store file now at ``path``. A refresh renames a new
    file over the old one: a new inode, so the next lookup opens it (the old file stays readable
    through the connection until then)."""
    stat = path.stat()
    identity = (stat.st_dev, stat.st_ino)
    held = getattr(_readers, "by_path", None)
    if held is None:
        held = _readers.by_path = {}
    known = held.get(path)
    if known is not None and known[0] == identity:
        return known[1]
    if known is not None:
        known[1].close()
    conn = _connect(path)
    held[path] = (identity, conn)
    return conn


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
