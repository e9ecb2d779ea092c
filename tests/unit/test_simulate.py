"""The simulator is deterministic per seed, scales with its size knob and drifts on the drift date."""
import datetime as dt

import pandas as pd

from pipelines.data.simulate import Population, SimulationConfig, simulate_day


def cfg(**kw):
    base = dict(seed=3, customers=300, start=dt.date(2026, 1, 1), days=30, drift_start=dt.date(2026, 1, 20),
                horizon_days=7)
    base.update(kw)
    return SimulationConfig(**base)


def test_same_seed_same_rows_and_days_are_independent():
    a = simulate_day(None, cfg(), dt.date(2026, 1, 12))
    b = simulate_day(None, cfg(), dt.date(2026, 1, 12), Population(cfg()))
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    other = simulate_day(None, cfg(seed=4), dt.date(2026, 1, 12))
    assert not a["transactions"]["amount"].equals(other["transactions"]["amount"])


def test_size_knob_scales_transactions():
    small = len(simulate_day(None, cfg(customers=200), dt.date(2026, 1, 5))["transactions"])
    large = len(simulate_day(None, cfg(customers=2000), dt.date(2026, 1, 5))["transactions"])
    assert 6 * small < large < 14 * small


def test_labels_arrive_after_the_horizon():
    early = simulate_day(None, cfg(), dt.date(2026, 1, 5))["labels"]
    assert early.empty
    later = simulate_day(None, cfg(), dt.date(2026, 1, 15))["labels"]
    assert set(later["label_date"]) == {dt.date(2026, 1, 8)}
    assert later["churned"].isin([0, 1]).all() and 0 < later["churned"].mean() < 0.3


def test_drift_shifts_amounts_and_channels():
    c = cfg()
    pop = Population(c)
    before = pd.concat([simulate_day(None, c, dt.date(2026, 1, d), pop)["transactions"] for d in range(10, 19)])
    after = pd.concat([simulate_day(None, c, dt.date(2026, 1, d), pop)["transactions"] for d in range(20, 29)])
    assert after["amount"].mean() > 1.3 * before["amount"].mean()
    assert (after["channel"] == "app").mean() > (before["channel"] == "app").mean() + 0.1


def test_outside_range_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="outside the simulated range"):
        simulate_day(None, cfg(), dt.date(2025, 12, 31))
