"""The control room's content without Airflow: what each page reads from the lake, the inbox and
the alert log, and the charts drawn from it. The pages themselves, in a real browser against the
real stack, are in tests/e2e/test_control_room.py."""
from __future__ import annotations

import datetime as dt
import os
import re

import pandas as pd
import pytest

from pipelines import alerts
from pipelines.control_room import charts, state
from pipelines.core.lake import Lake, read_table, replace_partition, write_json
from pipelines.core.spec import AlertEvent, load_spec
from tests.conftest import CHURN

SPEC = load_spec(CHURN / "spec.yaml")


@pytest.fixture()
def lake(tmp_path) -> Lake:
    return Lake(tmp_path / "lake")


def test_a_table_whose_partitions_disagree_on_a_type_is_read_whole(lake):
    table = lake.monitoring("churn", "promotion_checks")
    replace_partition(table, "2026-01-02", pd.DataFrame({"check": ["a"], "champion_version": [None]}))
    replace_partition(table, "2026-01-03", pd.DataFrame({"check": ["b"], "champion_version": ["1"]}))
    frame = read_table(table)
    assert sorted(frame["check"]) == ["a", "b"]
    assert frame.set_index("check")["champion_version"].to_dict() == {"a": None, "b": "1"}
    assert list(read_table(table, columns=["check"]).columns) == ["check", "ds"]


def test_each_sources_day_is_clean_quarantined_with_its_rules_or_missing(lake, tmp_path):
    for day in ("2026-01-01", "2026-01-02", "2026-01-04"):
        for source in SPEC.sources:
            if (day, source) != ("2026-01-02", "transactions"):
                replace_partition(lake.clean("churn", source), day, pd.DataFrame({"x": [1]}))
    attempt = Lake.partition(lake.quarantine("churn", "transactions"), "2026-01-02") / "attempt=20260102T000000Z"
    write_json(attempt / "validation.json", {"failures": [
        {"rule": "expect_column_values_to_not_be_null", "column": "customer_id", "detail": "5 rows <script>"}]})
    view = state.data_view(SPEC, lake, tmp_path / "inbox")
    assert view.days == ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
    assert view.status["2026-01-02"]["transactions"] == state.SourceDay(
        "quarantined", "column 'customer_id': expect_column_values_to_not_be_null failed: 5 rows <script>")
    assert view.status["2026-01-02"]["customers"].status == "clean"
    assert {cell.status for cell in view.status["2026-01-03"].values()} == {"missing"}


def test_refused_inbox_files_are_listed_newest_first_and_links_are_not_followed(tmp_path):
    rejected = tmp_path / "inbox" / "churn" / "rejected" / "transactions"
    rejected.mkdir(parents=True)
    (rejected / "old.csv.error.txt").write_text("old.csv: column 'amount': 'n/a' is not a number")
    (rejected / "new.csv.error.txt").write_text("x" * 100_000)
    os.utime(rejected / "old.csv.error.txt", (1, 1))
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2")
    (rejected / "link.csv.error.txt").symlink_to(secret)
    refused = state.refused_files(tmp_path / "inbox" / "churn")
    assert [(f.source, f.name) for f in refused] == [("transactions", "new.csv"), ("transactions", "old.csv")]
    assert len(refused[0].error) == state.ERROR_TEXT_LIMIT
    assert "hunter2" not in "".join(f.error for f in refused)


def test_monitoring_reads_drift_columns_live_performance_and_traffic(lake):
    for n, day in enumerate(("2026-01-02", "2026-01-01")):
        replace_partition(lake.monitoring("churn", "drift_summary"), day, pd.DataFrame({
            "model_version": ["1"], "drift_share": [0.1 * (n + 1)], "threshold": [0.25], "dataset_drift": [False],
            "drifted_column_names": ["tenure_days"], "report_path": [f"/reports/churn/drift/{day}.html"]}))
        replace_partition(lake.monitoring("churn", "drift_columns"), day, pd.DataFrame({
            "column": ["tenure_days", "segment", "score"], "score": [0.4, 0.0, 0.9], "threshold": [0.2, 0.2, 0.1],
            "role": ["input", "input", "output"]}))
        replace_partition(lake.monitoring("churn", "performance"), day, pd.DataFrame({
            "label_date": [day], "source": ["batch"], "model_version": ["1"], "roc_auc": [0.7], "rows": [10.0]}))
        replace_partition(lake.online_inference("churn"), day, pd.DataFrame({
            "latency_ms": [float(v) for v in range(1, 101)], "fallback": [False] * 99 + [True],
            "error": [None] * 100, "model_version": ["1"] * 100}))
    view = state.monitoring(SPEC, lake)
    assert [(d.ds, d.drift_share, d.report) for d in view.drift] == [
        ("2026-01-01", pytest.approx(0.2), "2026-01-01.html"), ("2026-01-02", pytest.approx(0.1), "2026-01-02.html")]
    assert view.column_drift.loc["tenure_days"].tolist() == [pytest.approx(2.0)] * 2
    assert "score" not in view.column_drift.index            # the model's output is not a feature
    assert view.metric == "roc_auc" and view.higher_is_better
    assert view.performance["roc_auc"].tolist() == [0.7, 0.7]
    assert [(t.ds, t.requests, t.fallbacks) for t in view.traffic] == [("2026-01-01", 100, 1), ("2026-01-02", 100, 1)]
    assert view.traffic[0].p50_ms == pytest.approx(50.5) and view.traffic[0].p99_ms == pytest.approx(99.01)


