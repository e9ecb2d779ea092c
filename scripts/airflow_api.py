"""Airflow's REST API through the official client (``apache-airflow-client``), for the demo
driver, the benchmarks and the end-to-end tests: authentication, triggers, backfills, and
waits (``tenacity``) that stop early when the scheduler or dag-processor is unhealthy.

Runs and task instances come back as plain dicts in the API's JSON shape (ISO dates).
"""
from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any, Callable

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from pipelines.core.waiting import wait_until

ANSWER_AFTER_S = 3.0   # how long a task waits for input before the scripted reviewer answers
TERMINAL = {"success", "failed"}


class AirflowUnhealthy(RuntimeError):
    """The scheduler or dag-processor stopped heartbeating: waiting would be forever."""


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 2.0,
             what: str | Callable[[], str] = "condition") -> Any:
    """Poll ``condition`` every ``interval`` s until it holds (see :func:`pipelines.core.waiting.wait_until`)."""
    return wait_until(condition, timeout, interval, what)


BACKFILL_SWEEP_WAIT_S = 120


def _earlier_backfill_open(error: BaseException) -> bool:
    """Airflow's 409 for a DAG whose previous backfill is finished but not yet marked complete."""
    from airflow_client.client.exceptions import ConflictException

    return isinstance(error, ConflictException) and "already a running backfill" in str(error.body or "")


def logical_day(run: dict) -> str:
    """A run's logical date as YYYY-MM-DD; '' for a run that has none (woken by an asset, or
    triggered without one: its date is then its ``ds`` Param)."""
    return (run.get("logical_date") or "")[:10]


def _plain(model) -> dict:
    """The model as the API's JSON, unset fields included as None (``to_json`` drops them)."""
    return model.model_dump(mode="json", by_alias=True)


