"""Safe rollout of a promoted challenger to live traffic: shadow, canary and A/B.

A rollout moves a *candidate* version through steps while ``@champion`` keeps serving the rest:

* the **state** (strategy, versions, current share, step, phase, revision) is one JSON tag on the
  registered model, ``rollout.state``, next to the aliases: the scoring service reads it on every
  registry poll, the ``<uc>_rollout`` DAG judges and moves it, ``mlops rollout status`` prints it.
  The candidate also carries the ``candidate`` alias while its rollout runs;
* the **history** (every start, step, rollback, completion with its reason and measurements) is
  the ``monitoring/<uc>/rollouts`` table, one partition per day;
* **routing** is by a stable hash of the entity id salted with the rollout id
  (:func:`bucket`): one customer sees the same model for the whole rollout, and raising the share
  only adds customers to the candidate's side;
* **judging** (:func:`step_stats`, :func:`judge`) reads the scoring service's request log
  (``online_inference``) of the step's window: the candidate's error rate, the p99 of its own
  scoring time, and its agreement with the champion on the same records (shadow rows).

Every decision is a pure function with table-driven tests; the registry writes are compare-and-set
on the state's revision, so two judges never both move one rollout.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from pipelines.core.config import settings
from pipelines.core.lake import list_partitions, read_partition, read_table, replace_partition
from pipelines.models import tracking
from pipelines.models.rollout_state import (CANDIDATE_ARM, CHAMPION_ARM, COMPLETED, KEPT, ROLLED_BACK, RUNNING,
                                            STATE_TAG, SUPERSEDED, RolloutState, read_state)
from pipelines.models.tasks import ModelTask
from pipelines.monitoring.watch import with_label_dates
from pipelines.release.load_test import load_test

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
HISTORY = "rollouts"


class RolloutConflict(RuntimeError):
    """The rollout (or the champion) changed between reading and writing its state."""


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


# ---------------------------------------------------------------------------------- judging
@dataclass(frozen=True)
class StepStats:
    """The candidate's record over a step's window of the request log."""

    requests: int            # requests the candidate was asked to score (served or shadow)
    errors: int
    p99_ms: float | None     # of its own scoring time per request
    compared: int            # records scored by both models
    agreement: float | None  # share of those where they agree

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Judgement:
    action: str      # wait, advance, complete, roll_back, report
    reason: str
    stats: StepStats | None = None


def step_stats(rows: pd.DataFrame, state: RolloutState, entity: str, classifier: bool,
               tolerance: float) -> StepStats:
    """The candidate's requests, errors, latency and agreement in request-log rows of this rollout."""
    if rows.empty:
        return StepStats(0, 0, None, 0, None)
    mine = rows[rows["rollout_id"] == state.id]
    candidate = mine[mine["arm"] == CANDIDATE_ARM]
    per_request = candidate.drop_duplicates("request_id")
    failed = per_request["error"].notna()
    ok_ms = per_request.loc[~failed, "model_ms"].dropna()
    p99 = float(np.percentile(ok_ms, 99)) if len(ok_ms) else None
    compared, agreement = 0, None
    if state.shadowed:
        ok = mine[mine["error"].isna()]
        column = "predicted_label" if classifier else "prediction"
        left = ok[ok["arm"] == CANDIDATE_ARM][["request_id", entity, column]]
        right = ok[ok["arm"] == CHAMPION_ARM][["request_id", entity, column]]
        pairs = left.merge(right, on=["request_id", entity], suffixes=("_candidate", "_champion"))
        compared = len(pairs)
        if compared:
            a, b = pairs[f"{column}_candidate"], pairs[f"{column}_champion"]
            if classifier:
                agree = a.astype(str) == b.astype(str)
            else:
                a, b = a.astype(float), b.astype(float)
                agree = (a - b).abs() <= tolerance * b.abs().clip(lower=1e-9)
            agreement = float(agree.mean())
    return StepStats(len(per_request), int(failed.sum()), p99, compared, agreement)


