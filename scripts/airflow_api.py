"""A small client of Airflow's REST API (v2), for the demo driver and the end-to-end tests."""
from __future__ import annotations

import time

import requests

TERMINAL = {"success", "failed"}


class AirflowClient:
    """Token-authenticated calls to ``/api/v2`` of one Airflow api-server."""

    def __init__(self, base_url: str, username: str, password: str):
        self.base = base_url.rstrip("/")
        self.session = requests.Session()
        resp = requests.post(f"{self.base}/auth/token", json={"username": username, "password": password}, timeout=30)
        resp.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def _call(self, method: str, path: str, **kwargs):
        resp = self.session.request(method, f"{self.base}/api/v2{path}", timeout=60, **kwargs)
        if resp.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    def get(self, path: str, **params):
        return self._call("GET", path, params=params)

    def post(self, path: str, body: dict):
        return self._call("POST", path, json=body)

    def patch(self, path: str, body: dict):
        return self._call("PATCH", path, json=body)

    def check_healthy(self) -> None:
        """Raise if the scheduler or dag-processor stopped heartbeating (waiting would be forever)."""
        health = self.get("/monitor/health")
        sick = [part for part in ("scheduler", "dag_processor") if (health.get(part) or {}).get("status") != "healthy"]
        if sick:
            raise RuntimeError(f"Airflow {', '.join(sick)} unhealthy: {health}; see $MLOPS_HOME/logs/")

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        """Wait until the dag-processor has parsed every DAG, then make sure none is paused."""
        deadline = time.monotonic() + timeout
        missing = list(dag_ids)
        while missing:
            known = {d["dag_id"] for d in self.get("/dags", limit=1000)["dags"]}
            missing = [d for d in dag_ids if d not in known]
            if not missing:
                break
            errors = self.get("/importErrors").get("import_errors", [])
            if errors:
                raise RuntimeError("DAG import errors:\n" + "\n".join(f"{e['filename']}: {e['stack_trace'][-1500:]}"
                                                                     for e in errors))
            if time.monotonic() > deadline:
                raise TimeoutError(f"DAGs not parsed after {timeout}s: {missing}")
            time.sleep(2)
        for dag_id in dag_ids:
            self.patch(f"/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None, logical_date: str | None = None,
                run_id: str | None = None) -> str:
        body = {"logical_date": logical_date, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self.post(f"/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def backfill(self, dag_id: str, from_date: str, to_date: str, max_active_runs: int = 2,
                 reprocess: str = "completed", attempts: int = 10) -> dict:
        """Create a backfill. On SQLite, Airflow refuses it while another process holds the
        database lock (503 "Database is locked", or 500 "Database error" under load); that is
        retried with backoff. If a failed attempt did create it, the running backfill is returned."""
        body = {"dag_id": dag_id, "from_date": from_date, "to_date": to_date,
                "max_active_runs": max_active_runs, "reprocess_behavior": reprocess}
        for attempt in range(attempts):
            try:
                return self.post("/backfills", body)
            except RuntimeError as exc:
                transient = any(m in str(exc) for m in ("Database is locked", "Database error"))
                if attempt and "-> 409" in str(exc):  # an earlier attempt went through after all
                    running = self.running_backfill(dag_id)
                    if running and running["from_date"][:10] == from_date[:10]:
                        return running
                if not transient or attempt == attempts - 1:
                    raise
                time.sleep(min(2 ** attempt, 15))
        raise AssertionError("unreachable")

    def running_backfill(self, dag_id: str) -> dict | None:
        """The backfill of ``dag_id`` that has not completed, if any."""
        backfills = self.get("/backfills", dag_id=dag_id, limit=100)["backfills"]
        return next((b for b in backfills if not b.get("completed_at")), None)

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns", limit=1000, order_by="logical_date")["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL:
                return run
            self.check_healthy()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} {run_id} still {run['state']} after {timeout}s")
            time.sleep(2)

    def wait_idle(self, dag_ids: list[str], timeout: float = 1800, settle: float = 6.0) -> None:
        """Wait until no run of these DAGs is queued or running, for ``settle`` seconds in a row."""
        deadline = time.monotonic() + timeout
        quiet_since = None
        while True:
            active = [(d, r["dag_run_id"]) for d in dag_ids for r in self.runs(d) if r["state"] not in TERMINAL]
            if active:
                quiet_since = None
                self.check_healthy()
            else:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs still active after {timeout}s: {active[:5]}")
            time.sleep(2)
