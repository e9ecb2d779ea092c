"""What the control room shows of one use case, read from the lake, the reports folder and the
registry: typed records, no Airflow, no HTML (``mlops_airflow.control_room`` draws them).

Each function reads what exists and returns empty records for what does not yet (a use case
before its first run has no tables): a page never fails because a table is missing.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.alerts import AlertRecord, recent_alerts
from pipelines.core.lake import Lake, list_partitions, read_table
from pipelines.data.inbox import REJECTED, inbox_folder
from pipelines.data.validation import RuleFailure
from pipelines.models.rollout_state import read_state
from pipelines.monitoring.watch import DRIFT_COLUMNS, DRIFT_SUMMARY, PERFORMANCE
from pipelines.release.evaluation import PROMOTION_CHECKS
from pipelines.release.model_card import card_folder
from pipelines.release.rollout import history as rollout_history
from pipelines.report import champion_history

ONLINE_COLUMNS = ["latency_ms", "fallback", "error", "model_version"]
ERROR_TEXT_LIMIT = 2000   # characters of a refused file's error shown


@dataclass(frozen=True)
class RolloutEvent:
    at: str
    event: str
    share: float
    reason: str
    by: str


@dataclass(frozen=True)
class RolloutView:
    """The newest rollout: where it stands and every event of it, oldest first."""

    rollout_id: str
    strategy: str
    champion: str
    candidate: str
    share: float
    phase: str
    events: list[RolloutEvent]

    @property
    def running(self) -> bool:
        return self.phase == "running"


@dataclass(frozen=True)
class Overview:
    use_case: str
    environment: str
    registered_name: str
    champion: str | None                       # the version @champion points at
    versions: list[dict]                       # pipelines.report.champion_history, oldest first
    rollout: RolloutView | None
    alerts: list[AlertRecord]                  # newest first


@dataclass(frozen=True)
class DriftDay:
    ds: str
    model_version: str
    drift_share: float
    threshold: float
    dataset_drift: bool
    drifted_columns: str
    report: str                                # the Evidently report's file name ('' if none)


@dataclass(frozen=True)
class TrafficDay:
    ds: str
    requests: int
    p50_ms: float
    p99_ms: float
    fallbacks: int


@dataclass(frozen=True)
class Monitoring:
    metric: str
    higher_is_better: bool
    drift: list[DriftDay]
    column_drift: pd.DataFrame                 # column x ds: the drift score over its threshold (1 = at it)
    performance: pd.DataFrame                  # label_date, source, model_version, <metric>, rows
    traffic: list[TrafficDay]


@dataclass(frozen=True)
class SourceDay:
    status: str                                # clean, quarantined, missing
    reason: str = ""                           # why it was quarantined


@dataclass(frozen=True)
class RefusedFile:
    source: str
    name: str
    error: str


@dataclass(frozen=True)
class DataView:
    sources: list[str]
    days: list[str]                            # every day from the first delivery to the last
    status: dict[str, dict[str, SourceDay]]    # ds -> source -> status
    refused: list[RefusedFile] = field(default_factory=list)


def overview(spec, lake: Lake, environment: str, reports: Path, alerts: int = 20) -> Overview:
    versions = champion_history(spec)
    champion = next((row["version"] for row in versions if "champion" in row["aliases"]), None)
    return Overview(spec.name, environment, spec.model.registered_name, champion, versions,
                    newest_rollout(spec, lake), recent_alerts(reports, spec.name, alerts))


def newest_rollout(spec, lake: Lake) -> RolloutView | None:
    """The rollout on the registered model's state tag, with its events from the rollouts table."""
    state = read_state(spec)
    if state is None:
        return None
    events = rollout_history(spec, lake, state.id)
    return RolloutView(state.id, state.strategy, state.champion, state.candidate, float(state.share), state.phase,
                       [RolloutEvent(str(e.at), str(e.event), float(e.share), str(e.reason or ""), str(e.by or ""))
                        for e in events.itertuples()])


def gate_checks(spec, lake: Lake, version: str) -> pd.DataFrame:
    """Every gate check of ``version``'s newest evaluation (check, kind, mode, subject, status,
    value, threshold, champion's value, detail)."""
    checks = read_table(lake.monitoring(spec.name, PROMOTION_CHECKS))
    if checks.empty:
        return checks
    mine = checks[checks["model_version"].astype(str) == str(version)]
    if mine.empty:
        return mine
    newest = mine[mine["evaluated_at"] == mine["evaluated_at"].max()]
    columns = ["check", "kind", "mode", "subject", "status", "value", "threshold", "champion_value", "detail"]
    return newest[[c for c in columns if c in newest]].reset_index(drop=True)


def model_card(spec, version: str) -> Path | None:
    """The model card of a registered version (None if it has none)."""
    card = card_folder(spec, version) / "model_card.html"
    return card if card.is_file() else None