def judge(state: RolloutState, stats: StepStats, deployment, now: dt.datetime) -> Judgement:
    """What to do with a running rollout given its step's record. Budgets are enforced as soon as
    the step has ``min_requests``; the step advances only once its window has also passed."""
    budgets = deployment.budgets
    if not state.running:
        return Judgement("wait", f"the rollout is {state.phase}", stats)
    if not state.load_tested:
        return Judgement("wait", "the candidate's load test has not passed yet", stats)
    if state.strategy == "ab":
        if now < dt.datetime.fromisoformat(state.ends_at):
            return Judgement("wait", f"A/B test runs until {state.ends_at}", stats)
        return Judgement("report", f"A/B test period ended at {state.ends_at}", stats)
    if stats.requests < deployment.min_requests:
        return Judgement("wait", f"{stats.requests} of {deployment.min_requests} requests in this step", stats)
    broken = []
    if stats.error_rate > budgets.max_error_rate:
        broken.append(f"error rate {stats.error_rate:.1%} ({stats.errors}/{stats.requests}) over "
                      f"{budgets.max_error_rate:.1%}")
    if stats.p99_ms is not None and stats.p99_ms > budgets.max_p99_ms:
        broken.append(f"p99 {stats.p99_ms:.0f} ms over {budgets.max_p99_ms:.0f} ms")
    if stats.p99_ms is None and stats.errors:
        broken.append("no request answered")
    if stats.agreement is not None and stats.agreement < budgets.min_agreement:
        broken.append(f"agreement with the champion {stats.agreement:.1%} on {stats.compared} records under "
                      f"{budgets.min_agreement:.1%}")
    if broken:
        return Judgement("roll_back", "; ".join(broken), stats)
    age = (now - dt.datetime.fromisoformat(state.step_started_at)).total_seconds() / 60
    if age < deployment.window_minutes:
        return Judgement("wait", f"within budgets; the step is {age:.0f} of {deployment.window_minutes:g} minutes old",
                         stats)
    within = (f"within budgets over {stats.requests} requests (errors {stats.error_rate:.1%}, p99 "
              f"{_ms(stats.p99_ms)}, agreement {_pct(stats.agreement)})")
    if state.share >= 1.0 or state.strategy == "shadow":
        return Judgement("complete", within, stats)
    return Judgement("advance", within, stats)


def next_share(state: RolloutState, steps: list[float]) -> tuple[int, float]:
    later = [(i, s) for i, s in enumerate(steps) if s > state.share]
    return later[0] if later else (len(steps) - 1, 1.0)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _write(spec, state: RolloutState, expected: RolloutState | None) -> RolloutState:
    """Write ``state`` if the stored one is still ``expected`` (compare-and-set on the revision)."""
    stored = read_state(spec)
    if _key(stored) != _key(expected):
        raise RolloutConflict(f"{spec.name}: the rollout changed meanwhile (now {stored.phase if stored else 'none'}"
                              f", revision {stored.revision if stored else '-'})")
    new = replace(state, revision=(stored.revision + 1) if stored else 1)
    c, name = tracking.client(), spec.model.registered_name
    c.set_registered_model_tag(name, STATE_TAG, new.to_json())
    if new.running:
        c.set_registered_model_alias(name, CANDIDATE, new.candidate)
    else:
        try:
            c.delete_registered_model_alias(name, CANDIDATE)
        except Exception:   # noqa: BLE001 - the alias may already be gone
            pass
    return new


def _key(state: RolloutState | None):
    return (state.id, state.revision) if state else None


def start(spec, lake, candidate: str, champion: str, reason: str, by: str) -> RolloutState:
    """Begin rolling ``candidate`` out beside ``champion`` by the spec's strategy; a running rollout
    of another candidate is superseded (recorded)."""
    deployment, at = spec.deployment, now_utc()
    current = read_state(spec)
    if current is not None and current.running:
        if current.candidate == str(candidate):
            log.info("%s: v%s is already rolling out (%s)", spec.name, candidate, current.id)
            return current
        current = _end(spec, lake, current, SUPERSEDED, f"superseded by v{candidate}", by)
    strategy = deployment.strategy.value
    share = {"shadow": 0.0, "ab": deployment.ab_split}.get(strategy, deployment.steps[0])
    state = RolloutState(
        id=f"{spec.name}-v{candidate}-{at:%Y%m%dT%H%M%S}", strategy=strategy, champion=str(champion),
        candidate=str(candidate), step=0, share=share, phase=RUNNING, started_at=at.isoformat(),
        step_started_at=at.isoformat(), reason=reason,
        ends_at=(at + dt.timedelta(hours=deployment.ab_hours)).isoformat() if strategy == "ab" else None,
        load_tested=not deployment.load_test.enabled)
    state = _write(spec, state, current)
    c = tracking.client()
    c.set_model_version_tag(spec.model.registered_name, candidate, "rollout.id", state.id)
    c.set_model_version_tag(spec.model.registered_name, candidate, "rollout.decision", RUNNING)
    record(spec, lake, state, "start", reason, by)
    log.info("%s: ROLLOUT %s of v%s beside champion v%s started at share %.0f%%: %s", spec.name, strategy,
             candidate, champion, share * 100, reason)
    return state


