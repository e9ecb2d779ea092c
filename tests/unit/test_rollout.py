"""Rollout decisions as pure functions: stable canary assignment, the judge's table, the candidate's
record from request-log rows, the circuit breaker, and the spec's steps."""
from __future__ import annotations

import asyncio
import datetime as dt

import pandas as pd
import pytest

from pipelines.core.spec import DeploymentSpec
from pipelines.models.rollout_state import CANDIDATE_ARM, CHAMPION_ARM, RolloutState, arm_of, bucket
from pipelines.release.rollout import StepStats, judge, next_share, step_stats
from pipelines.serving.model_server import CircuitBreaker

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)


def state(**change) -> RolloutState:
    base = dict(id="churn-v3-20261201T120000", strategy="canary", champion="2", candidate="3", step=1, share=0.25,
                phase="running", started_at=T0.isoformat(), step_started_at=T0.isoformat())
    return RolloutState(**{**base, **change})


def test_canary_assignment_is_stable_per_entity_and_near_the_share_over_10000_entities():
    ids = [f"C{i:06d}" for i in range(10_000)]
    previous: set[str] = set()
    for share in (0.05, 0.25, 0.5):
        s = state(share=share)
        on_candidate = {i for i in ids if arm_of(i, s) == CANDIDATE_ARM}
        assert abs(len(on_candidate) / len(ids) - share) < 0.015, (share, len(on_candidate))
        assert on_candidate == {i for i in ids if arm_of(i, s) == CANDIDATE_ARM}   # same answer every time
        assert previous <= on_candidate        # a larger share only adds entities to the candidate
        previous = on_candidate
    other = {i for i in ids if arm_of(i, state(share=0.25, id="churn-v4-20261202T000000")) == CANDIDATE_ARM}
    assert 0.2 < len(other) / len(ids) < 0.3 and other != {i for i in ids if arm_of(i, state()) == CANDIDATE_ARM}
    assert bucket("C000001", "x") == bucket("C000001", "x") and 0 <= bucket("C000001", "x") < 1


@pytest.mark.parametrize("s, expected", [
    (None, CHAMPION_ARM),
    (state(share=0.0), CHAMPION_ARM),                      # shadow: the champion answers everyone
    (state(share=1.0), CANDIDATE_ARM),
    (state(share=1.0, phase="rolled_back"), CHAMPION_ARM),
    (state(share=1.0, load_tested=False), CHAMPION_ARM),   # no traffic before the load test passed
])
def test_who_answers(s, expected):
    assert arm_of("C000001", s) == expected


DEPLOYMENT = DeploymentSpec(strategy="canary", steps=[0.0, 0.25, 1.0], window_minutes=30, min_requests=100)
OK = StepStats(requests=150, errors=0, p99_ms=40.0, compared=150, agreement=0.97)


@pytest.mark.parametrize("s, stats, minutes, action, words", [
    (state(), StepStats(20, 0, 30.0, 20, 1.0), 60, "wait", "20 of 100 requests"),
    (state(), OK, 10, "wait", "10 of 30 minutes"),
    (state(), OK, 31, "advance", "within budgets over 150 requests"),
    (state(share=1.0, step=2), OK, 31, "complete", "within budgets"),
    (state(strategy="shadow", share=0.0, step=0), OK, 31, "complete", "within budgets"),
    (state(), StepStats(150, 3, 40.0, 147, 0.97), 1, "roll_back", "error rate 2.0% (3/150) over 1.0%"),
    (state(), StepStats(150, 0, 900.0, 150, 0.97), 1, "roll_back", "p99 900 ms over 250 ms"),
    (state(), StepStats(150, 0, 40.0, 150, 0.5), 1, "roll_back", "agreement with the champion 50.0%"),
    (state(), StepStats(150, 150, None, 0, None), 1, "roll_back", "no request answered"),
    (state(load_tested=False), OK, 60, "wait", "load test"),
    (state(phase="rolled_back"), OK, 60, "wait", "rolled_back"),
    (state(strategy="ab", ends_at=(T0 + dt.timedelta(hours=2)).isoformat()), OK, 60, "wait", "A/B test runs until"),
    (state(strategy="ab", ends_at=(T0 + dt.timedelta(hours=2)).isoformat()), OK, 121, "report", "ended"),
])
def test_the_judge(s, stats, minutes, action, words):
    verdict = judge(s, stats, DEPLOYMENT, T0 + dt.timedelta(minutes=minutes))
    assert verdict.action == action and words in verdict.reason, verdict


def test_the_next_step():
    assert next_share(state(share=0.0, step=0), [0.0, 0.25, 1.0]) == (1, 0.25)
    assert next_share(state(share=0.25), [0.0, 0.25, 1.0]) == (2, 1.0)


