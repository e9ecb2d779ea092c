"""A use case's inbox: a drop folder whose files the ``<use case>_ingest`` DAG lands in the lake.

Layout, under ``$MLOPS_INBOX/<use case>/`` (``$MLOPS_HOME/inbox`` by default)::

    <source>/<file>.csv|.parquet     dropped files, one folder per source of the spec
    archive/<source>/<file>          landed files (a name already there gets a time prefix)
    rejected/<source>/<file>         refused files, each with <file>.error.txt beside it

A file is picked up once it has not changed for ``SETTLE_SECONDS``; names starting with a dot
or ending in ``.tmp``/``.part`` are never picked up, so a writer that copies slowly should
write under such a name and rename when done. A snapshot source (no timestamp of its own)
takes its as-of date from a ``YYYY-MM-DD`` in the file's name, else from the day the file
was last modified (UTC).

The files of one source picked up together land together: a day's partition is replaced by
that day's rows of all of them. A file that cannot be landed (unreadable, columns the spec does
not name, values that cannot be cast, a folder that is not a source) goes to ``rejected/`` with
its error; the others still land. Anything else (a lake that cannot be written) leaves the
files where they are, and the task's retry picks them up again: landing is idempotent.

This module imports nothing heavy at the top: the triggerer imports it to watch the folder.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SETTLE_SECONDS = 2.0
ARCHIVE, REJECTED = "archive", "rejected"
_DATE_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")


def inbox_folder(root: Path, use_case: str) -> Path:
    """The inbox of one use case under the inbox root."""
    return Path(root) / use_case


def is_candidate(path: Path) -> bool:
    """Whether a name may be picked up at all (hidden and in-progress names never are)."""
    name = path.name
    return not (name.startswith(".") or name.endswith((".tmp", ".part")) or name.endswith(".error.txt"))


def ready_files(folder: Path, settle_seconds: float = SETTLE_SECONDS, now: float | None = None) -> list[Path]:
    """The dropped files of an inbox (outside ``archive/`` and ``rejected/``) that have not changed
    for ``settle_seconds``, sorted. A missing inbox has none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    found = []
    for entry in sorted(folder.rglob("*")):
        relative = entry.relative_to(folder).parts
        if relative[0] in (ARCHIVE, REJECTED) or not entry.is_file() or not is_candidate(entry):
            continue
        try:
            settled = now - entry.stat().st_mtime >= settle_seconds
        except FileNotFoundError:   # moved away while we looked
            continue
        if settled:
            found.append(entry)
    return found


def signature(path: Path) -> tuple[str, int, int]:
    """What identifies one delivery of a file: its path, size and modification time."""
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def as_of_for(path: Path) -> dt.date:
    """A snapshot file's as-of date: a ``YYYY-MM-DD`` in its name, else its modification day (UTC)."""
    for text in _DATE_IN_NAME.findall(path.name):
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            continue
    return dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.timezone.utc).date()


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    if target.exists():
        target = folder / f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%f}_{name}"
    return target


def archive(inbox: Path, path: Path, source: str) -> Path:
    """Move a landed file to ``archive/<source>/``."""
    folder = inbox / ARCHIVE / source
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.move(str(path), _free_name(folder, path.name)))


def reject(inbox: Path, path: Path, source: str, error: str) -> Path:
    """Move a refused file to ``rejected/<source>/`` with ``<name>.error.txt`` beside it."""
    folder = inbox / REJECTED / (source or "_unknown")
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_name(folder, path.name)
    Path(f"{target}.error.txt").write_text(error.rstrip() + "\n")
    return Path(shutil.move(str(path), target))


@dataclass
class InboxResult:
    """What one pass over an inbox did."""

    landed: dict[str, list[str]] = field(default_factory=dict)      # source -> archived files
    partitions: dict[str, dict[str, int]] = field(default_factory=dict)   # source -> ds -> rows
    rejected: dict[str, str] = field(default_factory=dict)          # rejected file -> error

    @property
    def dates(self) -> list[str]:
        """Every partition date written, sorted."""
        return sorted({ds for parts in self.partitions.values() for ds in parts})


def process_inbox(spec, lake, inbox: Path, settle_seconds: float = SETTLE_SECONDS) -> InboxResult:
    """Land every ready file of ``inbox`` (see the module doc); returns what landed and what was refused."""
    from pipelines.ingest import IngestError, land, load_file

    inbox = Path(inbox)
    result = InboxResult()
    by_source: dict[str, list[Path]] = {}
    for path in ready_files(inbox, settle_seconds):
        parts = path.relative_to(inbox).parts
        source = parts[0] if len(parts) == 2 else ""
        if source not in spec.sources:
            where = f"folder {source!r}" if source else "the inbox's top level"
            reason = (f"{path.name}: dropped in {where}, which is not a source of {spec.name}; drop files in "
                      f"one of {[f'{inbox}/{s}/' for s in spec.sources]}")
            result.rejected[str(reject(inbox, path, source, reason))] = reason
            log.warning("rejected %s", reason)
            continue
        by_source.setdefault(source, []).append(path)
    for source, files in by_source.items():
        needs_date = spec.sources[source].partition_by is None
        checked, frames = [], []
        for path in files:
            try:
                frames.append(load_file(path, spec, source, as_of_for(path) if needs_date else None))
            except IngestError as exc:
                reason = str(exc)
                result.rejected[str(reject(inbox, path, source, reason))] = reason
                log.warning("rejected %s", reason)
                continue
            checked.append(path)
        if not checked:
            continue
        landed = land(spec, lake, source, checked, frames)
        result.partitions[source] = landed.partitions
        result.landed[source] = [str(archive(inbox, path, source)) for path in checked]
        log.info("%s.%s: landed %d file(s) into %s", spec.name, source, len(checked), sorted(landed.partitions))
    return result


def make_source_folders(spec, inbox: Path) -> None:
    """Create ``<source>/`` under the inbox for every source of the spec (so users see where to drop)."""
    for source in spec.sources:
        os.makedirs(Path(inbox) / source, exist_ok=True)
