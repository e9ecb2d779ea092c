"""Ingest: files land as whole daily partitions, typed by the spec; a bad file lands nothing and
says which file, column, row and value."""
import datetime as dt

import pandas as pd
import pytest

from pipelines.core.lake import Lake, list_partitions, read_partition
from pipelines.data.ingest import IngestError, ingest

TXN = "transaction_id,customer_id,event_ts,amount,channel,category\n"


@pytest.fixture()
def lake(tmp_path):
    return Lake(tmp_path / "lake")


def _csv(path, body: str, header: str = TXN):
    path.write_text(header + body)
    return path


def test_rows_land_by_day_and_a_second_ingest_changes_nothing(small_spec, lake, tmp_path):
    file = _csv(tmp_path / "t.csv", "t1,c1,2026-02-01 10:00:00,12.5,web,food\n"
                                    "t2,c2,2026-02-01T23:59:00Z,3,app,toys\n"
                                    "t3,c1,2026-02-02 08:00:00+01:00,,web,food\n")
    result = ingest(small_spec, lake, "transactions", file)
    assert result.partitions == {"2026-02-01": 2, "2026-02-02": 1}
    table = lake.raw(small_spec.name, "transactions")
    first = {d: read_partition(table, d) for d in list_partitions(table)}
    day2 = first["2026-02-02"]
    assert day2.loc[0, "event_ts"] == pd.Timestamp("2026-02-02 07:00:00")   # to UTC
    assert pd.isna(day2.loc[0, "amount"])                                    # empty cell: missing
    assert str(first["2026-02-01"]["amount"].dtype) == "float64"
    ingest(small_spec, lake, "transactions", file)
    for day, frame in first.items():
        assert read_partition(table, day).equals(frame)


def test_a_folder_of_csv_and_parquet_files(small_spec, lake, tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    _csv(folder / "a.csv", "t1,c1,2026-02-01 10:00:00,1.0,web,food\n")
    pd.DataFrame({"transaction_id": ["t2"], "customer_id": ["c2"], "event_ts": [pd.Timestamp("2026-02-01 11:00")],
                  "amount": [2.0], "channel": ["app"], "category": ["toys"]}).to_parquet(folder / "b.parquet")
    result = ingest(small_spec, lake, "transactions", folder)
    assert result.rows == 2 and result.partitions == {"2026-02-01": 2}
    assert sorted(read_partition(lake.raw(small_spec.name, "transactions"), "2026-02-01")["transaction_id"]) == ["t1", "t2"]


@pytest.mark.parametrize("body, header, words", [
    ("t1,c1,2026-02-01 10:00:00,1,web,food\nt2,c1,2026-02-01 11:00:00,1;5,web,food\n", TXN,
     "column 'amount', row 2 (line 3): value '1;5' is not a valid double"),
    ("t1,c1,2026-02-31 10:00:00,1,web,food\n", TXN, "column 'event_ts', row 1 (line 2): value '2026-02-31 10:00:00'"),
    ("t1,c1,2026-02-01 10:00:00,1,web,food,x\n", TXN.strip() + ",coupon\n", "['coupon'] are not columns of source"),
    ("t1,2026-02-01 10:00:00,1,web,food\n", "transaction_id,event_ts,amount,channel,category\n",
     "['customer_id'] of source transactions are missing"),
])
def test_a_bad_file_lands_nothing_and_says_why(small_spec, lake, tmp_path, body, header, words):
    good = _csv(tmp_path / "good.csv", "t0,c0,2026-02-01 09:00:00,1,web,food\n")
    ingest(small_spec, lake, "transactions", good)
    table = lake.raw(small_spec.name, "transactions")
    before = read_partition(table, "2026-02-01")
    folder = tmp_path / "drop"
    folder.mkdir()
    _csv(folder / "a_fine.csv", "t9,c9,2026-02-03 09:00:00,1,web,food\n")   # read first, still not landed
    bad = _csv(folder / "b_bad.csv", body, header)
    with pytest.raises(IngestError) as caught:
        ingest(small_spec, lake, "transactions", folder)
    assert str(bad) in str(caught.value) and words in str(caught.value)
    assert list_partitions(table) == ["2026-02-01"] and read_partition(table, "2026-02-01").equals(before)


def test_an_unreadable_file_is_refused(small_spec, lake, tmp_path):
    good = tmp_path / "t.parquet"
    pd.DataFrame({"transaction_id": ["t1"] * 1000, "customer_id": ["c1"] * 1000,
                  "event_ts": [pd.Timestamp("2026-02-01")] * 1000, "amount": [1.0] * 1000,
                  "channel": ["web"] * 1000, "category": ["food"] * 1000}).to_parquet(good)
    truncated = tmp_path / "cut.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(IngestError, match="cut.parquet: cannot be read as parquet"):
        ingest(small_spec, lake, "transactions", truncated)
    assert list_partitions(lake.raw(small_spec.name, "transactions")) == []


def test_a_snapshot_without_timestamp_takes_as_of(small_spec, lake, tmp_path):
    file = _csv(tmp_path / "customers.csv", "c1,gold,north\nc2,basic,south\n", "customer_id,segment,region\n")
    with pytest.raises(IngestError, match="needs --as-of"):
        ingest(small_spec, lake, "customers", file)
    result = ingest(small_spec, lake, "customers", file, as_of=dt.date(2026, 2, 5))
    assert result.partitions == {"2026-02-05": 2}
    rows = read_partition(lake.raw(small_spec.name, "customers"), "2026-02-05")
    assert set(rows["signup_ts"]) == {pd.Timestamp("2026-02-05")}


def test_cli_refusal_exit_code(small_spec, tmp_path, capsys):
    from pipelines.cli import main

    bad = _csv(tmp_path / "bad.csv", "t1,c1,yesterday,1,web,food\n")
    assert main(["ingest", small_spec.name, "transactions", str(bad)]) == 1
    assert "refused, nothing written" in capsys.readouterr().err
