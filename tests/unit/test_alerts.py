"""Alerts: one message per event with what a person needs (use case, environment, date, what
happened, links), routed by the spec to Airflow connections and sent through Apprise to real
receivers started here (an SMTP server, an HTTP webhook); hostile text stays text, a channel
that is down or missing changes nothing, and no credential reaches a log."""
from __future__ import annotations

import json
import time
from email import message_from_bytes
from email.policy import default as email_policy
from types import SimpleNamespace

import pytest

from pipelines import alerts
from pipelines.core.spec import AlertEvent, AlertsSpec
from pipelines.data.validation import RuleFailure, SourceReport

MLFLOW = "http://127.0.0.1:5000"


@pytest.fixture(autouse=True)
def own_reports(tmp_path, monkeypatch):
    """Every alert sent here is kept in this test's own alert log."""
    monkeypatch.setenv("MLOPS_REPORTS", str(tmp_path / "reports"))
    return tmp_path / "reports"


# ----------------------------------------------------------------- the messages
def _report(success: bool, failures=()) -> SourceReport:
    return SourceReport("transactions", "2026-01-20", 812, success, list(failures),
                        "/lake/quarantine/churn/transactions/ds=2026-01-20" if not success else None)


CASES = [
    ("quarantined", lambda: alerts.quarantined("churn", [
        _report(False, [RuleFailure("values between 0 and 10000", "amount", "3 of 812 rows: -5.0, 12000.0")]),
        _report(True)])[0],
     AlertEvent.QUARANTINED, "[churn dev] 2026-01-20 raw transactions quarantined: 1 rule(s) failed",
     ["column 'amount': values between 0 and 10000 failed: 3 of 812 rows", "quarantined partition: /lake/quarantine"]),
    ("inbox", lambda: alerts.inbox_refused("churn", {"/inbox/rejected/tx 2026-01-21.csv": "amount: 'n/a?' is not a number"})[0],
     AlertEvent.INBOX_REFUSED, "[churn dev] inbox file refused: tx 2026-01-21.csv",
     ["error: amount: 'n/a?' is not a number", "refused file: /inbox/rejected/tx 2026-01-21.csv"]),
    ("retraining", lambda: alerts.retraining("churn", {"reason": "drift in 7 of 12 columns (share 0.58 > 0.5) on 2 days",
                                                       "as_of": "2026-01-22", "run_id": "drift__2026-01-21",
                                                       "ds": "2026-01-21", "trigger": "drift"}),
     AlertEvent.RETRAINING, "[churn dev] 2026-01-21 retraining requested (drift)",
     ["reason: drift in 7 of 12 columns (share 0.58 > 0.5) on 2 days", "training run: drift__2026-01-21"]),
    ("gate", lambda: alerts.gate_decision("churn", {
        "outcome": "rejected", "reason": "gate failed: roc_auc 0.71 < floor 0.75", "metric": "roc_auc",
        "challenger_value": 0.7104, "champion_value": 0.8123, "champion_version": "3", "challenger_version": "5",
        "failing": ["roc_auc", "slices"], "card": "/reports/churn/model_card_v5.html"}, "2026-01-22",
        "churn_classifier"),
     AlertEvent.GATE_REJECTED, "[churn dev] 2026-01-22 challenger v5 rejected",
     ["failing checks: roc_auc, slices", "roc_auc: challenger 0.7104, champion 0.8123", "champion before: v3",
      "MLflow version: http://127.0.0.1:5000/#/models/churn_classifier/versions/5",
      "model card: /reports/churn/model_card_v5.html"]),
    ("promoted", lambda: alerts.gate_decision("churn", {"outcome": "rolling_out", "reason": "gate passed",
                                                        "challenger_version": "6", "metric": "roc_auc",
                                                        "challenger_value": 0.9, "champion_version": "3"},
                                              "2026-01-23", "churn_classifier"),
     AlertEvent.PROMOTED, "[churn dev] 2026-01-23 challenger v6 passed the gate: rolling out",
     ["reason: gate passed", "champion before: v3", "failing checks: none"]),
    ("approval", lambda: alerts.approval_waiting("churn", "promotion", "6", "2026-01-23", "churn_classifier"),
     AlertEvent.APPROVAL_WAITING, "[churn dev] 2026-01-23 promotion: churn_classifier v6 waits for your approval",
     ["Browse > Required Actions"]),
    ("rollout", lambda: alerts.rollout("churn", {"action": "advance", "reason": "step within budget",
                                                 "state": {"candidate": "6", "champion": "3", "share": 0.25,
                                                           "phase": "running"}}),
     AlertEvent.ROLLOUT, "[churn dev] rollout of v6 advanced to 25%", ["reason: step within budget"]),
    ("rolled back", lambda: alerts.rollout("churn", {"tested": True, "passed": False, "reason": "p99 480 ms > 250",
                                                     "state": None}),
     AlertEvent.ROLLOUT, "[churn dev] rollout of v? rolled back", ["reason: p99 480 ms > 250"]),
    ("rollback", lambda: alerts.rollback("churn", {"model": "churn_classifier", "from_version": "6", "to_version": "3",
                                                   "reason": "drill", "requested_by": "admin", "at": "2026-01-24"}),
     AlertEvent.ROLLBACK, "[churn dev] churn_classifier @champion rolled back v6 -> v3", ["by: admin", f"MLflow version: {MLFLOW}/#/models/churn_classifier/versions/3"]),
    ("task failed", lambda: alerts.task_failed("churn", "churn_daily", "score_batch", "2026-01-24",
                                               "ModelArtifactsMissing: v3's files are gone", 3),
     AlertEvent.TASK_FAILED, "[churn dev] 2026-01-24 churn_daily.score_batch failed",
     ["error: ModelArtifactsMissing: v3's files are gone", "tries: 3"]),
]


