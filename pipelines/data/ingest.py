"""Ingest: a team's own files (CSV or Parquet) into a source's raw daily partitions.

    mlops ingest <use case> <source> <file, folder or glob> [--as-of YYYY-MM-DD]

Every file is read and checked against the spec's columns first: a file that cannot be read,
has a column the spec does not name or lacks one it needs, or holds a value that cannot be cast
to the column's type is refused with its name, the column, the row number and the value, and
nothing is written. Then each touched day's partition (by the date of the source's
``partition_by`` timestamp) is replaced whole, so ingesting the same files again changes
nothing. A snapshot table with no timestamp of its own takes ``--as-of``: its rows get that
date's midnight as their timestamp and land in that day's partition.
"""
from __future__ import annotations

import csv
import datetime as dt
import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.errors import Refusal
from pipelines.core.lake import Lake, write_raw_partition
from pipelines.core.spec import ColumnType, CsvFormat, UseCaseSpec

log = logging.getLogger(__name__)

READABLE = (".csv", ".parquet", ".pq")


class IngestError(Refusal, ValueError):
    """A file was refused; nothing was written."""


@dataclass(frozen=True)
class IngestResult:
    source: str
    files: list[str]
    rows: int
    partitions: dict[str, int] = field(default_factory=dict)   # ds -> rows written
    missing: dict[str, int] = field(default_factory=dict)      # column -> values read as missing


def expand(location: str | Path) -> list[Path]:
    """The readable files of a file, a folder (recursively) or a glob, sorted."""
    path = Path(location)
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in READABLE]
    elif path.is_file():
        files = [path]
    else:
        files = [Path(p) for p in sorted(glob.glob(str(location), recursive=True)) if Path(p).is_file()]
    if not files:
        raise IngestError(f"no CSV or Parquet file at {location}")
    return files


DELIMITERS = ",;\t|"
SAMPLE_BYTES = 64 * 1024
# texts that often stand for a missing value in exported tables (R writes NA, spreadsheets n/a)
NA_LIKE = ("NA", "N/A", "n/a", "na", "NaN", "nan", "null", "NULL", "None", "none", "-", "?", ".", "#N/A", "missing")
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def sniff_delimiter(sample: str) -> str:
    """The delimiter of a CSV sample: the one of comma, semicolon, tab and pipe that splits its
    lines into the same number of fields (csv.Sniffer), else the one the header holds most of."""

    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        header = sample.splitlines()[0] if sample else ""
        counts = {d: header.count(d) for d in DELIMITERS}
        best = max(counts, key=counts.get)
        return best if counts[best] else ","


def describe_delimiter(delimiter: str) -> str:
    return _DELIMITER_NAMES.get(delimiter, repr(delimiter))


def read_text_sample(path: Path, encoding: str) -> str:
    """The file's first bytes as text; IngestError naming the encoding when they are not."""
    raw = _head(path)
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        if len(raw) == SAMPLE_BYTES and exc.start >= len(raw) - 4:
            return raw[:exc.start].decode(encoding)   # a character cut by the sample's end
        raise IngestError(f"{path}: not {encoding} text (byte {raw[exc.start:exc.start + 1]!r} at position "
                          f"{exc.start}); declare the file's encoding in the source's csv.encoding "
                          f"(e.g. latin-1 or cp1252)") from None


def _head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(SAMPLE_BYTES)