def apply(spec, lake, state: RolloutState, judgement: Judgement, by: str = "rollout DAG") -> RolloutState:
    """Carry out a judgement: the next step, the candidate as champion, or a rollback to 0%."""
    if judgement.action == "wait":
        return state
    if judgement.action == "advance":
        step, share = next_share(state, spec.deployment.steps)
        new = _write(spec, replace(state, step=step, share=share, step_started_at=now_utc().isoformat()), state)
        record(spec, lake, new, "advance", judgement.reason, by, judgement.stats)
        log.info("%s: ROLLOUT v%s advances to %.0f%%: %s", spec.name, state.candidate, share * 100, judgement.reason)
        return new
    if judgement.action == "roll_back":
        return _end(spec, lake, state, ROLLED_BACK, judgement.reason, by, judgement.stats)
    if judgement.action in ("complete", "report"):
        if judgement.action == "report":
            winner, reason = ab_outcome(spec, lake, state)
            write_report(spec, state, f"A/B test {state.id}", [reason, f"winner: the {winner}"])
            if winner != CANDIDATE_ARM:
                return _end(spec, lake, state, KEPT, reason, by, judgement.stats)
            judgement = Judgement("complete", reason, judgement.stats)
        name = spec.model.registered_name
        champion = tracking.resolve_alias(name, tracking.CHAMPION)
        if (champion.version if champion else None) != state.champion:
            moved = champion.version if champion else None
            return _end(spec, lake, state, SUPERSEDED, f"the champion moved to v{moved} during the rollout; "
                        f"v{state.candidate} was not promoted", by, judgement.stats)
        new = _end(spec, lake, state, COMPLETED, judgement.reason, by, judgement.stats)
        tracking.move_champion(name, state.candidate, state.champion, now_utc().isoformat())
        log.info("%s: ROLLOUT complete: v%s is champion (was v%s)", spec.name, state.candidate, state.champion)
        return new
    raise ValueError(f"unknown rollout action {judgement.action!r}")


def _end(spec, lake, state: RolloutState, phase: str, reason: str, by: str, stats: StepStats | None = None):
    new = _write(spec, replace(state, phase=phase, share=0.0 if phase != COMPLETED else 1.0, reason=reason), state)
    c = tracking.client()
    c.set_model_version_tag(spec.model.registered_name, state.candidate, "rollout.decision", phase)
    c.set_model_version_tag(spec.model.registered_name, state.candidate, "rollout.reason", tracking.tag_text(reason))
    record(spec, lake, new, phase, reason, by, stats)
    if phase == ROLLED_BACK:
        log.warning("%s: ROLLBACK of v%s to 0%% (champion v%s keeps all traffic): %s", spec.name, state.candidate,
                    state.champion, reason)
    return new


# ---------------------------------------------------------------------------------- history and request log
def record(spec, lake, state: RolloutState, event: str, reason: str, by: str, stats: StepStats | None = None) -> None:
    """One row of the rollout history (the day's partition is rewritten whole with it)."""

    at = now_utc()
    row = {"rollout_id": state.id, "revision": state.revision, "at": at.isoformat(), "event": event,
           "strategy": state.strategy, "champion": state.champion, "candidate": state.candidate,
           "share": state.share, "phase": state.phase, "reason": reason, "by": by,
           "requests": stats.requests if stats else None, "errors": stats.errors if stats else None,
           "p99_ms": stats.p99_ms if stats else None, "agreement": stats.agreement if stats else None}
    table = lake.monitoring(spec.name, HISTORY)
    try:
        day = read_partition(table, at.date())
    except FileNotFoundError:
        day = pd.DataFrame()
    kept = [] if day.empty else day[~((day["rollout_id"] == state.id) & (day["revision"] == state.revision))] \
        .to_dict("records")
    new = pd.DataFrame([*kept, row])
    for column in ("requests", "errors"):
        new[column] = new[column].astype("Int64")
    for column in ("p99_ms", "agreement"):
        new[column] = new[column].astype("float64")
    replace_partition(table, at.date(), new)