@pytest.mark.parametrize("name, build, event, title, in_body", CASES, ids=[c[0] for c in CASES])
def test_each_event_says_what_happened_where_and_when(name, build, event, title, in_body):
    alert = build()
    assert alert.event is event
    shown_title, body = alerts.render(alert, "dev", MLFLOW)
    assert shown_title == title
    assert f"use case: churn | environment: dev | event: {event.value}" in body
    for text in in_body:
        assert text in body, (text, body)


def test_nothing_to_say_when_nothing_moved():
    assert alerts.rollout("churn", {"action": "wait", "reason": "window not over", "state": {}}) is None
    assert alerts.rollout("churn", {"tested": True, "passed": True, "reason": "ok"}) is None
    assert alerts.gate_decision("churn", {"outcome": "awaiting_approval"}, "", "m") is None
    assert alerts.quarantined("churn", [_report(True)]) == []


def test_hostile_text_stays_one_line_of_text():
    hostile = "x.csv\r\nBcc: everyone@example.org\n<script>alert(1)</script> {{ conf.get('core', 'fernet_key') }}"
    alert = alerts.inbox_refused("churn", {f"/inbox/rejected/{hostile}": "bad\x00\x1b[31m" + "y" * 5000})[0]
    title, body = alerts.render(alert, "prod")
    assert "\n" not in title and "\r" not in title and len(title) <= alerts.TITLE_LIMIT
    assert "Bcc: everyone@example.org <script>alert(1)</script> {{ conf.get('core', 'fernet_key') }}" in body
    assert all(len(line) <= 1100 for line in body.splitlines()) and "\x00" not in body and "\x1b" not in body
    many = alerts.Alert("churn", AlertEvent.QUARANTINED, "many", details=tuple(f"rule {i}" for i in range(40)))
    assert alerts.render(many, "dev")[1].endswith("- … and 28 more")


def test_links_only_where_there_is_a_page():
    assert alerts.model_version_link("sqlite:///x.db", "m", "3") == ("MLflow version", "")
    approval = alerts.approval_waiting("churn", "promotion", "6", "", "m")
    assert "MLflow version" not in alerts.render(approval, "dev", "sqlite:///x.db")[1]
    assert "MLflow version" not in alerts.render(approval, "dev")[1]
    assert f"MLflow version: {MLFLOW}/#/models/m/versions/6" in alerts.render(approval, "dev", MLFLOW)[1]
    assert alerts.model_version_link(MLFLOW + "/", "a b/c", "3")[1] == f"{MLFLOW}/#/models/a%20b%2Fc/versions/3"
    alert = alerts.rollback("churn", {"model": "m"}).with_links(("Airflow run", ""), ("Airflow task", "http://a/t"))
    assert alert.links == (("Airflow task", "http://a/t"),)


# ----------------------------------------------------------------- routing in the spec
def test_the_spec_routes_each_event_to_its_channels():
    spec = AlertsSpec(channels=[{"connection": "team_mail"},
                                {"connection": "oncall", "events": ["task_failed", "performance_low"]},
                                {"connection": "team_mail", "events": ["task_failed"]}])
    assert spec.connections_for(AlertEvent.TASK_FAILED) == ["team_mail", "oncall"]
    assert spec.connections_for(AlertEvent.ROLLOUT) == ["team_mail"]
    assert AlertsSpec().connections_for(AlertEvent.TASK_FAILED) == []


