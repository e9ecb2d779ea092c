"""The online store (newest date wins, swapped in whole, lookups in the order asked) and the
service's record checks against a signature (every problem named by record and field)."""
import datetime as dt
import sqlite3

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.core.lake import Lake, replace_partition
from pipelines.features.online_store import lookup, refresh, store_date, store_path
from pipelines.serving.records import InvalidRecords, check_records, records_frame
from pipelines.serving.request_log import RequestLog


def _features(spec, ids, value: float) -> pd.DataFrame:
    from pipelines.features.point_in_time import feature_columns

    cols = feature_columns(spec)
    frame = pd.DataFrame({spec.entity: ids})
    for c in cols.numeric:
        frame[c] = value
    for c in cols.categorical:
        frame[c] = "retail"
    return frame


def test_the_store_holds_the_newest_date_and_finds_entities_in_order(small_spec, tmp_path):
    lake = Lake(tmp_path / "lake")
    table = lake.features(small_spec.name)
    replace_partition(table, "2026-01-10", _features(small_spec, ["a", "b", "c"], 1.0))
    replace_partition(table, "2026-01-11", _features(small_spec, ["a", "b", "d"], 2.0))
    path = store_path(tmp_path / "online", small_spec.name)
    assert store_date(path) is None
    assert refresh(small_spec, lake, dt.date(2026, 1, 11), path)["rows"] == 3
    older = refresh(small_spec, lake, dt.date(2026, 1, 10), path)      # a backfill of an older day
    assert not older["refreshed"] and store_date(path) == "2026-01-11"
    found, missing = lookup(path, small_spec.entity, ["d", "zz", "a"], ["txn_count_7d", "segment"])
    assert [r[small_spec.entity] for r in found] == ["d", "a"] and missing == ["zz"]
    assert all(r["txn_count_7d"] == 2.0 and r["segment"] == "retail" for r in found)
    replace_partition(table, "2026-01-12", _features(small_spec, ["a", "e"], 3.0))
    assert refresh(small_spec, lake, dt.date(2026, 1, 12), path)["refreshed"]
    found, missing = lookup(path, small_spec.entity, ["e", "d"], ["txn_count_7d"])   # same thread, same path
    assert [r[small_spec.entity] for r in found] == ["e"] and found[0]["txn_count_7d"] == 3.0 and missing == ["d"], \
        "the lookup after a refresh reads the new file, not the one it kept open"
    assert not list(path.parent.glob(".*.tmp")), "no staging file is left behind"
    with pytest.raises(sqlite3.OperationalError):   # readers open it read-only
        sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("delete from features")


def test_a_missing_store_says_who_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_features"):
        lookup(tmp_path / "none.sqlite", "id", ["a"], ["x"])


INPUTS = {"amount": "double", "visits": "long", "segment": "string"}


def test_records_become_the_signatures_frame_with_missing_values():
    records = check_records([{"amount": 1, "visits": 3, "segment": "pro", "extra": "ignored"},
                             {"amount": None, "visits": None, "segment": None}], INPUTS)
    assert [list(r) for r in records] == [list(INPUTS)] * 2, "only the signature's columns are kept"
    frame = records_frame(records, INPUTS)
    assert list(frame.columns) == list(INPUTS) and frame["amount"].dtype == "float64"
    assert np.isnan(frame.loc[1, "amount"]) and frame.loc[1, "segment"] is None


@pytest.mark.parametrize("records, loc, words", [
    ([{"amount": 1.0, "visits": 2}], ["records", 0, "segment"], "field required (string)"),
    ([{"amount": "1.0", "visits": 2, "segment": "x"}], ["records", 0, "amount"], "expected double, got str"),
    ([{"amount": 1.0, "visits": 2.5, "segment": "x"}], ["records", 0, "visits"], "expected long, got float"),
    ([{"amount": True, "visits": 2, "segment": "x"}], ["records", 0, "amount"], "expected double, got bool"),
    ([{"amount": 1.0, "visits": 2, "segment": "x"}, "oops"], ["records", 1], "an object of column: value"),
    ([], ["records"], "at least one record"),
])
def test_records_that_do_not_fit_the_signature_are_named(records, loc, words):
    with pytest.raises(InvalidRecords) as caught:
        check_records(records, INPUTS)
    assert any(e["loc"] == loc and words in e["msg"] for e in caught.value.errors), caught.value.errors