def monitoring(spec, lake: Lake) -> Monitoring:
    metric = spec.promotion.metric
    summary = read_table(lake.monitoring(spec.name, DRIFT_SUMMARY))
    drift = [DriftDay(str(r.ds), str(r.model_version), float(r.drift_share), float(r.threshold),
                      bool(r.dataset_drift), str(r.drifted_column_names or ""),
                      Path(str(r.report_path)).name if isinstance(r.report_path, str) and r.report_path else "")
             for r in summary.sort_values("ds").itertuples()] if len(summary) else []
    return Monitoring(metric.value, metric.higher_is_better, drift, column_drift(lake, spec.name),
                      performance(lake, spec.name, metric.value), traffic(lake, spec.name))


def column_drift(lake: Lake, use_case: str) -> pd.DataFrame:
    """Each input column's drift score over its threshold, per monitored day (column x ds)."""
    columns = read_table(lake.monitoring(use_case, DRIFT_COLUMNS))
    if columns.empty:
        return pd.DataFrame()
    inputs = columns[columns["role"] == "input"] if "role" in columns else columns
    ratio = inputs["score"].astype(float) / inputs["threshold"].astype(float).where(inputs["threshold"] > 0)
    return (inputs.assign(ratio=ratio).pivot_table(index="column", columns="ds", values="ratio", aggfunc="max")
            .sort_index())


def performance(lake: Lake, use_case: str, metric: str) -> pd.DataFrame:
    """The live metric per label date, source (batch, online) and model version."""
    table = read_table(lake.monitoring(use_case, PERFORMANCE))
    if table.empty or metric not in table:
        return pd.DataFrame(columns=["label_date", "source", "model_version", metric, "rows"])
    source = table["source"].fillna("batch") if "source" in table else "batch"
    frame = table.assign(source=source, model_version=table["model_version"].astype(str))
    return frame[["label_date", "source", "model_version", metric, "rows"]].sort_values(["label_date", "source"])


def traffic(lake: Lake, use_case: str) -> list[TrafficDay]:
    """Online requests per day from the online inference table: volume, latency, fallbacks."""
    table = lake.online_inference(use_case)
    if not list_partitions(table):
        return []
    rows = read_table(table, columns=ONLINE_COLUMNS)
    found = []
    for day, part in rows.groupby("ds"):
        latency = part["latency_ms"].astype(float)
        found.append(TrafficDay(str(day), len(part), float(latency.quantile(0.5)), float(latency.quantile(0.99)),
                                int(part["fallback"].fillna(False).astype(bool).sum())))
    return found


def data_view(spec, lake: Lake, inbox_root: Path) -> DataView:
    """Each source's partitions per day (clean, quarantined with the reason, missing) and the
    files the inbox refused with their error."""
    sources = list(spec.sources)
    clean = {s: set(list_partitions(lake.clean(spec.name, s))) for s in sources}
    quarantined = {s: set(list_partitions(lake.quarantine(spec.name, s))) for s in sources}
    seen = sorted(set().union(*clean.values(), *quarantined.values()))
    days = _every_day(seen[0], seen[-1]) if seen else []
    status = {}
    for day in days:
        status[day] = {}
        for source in sources:
            if day in clean[source]:
                status[day][source] = SourceDay("clean")
            elif day in quarantined[source]:
                status[day][source] = SourceDay("quarantined", quarantine_reason(lake, spec.name, source, day))
            else:
                status[day][source] = SourceDay("missing")
    return DataView(sources, days, status, refused_files(inbox_folder(inbox_root, spec.name)))


def _every_day(first: str, last: str) -> list[str]:
    start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [(start + dt.timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def quarantine_reason(lake: Lake, use_case: str, source: str, day: str) -> str:
    """The failed rules of the newest quarantined attempt of a source's day."""
    attempts = sorted(Lake.partition(lake.quarantine(use_case, source), day).glob("attempt=*/validation.json"))
    if not attempts:
        return "quarantined (no validation report kept)"
    try:
        report = json.loads(attempts[-1].read_text())
        failures = report.get("failures") or []
        return "; ".join(str(RuleFailure(**f)) for f in failures) or "quarantined"
    except (OSError, ValueError, AttributeError, TypeError):
        return f"quarantined (its report {attempts[-1].name} cannot be read)"


def refused_files(inbox: Path) -> list[RefusedFile]:
    """Files the inbox refused (``rejected/<source>/<file>`` with ``<file>.error.txt``), newest first."""
    rejected = inbox / REJECTED
    if not rejected.is_dir():
        return []
    found = []
    for error in rejected.glob("*/*.error.txt"):
        if error.is_symlink() or not error.is_file():
            continue
        try:
            text = error.read_text(errors="replace")[:ERROR_TEXT_LIMIT]
        except OSError:
            continue
        found.append((error.stat().st_mtime, RefusedFile(error.parent.name, error.name[:-len(".error.txt")], text)))
    return [refused for _, refused in sorted(found, key=lambda pair: pair[0], reverse=True)]