@pytest.mark.parametrize("channel, problem", [
    ({"connection": "../x"}, "alerts.channels[0].connection: an Airflow connection id (letters, digits, _ . -)"),
    ({"connection": "mail", "events": ["drift_everything"]}, "alerts.channels[0].events[0]: Input should be"),
    ({"connection": "mail", "events": []}, "alerts.channels[0].events: List should have at least 1 item"),
    ({"connection": "mail", "url": "slack://token@x"}, "alerts.channels[0].url: unknown key"),
])
def test_a_bad_channel_is_one_line_naming_its_key(tmp_path, channel, problem):
    import shutil

    import yaml

    from pipelines.core.spec import SpecError, load_spec
    from tests.conftest import ROOT

    shutil.copytree(ROOT / "include" / "churn", tmp_path / "churn")
    path = tmp_path / "churn" / "spec.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["alerts"] = {"channels": [channel]}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as refused:
        load_spec(path)
    lines = [line for line in str(refused.value).splitlines() if problem in line]
    assert len(lines) == 1 and lines[0].startswith(f"{path}: "), str(refused.value)


# ----------------------------------------------------------------- sent to real receivers
@pytest.fixture
def smtp_inbox():
    from aiosmtpd.controller import Controller

    class Inbox:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(message_from_bytes(envelope.content, policy=email_policy))
            return "250 OK"

    from tests.conftest import free_port

    inbox = Inbox()
    inbox.port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    yield inbox
    controller.stop()


@pytest.fixture
def webhook(httpserver):
    httpserver.expect_request("/hooks/mlops", method="POST").respond_with_data("ok")
    return httpserver


def _connection(monkeypatch, conn_id: str, *urls: str) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(
        {"conn_type": "apprise", "extra": {"config": [{"path": url} for url in urls]}}))


def _spec_with_channels(monkeypatch, *channels):
    """The shipped churn spec (whatever include folder the session points at), routed to ``channels``."""
    from pipelines import runtime
    from pipelines.core.spec import load_spec
    from tests.conftest import CHURN

    routed = load_spec(CHURN / "spec.yaml").model_copy(update={"alerts": AlertsSpec(channels=list(channels))})
    monkeypatch.setattr(runtime, "spec", lambda name: routed)
    return routed


def test_an_alert_reaches_an_smtp_server_and_a_webhook_once_each(monkeypatch, smtp_inbox, webhook, own_reports):
    from mlops_airflow.alerts import send

    _connection(monkeypatch, "team_mail", f"mailto://127.0.0.1:{smtp_inbox.port}?from=mlops@example.org"
                                          f"&to=team@example.org&mode=insecure")
    _connection(monkeypatch, "team_hook", webhook.url_for("/hooks/mlops").replace("http://", "json://"))
    _spec_with_channels(monkeypatch, {"connection": "team_mail"},
                        {"connection": "team_hook", "events": ["gate_rejected"]})
    rejected = alerts.gate_decision("churn", {"outcome": "rejected", "reason": "gate failed: <b>roc_auc</b>",
                                              "challenger_version": "5", "metric": "roc_auc"}, "2026-01-22",
                                    "churn_classifier")
    quarantine = alerts.quarantined("churn", [_report(False, [RuleFailure("not null", "id", "2 rows")])])
    assert send("churn", [rejected, *quarantine, None]) == 3
    assert [m["subject"] for m in smtp_inbox.messages] == ["[churn dev] 2026-01-22 challenger v5 rejected",
                                                           "[churn dev] 2026-01-20 raw transactions quarantined: "
                                                           "1 rule(s) failed"]
    mail = smtp_inbox.messages[0]
    assert mail.get_content_type() == "text/plain" and "gate failed: <b>roc_auc</b>" in mail.get_content()
    posted = [json.loads(request.get_data()) for request, _ in webhook.log]
    assert len(posted) == 1 and posted[0]["title"] == "[churn dev] 2026-01-22 challenger v5 rejected"
    assert posted[0]["type"] == "warning" and "failing checks: none" in posted[0]["message"]
    kept = alerts.recent_alerts(own_reports, "churn")        # the control room's list, newest first
    assert [(a.event, a.title, a.sent) for a in kept] == [
        ("quarantined", "[churn dev] 2026-01-20 raw transactions quarantined: 1 rule(s) failed", 1),
        ("gate_rejected", "[churn dev] 2026-01-22 challenger v5 rejected", 2)]


def test_a_channel_that_is_down_or_missing_changes_nothing(monkeypatch, caplog):
    import socket

    from mlops_airflow.alerts import send

    with socket.socket() as probe:   # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _connection(monkeypatch, "down_hook", f"json://127.0.0.1:{port}/hook")
    _spec_with_channels(monkeypatch, {"connection": "down_hook"}, {"connection": "no_such_connection"})
    started = time.monotonic()
    sent = send("churn", [alerts.rollback("churn", {"model": "m", "from_version": "2", "to_version": "1"})])
    assert time.monotonic() - started < 10
    assert sent == 1   # handed to the down receiver's notifier (Apprise logs the failed delivery)
    assert "not sent through connection 'no_such_connection'" in caplog.text


