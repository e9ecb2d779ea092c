"""The control room in a real browser (Debian's chromium driven by Playwright) against the shared
story's stack: signed in through Airflow's own login form, every page of every story use case
loads inside Airflow's UI with no console error and no failed request, shows the numbers of the
lake's tables and the registry, and a rollback from the page moves @champion through the
rollback DAG. Screenshots of every page are kept under ``test-artifacts/control-room/``.

The threats of docs/control_room.md each have a test here too (signed-out visits, a viewer's
action, posts from another site, paths out of the reports folder, hostile text)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import (ROOT, STORY_BROKEN, STORY_CANARY_UC, STORY_REVIEWED_UC, STORY_SHIPPED_UC, STORY_UC,
                            newer_champion)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("in_story")]

ARTIFACTS = ROOT / "test-artifacts" / "control-room"
CHROMIUM = "/usr/bin/chromium"          # Debian's package (scripts/bootstrap.sh installs it)
PAGES = ("", "/versions", "/monitoring", "/data")
ROOM = "/control-room"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or CHROMIUM
    assert Path(executable).exists(), "no chromium: `apt-get install chromium` (scripts/bootstrap.sh does it as root)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        found = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield found
        found.close()


class Visit:
    """One signed-in browser session that records every console error and failed request."""

    def __init__(self, browser, story, user: str):
        self.base = story["stack"].airflow_url
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url}") if ROOM in r.url else None)
        self.page.on("response", lambda r: self.problems.append(f"{r.status}: {r.url}")
                     if r.status >= 400 and ROOM in r.url else None)
        self.page.goto(f"{self.base}/auth/login")          # Airflow's own login form
        self.page.fill("input[name=username]", user)
        self.page.fill("input[name=password]", story["stack"].user_password(user))
        self.page.keyboard.press("Enter")
        self.page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)
        self.problems.clear()   # the UI's own probe before signing in (401) is not the control room's

    def open(self, path: str, shot: str | None = None):
        answer = self.page.goto(f"{self.base}{ROOM}{path}")
        self.page.wait_for_load_state("networkidle")
        assert answer.status == 200, f"{path}: {answer.status} {self.page.content()[:300]}"
        if shot:
            self.page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        return self.page

    def cells(self, table: str, column: int) -> list[str]:
        cells = self.page.locator(f"table#{table} tbody tr td:nth-child({column})")
        return [c.strip() for c in cells.all_inner_texts()]


@pytest.fixture()
def admin(browser, story):
    visit = Visit(browser, story, "admin")
    yield visit
    visit.context.close()


def test_every_page_of_every_use_case_loads_inside_airflows_ui_with_no_console_error(admin, story):
    from pipelines import runtime
    from pipelines.models import tracking

    page = admin.page
    page.goto(f"{admin.base}/plugin/control-room")          # the navigation entry: the room inside Airflow's UI
    page.wait_for_load_state("networkidle")
    room = page.frame_locator("iframe").first
    for use_case in (STORY_UC, STORY_SHIPPED_UC, STORY_REVIEWED_UC, STORY_CANARY_UC):
        assert room.locator(f"a[href='{ROOM}/{use_case}']").first.is_visible()
    page.screenshot(path=str(ARTIFACTS / "inside-airflow.png"))
    admin.problems.clear()       # Airflow's own UI around the room (its icons, blobs) is not under test
    for use_case in (STORY_UC, STORY_SHIPPED_UC, STORY_REVIEWED_UC, STORY_CANARY_UC):
        for path in PAGES:
            shown = admin.open(f"/{use_case}{path}", shot=f"{use_case}{path.replace('/', '-') or '-overview'}")
            assert shown.locator("nav.tabs a.current").count() == 1
        champion = tracking.resolve_champion(runtime.spec(use_case).model.registered_name)
        if champion is not None:
            shown = admin.open(f"/{use_case}/versions/{champion.version}", shot=f"{use_case}-version")
            shown.frame_locator("iframe#card").locator("h1").first.wait_for()
            assert f"v{champion.version}" in shown.frame_locator("iframe#card").locator("h1").first.inner_text()
            served_by = tracking.client().get_run(champion.run_id).data.tags["compiled.runtime"]
            assert shown.inner_text("#runtime").startswith(served_by)
    page = admin.open(f"/{STORY_UC}?env=staging", shot=f"{STORY_UC}-staging")   # another environment's registry
    assert page.inner_text("header nav.environments a.current") == "staging"
    assert all(a.endswith("?env=staging") for a in page.locator("nav.tabs a, .actions form").evaluate_all(
        "found => found.map(e => e.getAttribute('href') || e.getAttribute('action'))"))
    page = admin.open(f"/{STORY_UC}/monitoring")      # an Evidently report, sandboxed, runs its own scripts
    page.locator("table#drift a").first.click()
    page.wait_for_load_state("networkidle")
    assert "/monitoring/drift/" in page.url and "Drift" in page.content()
    assert admin.problems == []


def test_the_pages_show_the_numbers_of_the_lake_and_the_registry(admin, story):
    from pipelines import runtime
    from pipelines.core.lake import list_partitions, read_table
    from pipelines.models import tracking
    from pipelines.monitoring.watch import DRIFT_SUMMARY

    spec, lake = runtime.spec(STORY_UC), runtime.lake()
    name = spec.model.registered_name
    page = admin.open(f"/{STORY_UC}")
    assert page.inner_text("#champion") == f"v{tracking.resolve_champion(name).version}"
    newest = story["client"].runs(f"{STORY_UC}_daily")
    assert page.inner_text("#daily-state") == max(newest, key=lambda r: r["run_after"])["state"]
    registered = sorted(int(v.version) for v in tracking.client().search_model_versions(f"name = '{name}'"))
    assert admin.cells("history", 1) == [f"v{v}" for v in reversed(registered)]
    posted = [json.loads(request.get_data())["title"] for request, _ in list(story["webhook"].log)]
    posted = [title for title in posted if title.startswith(f"[{STORY_UC} ")]
    shown = admin.cells("alerts", 3)            # the alert log's newest, newest first
    assert len(shown) == min(20, len(posted)) and set(shown) <= set(posted)   # what the webhook received

    admin.open(f"/{STORY_UC}/monitoring")
    drift = read_table(lake.monitoring(STORY_UC, DRIFT_SUMMARY)).sort_values("ds", ascending=False)
    assert admin.cells("drift", 1) == drift["ds"].tolist()
    assert admin.cells("drift", 3) == [f"{share:.3f}" for share in drift["drift_share"]]
    assert page.locator("#drift-chart svg").count() == 1 and page.locator("#columns-chart svg").count() == 1

    admin.open(f"/{STORY_UC}/data")
    broken = page.locator(f"table#partitions tr[data-ds='{STORY_BROKEN}'] td[data-source='transactions']")
    assert broken.get_attribute("class") == "quarantined" and "customer_id" in broken.inner_text()
    clean = [d for d in admin.cells("partitions", 1)
             if page.locator(f"tr[data-ds='{d}'] td[data-source='transactions']").get_attribute("class") == "clean"]
    assert sorted(clean) == list_partitions(lake.clean(STORY_UC, "transactions"))

    admin.open(f"/{STORY_CANARY_UC}/monitoring")
    online = read_table(lake.online_inference(STORY_CANARY_UC), columns=["latency_ms"])
    expected = online.groupby("ds").size().to_dict() if len(online) else {}
    assert {d: int(n) for d, n in zip(admin.cells("traffic", 1), admin.cells("traffic", 2))} == expected


def test_a_rollback_from_the_page_moves_the_alias_through_the_rollback_dag(admin, story):
    from pipelines.models import tracking

    name = story["spec"].model.registered_name
    with newer_champion(name) as (original, newer):
        page = admin.open(f"/{STORY_UC}")
        assert page.inner_text("#champion") == f"v{newer}"
        page.fill("#action-rollback input[name=reason]", "complaints since v" + newer)
        page.click("#action-rollback button")
        page.wait_for_load_state("networkidle")
        notice = page.inner_text(".notice")
        assert notice.startswith(f"Roll back @champion: {STORY_UC}_rollback run manual__"), notice
        page.screenshot(path=str(ARTIFACTS / "rollback-queued.png"), full_page=True)
        run_id = notice.split(" run ", 1)[1].split(" queued", 1)[0]
        # the run's end, not the alias's move: the run tags the versions after it moves the alias
        assert story["client"].wait_for_run(f"{STORY_UC}_rollback", run_id, 300)["state"] == "success"
        assert tracking.resolve_alias(name, tracking.CHAMPION).version == original
        assert tracking.client().get_model_version(name, newer).tags["champion.rolled_back"].endswith(
            f"by admin: complaints since v{newer}")
        page = admin.open(f"/{STORY_UC}")
        assert page.inner_text("#champion") == f"v{original}"
        assert admin.problems == []


def test_a_viewer_reads_every_page_but_airflow_refuses_their_rollback(browser, story):
    from pipelines.models import tracking

    name = story["spec"].model.registered_name
    before = tracking.resolve_alias(name, tracking.CHAMPION).version
    viewer = Visit(browser, story, "viewer")
    try:
        for path in PAGES[::-1]:          # the overview, with the actions, last
            viewer.open(f"/{STORY_UC}{path}")
        page = viewer.page
        page.fill("#action-rollback input[name=reason]", "a viewer tries")
        page.click("#action-rollback button")
        page.wait_for_load_state("networkidle")
        assert page.inner_text(".notice").startswith("Roll back @champion: Airflow refused (403)")
        assert tracking.resolve_alias(name, tracking.CHAMPION).version == before
        assert viewer.problems == []
    finally:
        viewer.context.close()


# ----------------------------------------------------------------- the threats of docs/control_room.md
def _get(story, path: str, token: str | None = None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{story['stack'].airflow_url}{ROOM}{path}", headers=headers, timeout=60, **kwargs)


def _token(story) -> str:
    return story["client"].api.configuration.access_token


@pytest.mark.parametrize("path", ["/", f"/{STORY_UC}", f"/{STORY_UC}/versions/1/card",
                                  f"/{STORY_UC}/monitoring/drift/2026-01-20", f"/{STORY_UC}/data"])
def test_nothing_is_shown_without_signing_in(story, path):
    assert _get(story, path).status_code == 401
    assert _get(story, path, token="not-a-token").status_code in (401, 403)


@pytest.mark.parametrize("path", [
    "/no_such_use_case", f"/{STORY_UC}/versions/99999", f"/{STORY_UC}/versions/1%2F..%2F..%2Fstack.env/card",
    f"/{STORY_UC}/versions/..%2F1/card", f"/{STORY_UC}/monitoring/drift/..%2F..%2Fairflow%2Fadmin-password.json",
    f"/{STORY_UC}/monitoring/drift/2026-01-99", "/..%2F..%2Fetc%2Fpasswd", f"/{STORY_UC}?env=..%2Fprod",
    f"/{STORY_UC}/data?env=PROD",
])
def test_no_path_reaches_outside_the_use_cases_reports(story, path):
    answer = _get(story, path, _token(story))
    assert answer.status_code == 404 and "password" not in answer.text.lower()


def test_a_linked_report_is_refused_and_reports_run_sandboxed(story):
    from pipelines import runtime

    folder = Path(runtime.settings().reports) / STORY_UC / "drift"
    real = sorted(folder.glob("*.html"))[0]
    link = folder / "2099-01-01.html"
    link.symlink_to(story["stack"].password_file)
    try:
        assert _get(story, f"/{STORY_UC}/monitoring/drift/2099-01-01", _token(story)).status_code == 404
    finally:
        link.unlink()
    answer = _get(story, f"/{STORY_UC}/monitoring/drift/{real.stem}", _token(story))
    assert answer.status_code == 200 and answer.headers["content-security-policy"].startswith("sandbox")
    page = _get(story, f"/{STORY_UC}", _token(story))
    assert "script-src" not in page.headers["content-security-policy"]      # default-src 'none': no script
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_an_action_posted_from_another_site_or_with_hostile_fields_is_refused(story):
    url = f"{story['stack'].airflow_url}{ROOM}/{STORY_UC}/actions/rollback"
    auth = {"Authorization": f"Bearer {_token(story)}"}
    own = {**auth, "Origin": story["stack"].airflow_url}
    before = story["client"].runs(f"{STORY_UC}_rollback")
    assert httpx.post(url, headers=auth, data={"reason": "no origin"}).status_code == 403
    evil = {**auth, "Origin": "http://evil.example"}
    assert httpx.post(url, headers=evil, data={"reason": "csrf"}).status_code == 403
    assert httpx.post(url, headers=own, data={"reason": "x" * 100_000}).status_code == 422
    assert httpx.post(url, headers=own, data={"reason": "ok reason", "to_version": "../1"}).status_code == 422
    assert httpx.post(url.replace("rollback", "drop-tables"), headers=own, data={"reason": "abc"}).status_code == 404
    assert len(story["client"].runs(f"{STORY_UC}_rollback")) == len(before)   # nothing was triggered


def test_hostile_text_in_the_alert_log_is_shown_as_text(story):
    from pipelines import alerts, runtime
    from pipelines.core.spec import AlertEvent

    reports = Path(runtime.settings().reports)
    hostile = "<script>alert('x')</script><img src=x onerror=alert(1)> {{ 7*7 }} Infinity"
    alerts.record(reports, alerts.Alert(STORY_UC, AlertEvent.TASK_FAILED, hostile), hostile, 0)
    page = _get(story, f"/{STORY_UC}", _token(story)).text
    assert "<script>alert(" not in page and "<img src=x" not in page
    assert ("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt; {{ 7*7 }} Infinity"
            in page)


def test_hostile_text_in_a_versions_tags_is_shown_as_text(story):
    """``compiled.reason`` can carry a team's column name: the version page shows it as text."""
    from pipelines.models import compiled, tracking

    name = story["spec"].model.registered_name
    version = tracking.resolve_alias(name, tracking.CHAMPION).version
    hostile = "NotCompilable: column '<script>alert(1)</script><img src=x onerror=alert(1)>{{ 7*7 }}' Infinity"
    before = tracking.client().get_model_version(name, version).tags
    saved = {tag: before.get(tag) for tag in (compiled.RUNTIME_TAG, compiled.REASON_TAG)}
    tracking.tag_version(name, version, {compiled.RUNTIME_TAG: "scikit-learn", compiled.REASON_TAG: hostile})
    try:
        page = _get(story, f"/{STORY_UC}/versions/{version}", _token(story)).text
    finally:
        for tag, value in saved.items():
            if value is None:
                tracking.client().delete_model_version_tag(name, version, tag)
            else:
                tracking.tag_version(name, version, {tag: value})
    assert "<script>alert(" not in page and "<img src=x" not in page
    assert ("scikit-learn: NotCompilable: column &#39;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x "
            "onerror=alert(1)&gt;{{ 7*7 }}&#39; Infinity") in page
