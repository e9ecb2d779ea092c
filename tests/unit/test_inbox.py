"""The inbox: settled files land and are archived, refused ones are rejected with their error beside
them, a snapshot's as-of date comes from its name; the watcher reports each delivery once; a run
woken by an ingest is for the newest date landed."""
import asyncio
import datetime as dt
import os
import time

import pytest

from mlops_airflow.common import choose_run_day
from mlops_airflow.triggers import InboxTrigger
from pipelines.core.lake import Lake, list_partitions, read_partition
from pipelines.core.spec import load_spec
from pipelines.data.inbox import as_of_for, process_inbox, ready_files
from tests.conftest import ROOT

TXN = "transaction_id,customer_id,event_ts,amount,channel,category\n"


def _drop(path, text: str, age: float = 60.0):
    """Write a file as if it had been dropped ``age`` seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


@pytest.fixture()
def lake(tmp_path):
    return Lake(tmp_path / "lake")


@pytest.fixture(scope="module")
def patients_spec():
    return load_spec(ROOT / "include" / "breast_cancer" / "spec.yaml")


def _patients_csv(rows: int = 5, **override) -> str:
    from pipelines.data.example_data import example_frame

    frame = example_frame("breast_cancer").head(rows)
    for column, value in override.items():
        frame.loc[frame.index[0], column] = value
    return frame.to_csv(index=False)


def test_ready_files_skip_unsettled_hidden_partial_and_handled_files(tmp_path):
    inbox = tmp_path / "uc"
    settled = _drop(inbox / "src" / "a.csv", "x")
    _drop(inbox / "src" / "b.csv", "x", age=0)                 # still being written, perhaps
    for name in (".c.csv", "d.csv.tmp", "e.csv.part"):
        _drop(inbox / "src" / name, "x")
    _drop(inbox / "archive" / "src" / "f.csv", "x")
    _drop(inbox / "rejected" / "src" / "g.csv", "x")
    assert ready_files(inbox, settle_seconds=2) == [settled]
    assert ready_files(tmp_path / "missing") == []


@pytest.mark.parametrize("name, expected", [
    ("patients_2026-03-01.csv", dt.date(2026, 3, 1)),
    ("patients.csv", None),                                        # the day it was written (UTC)
])
def test_snapshot_as_of_from_the_name_else_the_write_day(tmp_path, name, expected):
    path = _drop(tmp_path / name, "x", age=0)
    written = dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.timezone.utc).date()
    assert as_of_for(path) == (expected or written)


def test_good_files_land_and_move_to_archive_bad_ones_to_rejected_with_their_error(small_spec, lake, tmp_path):
    inbox = tmp_path / "inbox"
    _drop(inbox / "transactions" / "day1.csv", TXN + "t1,c1,2026-02-01 10:00:00,12.5,web,food\n")
    _drop(inbox / "transactions" / "day1b.csv", TXN + "t2,c2,2026-02-01 11:00:00,3,app,toys\n")
    _drop(inbox / "transactions" / "bad.csv", TXN + "t3,c1,2026-02-02 08:00:00,1;5,web,food\n")
    _drop(inbox / "nonsense" / "x.csv", TXN)
    _drop(inbox / "loose.csv", TXN)
    result = process_inbox(small_spec, lake, inbox)

    assert result.partitions == {"transactions": {"2026-02-01": 2}} and result.dates == ["2026-02-01"]
    table = lake.raw(small_spec.name, "transactions")
    assert list_partitions(table) == ["2026-02-01"]                # the bad file's day landed nothing
    assert sorted(read_partition(table, "2026-02-01")["transaction_id"]) == ["t1", "t2"]   # files dropped together
    assert sorted(p.name for p in (inbox / "archive" / "transactions").iterdir()) == ["day1.csv", "day1b.csv"]
    rejected = {os.path.basename(p): error for p, error in result.rejected.items()}
    assert set(rejected) == {"bad.csv", "x.csv", "loose.csv"}
    assert "column 'amount', row 1 (line 2): value '1;5'" in rejected["bad.csv"]
    assert "folder 'nonsense', which is not a source" in rejected["x.csv"]
    assert "top level" in rejected["loose.csv"]
    beside = inbox / "rejected" / "transactions" / "bad.csv.error.txt"
    assert "value '1;5'" in beside.read_text() and (inbox / "rejected" / "transactions" / "bad.csv").exists()
    assert ready_files(inbox) == []                                 # nothing is picked up twice


def test_the_same_snapshot_dropped_twice_gives_the_same_partition(patients_spec, lake, tmp_path):
    inbox = tmp_path / "inbox"
    text = _patients_csv()
    _drop(inbox / "patients" / "patients_2026-03-01.csv", text)
    first = process_inbox(patients_spec, lake, inbox)
    table = lake.raw(patients_spec.name, "patients")
    landed = read_partition(table, "2026-03-01")
    _drop(inbox / "patients" / "patients_2026-03-01.csv", text)
    second = process_inbox(patients_spec, lake, inbox)
    assert first.partitions == second.partitions == {"patients": {"2026-03-01": 5}}
    assert read_partition(table, "2026-03-01").equals(landed) and list_partitions(table) == ["2026-03-01"]
    assert len(list((inbox / "archive" / "patients").iterdir())) == 2   # the second copy kept under a new name


def test_a_lake_failure_leaves_the_files_for_the_retry(patients_spec, lake, tmp_path, monkeypatch):
    import pipelines.data.ingest

    inbox = tmp_path / "inbox"
    dropped = _drop(inbox / "patients" / "p_2026-03-01.csv", _patients_csv())

    def no_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(pipelines.data.ingest, "write_raw_partition", no_disk)
    with pytest.raises(OSError, match="No space left"):
        process_inbox(patients_spec, lake, inbox)
    assert dropped.exists() and not (inbox / "rejected").exists()
    monkeypatch.undo()
    assert process_inbox(patients_spec, lake, inbox).dates == ["2026-03-01"]


def test_a_snapshot_with_a_bad_value_is_rejected_naming_column_row_and_value(patients_spec, lake, tmp_path):
    inbox = tmp_path / "inbox"
    _drop(inbox / "patients" / "p_2026-03-01.csv", _patients_csv(mean_radius="big"))
    result = process_inbox(patients_spec, lake, inbox)
    assert result.dates == [] and not list_partitions(lake.raw(patients_spec.name, "patients"))
    [error] = result.rejected.values()
    assert "column 'mean_radius', row 1 (line 2): value 'big' is not a valid double" in error


async def _events(trigger, count: int, timeout: float) -> list:
    """The first ``count`` events of a trigger, or as many as came within ``timeout`` seconds."""
    found = []

    async def collect():
        async for event in trigger.run():
            found.append(event.payload)
            if len(found) == count:
                return

    try:
        await asyncio.wait_for(collect(), timeout)
    except TimeoutError:
        pass
    return found


def test_the_watcher_reports_each_delivery_once(tmp_path):
    inbox = tmp_path / "uc"
    first = _drop(inbox / "src" / "a.csv", "x")
    trigger = InboxTrigger(directory=str(inbox), poll_interval=0.05, settle_seconds=1)
    assert trigger.serialize() == ("mlops_airflow.triggers.InboxTrigger",
                                   {"directory": str(inbox), "poll_interval": 0.05, "settle_seconds": 1})

    async def story():
        runner = trigger.run()
        event = await asyncio.wait_for(runner.__anext__(), 5)
        assert event.payload["files"] == [str(first)]
        nothing = asyncio.ensure_future(runner.__anext__())
        await asyncio.sleep(0.3)                       # several polls: the same file is not reported again
        assert not nothing.done()
        second = _drop(inbox / "src" / "b.csv", "x")
        event = await asyncio.wait_for(nothing, 5)
        assert event.payload["files"] == [str(second)]
        await runner.aclose()

    asyncio.run(story())


def test_the_watcher_waits_for_a_file_to_settle(tmp_path):
    inbox = tmp_path / "uc"
    _drop(inbox / "src" / "a.csv", "x", age=0)
    trigger = InboxTrigger(directory=str(inbox), poll_interval=0.05, settle_seconds=0.6)
    started = time.monotonic()
    [payload] = asyncio.run(_events(trigger, 1, 5))
    assert payload["files"] == [str(inbox / "src" / "a.csv")] and time.monotonic() - started >= 0.5


@pytest.mark.parametrize("given, logical, landed, expected", [
    ("2026-03-05", "2026-03-01", ["2026-03-09"], "2026-03-05"),   # the param wins
    ("", "2026-03-01", ["2026-03-09"], "2026-03-01"),             # then the logical date
    (None, None, ["2026-03-02", "2026-03-09", "2026-03-04"], "2026-03-09"),   # then the newest landed
    ("  ", None, ["2026-03-02"], "2026-03-02"),
    ("", None, [], ValueError),                                   # nothing: no date
    ("2026-02-30", None, [], ValueError),                         # not a date
])
def test_the_date_of_a_run(given, logical, landed, expected):
    if expected is ValueError:
        with pytest.raises(ValueError):
            choose_run_day(given, logical, landed)
    else:
        assert choose_run_day(given, logical, landed) == expected
