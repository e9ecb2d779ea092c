"""The control room: one page set per use case inside Airflow's UI (``plugins/control_room.py``
mounts this app at ``/control-room`` and adds it to the UI's navigation).

Behind Airflow's login: every page needs the signed-in user's Airflow token (the UI's cookie, or a
bearer token), and shows only the use cases whose DAGs that user may read (the auth manager's
answer). Actions trigger the existing DAGs through Airflow's REST API with the user's own token,
so Airflow decides what the user may do. What the pages show comes from
``pipelines.control_room.state``; charts are SVG drawn on the server. The threat model is in
``docs/control_room.md``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from mlops_airflow.control_room import PREFIX

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PAGES = (("overview", "Overview"), ("versions", "Model versions"), ("monitoring", "Monitoring"), ("data", "Data"))
# no script at all; styles inline (matplotlib's SVG); frames and forms only to this server
PAGE_POLICY = ("default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-src 'self'; "
               "form-action 'self'; frame-ancestors 'self'; base-uri 'none'")
# a model card or an Evidently report is an origin of its own: it reads no cookie and calls no API
CARD_POLICY = "sandbox; frame-ancestors 'self'"                   # no script at all
REPORT_POLICY = "sandbox allow-scripts; frame-ancestors 'self'"   # Evidently draws its plots with script
REASON_LIMIT = 500
VERSION_PATTERN = r"^\d{1,9}$"
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"

templates = Jinja2Templates(directory=str(HERE / "templates"))   # autoescaped: every value is text


def _number(value, digits: int = 4) -> str:
    """A table cell's number ('' for none or NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if number != number else f"{number:.{digits}f}"


