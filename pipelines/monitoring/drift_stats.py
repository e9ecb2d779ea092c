"""Drift statistics over a whole day, computed where the data lives.

Evidently compares two pandas frames in memory: on a day of a million rows it takes minutes
and gigabytes. Here the day's partition stays in Parquet and DuckDB reduces it to the counts
a drift statistic needs, in two scans whatever the number of columns: one for each column's
range and non-missing count, one for every column's histogram (grouping sets). The reference
(the champion's training sample, a few thousand rows) is binned the same way in numpy.

The statistics are Evidently's own, on the same bins, so a column drifts here exactly when it
would drift in Evidently on the full frames:

* ``psi`` and ``jensenshannon``: numeric columns with more than 20 distinct reference values
  in equal-width bins over both sides' range (Sturges' rule on both sides' size, numpy's
  ``histogram_bin_edges``); other columns by value. PSI with Evidently's floor for empty bins,
  Jensen-Shannon with ``scipy.spatial.distance.jensenshannon``.
* ``wasserstein`` (numeric only): ``scipy.stats.wasserstein_distance`` between the reference
  values and the day's values as a histogram of :data:`WASSERSTEIN_BINS` bins (each value moved
  at most half a bin: an error below 1/(2 x bins) of the range), normed by the reference's
  standard deviation as Evidently does.

Other methods (or a column type a method does not take) are not computed here:
:func:`scalable` says which, and the caller compares a sample with Evidently instead.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DISCRETE_MAX_VALUES = 20       # Evidently: a numeric column with at most this many reference values is binned by value
WASSERSTEIN_BINS = 4096
DEFAULT_THRESHOLDS = {"psi": 0.1, "jensenshannon": 0.1, "wasserstein": 0.1}   # Evidently's defaults


@dataclass(frozen=True)
class ColumnDrift:
    """One column's drift: the statistic, whether it drifted, and the missing shares of both sides."""

    column: str
    method: str
    threshold: float
    score: float             # NaN when a side has no values to compare
    drifted: bool
    null_share_current: float
    null_share_reference: float


@dataclass(frozen=True)
class DayDrift:
    """The drift of every column over a whole day's rows."""

    rows: int
    columns: list[ColumnDrift]


def scalable(method: str | None, categorical: bool) -> bool:
    """Whether this module computes ``method`` for a column of this kind."""
    return method in {"psi", "jensenshannon"} or (method == "wasserstein" and not categorical)


def _finite(values: pd.Series, categorical: bool) -> np.ndarray:
    if categorical:
        return values.dropna().astype(str).to_numpy()
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return array[np.isfinite(array)]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sturges_edges(low: float, high: float, size: int) -> np.ndarray:
    """numpy's ``histogram_bin_edges(values, "sturges")`` from the values' range and size alone."""
    if high == low:
        low, high = low - 0.5, high + 0.5
        return np.linspace(low, high, 2)
    width = (high - low) / (math.log2(size) + 1.0)
    return np.linspace(low, high, int(math.ceil((high - low) / width)) + 1)


def _bin_expression(column: str, edges: np.ndarray) -> str:
    """SQL for the bin index of a value in equal-width ``edges``, the last bin closed: numpy's
    own first guess (the value's offset times bins per unit). numpy then corrects values that
    rounding put beside their bin; such a value lies within a rounding error of an edge, so
    the counts can differ by those few values (the statistics agree to 1e-9 in the tests)."""
    bins, low, high = len(edges) - 1, float(edges[0]), float(edges[-1])
    return (f"least(greatest(cast(floor(({_quote(column)} - {low!r}) * {bins / (high - low)!r}) AS BIGINT), 0), "
            f"{bins - 1})")


def _percents(counts: np.ndarray, total: int) -> np.ndarray:
    return counts / total if total else np.zeros(len(counts))


def _fill_zeroes(percents: np.ndarray) -> np.ndarray:
    """Evidently's floor for empty bins (so that PSI's logarithm stays finite)."""
    present = percents[percents != 0]
    if len(present) == 0:
        return percents
    floor = present.min() / 10**6 if present.min() <= 0.0001 else 0.0001
    return np.where(percents == 0, floor, percents)


