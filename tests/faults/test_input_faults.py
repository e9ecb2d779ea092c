"""Faults in delivered data. Each case states what must hold afterwards and checks it in the lake:
a bad delivery is quarantined with a message naming the column and rule (or passes with a
documented meaning), its clean partition is not written, and the next day's features refuse to
run from a window that lacks it.

The history is a small simulated use case validated with the real Great Expectations gate;
each case breaks one raw partition of the last day, validates it, and checks the outcome.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from pipelines.core.lake import (Lake, list_partitions, partition_rows, read_partition, replace_partition,
                                 write_raw_partition)
from pipelines.data.simulate import config_from_spec, simulate_day
from pipelines.data.validation import DataValidationError, validate_day
from pipelines.features.point_in_time import LookBackIncomplete, require_complete_look_back

pytestmark = pytest.mark.faults
START = dt.date(2026, 1, 1)
DAY = dt.date(2026, 1, 6)           # the day each case breaks
NEXT = DAY + dt.timedelta(days=1)   # whose features need DAY


@pytest.fixture()
def lake(tmp_path, small_spec):
    """Six simulated days delivered; the five before DAY validated clean."""
    lake = Lake(tmp_path / "lake")
    cfg = config_from_spec(small_spec)
    for i in range(6):
        day = START + dt.timedelta(days=i)
        for name, frame in simulate_day(small_spec, cfg, day).items():
            write_raw_partition(lake, small_spec, name, day, frame)
        if day < DAY:
            validate_day(small_spec, lake, day)
    return lake


def _redeliver(lake, spec, source, mutate):
    """Replace DAY's raw partition of ``source`` with a mutated copy (any schema: a broken delivery)."""
    frame = mutate(read_partition(lake.raw(spec.name, source), DAY))
    replace_partition(lake.raw(spec.name, source), DAY, frame)


def _rejected(lake, spec, source, *expected) -> str:
    """DAY fails validation naming ``expected``; nothing clean for DAY; the next day's features refuse."""
    with pytest.raises(DataValidationError) as err:
        validate_day(spec, lake, DAY)
    message = str(err.value)
    for text in expected:
        assert text in message, message
    assert DAY.isoformat() not in list_partitions(lake.clean(spec.name, source))
    assert DAY.isoformat() in list_partitions(lake.quarantine(spec.name, source))
    with pytest.raises(LookBackIncomplete, match=f"{source} {DAY} \\(rejected\\)"):
        require_complete_look_back(spec, lake, NEXT)
    assert not lake.features(spec.name).exists()
    return message


def test_truncated_parquet_is_quarantined_not_retried(lake, small_spec):
    """An unreadable file is a failed rule like any other: quarantined as delivered, with a report."""
    path = next((lake.raw(small_spec.name, "transactions") / f"ds={DAY}").glob("*.parquet"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = _rejected(lake, small_spec, "transactions", "readable Parquet", "cannot read")
    qdir = next((lake.quarantine(small_spec.name, "transactions") / f"ds={DAY}").iterdir())
    assert (qdir / path.name).read_bytes() == data[: len(data) // 2], "the delivery is kept as delivered"
    assert (qdir / "validation.json").exists()
    assert "Traceback" not in message


def test_empty_partition_of_a_source_that_always_delivers(lake, small_spec):
    _redeliver(lake, small_spec, "transactions", lambda f: f.iloc[0:0])
    _rejected(lake, small_spec, "transactions", "expect_table_row_count_to_be_between", "min_value=1")


def test_empty_partition_where_empty_days_are_valid(lake, small_spec):
    """Documented meaning: a source with `min_rows: 0` (no signups that day) lands an empty partition."""
    _redeliver(lake, small_spec, "customers", lambda f: f.iloc[0:0])
    counts = validate_day(small_spec, lake, DAY)
    assert counts["customers"] == 0
    assert DAY.isoformat() in list_partitions(lake.clean(small_spec.name, "customers"))


def test_empty_redelivery_never_empties_a_clean_partition(lake, small_spec):
    validate_day(small_spec, lake, DAY)
    kept = partition_rows(lake.clean(small_spec.name, "customers"), DAY)
    assert kept > 0
    _redeliver(lake, small_spec, "customers", lambda f: f.iloc[0:0])
    with pytest.raises(DataValidationError, match="redelivery keeps rows.*would replace the clean partition's"):
        validate_day(small_spec, lake, DAY)
    assert partition_rows(lake.clean(small_spec.name, "customers"), DAY) == kept
    # the explicit override lets it through
    validate_day(small_spec, lake, DAY, allow_empty_redelivery=True)
    assert partition_rows(lake.clean(small_spec.name, "customers"), DAY) == 0


def test_missing_day(lake, small_spec):
    """Nothing delivered: validation fails naming the source, and later features refuse."""
    import shutil

    shutil.rmtree(lake.raw(small_spec.name, "transactions") / f"ds={DAY}")
    with pytest.raises(DataValidationError, match="(?s)transactions 2026-01-06: 1 rule.*nothing delivered"):
        validate_day(small_spec, lake, DAY)
    with pytest.raises(LookBackIncomplete, match="transactions 2026-01-06 \\(not delivered\\)"):
        require_complete_look_back(small_spec, lake, NEXT)


def test_extra_column(lake, small_spec):
    _redeliver(lake, small_spec, "transactions", lambda f: f.assign(coupon="X"))
    _rejected(lake, small_spec, "transactions", "expect_table_columns_to_match_set", "unexpected columns ['coupon']")


def test_numeric_column_delivered_as_text(lake, small_spec):
    _redeliver(lake, small_spec, "transactions", lambda f: f.assign(amount=f["amount"].map(lambda v: f"{v:.2f}")))
    _rejected(lake, small_spec, "transactions", "column 'amount'", "expect_column_values_to_be_in_type_list")


def test_duplicated_keys(lake, small_spec):
    def duplicate(f):
        f.loc[f.index[1], "transaction_id"] = f.loc[f.index[0], "transaction_id"]
        return f
    _redeliver(lake, small_spec, "transactions", duplicate)
    _rejected(lake, small_spec, "transactions", "column 'transaction_id'", "expect_column_values_to_be_unique")


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "infinity"])
def test_nan_and_infinity_in_a_numeric_column(lake, small_spec, bad):
    def poison(f):
        f.loc[f.index[:2], "amount"] = bad
        return f
    _redeliver(lake, small_spec, "transactions", poison)
    rule = "expect_column_values_to_not_be_null" if np.isnan(bad) else "expect_column_values_to_be_between"
    _rejected(lake, small_spec, "transactions", "column 'amount'", rule)