def _rows(s: RolloutState) -> pd.DataFrame:
    """A canary step's log: r1 went to the candidate (champion shadowed), r2 to the champion, r3 to
    the candidate which failed (the champion answered as fallback), r4 disagrees."""
    rows = [
        ("r1", "a", 1, CANDIDATE_ARM, "served", None, 12.0), ("r1", "a", 1, CHAMPION_ARM, "shadow", None, 8.0),
        ("r2", "b", 0, CHAMPION_ARM, "served", None, 9.0),
        ("r3", "c", 0, CANDIDATE_ARM, "served", "v3 failed: ValueError", 1.0),
        ("r4", "d", 1, CANDIDATE_ARM, "served", None, 30.0), ("r4", "d", 0, CHAMPION_ARM, "shadow", None, 7.0),
        ("r5", "e", 1, CANDIDATE_ARM, "served", None, 20.0),    # another rollout's row: left out
    ]
    frame = pd.DataFrame(rows, columns=["request_id", "customer_id", "predicted_label", "arm", "mode", "error",
                                        "model_ms"])
    frame["rollout_id"] = [s.id] * 6 + ["other"]
    return frame


def test_the_candidates_record_from_the_request_log():
    s = state()
    stats = step_stats(_rows(s), s, "customer_id", classifier=True, tolerance=0.1)
    assert (stats.requests, stats.errors, stats.compared) == (3, 1, 2)
    assert stats.agreement == 0.5 and stats.error_rate == pytest.approx(1 / 3)
    assert 12.0 < stats.p99_ms <= 30.0
    ab = step_stats(_rows(s), state(strategy="ab"), "customer_id", classifier=True, tolerance=0.1)
    assert ab.agreement is None and ab.compared == 0
    assert step_stats(pd.DataFrame(), s, "customer_id", True, 0.1) == StepStats(0, 0, None, 0, None)


def test_regression_agreement_is_within_a_relative_tolerance():
    s = state()
    frame = pd.DataFrame({"request_id": ["r1", "r1", "r2", "r2"], "id": ["a", "a", "b", "b"],
                          "prediction": [105.0, 100.0, 150.0, 100.0], "arm": [CANDIDATE_ARM, CHAMPION_ARM] * 2,
                          "mode": ["served", "shadow"] * 2, "error": [None] * 4, "model_ms": [5.0] * 4,
                          "rollout_id": [s.id] * 4})
    assert step_stats(frame, s, "id", classifier=False, tolerance=0.1).agreement == 0.5


def test_the_circuit_breaker_opens_after_failures_in_a_row_and_closes_after_its_cooldown():
    now = [0.0]
    breaker = CircuitBreaker(max_failures=3, latency_budget_ms=100, cooldown_s=10, clock=lambda: now[0])
    breaker.record(False)
    breaker.record(True, 500)       # slow counts as a failure
    assert breaker.allow()
    breaker.record(True, 5)         # an answer in budget resets the count
    for _ in range(3):
        breaker.record(False)
    assert not breaker.allow() and breaker.trips == 1
    now[0] = 11.0
    assert breaker.allow()          # half-open: tried again
    breaker.record(True, 5)
    assert breaker.allow() and breaker.failures == 0


@pytest.mark.parametrize("steps", [[0.5, 0.25, 1.0], [0.05, 0.5], [], [0.1, 1.0, 1.0], [-0.1, 1.0]])
def test_steps_must_grow_to_all_traffic(steps):
    with pytest.raises(ValueError, match="steps must be increasing"):
        DeploymentSpec(strategy="canary", steps=steps)


def test_the_state_round_trips_through_its_tag():
    s = state(reason="gate passed")
    assert RolloutState.from_json(s.to_json()) == s
    assert RolloutState.from_json("{not json") is None and RolloutState.from_json(None) is None