def test_the_request_log_writes_whole_files_per_day_and_keeps_rows_when_writing_fails(tmp_path, monkeypatch):
    log = RequestLog(tmp_path / "online", types={"label": "Int64", "error": "string"})
    log.add([{"id": "a", "score": 0.1, "label": 1, "error": None, "ds": "2026-01-01"},
             {"id": "b", "score": 0.2, "label": None, "error": None, "ds": "2026-01-02"}])
    log.add([{"id": "c", "score": 0.3, "label": 0, "error": "v3 failed", "ds": "2026-01-02"}])
    assert log.flush() == 3 and log.written == 3
    assert len(list((tmp_path / "online" / "ds=2026-01-02").glob("*.parquet"))) == 1
    day = pd.read_parquet(tmp_path / "online" / "ds=2026-01-02")
    assert day["id"].tolist() == ["b", "c"] and day["label"].tolist()[1] == 0 and pd.isna(day["label"].iloc[0])
    alone = pd.read_parquet(tmp_path / "online" / "ds=2026-01-01")   # all-null columns keep their types
    assert str(alone["label"].dtype) == "Int64" and str(alone["error"].dtype) in ("string", "object")
    log.add([{"id": "d", "score": 0.4, "label": 1, "error": None, "ds": "2026-01-03"}])
    monkeypatch.setattr(pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    assert log.flush() == 0
    monkeypatch.undo()
    assert log.flush() == 1 and (tmp_path / "online" / "ds=2026-01-03").exists()


def test_the_request_log_writes_rows_straight_to_arrow_as_it_wrote_them_through_a_frame(tmp_path, small_spec,
                                                                                        monkeypatch):
    """After the first flush the log builds its tables from the rows in the first one's schema:
    the files read back as the frame's way wrote them, dtypes and pandas' metadata included; rows
    that do not fit the schema (a new column, text in a number column) still take the frame's way."""
    from pipelines.serving.request_log import log_types

    types = log_types(small_spec)
    now = pd.Timestamp("2026-01-02 10:00:00")

    def row(i: int, **changes) -> dict:
        value = {"float64": float(i) / 3, "string": f"<script>{i}</script>" if i % 2 else None, "Int64": i % 2,
                 "bool": bool(i % 2), "datetime64[ns]": now}
        return {**{c: value[kind] for c, kind in types.items()}, "ds": "2026-01-02", **changes}

    log = RequestLog(tmp_path / "online", types=types)
    first = [row(i) for i in range(5)]
    later = [row(i) for i in range(5, 40)] + [row(40, error=None, predicted_label=None)]
    log.add(first)
    assert log.flush() == 5 and log._schema is not None
    through_a_frame, frame = [], RequestLog.frame
    monkeypatch.setattr(RequestLog, "frame", lambda self, rows: through_a_frame.append(len(rows)) or frame(self, rows))
    log.add(later)
    assert log.flush() == len(later) and through_a_frame == []
    monkeypatch.undo()
    by_frame = RequestLog(tmp_path / "by_frame", types=types)
    by_frame.add(first + later)
    by_frame._keys = frozenset()   # never the schema's way: every flush through a frame
    assert by_frame.flush() == len(first) + len(later)
    day = "ds=2026-01-02"
    files = sorted((tmp_path / "online" / day).glob("*.parquet"), key=lambda p: len(pq.read_table(p)))
    assert pq.read_schema(files[-1]).equals(pq.read_schema(next((tmp_path / "by_frame" / day).glob("*"))),
                                            check_metadata=True)
    ours = pd.concat([pd.read_parquet(files[0]), pd.read_parquet(files[1])], ignore_index=True)
    pd.testing.assert_frame_equal(ours, pd.read_parquet(tmp_path / "by_frame" / day))

    numeric = next(c for c, kind in types.items() if kind == "float64")
    monkeypatch.setattr(RequestLog, "frame", lambda self, rows: through_a_frame.append(len(rows)) or frame(self, rows))
    log.add([row(41, **{numeric: "not a number"})])      # Arrow refuses it; the frame's way names it
    assert log.flush() == 0 and len(log._rows) == 1 and through_a_frame == [1]
    log._rows.clear()
    log.add([row(42, surprise="a column the schema does not have")])
    assert log.flush() == 1 and through_a_frame == [1, 1]
    newest = max((tmp_path / "online" / day).glob("*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    assert "surprise" in pq.read_schema(newest).names


def test_concurrent_refreshes_leave_the_newest_date_whatever_order_they_finish_in(small_spec, tmp_path, monkeypatch):
    """A backfill's runs refresh the store at once: an older day that checked the store's date
    first and wrote last must not replace a newer day's store."""
    import threading

    from pipelines.features import online_store
    lake = Lake(tmp_path / "lake")
    for day, value in (("2026-01-10", 1.0), ("2026-01-11", 2.0)):
        replace_partition(lake.features(small_spec.name), day, _features(small_spec, ["a", "b"], value))
    path = store_path(tmp_path / "online", small_spec.name)
    reading_older, go_on = threading.Event(), threading.Event()
    real_read = online_store.read_partition

    def slow_for_the_older_day(table, date, columns=None):
        if str(date) == "2026-01-10":
            reading_older.set()
            assert go_on.wait(10)
        return real_read(table, date, columns)

    monkeypatch.setattr(online_store, "read_partition", slow_for_the_older_day)
    older = threading.Thread(target=refresh, args=(small_spec, lake, "2026-01-10", path))
    older.start()
    assert reading_older.wait(10)           # the older day has checked the store's date and is reading
    newer = threading.Thread(target=refresh, args=(small_spec, lake, "2026-01-11", path))
    newer.start()
    newer.join(1.0)                         # without the lock it finishes here, before the older one
    go_on.set()
    older.join(10)
    newer.join(10)
    assert store_date(path) == "2026-01-11"
    found, _ = lookup(path, small_spec.entity, ["a"], ["txn_count_7d"])
    assert found[0]["txn_count_7d"] == 2.0