def _score(method: str, reference: np.ndarray, current: np.ndarray) -> float:
    """The statistic between two binned distributions (percent per bin, same bins)."""
    from scipy.spatial import distance

    if method == "psi":
        ref, cur = _fill_zeroes(reference), _fill_zeroes(current)
        return float(np.sum((ref - cur) * np.log(ref / cur)))
    return float(distance.jensenshannon(reference, current))


def _parquet_source(files: list[str]) -> str:
    """DuckDB's relation over these Parquet files."""
    return "read_parquet([" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "])"


class _Day:
    """The day's partition as a DuckDB relation, and the queries over it."""

    def __init__(self, con, files: list[str]):
        self.con, self.source = con, _parquet_source(files)

    def summary(self, numeric: list[str], categorical: list[str]) -> dict:
        """Rows, and per column its non-missing count (finite for numbers) and numeric range.
        Parquet's statistics answer this without a scan; only numeric columns whose range is
        not finite there (NaN or infinite values present) are scanned."""
        row = self._one(["count(*)", *(f"{fn}({_quote(c)})" for c in numeric for fn in ("count", "min", "max")),
                         *(f"count({_quote(c)})" for c in categorical)])
        out = {"rows": int(row[0]), **{c: tuple(row[1 + 3 * i:4 + 3 * i]) for i, c in enumerate(numeric)},
               **{c: (row[1 + 3 * len(numeric) + i], None, None) for i, c in enumerate(categorical)}}
        unclean = [c for c in numeric if out[c][0] and not all(math.isfinite(v) for v in out[c][1:])]
        if unclean:
            finite = {c: f"CASE WHEN isfinite({_quote(c)}) THEN {_quote(c)} END" for c in unclean}
            row = self._one([f"{fn}({finite[c]})" for c in unclean for fn in ("count", "min", "max")])
            out.update({c: tuple(row[3 * i:3 * i + 3]) for i, c in enumerate(unclean)})
        return {k: v if k == "rows" else (int(v[0]), v[1], v[2]) for k, v in out.items()}

    def _one(self, aggregates: list[str]) -> tuple:
        return self.con.execute(f"SELECT {', '.join(aggregates)} FROM {self.source}").fetchone()

    def counts(self, keyed: dict[str, str]) -> dict[str, dict]:
        """For each column, the count of rows per key (a bin index or a value), in one scan:
        ``keyed`` maps a column to the SQL expression of its key."""
        if not keyed:
            return {}
        names = list(keyed)
        select = ", ".join(f"{expr} AS k{i}" for i, expr in enumerate(keyed.values()))
        sets = ", ".join(f"(k{i})" for i in range(len(names)))
        where = " OR ".join(f"k{i} IS NOT NULL" for i in range(len(names)))
        keys = ", ".join(f"k{i}" for i in range(len(names)))
        rows = self.con.execute(f"SELECT {keys}, GROUPING_ID({keys}), count(*) FROM "
                                f"(SELECT {select} FROM {self.source}) WHERE {where} "
                                f"GROUP BY GROUPING SETS ({sets})").fetchall()
        out: dict[str, dict] = {name: {} for name in names}
        # GROUPING_ID sets a bit for every key left out of a row's grouping set, the first key's highest
        full = (1 << len(names)) - 1
        by_grouping = {full ^ (1 << (len(names) - 1 - i)): i for i in range(len(names))}
        for row in rows:
            index = by_grouping[row[-2]]
            if row[index] is not None:
                out[names[index]][row[index]] = int(row[-1])
        return out


