"""Retail churn simulator: customers, transactions and delayed churn labels as daily raw partitions.

Deterministic for a seed: customers come from one generator, and each day from its own
generator seeded with ``(seed, day)``, so any single day can be regenerated alone and
gives the same rows. Size is driven by the number of customers (about 0.6 transactions
per customer per day): 2,000 customers for 80 days is about 100k transactions;
200,000 customers for a year is tens of millions.

Behaviour: every customer has a churn day. Before the drift date, customers buy less
and less often in the three weeks before they churn. From the drift date on, prices
rise, the app takes share from the store, and churners keep their frequency but spend
less and move to the web channel, so a model trained on the old pattern loses quality
and its inputs drift.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.core.lake import Lake, write_raw_partition

log = logging.getLogger(__name__)

SEGMENTS = np.array(["bronze", "silver", "gold"])
REGIONS = np.array(["north", "south", "east", "west"])
CHANNELS = np.array(["store", "web", "app"])
CATEGORIES = np.array(["grocery", "electronics", "apparel", "home", "beauty", "sports"])
DECLINE_DAYS = 21


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate: ``customers`` at the start, ``days`` from ``start``, drift from ``drift_start``."""

    seed: int
    customers: int
    start: dt.date
    days: int
    drift_start: dt.date | None
    horizon_days: int
    backlog_days: int = 0   # history delivered as an initial load in the first partition

    @property
    def end(self) -> dt.date:
        return self.start + dt.timedelta(days=self.days - 1)

    def dates(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range(self.days)]


def config_from_spec(spec, **overrides) -> SimulationConfig:
    """Simulation settings from a spec's ``simulation`` section, with keyword overrides."""
    sim = spec.simulation
    if sim is None:
        raise ValueError(f"use case {spec.name!r} has no simulation section")
    values = dict(
        seed=sim.seed,
        customers=sim.customers,
        start=sim.history_start,
        days=sim.days,
        drift_start=sim.drift_start,
        horizon_days=spec.label.horizon_days,
        backlog_days=sim.backlog_days,
    )
    values.update({k: v for k, v in overrides.items() if v is not None and k in values})
    return SimulationConfig(**values)


class Population:
    """Static customer attributes and churn days, fixed for a seed."""

    def __init__(self, cfg: SimulationConfig):
        rng = np.random.default_rng([cfg.seed, 1_000_003])
        initial = cfg.customers
        # Newcomers replace churners so the active population stays roughly stable.
        newcomers = int(round(cfg.customers * 0.006 * cfg.days))
        n = initial + newcomers
        self.n = n
        signup_offset = np.concatenate([
            -rng.integers(30, 400, size=initial),             # joined before the history
            rng.integers(0, max(cfg.days, 1), size=newcomers),  # joined during the history
        ])
        self.signup_day = signup_offset  # day index relative to cfg.start
        self.signup_seconds = rng.integers(0, 86_400, size=n)
        seg = rng.choice(3, size=n, p=[0.5, 0.35, 0.15])
        self.segment = SEGMENTS[seg]
        self.region = REGIONS[rng.integers(0, 4, size=n)]
        base_rate = np.array([0.35, 0.6, 1.0])[seg]
        self.rate = base_rate * rng.lognormal(0.0, 0.35, size=n)
        self.amount_mu = np.log(np.array([25.0, 45.0, 80.0])[seg]) + rng.normal(0, 0.25, size=n)
        self.channel_p = rng.dirichlet([5.0, 2.0, 2.0], size=n)
        self.category_p = rng.dirichlet(np.ones(len(CATEGORIES)) * 1.5, size=n)
        # Churn: daily hazard varies by customer; churn day counted from max(signup, start).
        hazard = np.clip(rng.lognormal(np.log(0.006), 0.6, size=n), 0.0005, 0.05)
        first = np.maximum(self.signup_day, 0)
        self.churn_day = first + rng.geometric(hazard) + 3  # at least a few active days
        # Temporary quiet spells of loyal customers blur the churn signal.
        self.quiet_start = rng.integers(-60, cfg.days + 60, size=n)
        self.ids = np.array([f"C{i:07d}" for i in range(n)])

    def active_on(self, day: int) -> np.ndarray:
        """Mask of customers signed up before ``day`` and not yet churned on it."""
        return (self.signup_day < day) & (self.churn_day > day)


def _daily_frames(pop: Population, cfg: SimulationConfig, day: int) -> dict[str, pd.DataFrame]:
    """The three raw sources for day index ``day``."""
    date = cfg.start + dt.timedelta(days=day)
    rng = np.random.default_rng([cfg.seed, day + 100_000])  # backlog days are negative
    drifted = cfg.drift_start is not None and date >= cfg.drift_start
    return {"customers": _signups(pop, cfg, day), "transactions": _transactions(pop, day, date, rng, drifted),
            "labels": _labels_known(pop, cfg, day)}


def _signups(pop: Population, cfg: SimulationConfig, day: int) -> pd.DataFrame:
    """The customers who signed up on day ``day`` (the initial population lands on the first day)."""
    midnight = pd.Timestamp(cfg.start + dt.timedelta(days=day))
    if day == 0:
        new = pop.signup_day <= 0
    else:
        new = pop.signup_day == day
    signup_ts = midnight + pd.to_timedelta(pop.signup_seconds[new], unit="s")
    before = pop.signup_day[new] < 0
    signup_ts = signup_ts.where(~before, pd.Timestamp(cfg.start) + pd.to_timedelta(pop.signup_day[new], unit="D")
                                + pd.to_timedelta(pop.signup_seconds[new], unit="s"))
    return pd.DataFrame({
        "customer_id": pop.ids[new],
        "signup_ts": signup_ts.astype("datetime64[us]"),
        "segment": pop.segment[new],
        "region": pop.region[new],
    })