def read_file(path: Path, fmt: CsvFormat | None = None) -> pd.DataFrame:
    """The file's rows as text (CSV) or as stored (Parquet); IngestError if it cannot be read.

    ``fmt`` (a spec's :class:`~pipelines.core.spec.CsvFormat`) says the delimiter (none: sniffed), the
    encoding and the texts that mean missing besides an empty field; nothing else is read as
    missing (pandas' own list would turn ``NA`` or ``n/a`` into nulls without a word)."""
    fmt = fmt or CsvFormat()
    try:
        if path.suffix.lower() != ".csv":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pandas()
        sample = read_text_sample(path, fmt.encoding)
        delimiter = fmt.delimiter or sniff_delimiter(sample)
        frame = pd.read_csv(path, dtype=str, sep=delimiter, encoding=fmt.encoding, keep_default_na=False,
                            na_values=["", *fmt.na_values])   # text first: a bad value is reported, not guessed at
    except IngestError:
        raise
    except Exception as exc:   # any reader failure: truncated, not CSV, not Parquet
        hint = ("; declare the file's encoding in the source's csv.encoding (e.g. latin-1 or cp1252)"
                if isinstance(exc, UnicodeDecodeError) else "")
        raise IngestError(f"{path}: cannot be read as {path.suffix.lstrip('.') or 'a known format'}: "
                          f"{type(exc).__name__}: {exc}{hint}") from None
    if len(frame.columns) == 1:
        held = [d for d in DELIMITERS if d != delimiter and d in str(frame.columns[0])]
        if held:
            raise IngestError(f"{path}: the header is one column holding {held[0]!r}: the file looks "
                              f"{describe_delimiter(held[0])}-separated but was read as "
                              f"{describe_delimiter(delimiter)}-separated; declare the source's "
                              f"csv.delimiter: {held[0]!r}")
    return frame


TRUE_WORDS, FALSE_WORDS = {"true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0"}   # a bool, however written


def cast_column(values: pd.Series, kind: ColumnType) -> pd.Series:
    """``values`` as the spec's type; NaN where the input is missing or cannot be cast."""
    if kind is ColumnType.STRING:
        return values.where(values.isna(), values.astype(str))
    if kind in (ColumnType.INT, ColumnType.DOUBLE):
        numbers = pd.to_numeric(values, errors="coerce")   # "inf" stays infinite: validation's rules judge it
        if kind is ColumnType.INT:
            whole = np.isfinite(numbers) & (numbers == numbers.round())
            numbers = numbers.where(whole).astype("Int64")
        return numbers
    if kind is ColumnType.BOOL:
        if pd.api.types.is_bool_dtype(values):
            return values
        text = values.astype(str).str.strip().str.lower()
        return pd.Series([True if t in TRUE_WORDS else False if t in FALSE_WORDS else pd.NA for t in text],
                         index=values.index, dtype="boolean").where(values.notna())
    stamps = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    stamps = stamps.dt.tz_convert(None)
    return stamps.dt.date.where(stamps.notna(), None) if kind is ColumnType.DATE else stamps


def typed_frame(path: Path, frame: pd.DataFrame, spec: UseCaseSpec, source: str,
                as_of: dt.date | None) -> pd.DataFrame:
    """The file's rows typed by the source's columns; IngestError naming the first problem."""
    src = spec.source(source)
    stamped = [c for c in dict.fromkeys([src.timestamp, src.partition_by]) if c and c not in frame.columns]
    unknown = [c for c in frame.columns if c not in src.columns]
    if unknown:
        raise IngestError(f"{path}: column(s) {unknown} are not columns of source {source} in the spec "
                          f"(it names {list(src.columns)}); add them to the spec or drop them from the file")
    if (stamped or src.partition_by is None) and as_of is None:
        what = f"no column {stamped[0]!r} to partition by" if stamped else f"source {source} is a snapshot"
        raise IngestError(f"{path}: {what}; a snapshot without a timestamp needs --as-of YYYY-MM-DD")
    numbered = src.row_id if src.row_id and src.row_id not in frame.columns else None
    missing = [c for c in src.columns if c not in frame.columns and c not in stamped and c != numbered]
    if missing:
        raise IngestError(f"{path}: column(s) {missing} of source {source} are missing")
    out = pd.DataFrame(index=frame.index)
    for column, kind in src.columns.items():
        if column == numbered:
            out[column] = pd.array(np.arange(1, len(frame) + 1), dtype="Int64")
            continue
        if column in stamped:
            midnight = pd.Timestamp(dt.datetime.combine(as_of, dt.time()))
            out[column] = midnight.date() if kind is ColumnType.DATE else midnight
            continue
        raw = frame[column]
        typed = cast_column(raw, kind)
        bad = typed.isna() & raw.notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            value = raw.iloc[row]
            line = f"row {row + 1}" + (f" (line {row + 2})" if path.suffix.lower() == ".csv" else "")
            hint = (f"; if it means missing, declare it: sources.{source}.csv.na_values: [{value!r}]"
                    if str(value).strip() in NA_LIKE else "")
            shown = repr(value) if len(str(value)) <= 40 else repr(str(value)[:40]) + "..."   # bounded
            raise IngestError(f"{path}: column {column!r}, {line}: value {shown} is not a valid "
                              f"{kind.value}" + (f" ({int(bad.sum())} such values in the file)" if bad.sum() > 1 else "")
                              + hint)
        out[column] = typed
    return out


