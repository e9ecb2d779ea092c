"""What the project tells people: one :class:`Alert` per event, built from what a step returned,
rendered as a one-line title and a plain-text body.

Sending is Airflow's (``mlops_airflow.alerts``: the spec's channels are Airflow connections, an
Apprise notifier each); nothing here needs Airflow, so the builders are tested on their own.
Every text that came from outside (file names, column names, reasons, exception messages) is
kept to one line per field, stripped of control characters and cut to a bound, and is never a
template: a message shows ``{{ conf }}`` or ``<script>`` as the characters they are.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

from pipelines.core.spec import AlertEvent

TITLE_LIMIT, LINE_LIMIT, DETAIL_LINES = 200, 500, 12
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


class Severity:
    """Apprise's notification types."""

    INFO, SUCCESS, WARNING, FAILURE = "info", "success", "warning", "failure"


@dataclass(frozen=True)
class Alert:
    """One event a person may need to hear about."""

    use_case: str
    event: AlertEvent
    headline: str                                  # what happened, in one line
    day: str = ""                                  # the date it concerns (YYYY-MM-DD), if one
    details: tuple[str, ...] = ()                  # one line each: the columns, checks, values, reasons
    links: tuple[tuple[str, str], ...] = field(default=())   # (what, URL or path)
    severity: str = Severity.INFO
    model: tuple[str, str] | None = None           # (registered name, version) it is about: linked in MLflow

    def with_links(self, *links: tuple[str, str]) -> "Alert":
        return replace(self, links=self.links + tuple(link for link in links if link[1]))