def history(spec, lake, rollout_id: str | None = None) -> pd.DataFrame:
    try:
        frame = read_table(lake.monitoring(spec.name, HISTORY))
    except FileNotFoundError:
        return pd.DataFrame()
    if frame.empty:
        return frame
    if rollout_id:
        frame = frame[frame["rollout_id"] == rollout_id]
    return frame.sort_values(["at", "revision"]).reset_index(drop=True)


def window_rows(spec, lake, state: RolloutState, since: str | None = None) -> pd.DataFrame:
    """The request-log rows of ``state``'s rollout since ``since`` (default: the step's start)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    start = dt.datetime.fromisoformat(since or state.step_started_at)
    table = lake.online_inference(spec.name)
    if not table.exists():
        return pd.DataFrame()
    days = [p for p in sorted(table.glob("ds=*")) if p.name[3:] >= start.date().isoformat()]
    files = [str(f) for d in days for f in sorted(d.glob("*.parquet"))]
    if not files:
        return pd.DataFrame()
    text = pa.string()
    outputs = [(c, pa.int64() if kind == "int" else pa.float64())
               for c, kind in ModelTask.of(spec).output_columns.items()]
    schema = pa.schema([("request_id", text), (spec.entity, text), *outputs, ("arm", text), ("mode", text),
                        ("error", text), ("model_ms", pa.float64()), ("rollout_id", text),
                        ("scored_at", pa.timestamp("ns")), ("model_version", text)])
    # one schema for every file: a file written before a column existed reads it as nulls
    frame = pads.dataset(files, format="parquet", schema=schema).to_table().to_pandas()
    cutoff = pd.Timestamp(start.astimezone(dt.timezone.utc).replace(tzinfo=None))
    return frame[(frame["rollout_id"] == state.id) & (frame["scored_at"] >= cutoff)]


def load_test_candidate(spec, lake) -> dict:
    """The rollout DAG's first step: load-test a new candidate before any traffic moves to it;
    the rollout goes live when it passes and is rolled back when it does not."""

    state = read_state(spec)
    if state is None or not state.running:
        return {"tested": False, "reason": "no rollout is running"}
    if state.load_tested:
        return {"tested": False, "reason": f"v{state.candidate} passed its load test already"}
    result, passed, reason = load_test(spec, lake, state.candidate)
    if not passed:
        ended = _end(spec, lake, state, ROLLED_BACK, f"load test: {reason}", "rollout DAG")
        return {"tested": True, "passed": False, "reason": reason, **asdict(result), "state": asdict(ended)}
    at = now_utc().isoformat()
    if state.strategy == "ab":   # the test period starts with the traffic
        state = replace(state, ends_at=(now_utc() + dt.timedelta(hours=spec.deployment.ab_hours)).isoformat())
    new = _write(spec, replace(state, load_tested=True, step_started_at=at), state)
    record(spec, lake, new, "load_test", reason, "rollout DAG")
    return {"tested": True, "passed": True, "reason": reason, **asdict(result)}


def judge_rollout(spec, lake, now: dt.datetime | None = None) -> dict:
    """The rollout DAG's step: judge the running rollout's current step and act on it."""

    state = read_state(spec)
    if state is None or not state.running:
        return {"action": "none", "reason": "no rollout is running", "state": asdict(state) if state else None}
    rows = window_rows(spec, lake, state)
    stats = step_stats(rows, state, spec.entity, ModelTask.of(spec).classifier,
                       spec.deployment.budgets.agreement_tolerance)
    judgement = judge(state, stats, spec.deployment, now or now_utc())
    log.info("%s: rollout %s at %.0f%%: %s (%s)", spec.name, state.id, state.share * 100, judgement.action,
             judgement.reason)
    new = apply(spec, lake, state, judgement)
    return {"action": judgement.action, "reason": judgement.reason, "stats": asdict(stats), "state": asdict(new)}


def ab_outcome(spec, lake, state: RolloutState) -> tuple[str, str]:
    """The arm whose answers scored better on the labels known now (the champion when an arm has
    none), with the per-arm summary that is recorded as the rollout's reason."""

    task, metric = ModelTask.of(spec), spec.promotion.metric
    rows = window_rows(spec, lake, state, since=state.started_at)
    results: dict[str, tuple[float, int]] = {}
    if not rows.empty:
        served = rows[(rows["mode"] == "served") & rows["error"].isna()]
        served = served.assign(label_ds=served["scored_at"].dt.strftime("%Y-%m-%d"),
                               **{spec.entity: served[spec.entity].astype(str)})
        table = lake.clean(spec.name, spec.label.source)
        landed = [day for day in list_partitions(table) if day >= served["label_ds"].min()]
        labels = pd.concat([with_label_dates(read_partition(table, day), spec, task, day) for day in landed],
                           ignore_index=True) if landed else pd.DataFrame()
        if not labels.empty:
            labels = labels.dropna(subset=["_class"]).assign(**{spec.entity: labels[spec.entity].astype(str)})
            joined = served.merge(labels[[spec.entity, "label_ds", "_class"]], on=[spec.entity, "label_ds"])
            for arm, part in joined.groupby("arm"):
                truth = part["_class"].to_numpy(dtype=int if task.classifier else float)
                results[arm] = (task.metrics(truth, part[list(task.output_columns)]).get(metric.value), len(part))
    known = {arm: r for arm, r in results.items() if r[0] is not None and math.isfinite(r[0])}
    if set(known) != {CHAMPION_ARM, CANDIDATE_ARM}:
        return CHAMPION_ARM, (f"A/B test ended without labelled answers for both arms "
                              f"({ {arm: n for arm, (_, n) in results.items()} }); champion kept")
    (cand, n_cand), (champ, n_champ) = known[CANDIDATE_ARM], known[CHAMPION_ARM]
    better = metric.gain(cand, champ) > 0
    summary = (f"A/B {metric.value}: candidate v{state.candidate} {cand:.4f} on {n_cand} labelled answers, champion "
               f"v{state.champion} {champ:.4f} on {n_champ}")
    return (CANDIDATE_ARM, summary + "; the candidate wins") if better else (CHAMPION_ARM, summary + "; champion kept")


