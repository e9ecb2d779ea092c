"""Alerts through Airflow's notifiers: each of a spec's alert channels is an Airflow connection
of the Apprise type, and each message goes out through the provider's ``AppriseNotifier``.

A channel that fails (no such connection, a receiver that is down, a bad URL) is logged as a
warning and never fails, retries or slows down the task it reports on beyond the notifier's
own timeouts. Messages are plain text, sent with ``notify`` (never rendered as a template).
Imported inside tasks and callbacks only.
"""
from __future__ import annotations

import logging
from urllib.parse import quote

log = logging.getLogger(__name__)


def send(use_case: str, alerts, context=None) -> int:
    """Send each alert (``pipelines.alerts.Alert``; None entries skipped) through every channel
    its event is routed to in the use case's spec, with links to this run; how many went out."""
    from pipelines import runtime
    from pipelines.alerts import one_line, render
    from pipelines.models.tracking import registry_name

    spec, sent = runtime.spec(use_case), 0
    registry = registry_name(runtime.settings().mlflow_tracking_uri)   # its UI links each model version
    for alert in alerts:
        if alert is None:
            continue
        connections = spec.alerts.connections_for(alert.event)
        title, body = render(alert.with_links(*run_links(context)), spec.environment, registry)
        taken = 0
        for connection in connections:
            try:
                _notifier(connection, title, body, alert.severity).notify(context or {})
                taken += 1
            except Exception as exc:   # noqa: BLE001 - a channel never fails the task it reports on
                log.warning("alert %s of %s not sent through connection %r: %s", alert.event.value, use_case,
                            connection, one_line(exc, 300))
        _log_alert(alert, title, taken)
        sent += taken
    if sent:
        log.info("%s: %d alert message(s) handed to their channels", use_case, sent)
    return sent


def _notifier(connection: str, title: str, body: str, severity: str):
    from airflow.providers.apprise.notifications.apprise import AppriseNotifier
    from apprise import NotifyFormat, NotifyType

    return AppriseNotifier(title=title, body=body, notify_type=NotifyType(severity), body_format=NotifyFormat.TEXT,
                           apprise_conn_id=connection)


def run_links(context) -> list[tuple[str, str]]:
    """Links to the Airflow run and task the alert comes from (none outside a task)."""
    ti = (context or {}).get("ti")
    if ti is None:
        return []
    base = _airflow_base()
    return [("Airflow run", f"{base}/dags/{quote(ti.dag_id)}/runs/{quote(ti.run_id, safe='')}"),
            ("Airflow task", ti.log_url)]


def run_day(context) -> str:
    """The date a run is about: its ``ds`` form field, or its logical date."""
    context = context or {}
    params = context.get("params") or {}
    return str(params.get("ds") or context.get("ds") or "")


def task_failed(context) -> None:
    """``on_failure_callback`` of every lifecycle task: a task that failed for good (retries spent)
    alerts the channels of its use case, named by the DAG's ``<use case>_`` prefix."""
    from pipelines import alerts, runtime

    ti = context.get("ti")
    if ti is None:
        return
    owners = [name for name in runtime.use_case_names() if ti.dag_id.startswith(f"{name}_")]
    if not owners:
        return
    use_case = max(owners, key=len)   # churn_v2_daily is churn_v2's, not churn's
    send(use_case, [alerts.task_failed(use_case, ti.dag_id, ti.task_id, run_day(context), context.get("exception"),
                                       ti.try_number)], context)


def deadline_missed(use_case: str, deadline: str, context: dict | None = None) -> None:
    """The daily DAG's deadline callback (``scoring.deadline``; Airflow runs it on an executor when a
    run has not finished by then): alerts the use case's channels, except for a backfill's runs."""
    from pipelines import alerts

    context = context or {}
    run, due = context.get("dag_run") or {}, (context.get("deadline") or {}).get("deadline_time")
    alert = alerts.deadline_missed(use_case, run, deadline, due)
    if alert is None:
        log.info("%s: run %s past its deadline %s; not alerted (%s)", use_case, run.get("dag_run_id"), deadline,
                 run.get("run_type"))
        return
    send(use_case, [alert.with_links(*dag_run_links(run))])


def dag_run_links(run: dict) -> list[tuple[str, str]]:
    """The Airflow UI's page of a run (as Airflow's API describes the run)."""
    if not run.get("dag_id") or not run.get("dag_run_id"):
        return []
    base = _airflow_base()
    return [("Airflow run", f"{base}/dags/{quote(run['dag_id'])}/runs/{quote(run['dag_run_id'], safe='')}")]


def _airflow_base() -> str:
    from airflow.configuration import conf

    return conf.get("api", "base_url", fallback="http://localhost:8080/").rstrip("/")


def _log_alert(alert, title: str, taken: int) -> None:
    """Keep the alert in its use case's alert log (the control room's list); never raises."""
    from pipelines import runtime
    from pipelines.alerts import record

    try:
        record(runtime.settings().reports, alert, title, taken)
    except OSError as exc:
        log.warning("alert %s of %s not kept in the alert log: %s", alert.event.value, alert.use_case, exc)