def _transactions(pop: Population, day: int, date: dt.date, rng: np.random.Generator, drifted: bool) -> pd.DataFrame:
    """The day's purchases of the active customers: fewer (before the drift) or smaller and more on
    the web (after it) as a customer nears churn."""
    midnight = pd.Timestamp(date)
    active = np.flatnonzero(pop.active_on(day))
    days_left = pop.churn_day[active] - day
    weekday = 1.15 if date.weekday() >= 5 else 0.95
    closeness = np.clip(1.0 - days_left / DECLINE_DAYS, 0.0, 1.0)  # 0 far from churn, 1 at churn
    quiet = ((day - pop.quiet_start[active]) >= 0) & ((day - pop.quiet_start[active]) < 14)
    rate = pop.rate[active] * weekday * np.where(quiet, 0.45, 1.0)
    amount_factor = np.ones(len(active))
    web_push = np.zeros(len(active))
    if drifted:
        amount_factor *= 1.6 * (1.0 - 0.6 * closeness)      # prices up; churners spend less
        web_push = 0.75 * closeness                         # churners move to the web
    else:
        rate = rate * (1.0 - 0.8 * closeness)               # churners buy less often
    counts = rng.poisson(rate)
    who = np.repeat(np.arange(len(active)), counts)
    cust = active[who]
    n_tx = len(cust)
    amounts = np.round(np.exp(pop.amount_mu[cust] + rng.normal(0, 0.5, size=n_tx)) * amount_factor[who], 2)
    amounts = np.clip(amounts, 0.01, 99_999.0)
    channel_p = pop.channel_p[cust].copy()
    if drifted:  # the app takes share from the store for everybody
        shift = channel_p[:, 0] * 0.5
        channel_p[:, 0] -= shift
        channel_p[:, 2] += shift
    push = web_push[who][:, None]
    channel_p = channel_p * (1 - push) + np.array([0.0, 1.0, 0.0]) * push
    channel = CHANNELS[_sample_rows(rng, channel_p)]
    category = CATEGORIES[_sample_rows(rng, pop.category_p[cust])]
    seconds = rng.integers(0, 86_400, size=n_tx)
    order = np.lexsort((seconds, cust))
    return pd.DataFrame({
        "transaction_id": [f"T{date:%Y%m%d}{i:08d}" for i in range(n_tx)],
        "customer_id": pop.ids[cust[order]],
        "event_ts": (midnight + pd.to_timedelta(seconds[order], unit="s")).astype("datetime64[us]"),
        "amount": amounts[order],
        "channel": channel[order],
        "category": category[order],
    })


def _labels_known(pop: Population, cfg: SimulationConfig, day: int) -> pd.DataFrame:
    """The labels that become known on day ``day``: of label date ``day - horizon``."""
    midnight = pd.Timestamp(cfg.start + dt.timedelta(days=day))
    label_day = day - cfg.horizon_days
    if label_day >= 0:
        labelled = np.flatnonzero(pop.active_on(label_day))
        churned = (pop.churn_day[labelled] < label_day + cfg.horizon_days).astype("int64")
        label_date = cfg.start + dt.timedelta(days=label_day)
        return pd.DataFrame({
            "customer_id": pop.ids[labelled],
            "label_date": [label_date] * len(labelled),
            "available_ts": pd.Series([midnight + pd.Timedelta(hours=6)] * len(labelled), dtype="datetime64[us]"),
            "churned": churned,
        })
    return pd.DataFrame({
        "customer_id": pd.Series([], dtype=object),
        "label_date": pd.Series([], dtype=object),
        "available_ts": pd.Series([], dtype="datetime64[us]"),
        "churned": pd.Series([], dtype="int64"),
    })


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a probability matrix."""
    cum = np.cumsum(probs, axis=1)
    cum[:, -1] = 1.0
    u = rng.random(len(probs))[:, None]
    return (u > cum).sum(axis=1)


def simulate_day(spec, cfg: SimulationConfig, date: dt.date, population: Population | None = None) -> dict[str, pd.DataFrame]:
    """The raw frames of one date, exactly as :func:`simulate_to_lake` writes them.

    The first date also carries the initial load: ``backlog_days`` of earlier transactions
    (timestamps before the first date), so trailing windows are full from the second day.
    """
    pop = population or Population(cfg)
    day = (date - cfg.start).days
    if not 0 <= day < cfg.days:
        raise ValueError(f"{date} is outside the simulated range {cfg.start}..{cfg.end}")
    frames = _daily_frames(pop, cfg, day)
    if day == 0 and cfg.backlog_days:
        backlog = [_daily_frames(pop, cfg, d)["transactions"] for d in range(-cfg.backlog_days, 0)]
        frames["transactions"] = pd.concat(backlog + [frames["transactions"]], ignore_index=True)
    return frames


def simulate_to_lake(spec, lake: Lake, cfg: SimulationConfig) -> dict[str, int]:
    """Write every simulated day as raw partitions of the spec's sources; returns row counts."""
    pop = Population(cfg)
    totals = {name: 0 for name in spec.sources}
    for i, date in enumerate(cfg.dates()):
        frames = simulate_day(spec, cfg, date, pop)
        for name, frame in frames.items():
            write_raw_partition(lake, spec, name, date, frame)
            totals[name] += len(frame)
        if (i + 1) % 10 == 0 or i + 1 == cfg.days:
            log.info("simulated %d/%d days (through %s): %s", i + 1, cfg.days, date, totals)
    return totals