def write_report(spec, state: RolloutState, title: str, lines: list[str]):
    """A rollout's report as Markdown under ``$MLOPS_REPORTS/<uc>/rollouts/<id>.md``."""

    path = settings().reports / spec.name / "rollouts" / f"{state.id}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [f"# {title}", "", f"- strategy: {state.strategy}", f"- champion: v{state.champion}",
            f"- candidate: v{state.candidate} (share {state.share:.0%})",
            f"- from {state.started_at} to {now_utc().isoformat()}",
            "", *lines, ""]
    path.write_text("\n".join(body))
    log.info("%s: rollout report at %s", spec.name, path)
    return path


def status_text(spec, lake, timelines: int = 1) -> str:
    """``mlops rollout status``: the current state, then the step-by-step timeline of the last
    ``timelines`` rollouts (newest first) and one line for each earlier one."""
    state = read_state(spec)
    if state is None:
        return f"{spec.name}: no rollout yet (strategy {spec.deployment.strategy.value})"
    lines = [f"{spec.name}: rollout {state.id} ({state.strategy}) {state.phase}",
             f"  champion v{state.champion}, candidate v{state.candidate}, candidate share {state.share:.0%}"
             f" (step {state.step + 1}), since {state.step_started_at}, revision {state.revision}",
             f"  reason: {state.reason}"]
    every = history(spec, lake)
    if every.empty:
        return "\n".join(lines)
    newest_first = list(dict.fromkeys(every["rollout_id"][::-1]))
    for rollout_id in newest_first[:timelines]:
        events = every[every["rollout_id"] == rollout_id]
        first = events.iloc[0]
        lines.append(f"  timeline of {rollout_id} ({first.strategy}, v{first.candidate} beside v{first.champion}):")
        for row in events.itertuples():
            measured = (f" [{int(row.requests)} req, {int(row.errors)} err, p99 {_ms(row.p99_ms)}, agreement "
                        f"{_pct(None if pd.isna(row.agreement) else row.agreement)}]"
                        if not pd.isna(row.requests) else "")
            lines.append(f"    {row.at} {row.event:<12} share {row.share:>4.0%}{measured} {row.reason}")
    older = newest_first[timelines:]
    if older:
        lines.append("  earlier rollouts:")
        for rollout_id in older[:5]:
            row = every[every["rollout_id"] == rollout_id].iloc[-1]
            lines.append(f"    {rollout_id} ({row.strategy}, v{row.candidate} beside v{row.champion}): {row.phase} "
                         f"at {row.at}: {row.reason}")
    return "\n".join(lines)
