"""A use case's inbox: a drop folder whose files the ``<use case>_ingest`` DAG lands in the lake.

Layout, under ``$MLOPS_INBOX/<use case>/`` (``$MLOPS_HOME/inbox`` by default)::

    <source>/<file>.csv|.parquet     dropped files, one folder per source of the spec
    archive/<source>/<file>          landed files (a name already there gets a time prefix)
    rejected/<source>/<file>         refused files, each with <file>.error.txt beside it

A file is picked up once it has not changed for ``MLOPS_INBOX_SETTLE_S`` seconds (5 by default;
a Parquet file also once its footer is written);
names starting with a dot or ending in ``.tmp``/``.part`` are never picked up, so a writer that
copies slowly must write under such a name and rename when done (a settle time only guesses
that a writer has finished). A snapshot source (no timestamp of its own) takes its as-of date
from a ``YYYY-MM-DD`` in the file's name, else from the day the file was last modified (UTC); a
name whose date is not a calendar date, is after today or before the spec's start is refused.
Symbolic links, and anything whose real path is outside the inbox, are refused without being
read; error files are readable by their owner only.

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

from pipelines.data.ingest import IngestError, land, load_file

log = logging.getLogger(__name__)

SETTLE_SECONDS = 5.0
ARCHIVE, REJECTED = "archive", "rejected"
_DATE_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")


def inbox_folder(root: Path, use_case: str) -> Path:
    """The inbox of one use case under the inbox root."""
    return Path(root) / use_case


def is_candidate(path: Path) -> bool:
    """Whether a name may be picked up at all (hidden and in-progress names never are)."""
    name = path.name
    return not (name.startswith(".") or name.endswith((".tmp", ".part")) or name.endswith(".error.txt"))


def _entries(folder: Path):
    """Every file and symbolic link under ``folder`` outside ``archive/`` and ``rejected/``, never
    following a link (a linked folder is one entry, not walked into)."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        here = Path(root)
        if here == folder:
            dirs[:] = [d for d in dirs if d not in (ARCHIVE, REJECTED)]
        for name in sorted(files) + sorted(d for d in dirs if (here / d).is_symlink()):
            yield here / name


def ready_files(folder: Path, settle_seconds: float | None = None, now: float | None = None) -> list[Path]:
    """The dropped files of an inbox (outside ``archive/`` and ``rejected/``) that have not changed
    for ``settle_seconds`` (default ``MLOPS_INBOX_SETTLE_S``, else SETTLE_SECONDS), sorted; symbolic
    links among them, which :func:`process_inbox` refuses without reading. A missing inbox has none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    settle = settle_time() if settle_seconds is None else settle_seconds
    now = time.time() if now is None else now
    found = []
    for entry in sorted(_entries(folder)):
        if not is_candidate(entry):
            continue
        try:
            settled = now - entry.lstat().st_mtime >= settle   # the entry itself, never a link's target
        except FileNotFoundError:   # moved away while we looked
            continue
        if settled and (entry.is_symlink() or looks_complete(entry)):
            found.append(entry)
    return found


def looks_complete(path: Path) -> bool:
    """A Parquet file ends with its footer's magic bytes; one being written does not yet (a CSV
    has no such mark: its writer renames it into place, see the module doc)."""
    if path.suffix.lower() not in (".parquet", ".pq"):
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(-4, os.SEEK_END)
            return handle.read(4) == b"PAR1"
    except OSError:   # shorter than 4 bytes, or gone
        return False


def settle_time() -> float:
    """Seconds a dropped file must stay unchanged before it is picked up (``MLOPS_INBOX_SETTLE_S``)."""
    return float(os.environ.get("MLOPS_INBOX_SETTLE_S") or SETTLE_SECONDS)


def unsafe(inbox: Path, path: Path) -> str | None:
    """Why ``path`` must not be read: a symbolic link (its target may be anything the landing
    process can read, a secret included), or a real path outside the inbox; None when it is safe."""
    if path.is_symlink():
        return "is a symbolic link; links are refused without being read (drop the file itself)"
    try:
        path.resolve(strict=True).relative_to(Path(inbox).resolve(strict=True))
    except (ValueError, OSError):
        return "is not inside the inbox; refused without being read"
    if not path.is_file():
        return "is not a regular file; refused without being read"
    return None


def signature(path: Path) -> tuple[str, int, int]:
    """What identifies one delivery of a file: its path, size and modification time."""
    stat = path.lstat()   # a link's own metadata: its target is never looked at
    return str(path), stat.st_size, stat.st_mtime_ns


def as_of_for(path: Path, start: dt.date | None = None, today: dt.date | None = None) -> dt.date:
    """A snapshot file's as-of date: a ``YYYY-MM-DD`` in its name, else its modification day (UTC).
    IngestError when the name's date is not a calendar date, is after today (UTC), or before
    ``start`` (the spec's start date): a wrong date would land a snapshot where no one looks, or
    one that every later snapshot is older than."""

    today = today or dt.datetime.now(dt.timezone.utc).date()
    found = _DATE_IN_NAME.findall(path.name)
    if found:
        try:
            day = dt.date.fromisoformat(found[0])
        except ValueError:
            raise IngestError(f"{path.name}: {found[0]} in the file name is not a calendar date") from None
    else:
        day = dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.timezone.utc).date()
    if day > today:
        raise IngestError(f"{path.name}: its date {day} is after today ({today}); name the file with the day "
                          f"the snapshot was taken")
    if start is not None and day < start:
        raise IngestError(f"{path.name}: its date {day} is before the use case's start_date {start}")
    return day


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
    # only the owner reads an error: it may quote a value of the refused file
    descriptor = os.open(f"{target}.error.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(error.rstrip() + "\n")
    return Path(shutil.move(str(path), target))   # a link is moved as a link, its target untouched


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


def process_inbox(spec, lake, inbox: Path, settle_seconds: float | None = None) -> InboxResult:
    """Land every ready file of ``inbox`` (see the module doc); returns what landed and what was refused."""

    inbox = Path(inbox)
    result = InboxResult()
    by_source: dict[str, list[Path]] = {}
    for path in ready_files(inbox, settle_seconds):
        parts = path.relative_to(inbox).parts
        source = parts[0] if len(parts) == 2 else ""
        refusal = unsafe(inbox, path)
        if refusal is not None:
            reason = f"{path.name}: {refusal}"
            result.rejected[str(reject(inbox, path, source if source in spec.sources else "", reason))] = reason
            log.warning("rejected %s", reason)
            continue
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
                frames.append(load_file(path, spec, source, as_of_for(path, spec.start) if needs_date else None))
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