def _ab_lake(tmp_path, spec, labelled: bool):
    """An A/B test's answers on 2026-01-03 (the candidate right on every customer, the champion
    wrong on a third) and, if ``labelled``, the labels about that day landing a week later."""
    import numpy as np

    from pipelines.core.lake import Lake, replace_partition

    lake = Lake(tmp_path / "lake")
    ids = [f"c{i:03d}" for i in range(120)]
    truth = np.array([i % 2 for i in range(120)])
    arms = [CANDIDATE_ARM if (i // 2) % 2 == 0 else CHAMPION_ARM for i in range(120)]   # both classes in each
    score = np.where([a == CANDIDATE_ARM for a in arms], truth * 0.8 + 0.1,
                     np.where(np.arange(120) % 3 == 1, 1 - truth, truth) * 0.6 + 0.2)
    rows = pd.DataFrame({"request_id": [f"r{i}" for i in range(120)], spec.entity: ids, "score": score,
                         "predicted_label": (score > 0.5).astype(int), "arm": arms, "mode": "served",
                         "error": pd.array([None] * 120, dtype="string"), "model_ms": 3.0,
                         "rollout_id": "uc-ab", "scored_at": pd.Timestamp("2026-01-03 10:00"),
                         "model_version": ["3" if a == CANDIDATE_ARM else "2" for a in arms]})
    folder = lake.online_inference(spec.name) / "ds=2026-01-03"
    folder.mkdir(parents=True)
    rows.to_parquet(folder / "part-1.parquet", index=False)
    if labelled:
        labels = pd.DataFrame({spec.entity: ids, spec.label.date_column: "2026-01-03", spec.label.target: truth})
        replace_partition(lake.clean(spec.name, spec.label.source), "2026-01-10", labels)
    return lake


@pytest.mark.parametrize("labelled, winner, words", [
    (True, CANDIDATE_ARM, "the candidate wins"),
    (False, CHAMPION_ARM, "without labelled answers for both arms"),
])
def test_an_ab_test_keeps_the_arm_that_scored_better_on_the_labels(small_spec, tmp_path, labelled, winner, words):
    from pipelines.release.rollout import ab_outcome

    s = state(id="uc-ab", strategy="ab", share=0.5, started_at="2026-01-03T00:00:00+00:00",
              step_started_at="2026-01-03T00:00:00+00:00", ends_at="2026-01-04T00:00:00+00:00")
    arm, reason = ab_outcome(small_spec, _ab_lake(tmp_path, small_spec, labelled), s)
    assert arm == winner and words in reason, reason
    if labelled:
        assert "candidate v3 1.0000" in reason and "champion v2" in reason


def test_the_step_window_reads_this_rollouts_rows_since_the_step_began_across_log_versions(small_spec, tmp_path):
    """Rows of the step, not those before it or of another rollout; a file written before the
    rollout columns existed reads as nulls instead of failing."""
    from pipelines.core.lake import Lake
    from pipelines.release.rollout import window_rows

    lake = Lake(tmp_path / "lake")
    folder = lake.online_inference(small_spec.name) / "ds=2026-12-01"
    folder.mkdir(parents=True)
    pd.DataFrame({"request_id": ["old"], small_spec.entity: ["a"], "score": [0.2], "predicted_label": [0],
                  "mode": ["served"], "scored_at": [pd.Timestamp("2026-12-01 12:30")], "model_version": ["2"]}
                 ).to_parquet(folder / "part-0.parquet", index=False)
    s = state()
    pd.DataFrame({"request_id": ["before", "in", "other"], small_spec.entity: ["a", "b", "c"],
                  "score": [0.1, 0.9, 0.5], "predicted_label": pd.array([0, 1, 0], dtype="Int64"),
                  "arm": [CANDIDATE_ARM] * 3, "mode": ["served"] * 3, "error": pd.array([None] * 3, dtype="string"),
                  "model_ms": [2.0] * 3, "rollout_id": [s.id, s.id, "another"],
                  "scored_at": pd.to_datetime(["2026-12-01 11:59", "2026-12-01 12:01", "2026-12-01 12:02"]),
                  "model_version": ["3"] * 3}).to_parquet(folder / "part-1.parquet", index=False)
    rows = window_rows(small_spec, lake, s)
    assert rows["request_id"].tolist() == ["in"]
    assert window_rows(small_spec, lake, s, since="2026-12-01T11:00:00+00:00")["request_id"].tolist() == ["before", "in"]


def test_with_nothing_to_fall_back_on_the_champion_answers_even_with_its_circuit_open(small_spec):
    """An open circuit sends the champion's requests to the previous champion, or the spec's
    default answer; with neither, the champion still answers (slow beats a 503)."""
    from types import SimpleNamespace

    from pipelines.serving.model_server import ModelServer, ServedModel

    class Model:
        def __init__(self, value):
            self.value = value

        def predict_proba(self, frame):
            import numpy as np

            return np.tile([1 - self.value, self.value], (len(frame), 1))

    def served(version, value):
        breaker = CircuitBreaker(max_failures=1, latency_budget_ms=100, cooldown_s=60)
        breaker.record(False)   # open
        return ServedModel(SimpleNamespace(version=version, run_id="r", uri=f"models:/m/{version}"), Model(value),
                           {"x": "double"}, 0.0, breaker)

    server = ModelServer(small_spec)
    server.task = SimpleNamespace(outputs=lambda model, frame: pd.DataFrame(
        {"score": model.predict_proba(frame)[:, 1]}, index=frame.index), output_columns={"score": "double"})
    records = [{"x": 1.0}, {"x": 2.0}]
    server.current = served("2", 0.9)
    got = asyncio.run(server.answer(records))
    assert got.served.ref.version == "2" and got.error is None
    assert server.current.breaker.allow()     # an answer in budget closed it again
    server.current, server.previous = served("2", 0.9), served("1", 0.2)
    server.previous.breaker.record(True, 1)   # closed
    got = asyncio.run(server.answer(records))
    assert got.served.ref.version == "1" and "circuit open" in got.error