def one_line(text: object, limit: int = LINE_LIMIT) -> str:
    """``text`` on one line (control characters and line breaks as single spaces), cut to ``limit``."""
    flat = " ".join(_CONTROL.sub(" ", str(text)).split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def render(alert: Alert, environment: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """(title, body) of an alert: the title names the use case, environment, date and what
    happened; the body adds the details and the links (the model version's MLflow page first,
    when the tracking server has a UI)."""
    day = f" {alert.day}" if alert.day else ""
    title = one_line(f"[{alert.use_case} {environment}]{day} {alert.headline}", TITLE_LIMIT)
    facts = f"use case: {alert.use_case} | environment: {environment} | event: {alert.event.value}" + (
        f" | date: {alert.day}" if alert.day else "")
    lines = [one_line(alert.headline), facts]
    shown = alert.details[:DETAIL_LINES]
    lines += [f"- {one_line(d)}" for d in shown]
    if len(alert.details) > len(shown):
        lines.append(f"- … and {len(alert.details) - len(shown)} more")
    links = [(what, where) for what, where in (
        (model_version_link(tracking_uri, *alert.model),) if alert.model else ()) + alert.links if where]
    if links:
        lines += ["", *(f"{one_line(what, 60)}: {one_line(where, 1000)}" for what, where in links)]
    return title, "\n".join(lines)


def model_version_link(tracking_uri: str | None, name: str, version: object) -> tuple[str, str]:
    """The MLflow UI's page of a model version (none for a tracking store without a UI)."""
    if not tracking_uri or not tracking_uri.startswith(("http://", "https://")) or version in (None, ""):
        return ("MLflow version", "")
    return ("MLflow version", f"{tracking_uri.rstrip('/')}/#/models/{quote(name, safe='')}/versions/{version}")


# ----------------------------------------------------------------- one builder per event
def task_failed(use_case: str, dag_id: str, task_id: str, day: str, error: object, tries: int) -> Alert:
    return Alert(use_case, AlertEvent.TASK_FAILED, f"{dag_id}.{task_id} failed", day,
                 (f"error: {one_line(error)}", f"tries: {tries}"), severity=Severity.FAILURE)


def quarantined(use_case: str, reports) -> list[Alert]:
    """One alert per quarantined raw partition (``SourceReport`` of a failed validation)."""
    return [Alert(use_case, AlertEvent.QUARANTINED, f"raw {r.source} quarantined: {len(r.failures)} rule(s) failed",
                  r.ds, (*(str(f) for f in r.failures), f"rows: {r.rows}"),
                  (("quarantined partition", r.quarantined_to or ""),), Severity.WARNING)
            for r in reports if not r.success]


def inbox_refused(use_case: str, rejected: dict[str, str]) -> list[Alert]:
    """One alert per refused inbox file (``{path: error}``)."""
    return [Alert(use_case, AlertEvent.INBOX_REFUSED, f"inbox file refused: {one_line(path.rsplit('/', 1)[-1], 120)}",
                  "", (f"error: {one_line(error)}",), (("refused file", path),), Severity.WARNING)
            for path, error in sorted(rejected.items())]


def retraining(use_case: str, request: dict) -> Alert:
    """A training asked for by drift or live performance (``runtime.request_retraining``)."""
    trigger = request.get("trigger", "drift")
    return Alert(use_case, AlertEvent.RETRAINING, f"retraining requested ({trigger})", request.get("ds", ""),
                 (f"reason: {request.get('reason', '')}", f"training cut-off: {request.get('as_of', '')}",
                  f"training run: {request.get('run_id', '')}"), severity=Severity.WARNING)


GATE_OUTCOMES = {"rejected": (AlertEvent.GATE_REJECTED, "rejected", Severity.WARNING),
                 "promoted": (AlertEvent.PROMOTED, "promoted to @champion", Severity.SUCCESS),
                 "rolling_out": (AlertEvent.PROMOTED, "passed the gate: rolling out", Severity.SUCCESS)}


def performance_low(use_case: str, decision: dict | None) -> Alert | None:
    """The champion's live performance missed its bound on the policy's consecutive label dates
    (``runtime.performance_decision``); None while it holds."""
    if not decision or not decision.get("under_bound"):
        return None
    judged = tuple(f"{v['label_date']}: {decision['metric']} {v['value']:.4f} on {v['labels']} labels"
                   for v in decision.get("values") or [])
    return Alert(use_case, AlertEvent.PERFORMANCE_LOW,
                 f"live {decision['metric']} of v{decision.get('model_version')} beyond its bound "
                 f"{_number(decision.get('bound'))}", decision.get("ds", ""),
                 (f"reason: {decision.get('reason', '')}", *judged), severity=Severity.FAILURE)


def deadline_missed(use_case: str, dag_run: dict, deadline: str, deadline_time: object) -> Alert | None:
    """A day's run still going at its deadline (``scoring.deadline``), from what Airflow's deadline
    callback holds of the run; None for a backfill (days re-run after the fact, on purpose)."""
    run_type = dag_run.get("run_type")
    if run_type == "backfill":
        return None
    return Alert(use_case, AlertEvent.DEADLINE_MISSED, f"daily run not finished by its deadline, {deadline} UTC",
                 str((dag_run.get("conf") or {}).get("ds") or dag_run.get("logical_date") or "")[:10],
                 (f"run: {dag_run.get('dag_run_id', '')} ({run_type})", f"state: {dag_run.get('state', '')}",
                  f"started: {dag_run.get('start_date') or 'not yet'}", f"deadline: {deadline_time}"),
                 severity=Severity.WARNING)


def gate_decision(use_case: str, decision: dict, day: str, model: str) -> Alert | None:
    """A promotion decision (``runtime.decide``): not promoted, with the gate's failing checks or
    the reviewer's no; promoted; or rolling out. None while it waits for a reviewer."""
    if decision.get("outcome") not in GATE_OUTCOMES:
        return None
    event, verb, severity = GATE_OUTCOMES[decision["outcome"]]
    version = decision.get("challenger_version")
    values = f"{decision.get('metric')}: challenger {_number(decision.get('challenger_value'))}, " \
             f"champion {_number(decision.get('champion_value'))}"
    details = (f"reason: {decision.get('reason', '')}", values,
               f"failing checks: {', '.join(decision.get('failing') or []) or 'none'}",
               f"champion before: v{decision.get('champion_version')}" if decision.get("champion_version")
               else "no champion before")
    return Alert(use_case, event, f"challenger v{version} {verb}", day, details,
                 (("model card", decision.get("card") or ""),), severity, (model, str(version)))


def approval_waiting(use_case: str, what: str, version: object, day: str, model: str) -> Alert:
    """A promotion or a release (``what``) of ``model`` v``version`` waits for a person's answer."""
    return Alert(use_case, AlertEvent.APPROVAL_WAITING, f"{what}: {model} v{version} waits for your approval", day,
                 ("answer in Airflow: the task's page, or Browse > Required Actions",), model=(model, str(version)))


ROLLOUT_ACTIONS = {"advance": "advanced", "complete": "completed", "report": "completed",
                   "roll_back": "rolled back"}


def rollout(use_case: str, result: dict) -> Alert | None:
    """A rollout step that moved (``runtime.judge_rollout``, or a failed pre-deployment load test);
    None when it only waited."""
    state = result.get("state") or {}
    failed_load_test = result.get("tested") and not result.get("passed")
    action = "roll_back" if failed_load_test else result.get("action")
    if action not in ROLLOUT_ACTIONS:
        return None
    share = state.get("share")
    where = f" to {share:.0%}" if action == "advance" and isinstance(share, float) else ""
    headline = f"rollout of v{state.get('candidate', '?')} {ROLLOUT_ACTIONS[action]}{where}"
    details = (f"reason: {result.get('reason', '')}", f"champion: v{state.get('champion', '?')}",
               f"phase: {state.get('phase', '?')}")
    return Alert(use_case, AlertEvent.ROLLOUT, headline, "", details,
                 severity=Severity.FAILURE if action == "roll_back" else Severity.SUCCESS
                 if action != "advance" else Severity.INFO)


def rollback(use_case: str, done: dict) -> Alert:
    """``@champion`` moved back (``runtime.rollback``)."""
    return Alert(use_case, AlertEvent.ROLLBACK,
                 f"{done.get('model')} @champion rolled back v{done.get('from_version')} -> v{done.get('to_version')}",
                 "", (f"reason: {done.get('reason', '')}", f"by: {done.get('requested_by', '')}",
                      f"at: {done.get('at', '')}"), severity=Severity.WARNING,
                 model=(str(done["model"]), str(done["to_version"])) if done.get("model") and done.get("to_version")
                 else None)


def _number(value) -> str:
    return "none" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------- the alert log (the control room's list)
ALERT_LOG = "alerts.jsonl"
ALERT_LOG_READ_BYTES = 1 << 20   # the newest alerts are read from the log's last MiB only


@dataclass(frozen=True)
class AlertRecord:
    """One alert as it was raised: when, its event, its title, how many channels took it."""

    at: str
    event: str
    severity: str
    title: str
    sent: int


def alert_log(reports: Path, use_case: str) -> Path:
    """Every alert a use case raised, one JSON document a line, under its reports folder."""
    return Path(reports) / use_case / ALERT_LOG


def record(reports: Path, alert: Alert, title: str, sent: int, at: dt.datetime | None = None) -> None:
    """Append one alert to its use case's log (a single write of one line: a reader sees a
    whole line or none)."""
    path = alert_log(reports, alert.use_case)
    path.parent.mkdir(parents=True, exist_ok=True)
    when = (at or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
    line = json.dumps(asdict(AlertRecord(when, alert.event.value, alert.severity, one_line(title, TITLE_LIMIT),
                                         sent))) + "\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


def recent_alerts(reports: Path, use_case: str, limit: int = 20) -> list[AlertRecord]:
    """The newest ``limit`` alerts of a use case, newest first; a line that is not a whole record
    (half-written, edited by hand) is skipped."""
    path = alert_log(reports, use_case)
    if not path.is_file() or path.is_symlink():
        return []
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - ALERT_LOG_READ_BYTES))
        lines = handle.read().decode(errors="replace").splitlines()
    found = []
    for line in reversed(lines):
        try:
            found.append(AlertRecord(**json.loads(line)))
        except (ValueError, TypeError):
            continue
        if len(found) == limit:
            break
    return found