def test_a_use_case_before_its_first_run_has_empty_pages(lake, tmp_path):
    view = state.monitoring(SPEC, lake)
    assert (view.drift, view.traffic) == ([], []) and view.column_drift.empty and view.performance.empty
    assert state.data_view(SPEC, lake, tmp_path / "inbox").days == []
    assert state.gate_checks(SPEC, lake, "1").empty
    assert [charts.drift_share([]), charts.column_drift_map(pd.DataFrame()), charts.traffic([])] == ["", "", ""]


def test_gate_checks_are_the_newest_evaluation_of_the_version(lake):
    table = lake.monitoring("churn", "promotion_checks")
    for day, at, status in (("2026-01-02", "2026-01-02T00:00:00+00:00", "failed"),
                            ("2026-01-03", "2026-01-03T00:00:00+00:00", "passed")):
        replace_partition(table, day, pd.DataFrame({
            "model_version": ["2", "3"], "check": ["holdout_roc_auc"] * 2, "status": [status, "passed"],
            "evaluated_at": [at, at], "detail": ["d", "d"]}))
    checks = state.gate_checks(SPEC, lake, "2")
    assert checks["status"].tolist() == ["passed"] and "model_version" not in checks


def test_the_charts_are_svg_text_naming_their_days_and_columns():
    days = [state.DriftDay(f"2026-01-0{n}", "1", share, 0.25, share > 0.25, "", "") for n, share in
            ((1, 0.1), (2, 0.3))]
    svg = charts.drift_share(days)
    assert svg.startswith("<svg") and "<script" not in svg
    assert "01-01" in svg and "01-02" in svg and "threshold" in svg and "over threshold" in svg
    ratios = pd.DataFrame({"2026-01-01": [0.5, 3.0]}, index=["<b>amount</b>", "tenure_days"])
    heat = charts.column_drift_map(ratios)
    assert "tenure_days" in heat and "<b>amount</b>" not in heat and "&lt;b&gt;amount&lt;/b&gt;" in heat
    perf = pd.DataFrame({"label_date": ["2026-01-01", "2026-01-01"], "source": ["batch", "online"],
                         "model_version": ["1", "1"], "brier": [0.1, 0.2], "rows": [5, 5]})
    assert "v1 online" in charts.live_performance(perf, "brier")
    assert "p99 ms" in charts.traffic([state.TrafficDay("2026-01-01", 10, 1.0, 2.0, 0)])


def test_the_alert_log_keeps_each_alert_and_skips_a_half_written_line(tmp_path):
    first = alerts.Alert("churn", AlertEvent.ROLLBACK, "rolled back", severity=alerts.Severity.WARNING)
    alerts.record(tmp_path, first, "[churn dev] rolled back", 2, at=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc))
    alerts.record(tmp_path, first, "[churn dev] <script>alert(1)</script>\nsecond line", 0)
    with alerts.alert_log(tmp_path, "churn").open("a") as log:
        log.write('{"at": "2026-01-03", "event": "roll')                 # a writer died mid-line
    found = alerts.recent_alerts(tmp_path, "churn")
    assert [a.title for a in found] == ["[churn dev] <script>alert(1)</script> second line", "[churn dev] rolled back"]
    assert found[1] == alerts.AlertRecord("2026-01-02T00:00:00+00:00", "rollback", "warning",
                                          "[churn dev] rolled back", 2)
    assert alerts.recent_alerts(tmp_path, "churn", limit=1) == found[:1]
    assert alerts.recent_alerts(tmp_path, "wine") == []


def test_the_alert_log_is_never_written_through_a_link(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep")
    (tmp_path / "churn").mkdir()
    alerts.alert_log(tmp_path, "churn").symlink_to(target)
    with pytest.raises(OSError):
        alerts.record(tmp_path, alerts.Alert("churn", AlertEvent.ROLLBACK, "x"), "x", 0)
    assert target.read_text() == "keep"
    assert alerts.recent_alerts(tmp_path, "churn") == []


def test_every_page_template_escapes_what_it_shows():
    """No template marks a value as safe except the server-drawn charts."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "plugins" / "mlops_airflow" / "control_room" / "templates"
    marked = re.compile(r"\{\{[^}]*\|\s*safe[^}]*\}\}")
    safe = [(t.name, m) for t in folder.glob("*.html") for m in marked.findall(t.read_text())]
    assert safe and all(name == "monitoring.html" and "charts." in m for name, m in safe)


def test_the_plugin_builds_its_web_app_only_when_the_api_server_is_asked():
    """Airflow loads plugins in every process (the scheduler, each task's process): the plugin file
    imports no FastAPI, templates or pandas; the app is built on the api-server's first request."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys, airflow.plugins_manager; before = {'fastapi', 'pandas', 'matplotlib'} & set(sys.modules); "
            "import control_room as c; p = c.ControlRoomPlugin; "
            "assert p.fastapi_apps[0]['url_prefix'] == '/control-room' == p.external_views[0]['href'][:-1]; "
            "print(sorted(({'fastapi', 'pandas', 'matplotlib'} & set(sys.modules)) - before))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "plugins")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