templates.env.filters["number"] = _number
app = FastAPI(title="MLOps control room", docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")


@dataclass(frozen=True)
class Visitor:
    """The signed-in Airflow user and the token the request carried (forwarded to Airflow's API)."""

    user: object
    token: str

    @property
    def name(self) -> str:
        return getattr(self.user, "get_name", lambda: "")() or ""


async def signed_in(request: Request) -> Visitor:
    """The request's Airflow user, from a bearer token or the UI's cookie; 401 without one."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE_NAME_JWT_TOKEN, "")
    return Visitor(await resolve_user_from_token(token), token)


SignedIn = Annotated[Visitor, Depends(signed_in)]


def may_read(visitor: Visitor, use_case: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return get_auth_manager().is_authorized_dag(method="GET", user=visitor.user,
                                                details=DagDetails(id=f"{use_case}_daily"))


def readable_use_cases(visitor: Visitor) -> list[str]:
    from pipelines import runtime

    return [name for name in runtime.use_case_names() if may_read(visitor, name)]


def use_case_spec(use_case: str, visitor: Visitor):
    """The spec of a use case the visitor may read; 404 for one that does not exist or is hidden
    from them (the same answer, so a name's existence is not told)."""
    from pipelines import runtime

    if use_case not in runtime.use_case_names() or not may_read(visitor, use_case):
        raise HTTPException(404, f"no use case {use_case!r} here")
    return runtime.spec(use_case)


def chosen_environment(request: Request) -> str | None:
    """The environment a page shows (``?env=``; this deployment's own when absent); 404 naming the
    environments for one that is not declared."""
    return _environments_of(request)[0]


def _environments_of(request: Request) -> tuple[str | None, list[str]]:
    """(the page's environment, every declared one), read once per request (kept on ``request.state``)."""
    from pipelines import runtime

    if not hasattr(request.state, "environments"):
        env, names = request.query_params.get("env", ""), list(runtime.environments().names)
        if env and env not in names:
            raise HTTPException(404, f"no environment {env[:40]!r}; the environments are {', '.join(names)}")
        request.state.environments = (env or None, names)
    return request.state.environments


def own_environment() -> str:
    """The deployment's own environment (the api-server's), whatever a page acts in."""
    from pipelines import runtime
    from pipelines.core.environments import acting_in

    with acting_in(None):
        return runtime.settings().env


def acting(request: Request):
    """Act in the page's environment for a ``with`` block: settings, specs, lake, reports and
    registry names follow it."""
    from pipelines.core.environments import acting_in

    return acting_in(chosen_environment(request))


def page(request: Request, template: str, visitor: Visitor, spec=None, notice: str = "", **values) -> HTMLResponse:
    from pipelines import runtime

    chosen, names = _environments_of(request)
    response = templates.TemplateResponse(request, template, {
        "prefix": PREFIX, "pages": PAGES, "user": visitor.name, "spec": spec,
        "use_cases": readable_use_cases(visitor), "environment": runtime.settings().env,
        "environments": names, "query": f"?env={chosen}" if chosen else "",
        "path": request.url.path, "notice": notice, **values})
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


@app.get("/", response_class=HTMLResponse)
def index(request: Request, visitor: SignedIn):
    return page(request, "index.html", visitor)


@app.get("/{use_case}", response_class=HTMLResponse)
def overview(request: Request, use_case: str, visitor: SignedIn):
    return overview_page(request, use_case, visitor)


def overview_page(request: Request, use_case: str, visitor: Visitor, notice: str = "") -> HTMLResponse:
    from pipelines import runtime
    from pipelines.control_room import state

    with acting(request):
        spec = use_case_spec(use_case, visitor)
        settings = runtime.settings()
        return page(request, "overview.html", visitor, spec, notice, active="overview",
                    view=state.overview(spec, runtime.lake(), settings.env, settings.reports),
                    daily=airflow_runs(request, visitor, f"{use_case}_daily", 1),
                    actions=available_actions(spec, chosen_environment(request)))


@app.get("/{use_case}/versions", response_class=HTMLResponse)
def versions(request: Request, use_case: str, visitor: SignedIn):
    from pipelines.report import champion_history

    with acting(request):
        spec = use_case_spec(use_case, visitor)
        return page(request, "versions.html", visitor, spec, active="versions",
                    versions=champion_history(spec)[::-1])


@app.get("/{use_case}/versions/{version}", response_class=HTMLResponse)
def version(request: Request, use_case: str, version: str, visitor: SignedIn):
    from pipelines import runtime
    from pipelines.control_room import state
    from pipelines.report import champion_history

    with acting(request):
        spec = use_case_spec(use_case, visitor)
        row = next((r for r in champion_history(spec) if r["version"] == version), None)
        if row is None:
            raise HTTPException(404, f"{spec.model.registered_name} has no version {version!r}")
        checks = state.gate_checks(spec, runtime.lake(), version)
        return page(request, "version.html", visitor, spec, active="versions", row=row,
                    checks=checks.to_dict("records"), card=state.model_card(spec, version) is not None)


@app.get("/{use_case}/versions/{version}/card")
def card(request: Request, use_case: str, version: str, visitor: SignedIn):
    from pipelines.control_room import state

    with acting(request):
        spec = use_case_spec(use_case, visitor)
        path = state.model_card(spec, version) if version.isdigit() else None
        if path is None:
            raise HTTPException(404, f"version {version!r} of {use_case} has no model card")
        return report_file(path, CARD_POLICY)


@app.get("/{use_case}/monitoring", response_class=HTMLResponse)
def monitoring(request: Request, use_case: str, visitor: SignedIn):
    from pipelines import runtime
    from pipelines.control_room import charts, state

    with acting(request):
        spec = use_case_spec(use_case, visitor)
        view = state.monitoring(spec, runtime.lake())
        return page(request, "monitoring.html", visitor, spec, active="monitoring", view=view,
                    charts={"drift": charts.drift_share(view.drift),
                            "columns": charts.column_drift_map(view.column_drift),
                            "performance": charts.live_performance(view.performance, view.metric),
                            "traffic": charts.traffic(view.traffic)})


@app.get("/{use_case}/monitoring/drift/{day}")
def drift_report(request: Request, use_case: str, day: str, visitor: SignedIn):
    from pipelines import runtime

    with acting(request):
        use_case_spec(use_case, visitor)
        folder = (Path(runtime.settings().reports) / use_case / "drift").resolve()
        path = folder / f"{day}.html"
        if not _is_date(day) or path.is_symlink() or not path.is_file() or path.resolve().parent != folder:
            raise HTTPException(404, f"no drift report of {use_case} for {day!r}")
        return report_file(path, REPORT_POLICY)


@app.get("/{use_case}/data", response_class=HTMLResponse)
def data(request: Request, use_case: str, visitor: SignedIn):
    from pipelines import runtime
    from pipelines.control_room import state

    with acting(request):
        spec = use_case_spec(use_case, visitor)
        return page(request, "data.html", visitor, spec, active="data",
                    view=state.data_view(spec, runtime.lake(), runtime.settings().inbox))


def report_file(path: Path, policy: str) -> Response:
    """A generated HTML report, sandboxed: it runs as an origin of its own, without our cookie."""
    return FileResponse(path, media_type="text/html", headers={
        "Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


def _is_date(text: str) -> bool:
    import re

    return bool(re.fullmatch(DATE_PATTERN, text))


# ----------------------------------------------------------------- actions: Airflow's API, the user's token
@dataclass(frozen=True)
class Action:
    name: str
    title: str
    dag_id: str
    fields: tuple[str, ...]     # the form fields besides the reason


def available_actions(spec, environment: str | None) -> dict[str, Action]:
    """The actions of a use case's page; in another environment than the deployment's own, those
    whose DAG acts in the environment its form names (training, rollback)."""
    found = {"train": Action("train", "Train a challenger", f"{spec.name}_training", ()),
             "rollback": Action("rollback", "Roll back @champion", f"{spec.name}_rollback", ("to_version",))}
    if spec.deployment.strategy != "direct" and environment in (None, own_environment()):   # acts in its own
        found["stop-rollout"] = Action("stop-rollout", "Stop the rollout", f"{spec.name}_rollout", ())
    return found


def run_conf(action: Action, reason: str, to_version: str, environment: str | None) -> dict:
    chosen = {"environment": environment} if environment else {}   # the DAG's form: its own by default
    if action.name == "train":
        return {"reason": reason, "trigger": "manual", **chosen}
    if action.name == "rollback":
        return {"reason": reason, "to_version": to_version, **chosen}
    return {"stop_reason": reason}


@app.post("/{use_case}/actions/{name}")
def act(request: Request, use_case: str, name: str, visitor: SignedIn,
        reason: Annotated[str, Form(min_length=3, max_length=REASON_LIMIT)],
        to_version: Annotated[str, Form(pattern=r"^(v?\d{1,9})?$")] = ""):
    from pipelines.alerts import one_line

    same_origin(request)
    environment = chosen_environment(request)
    with acting(request):
        spec = use_case_spec(use_case, visitor)
    action = available_actions(spec, environment).get(name)
    if action is None:
        raise HTTPException(404, f"{use_case} has no action {name!r}")
    conf = run_conf(action, one_line(reason, REASON_LIMIT), to_version, environment)
    answer = airflow_api(request, visitor, "POST", f"/dags/{action.dag_id}/dagRuns",
                         {"logical_date": None, "conf": conf})
    if answer.status_code >= 400:
        notice = f"{action.title}: Airflow refused ({answer.status_code}): {_detail(answer)}"
    else:
        notice = f"{action.title}: {action.dag_id} run {answer.json().get('dag_run_id')} queued"
    return overview_page(request, use_case, visitor, notice)   # the answer itself: nothing is reflected from a URL


def same_origin(request: Request) -> None:
    """Refuse a form posted from another site (the cookie is SameSite=Lax; this checks anyway)."""
    origin = request.headers.get("origin") or request.headers.get("referer") or ""
    own = f"{request.url.scheme}://{request.url.netloc}"
    if not (origin == own or origin.startswith(own + "/")):
        raise HTTPException(403, "actions are taken from the control room's own pages only")


def airflow_api(request: Request, visitor: Visitor, method: str, path: str, body: dict | None = None):
    """Call this api-server's REST API as the visitor (their token: their permissions)."""
    import httpx

    own = f"{request.url.scheme}://{request.url.netloc}"
    with httpx.Client(base_url=f"{own}/api/v2", timeout=30) as client:
        return client.request(method, path, json=body, headers={"Authorization": f"Bearer {visitor.token}"})


def airflow_runs(request: Request, visitor: Visitor, dag_id: str, limit: int) -> list[dict]:
    """The newest runs of a DAG the visitor may see (none when Airflow says no)."""
    try:
        answer = airflow_api(request, visitor, "GET", f"/dags/{dag_id}/dagRuns?order_by=-run_after&limit={limit}")
    except Exception as exc:   # noqa: BLE001 - the page shows the rest
        log.warning("control room: runs of %s not read: %s", dag_id, exc)
        return []
    return answer.json().get("dag_runs", []) if answer.status_code == 200 else []


def _detail(answer) -> str:
    try:
        detail = answer.json().get("detail")
    except ValueError:
        detail = answer.text
    return str(detail)[:300]