def test_no_credential_of_a_channel_reaches_the_logs(monkeypatch, caplog, webhook):
    import logging

    from mlops_airflow.alerts import send

    caplog.set_level(logging.DEBUG)
    url = webhook.url_for("/hooks/mlops").replace("http://", "json://alerts:s3cr3t-Pa55@")
    _connection(monkeypatch, "secret_hook", url)
    _spec_with_channels(monkeypatch, {"connection": "secret_hook"})
    assert send("churn", [alerts.rollback("churn", {"model": "m", "from_version": "2", "to_version": "1"})]) == 1
    request = webhook.log[-1][0]
    assert request.authorization.password == "s3cr3t-Pa55"   # the receiver got it ...
    assert "s3cr3t-Pa55" not in caplog.text                   # ... and no log line did


def test_a_failed_task_alerts_its_own_use_case(monkeypatch):
    from mlops_airflow import alerts as airflow_alerts

    sent = []
    monkeypatch.setattr(airflow_alerts, "send", lambda use_case, found, context=None: sent.append((use_case, found)))
    monkeypatch.setattr("pipelines.runtime.use_case_names", lambda: ["churn", "churn_v2"])
    ti = SimpleNamespace(dag_id="churn_v2_daily", task_id="score_batch", try_number=3)
    airflow_alerts.task_failed({"ti": ti, "params": {"ds": "2026-01-24"}, "exception": RuntimeError("boom")})
    (use_case, (alert,)), = sent
    assert use_case == "churn_v2" and alert.headline == "churn_v2_daily.score_batch failed"
    assert alert.day == "2026-01-24" and "error: boom" in alert.details
    airflow_alerts.task_failed({"ti": SimpleNamespace(dag_id="other_daily", task_id="t", try_number=1)})
    assert len(sent) == 1


# ----------------------------------------------------------------- deadlines
DUE = "2026-01-24T06:00:00Z"
RUN = {"dag_id": "churn_daily", "dag_run_id": "scheduled__2026-01-24T00:00:00+00:00", "run_type": "scheduled",
       "logical_date": "2026-01-24T00:00:00Z", "queued_at": "2026-01-24T00:00:02.5Z", "state": "running",
       "start_date": "2026-01-24T00:00:03Z"}


@pytest.mark.parametrize("name, run, alerted", [
    ("scheduled, late", RUN, True),
    ("scheduled, created after its deadline (the scheduler was down)", {**RUN, "queued_at": "2026-01-24T09:00:00Z"},
     True),
    ("backfill", {**RUN, "run_type": "backfill", "queued_at": "2026-03-01T10:00:00Z"}, False),
    ("manual", {**RUN, "run_type": "manual"}, True),
    ("asset-woken", {**RUN, "run_type": "asset_triggered"}, True),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_missed_deadline_alerts_unless_a_backfill_re_ran_the_day(name, run, alerted):
    alert = alerts.deadline_missed("churn", run, "06:00", DUE)
    assert (alert is not None) is alerted, name
    if alerted:
        title, body = alerts.render(alert, "prod")
        assert title == "[churn prod] 2026-01-24 daily run not finished by its deadline, 06:00 UTC"
        assert f"run: {run['dag_run_id']} ({run['run_type']})" in body and "state: running" in body
        assert f"deadline: {DUE}" in body and alert.event == AlertEvent.DEADLINE_MISSED


def test_the_deadline_callback_tells_the_channels_once_with_a_link_to_the_run(monkeypatch, webhook):
    """What Airflow's executor calls when a run misses its deadline (the context as the scheduler
    builds it): one message at the webhook, linking the run; a backfill's miss sends nothing."""
    from mlops_airflow.alerts import deadline_missed

    _connection(monkeypatch, "team_hook", webhook.url_for("/hooks/mlops").replace("http://", "json://"))
    _spec_with_channels(monkeypatch, {"connection": "team_hook", "events": ["deadline_missed"]})
    context = {"dag_run": RUN, "deadline": {"id": "0192", "deadline_time": DUE}}
    deadline_missed(use_case="churn", deadline="06:00", context=context)
    deadline_missed(use_case="churn", deadline="06:00",
                    context={**context, "dag_run": {**RUN, "run_type": "backfill"}})
    posted = [json.loads(request.get_data()) for request, _ in webhook.log]
    assert [p["title"] for p in posted] == ["[churn dev] 2026-01-24 daily run not finished by its deadline, 06:00 UTC"]
    assert "/dags/churn_daily/runs/scheduled__2026-01-24T00%3A00%3A00%2B00%3A00" in posted[0]["message"]
    assert posted[0]["type"] == "warning"