def missing_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Values read as missing, per column that has any."""
    counts = frame.drop(columns="_ds", errors="ignore").isna().sum()
    return {str(c): int(n) for c, n in counts.items() if n}


def partition_dates(frame: pd.DataFrame, spec: UseCaseSpec, source: str, as_of: dt.date | None) -> pd.Series:
    """Each row's partition: the date of its ``partition_by`` timestamp, or the as-of date."""
    by = spec.source(source).partition_by
    if by is None:
        return pd.Series(as_of.isoformat(), index=frame.index)
    return pd.to_datetime(frame[by]).dt.date.map(lambda d: d.isoformat() if pd.notna(d) else None)


def load_file(path: Path, spec: UseCaseSpec, source: str, as_of: dt.date | None = None) -> pd.DataFrame:
    """One file's rows typed by the source's columns, with each row's partition date in ``_ds``;
    IngestError naming the file, column, row and value of the first problem. Writes nothing."""
    frame = typed_frame(path, read_file(path, spec.source(source).csv), spec, source, as_of)
    if frame.empty and spec.source(source).partition_by is not None:
        raise IngestError(f"{path}: holds no rows (a header only): there is no day to land it in; a day "
                          f"without events needs no file")
    days = partition_dates(frame, spec, source, as_of)
    if days.isna().any():
        row = int(days.isna().to_numpy().nonzero()[0][0])
        raise IngestError(f"{path}: column {spec.source(source).partition_by!r}, row {row + 1}: no timestamp "
                          f"to partition by")
    missing = missing_counts(frame)
    log.info("%s: %s rows of %s checked; read as missing: %s", path, len(frame), source,
             ", ".join(f"{c} {n}" for c, n in missing.items()) or "nothing")
    frame = frame.assign(_ds=days.to_numpy())
    if frame.empty:   # an empty snapshot: it lands as an empty partition, judged by the source's min_rows
        frame.attrs["empty_day"] = as_of.isoformat()
    return frame


def land(spec: UseCaseSpec, lake: Lake, source: str, files: list[Path], frames: list[pd.DataFrame]) -> IngestResult:
    """Write checked frames (from :func:`load_file`) as the source's raw partitions, each touched
    day's partition replaced whole by that day's rows of all of them."""
    rows = pd.concat(frames, ignore_index=True)
    written = {}
    for day, part in rows.groupby("_ds", sort=True):
        write_raw_partition(lake, spec, source, dt.date.fromisoformat(day), part.drop(columns="_ds"))
        written[day] = len(part)
    for day in sorted({f.attrs["empty_day"] for f in frames if f.attrs.get("empty_day")} - set(written)):
        write_raw_partition(lake, spec, source, dt.date.fromisoformat(day), rows.drop(columns="_ds").head(0))
        written[day] = 0
        log.warning("%s.%s: an empty snapshot (a header only) lands as an empty partition for %s", spec.name,
                    source, day)
    if written:
        log.info("%s.%s: %s rows from %s file(s) landed in %s partition(s) (%s..%s)", spec.name, source, len(rows),
                 len(files), len(written), min(written), max(written))
    return IngestResult(source, [str(p) for p in files], len(rows), written, missing_counts(rows))


def ingest(spec: UseCaseSpec, lake: Lake, source: str, location: str | Path,
           as_of: dt.date | None = None) -> IngestResult:
    """Read, check and land ``location``'s files as ``source``'s raw partitions (see module doc)."""
    spec.source(source)
    files = expand(location)
    frames = [load_file(path, spec, source, as_of) for path in files]
    return land(spec, lake, source, files, frames)   # only now: every file was readable and typed