def column_drift_over_files(reference: pd.DataFrame, files: list[str], numeric: list[str], categorical: list[str],
                            method: str, threshold: float | None = None) -> DayDrift:
    """The drift statistic ``method`` of every column of the Parquet ``files`` (the whole day)
    against ``reference``; columns the method cannot take raise ValueError (see :func:`scalable`).
    A column with no values on the day, but values in the reference, has drifted (a broken input);
    with no values on either side it is reported and not counted as drifted."""
    threshold = DEFAULT_THRESHOLDS[method] if threshold is None else threshold
    if categorical and not scalable(method, True):
        raise ValueError(f"columns {categorical}: {method} drift is not computed over files for categorical columns")
    import duckdb

    ref_values = {c: _finite(reference[c], c in categorical) for c in numeric + categorical}
    with duckdb.connect(config={"threads": 2}) as con:
        day = _Day(con, files)
        summary = day.summary(numeric, categorical)
        edges: dict[str, np.ndarray | None] = {}   # None: counted by value
        keyed: dict[str, str] = {}
        for c in numeric + categorical:
            present, low, high = summary[c]
            if not present or not len(ref_values[c]):
                continue
            if c in categorical:
                edges[c], keyed[c] = None, f"cast({_quote(c)} AS VARCHAR)"
            elif method != "wasserstein" and len(np.unique(ref_values[c])) <= DISCRETE_MAX_VALUES:
                edges[c], keyed[c] = None, f"CASE WHEN isfinite({_quote(c)}) THEN {_quote(c)} END"
            else:
                edges[c] = _numeric_edges(method, min(low, ref_values[c].min()), max(high, ref_values[c].max()),
                                          present + len(ref_values[c]))
                keyed[c] = f"CASE WHEN isfinite({_quote(c)}) THEN {_bin_expression(c, edges[c])} END"
        counted = day.counts(keyed)

    rows, results = summary["rows"], []
    for c in numeric + categorical:
        present, ref = summary[c][0], ref_values[c]
        nulls = (float(1 - present / rows) if rows else 1.0, float(reference[c].isna().mean()) if len(reference) else 1.0)
        if c in keyed:
            score = _column_score(method, ref, counted[c], edges[c], present, c in categorical)
            results.append(ColumnDrift(c, method, float(threshold), score, bool(score >= threshold), *nulls))
        else:
            results.append(ColumnDrift(c, "all values missing", 0.0, float("nan"), not present and len(ref) > 0, *nulls))
    return DayDrift(rows, results)


def _numeric_edges(method: str, low: float, high: float, size: int) -> np.ndarray:
    """The bins of a numeric column over both sides' range: Evidently's (Sturges' rule), or
    fine ones for the Wasserstein distance."""
    if method != "wasserstein":
        return _sturges_edges(low, high, size)
    return np.linspace(low, high, WASSERSTEIN_BINS + 1) if high > low else np.linspace(low - 0.5, high + 0.5, 2)


def _column_score(method: str, reference: np.ndarray, counts: dict, edges: np.ndarray | None, present: int,
                  categorical: bool) -> float:
    """The statistic of one column from the day's counts per key (bin index, or value when
    ``edges`` is None) and the reference's values."""
    if edges is None:
        ref_counts = pd.Series(reference).value_counts()
        current = {(key if categorical else float(key)): n for key, n in counts.items()}
        keys = list(dict.fromkeys([*current, *ref_counts.index]))
        return _score(method, _percents(np.array([ref_counts.get(k, 0) for k in keys], dtype=float), len(reference)),
                      _percents(np.array([current.get(k, 0) for k in keys], dtype=float), present))
    day = np.array([counts.get(i, 0) for i in range(len(edges) - 1)], dtype=float)
    if method == "wasserstein":
        from scipy import stats

        middles, used = (edges[:-1] + edges[1:]) / 2, day > 0
        norm = max(float(np.std(reference)), 0.001)
        return float(stats.wasserstein_distance(reference, middles[used], None, day[used])) / norm
    ref_counts = np.histogram(reference, edges)[0].astype(float)
    return _score(method, _percents(ref_counts, len(reference)), _percents(day, present))


def sample_files(files: list[str], columns: list[str], rows: int, seed: int = 0) -> pd.DataFrame:
    """At most ``rows`` rows of the Parquet ``files`` drawn at random (the same ones for the same
    seed), read without loading the rest."""
    import duckdb

    with duckdb.connect(config={"threads": 1}) as con:   # one thread: a seeded reservoir is repeatable
        return con.execute(f"SELECT {', '.join(_quote(c) for c in columns)} FROM {_parquet_source(files)} "
                           f"USING SAMPLE reservoir({int(rows)} ROWS) REPEATABLE ({int(seed)})").df()
