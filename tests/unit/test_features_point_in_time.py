"""Point-in-time correctness of the Spark features: nothing at or after D leaks into D's features."""
import datetime as dt

import pandas as pd
import pytest

from pipelines.core.lake import Lake, arrow_schema, drop_partition, read_partition, replace_partition
from pipelines.features.point_in_time import LookBackIncomplete, build_features, compute_features, look_back_gaps

pytestmark = pytest.mark.spark
D = dt.date(2026, 1, 10)


def _land(lake, spec, source, day, rows):
    frame = pd.DataFrame(rows, columns=list(spec.source(source).columns))
    for col, kind in spec.source(source).columns.items():
        if kind == "timestamp":
            frame[col] = pd.to_datetime(frame[col]).astype("datetime64[us]")
    replace_partition(lake.clean(spec.name, source), day, frame, schema=arrow_schema(spec.source(source).columns))


def _tx(i, cust, ts, amount, channel="web"):
    return [f"T{i}", cust, ts, amount, channel, "grocery"]


@pytest.fixture()
def lake(tmp_path, small_spec):
    lake = Lake(tmp_path / "lake")
    _land(lake, small_spec, "customers", dt.date(2026, 1, 1), [
        ["C1", "2025-12-01 10:00:00", "gold", "north"], ["C2", "2025-12-20 10:00:00", "bronze", "south"]])
    _land(lake, small_spec, "customers", D, [["C3", "2026-01-10 08:00:00", "silver", "east"]])  # joins on D
    _land(lake, small_spec, "transactions", dt.date(2026, 1, 2), [_tx(1, "C1", "2026-01-02 12:00:00", 10.0, "store")])
    _land(lake, small_spec, "transactions", dt.date(2026, 1, 8), [_tx(2, "C1", "2026-01-08 09:00:00", 30.0),
                                                                   _tx(3, "C2", "2026-01-08 23:59:59", 5.0)])
    _complete_history(lake, small_spec, D + dt.timedelta(days=2))
    return lake


def _complete_history(lake, spec, until):
    """Validated (here: empty) partitions for every other day, as the daily DAG would leave them."""
    day = spec.start
    while day < until:
        for source in ("customers", "transactions"):
            if not (lake.clean(spec.name, source) / f"ds={day}").exists():
                _land(lake, spec, source, day, [])
        day += dt.timedelta(days=1)


def _features(spark, spec, lake):
    return compute_features(spark, spec, lake, D).toPandas().set_index("customer_id").sort_index()


def test_values_use_only_the_past(spark, small_spec, lake):
    f = _features(spark, small_spec, lake)
    assert list(f.index) == ["C1", "C2"]                     # C3 signs up on D: not yet a customer
    assert f.loc["C1", "txn_count_7d"] == 1 and f.loc["C1", "txn_count_30d"] == 2
    assert f.loc["C1", "amount_sum_30d"] == 40.0 and f.loc["C1", "amount_avg_30d"] == 20.0
    assert f.loc["C1", "web_share_30d"] == 0.5
    assert f.loc["C2", "days_since_last_txn"] == pytest.approx(1 + 1 / 86400)   # Jan 8 23:59:59 -> Jan 10
    assert f.loc["C1", "tenure_days"] == pytest.approx(39 + 14 / 24)


def test_future_events_do_not_change_features(spark, small_spec, lake):
    before = _features(spark, small_spec, lake)
    _land(lake, small_spec, "transactions", D, [_tx(4, "C1", "2026-01-10 00:00:00", 999.0),   # exactly at D
                                                _tx(5, "C2", "2026-01-10 15:00:00", 999.0)])
    _land(lake, small_spec, "transactions", D + dt.timedelta(days=1), [_tx(6, "C1", "2026-01-11 10:00:00", 999.0)])
    # a late-arriving row of D filed under an earlier partition must still be excluded by its timestamp
    _land(lake, small_spec, "transactions", dt.date(2026, 1, 9), [_tx(7, "C2", "2026-01-10 01:00:00", 999.0)])
    after = _features(spark, small_spec, lake)
    pd.testing.assert_frame_equal(before, after)


def test_rebuild_replaces_the_partition(spark, small_spec, lake):
    assert build_features(spark, small_spec, lake, D) == 2
    first = read_partition(lake.features(small_spec.name), D).sort_values("customer_id").reset_index(drop=True)
    assert build_features(spark, small_spec, lake, D) == 2
    again = read_partition(lake.features(small_spec.name), D).sort_values("customer_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(first, again)


def test_no_history_writes_nothing(spark, small_spec, lake):
    assert build_features(spark, small_spec, lake, dt.date(2026, 1, 1)) == 0
    assert not (lake.features(small_spec.name) / "ds=2026-01-01").exists()


def test_missing_clean_source_is_a_clear_error(spark, small_spec, tmp_path):
    with pytest.raises(FileNotFoundError, match="no clean data"):
        compute_features(spark, small_spec, Lake(tmp_path / "empty"), D)


def test_a_missing_day_in_the_look_back_window_stops_the_features(spark, small_spec, lake):
    """A day without a validated partition would make windowed counts silently low: refused."""
    drop_partition(lake.clean(small_spec.name, "transactions"), dt.date(2026, 1, 8))
    with pytest.raises(LookBackIncomplete, match=r"transactions 2026-01-08 \(not delivered\)"):
        build_features(spark, small_spec, lake, D)
    assert not (lake.features(small_spec.name) / f"ds={D}").exists()


def test_gap_states_tell_waiting_from_lost(small_spec, lake, tmp_path):
    spec = small_spec
    drop_partition(lake.clean(spec.name, "transactions"), dt.date(2026, 1, 5))   # rejected
    (lake.quarantine(spec.name, "transactions") / "ds=2026-01-05").mkdir(parents=True)
    drop_partition(lake.clean(spec.name, "transactions"), dt.date(2026, 1, 6))   # delivered, not validated yet
    (lake.raw(spec.name, "transactions") / "ds=2026-01-06").mkdir(parents=True)
    gaps = {g.ds: g for g in look_back_gaps(spec, lake, D)}
    assert gaps["2026-01-05"].state == "rejected" and gaps["2026-01-05"].settled
    assert gaps["2026-01-06"].state == "pending" and not gaps["2026-01-06"].settled
    assert set(gaps) == {"2026-01-05", "2026-01-06"}


def test_declared_gaps_are_allowed(small_spec, lake):

    drop_partition(lake.clean(small_spec.name, "transactions"), dt.date(2026, 1, 8))
    spec = small_spec.model_copy(update={"features": small_spec.features.model_copy(
        update={"allowed_missing_days": [dt.date(2026, 1, 8)]})})
    assert look_back_gaps(spec, lake, D) == []