class AirflowClient:
    """Token-authenticated calls to one Airflow api-server."""

    def __init__(self, base_url: str, username: str, password: str):
        from airflow_client import client

        self.base = base_url.rstrip("/")
        self._client = client
        config = client.Configuration(host=self.base)
        api = client.ApiClient(config)
        resp = api.rest_client.request("POST", f"{self.base}/auth/token",
                                       headers={"Content-Type": "application/json"},
                                       body={"username": username, "password": password}, _request_timeout=30)
        resp.read()
        if resp.status >= 300:
            raise PermissionError(f"Airflow at {self.base} refused the login of {username!r}: {resp.status}")
        config.access_token = json.loads(resp.data)["access_token"]
        self.api = client.ApiClient(config)
        self.dags_api = client.DAGApi(self.api)
        self.runs_api = client.DagRunApi(self.api)
        self.backfills_api = client.BackfillApi(self.api)
        self.tis_api = client.TaskInstanceApi(self.api)
        self.monitor_api = client.MonitorApi(self.api)
        self.errors_api = client.ImportErrorApi(self.api)
        self.xcom_api = client.XComApi(self.api)
        self.tasks_api = client.TaskApi(self.api)

    # ----------------------------------------------------------------- health
    def health(self) -> dict:
        return _plain(self.monitor_api.get_health())

    def check_healthy(self) -> None:
        """Raise if the scheduler or dag-processor stopped heartbeating (waiting would be forever)."""
        health = self.health()
        sick = [part for part in ("scheduler", "dag_processor") if (health.get(part) or {}).get("status") != "healthy"]
        if sick:
            raise AirflowUnhealthy(f"Airflow {', '.join(sick)} unhealthy: {health}; see $MLOPS_HOME/logs/")

    # ----------------------------------------------------------------- DAGs and runs
    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        """Wait until the dag-processor has parsed every DAG, then make sure none is paused."""
        def parsed() -> bool:
            known = {d.dag_id for d in self.dags_api.get_dags(limit=1000).dags}
            if set(dag_ids) <= known:
                return True
            errors = self.errors_api.get_import_errors().import_errors
            if errors:
                raise RuntimeError("DAG import errors:\n" + "\n".join(f"{e.filename}: {e.stack_trace[-1500:]}"
                                                                     for e in errors))
            return False

        wait_for(parsed, timeout, what=f"DAGs {dag_ids} parsed")
        for dag_id in dag_ids:
            self.dags_api.patch_dag(dag_id, self._client.DAGPatchBody(is_paused=False))

    def wait_for_task(self, dag_id: str, task_id: str, timeout: float = 180) -> None:
        """Wait until the DAG, as last parsed, has ``task_id`` (a spec change reshaped it)."""
        wait_for(lambda: task_id in {t.task_id for t in self.tasks_api.get_tasks(dag_id).tasks}, timeout,
                 interval=2, what=f"{dag_id} to have the task {task_id}")

    def trigger(self, dag_id: str, conf: dict | None = None, logical_date: str | None = None,
                run_id: str | None = None) -> str:
        body = self._client.TriggerDAGRunPostBody(
            conf=conf or {}, dag_run_id=run_id,
            logical_date=dt.datetime.fromisoformat(logical_date) if logical_date else None)
        return self.runs_api.trigger_dag_run(dag_id, body).dag_run_id

    def backfill(self, dag_id: str, from_date: str, to_date: str, max_active_runs: int = 2,
                 reprocess: str = "completed") -> dict:
        """Create a backfill over [from_date, to_date] (dates, UTC midnight)."""
        def day(value: str) -> dt.datetime:
            return dt.datetime.fromisoformat(value[:10]).replace(tzinfo=dt.timezone.utc)

        body = self._client.BackfillPostBody(dag_id=dag_id, from_date=day(from_date), to_date=day(to_date),
                                             max_active_runs=max_active_runs,
                                             reprocess_behavior=self._client.ReprocessBehavior(reprocess))
        # A finished backfill is marked complete by the scheduler's sweep (every 30 s); until then
        # Airflow refuses a new one for the same DAG with 409. Wait for the sweep, not longer.
        for tried in Retrying(stop=stop_after_delay(BACKFILL_SWEEP_WAIT_S), wait=wait_fixed(3),
                              retry=retry_if_exception(_earlier_backfill_open), reraise=True):
            with tried:
                return _plain(self.backfills_api.create_backfill(body))

    def get_backfill(self, backfill_id: int) -> dict:
        return _plain(self.backfills_api.get_backfill(backfill_id))

    def runs(self, dag_id: str) -> list[dict]:
        found = self.runs_api.get_dag_runs(dag_id, limit=1000, order_by=["logical_date"])
        return [_plain(r) for r in found.dag_runs]

    def run(self, dag_id: str, run_id: str) -> dict:
        return _plain(self.runs_api.get_dag_run(dag_id, run_id))

    def clear_run(self, dag_id: str, run_id: str) -> None:
        """Clear every task of a run, as the UI's "Clear" does: the scheduler runs it again."""
        self.runs_api.clear_dag_run(dag_id, run_id, self._client.DAGRunClearBody(dry_run=False))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return [_plain(t) for t in self.tis_api.get_task_instances(dag_id, run_id, limit=1000).task_instances]

    def task_log(self, dag_id: str, run_id: str, task_id: str, tail: int = 60) -> str:
        """The last ``tail`` lines of every try of one task (for a failure's message), or why not."""
        lines: list[str] = []
        try:
            task = next(t for t in self.task_instances(dag_id, run_id) if t["task_id"] == task_id)
            for try_number in range(1, (task.get("try_number") or 1) + 1):
                log = self.tis_api.get_log(dag_id, run_id, task_id, try_number, full_content=True)
                lines.append(f"--- {task_id} try {try_number}")
                for entry in getattr(log.content, "actual_instance", log.content) or []:   # any-of: unwrapped
                    lines.append(_log_line(_plain(entry) if hasattr(entry, "model_dump") else entry))
        except Exception as error:   # a diagnostic: never hides the failure it is attached to
            lines.append(f"(log of {task_id} unavailable: {error})")
        return "\n".join(lines[-tail:])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
        """One XCom value (deserialized), or None if the task pushed none under ``key``."""
        from airflow_client.client.exceptions import NotFoundException

        try:
            entry = self.xcom_api.get_xcom_entry(dag_id, task_id, run_id, key, deserialize=True)
        except NotFoundException:
            return None
        # the API answers one of two shapes (native or string value), wrapped in an any-of model
        return getattr(entry, "actual_instance", entry).value

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900) -> dict:
        def finished():
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL:
                return run
            self.check_healthy()
            return None

        return wait_for(finished, timeout, what=f"{dag_id} {run_id}")

    # ----------------------------------------------------------------- human in the loop
    def wait_for_review(self, dag_id: str, run_id: str, task_id: str, timeout: float = 900) -> dict:
        """The approval request of a human-in-the-loop task once it waits for a person (its
        subject, body, options); raises if the run ends without asking."""
        from airflow_client.client.exceptions import NotFoundException

        def asked():
            try:
                detail = _plain(self.tis_api.get_hitl_detail(dag_id, run_id, task_id, -1))
            except NotFoundException:
                detail = None
            if detail is not None and not detail.get("response_received"):
                # answered only once the task waits (deferred): an answer given while it is still
                # deferring can be lost to the scheduler's handling of the pause
                task = next((t for t in self.task_instances(dag_id, run_id) if t["task_id"] == task_id), {})
                if task.get("state") == "awaiting_input":
                    return detail
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL:
                raise RuntimeError(f"{dag_id} {run_id} ended ({run['state']}) without asking for a review")
            self.check_healthy()
            return None

        return wait_for(asked, timeout, interval=2, what=f"review request of {dag_id} {run_id} {task_id}")

    def review(self, dag_id: str, run_id: str, task_id: str, approve: bool, comment: str = "",
               timeout: float = 300) -> dict:
        """Answer an approval request as a reviewer does in the UI (Approve or Reject, with a comment),
        and wait until the task has acted on it; returns the task instance then.

        An answer given within a second of the question can be lost: the scheduler may handle the
        task's pause only after the answer queued it again, count that as the task changing state
        externally and retry it, and the retry asks again. So the answer is given once the task has
        waited ``ANSWER_AFTER_S`` seconds (a person never answers sooner); a retry that asks again
        gets the same answer, as a reviewer would give it."""
        from airflow_client.client.exceptions import NotFoundException

        body = self._client.UpdateHITLDetailPayload(chosen_options=["Approve" if approve else "Reject"],
                                                    params_input={"comment": comment})
        waiting_since: dict[int, float] = {}   # per try: when it was first seen waiting for input

        def answered():
            task = next(t for t in self.task_instances(dag_id, run_id) if t["task_id"] == task_id)
            if task["state"] in ("success", "skipped", "failed", "upstream_failed"):
                return task
            if task["state"] == "awaiting_input":
                since = waiting_since.setdefault(task.get("try_number") or 0, time.monotonic())
                try:
                    detail = _plain(self.tis_api.get_hitl_detail(dag_id, run_id, task_id, -1))
                except NotFoundException:
                    return None
                if time.monotonic() - since >= ANSWER_AFTER_S and not detail.get("response_received"):
                    self.tis_api.update_hitl_detail(dag_id, run_id, task_id, -1, body)
            self.check_healthy()
            return None

        return wait_for(answered, timeout, interval=1, what=f"{dag_id} {run_id} {task_id} acting on the review")

    def active_runs(self, dag_ids: list[str]) -> list[tuple[str, str]]:
        return [(d, r["dag_run_id"]) for d in dag_ids for r in self.runs(d) if r["state"] not in TERMINAL]

    def wait_idle(self, dag_ids: list[str], timeout: float = 1800, settle: float = 6.0) -> None:
        """Wait until no run of these DAGs is queued or running, twice in a row ``settle`` s apart
        (a finished run may trigger another: the drift watch, then retraining)."""
        def quiet() -> bool:
            if self.active_runs(dag_ids):
                self.check_healthy()
                return False
            return True

        wait_for(lambda: quiet() and _slept(settle) and quiet(), timeout, what=f"runs of {dag_ids} idle")


def _slept(seconds: float) -> bool:
    time.sleep(seconds)
    return True


def _log_line(entry) -> str:
    """A log entry as text: a structured entry's event, with the type and message of the exception
    it carries (structlog's ``exception``, or ``error_detail``); a plain one as it is."""
    if not isinstance(entry, dict):
        return str(entry)
    raised = entry.get("exception") or entry.get("error_detail")
    errors = [f"{e.get('exc_type', '')}: {e.get('exc_value', '')}" for e in raised or []
              if isinstance(e, dict) and e.get("exc_type")] if isinstance(raised, list) else []
    return " | ".join([str(entry.get("event", entry)), *errors])
