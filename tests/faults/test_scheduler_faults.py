"""Faults that need a real scheduler, on the one story stack the e2e tests played (tests/conftest.py
``story``). Each case states what must hold afterwards and checks it against the lake and
Airflow's own records.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest

from pipelines import runtime
from pipelines.core.lake import list_partitions, read_partition
from pipelines.core.spark import SHARED_SESSION_PERIOD_S
from scripts.airflow_api import logical_day, wait_for
from scripts.demo import run_backfill
from tests.conftest import STORY_BROKEN, STORY_FIRST_TRAINING, STORY_UC, assert_trainings_took_turns

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.usefixtures("in_story")]
DAILY, WATCH, TRAINING = f"{STORY_UC}_daily", f"{STORY_UC}_drift_watch", f"{STORY_UC}_training"
VOLATILE = {"scored_at", "run_id", "computed_at", "report_path"}
TASK_TITLE = re.compile(r"airflow worker -- ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def _tables(day) -> dict[str, pd.DataFrame]:
    """Every partition one daily run writes for ``day``, sorted, without run timestamps."""
    lake = runtime.lake()
    tables = {f"clean/{s}": lake.clean(STORY_UC, s) for s in ("customers", "transactions", "labels")}
    tables |= {"features": lake.features(STORY_UC), "inference": lake.inference(STORY_UC),
               "drift_summary": lake.monitoring(STORY_UC, "drift_summary"),
               "drift_columns": lake.monitoring(STORY_UC, "drift_columns")}
    out = {}
    for name, table in tables.items():
        if day.isoformat() not in list_partitions(table):
            continue
        frame = read_partition(table, day)
        cols = [c for c in frame.columns if c not in VOLATILE]
        out[name] = frame[cols].sort_values(cols).reset_index(drop=True)
    return out


def _assert_whole(day) -> None:
    """A day's feature and inference partitions: one row per entity, scores for every feature row."""
    lake = runtime.lake()
    features = read_partition(lake.features(STORY_UC), day)
    scores = read_partition(lake.inference(STORY_UC), day)
    assert features["customer_id"].is_unique and scores["customer_id"].is_unique, day
    assert set(scores["customer_id"]) == set(features["customer_id"]), day


def _scored_days() -> list[dt.date]:
    return [STORY_FIRST_TRAINING + dt.timedelta(days=i) for i in range((STORY_BROKEN - STORY_FIRST_TRAINING).days)]


def _rerun(client, day) -> str:
    """Clear ``day``'s completed daily run (as the UI does) and wait until it has run again."""
    run = next(r for r in client.runs(DAILY) if logical_day(r) == day.isoformat())
    client.clear_run(DAILY, run["dag_run_id"])   # the run is queued again at once
    assert client.run(DAILY, run["dag_run_id"])["state"] != "success"
    assert client.wait_for_run(DAILY, run["dag_run_id"])["state"] == "success"
    return run["dag_run_id"]


STOP_SHARED_SESSION = """
import sys, time
from pyspark.sql import SparkSession
from pipelines.core.config import settings
from pipelines.core.spark import shared_session_url

s = settings()
url = shared_session_url(s.spark_remote, str(s.lake), time.time() + float(sys.argv[1]))
spark = SparkSession.builder.remote(url).getOrCreate()
try:
    spark.range(1).count()   # the server knows a session once it has served it; then it is closed
    spark.stop()
except Exception as exc:     # closed already (an earlier run of this case)
    if "SESSION_CLOSED" not in str(exc):
        raise
"""


COUNT_ROWS = """
import sys
from pipelines import runtime
print(runtime.spark("reader").read.parquet(sys.argv[1]).count())
"""


def _as_a_task(story, code: str, *args: str, **env: str) -> str:
    """Run ``code`` in a new process with the story's task environment (its Spark Connect server
    included); returns its standard output."""
    env = {**os.environ, **story["env"], "SPARK_REMOTE": story["stack"].spark_remote, **env}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, check=True, timeout=180,
                          capture_output=True, text=True).stdout


def test_task_processes_sharing_a_spark_session_see_partitions_written_since(story, tmp_path):
    """Two task processes, one shared Spark Connect session: the second reads a table after a
    partition landed (written outside Spark, as ingest and validation do) and counts its rows."""
    lake = tmp_path / "lake"   # a deployment of its own: a session nothing else has used
    table = lake / "table"

    def count() -> int:
        return int(_as_a_task(story, COUNT_ROWS, str(table), MLOPS_LAKE=str(lake)).strip().splitlines()[-1])

    for day, rows in (("2026-01-01", 2), ("2026-01-02", 3)):
        (table / f"ds={day}").mkdir(parents=True)
        pd.DataFrame({"x": range(rows)}).to_parquet(table / f"ds={day}" / "part.parquet")
        if day == "2026-01-01":
            assert count() == 2
    assert count() == 5


def test_closed_shared_spark_session_leaves_the_next_run_whole(story):
    """Someone stops the Spark Connect session the tasks share (a ``spark.stop()``, or a server
    that closes idle sessions sooner than the hour): the next run's Spark tasks say so in their
    log, attach to a session of their own, and the run writes whole partitions (no task hangs
    on the way out: the run finishes)."""
    client, day = story["client"], STORY_BROKEN - dt.timedelta(days=3)
    for ahead in (0, SHARED_SESSION_PERIOD_S):   # this period's session and the next's
        _as_a_task(story, STOP_SHARED_SESSION, str(ahead))
    run_id = _rerun(client, day)
    _assert_whole(day)
    for task_id in ("build_features", "score_batch"):
        folder = story["stack"].home / "airflow" / "logs" / f"dag_id={DAILY}" / f"run_id={run_id}" / f"task_id={task_id}"
        newest = max(folder.glob("attempt=*.log"), key=lambda p: p.stat().st_mtime)
        assert "shared Spark Connect session is closed" in newest.read_text(), newest


def test_cleared_run_reruns_to_identical_rows(story):
    """Clear a completed daily run: every table it writes holds the same rows. A rerun scores with
    the champion of its time, so a day scored before the story's last promotion is first brought
    to the current champion (its scores change, as a rescoring backfill's do), then rerun."""
    client, day = story["client"], STORY_BROKEN - dt.timedelta(days=2)
    champion = runtime.resolve_champion(STORY_UC)["version"]
    if set(read_partition(runtime.lake().inference(STORY_UC), day)["model_version"]) != {champion}:
        _rerun(client, day)
        assert set(read_partition(runtime.lake().inference(STORY_UC), day)["model_version"]) == {champion}
    before = _tables(day)
    assert {"features", "inference", "drift_summary", "clean/transactions"} <= set(before)
    _rerun(client, day)
    after = _tables(day)
    assert set(after) == set(before)
    for name in before:
        pd.testing.assert_frame_equal(after[name], before[name], obj=name)


def test_ten_daily_runs_at_once_none_fails(story):
    """A backfill that creates ten runs at once: every one succeeds, none for a database reason."""
    client = story["client"]
    first, last = STORY_BROKEN - dt.timedelta(days=10), STORY_BROKEN - dt.timedelta(days=1)
    runs = run_backfill(client, DAILY, first, last, [DAILY, WATCH, TRAINING], max_active_runs=10)
    assert len(runs) == 10
    assert [r["dag_run_id"] for r in runs if r["state"] != "success"] == []
    for day in _scored_days():
        _assert_whole(day)


def _task_processes() -> dict[str, psutil.Process]:
    """Running task processes by task-instance id (their title is `airflow worker -- <ti id>`)."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        # a shorter title than the parent's leaves NUL padding: empty trailing arguments
        match = TASK_TITLE.fullmatch(" ".join(proc.info["cmdline"] or []).strip())
        if match:
            found[match.group(1)] = proc
    return found


_SEEN: dict[str, object] = {}


def _running_task_process(client, run_id: str, task_id: str) -> psutil.Process | None:
    """The process of ``task_id`` in ``run_id`` once its work has started (what was last seen is
    kept in ``_SEEN`` for the failure message)."""
    ti = next(t for t in client.task_instances(DAILY, run_id) if t["task_id"] == task_id)
    processes = _task_processes()
    _SEEN.update(state=ti["state"], ti_id=ti["id"], try_number=ti["try_number"], processes=sorted(processes),
                 run_state=client.run(DAILY, run_id)["state"])
    return processes.get(ti["id"]) if ti["state"] == "running" else None


@pytest.mark.parametrize("task_id", ["build_features", "score_batch"])
def test_task_killed_while_writing_leaves_a_whole_partition(story, task_id):
    """SIGKILL the task process while it writes: the partition stays the old whole one or becomes the
    new whole one, and the retry completes it."""
    client, day = story["client"], STORY_BROKEN - dt.timedelta(days=1)
    before = _tables(day)
    run = next(r for r in client.runs(DAILY) if logical_day(r) == day.isoformat())
    for into_its_work in (1.5, 0.7, 0.3):   # the session attached and the write under way, unless it is quick
        client.clear_run(DAILY, run["dag_run_id"])
        victim = wait_for(lambda: _running_task_process(client, run["dag_run_id"], task_id), 300, interval=0.2,
                          what=lambda: f"{task_id} running (last seen: {_SEEN})")
        time.sleep(into_its_work)
        try:
            os.kill(victim.pid, signal.SIGKILL)
            break
        except ProcessLookupError:   # it finished first: let the run end, then clear it and kill sooner
            client.wait_for_run(DAILY, run["dag_run_id"], timeout=900)
    else:
        pytest.fail(f"{task_id} finished each time before it could be killed")
    assert client.wait_for_run(DAILY, run["dag_run_id"], timeout=900)["state"] == "success"
    tries = {t["task_id"]: t["try_number"] for t in client.task_instances(DAILY, run["dag_run_id"])}
    assert tries[task_id] >= 2, "the killed try was retried"
    _assert_whole(day)
    after = _tables(day)
    for name in ("features", "inference"):
        pd.testing.assert_frame_equal(after[name], before[name], obj=name)


def _unfinished(client, days: set[str]) -> str:
    """The daily runs of ``days`` that are not done yet, with their unfinished tasks' states."""
    seen = []
    for run in client.runs(DAILY):
        if logical_day(run) in days and run["state"] not in ("success", "failed"):
            tasks = {t["task_id"]: t["state"] for t in client.task_instances(DAILY, run["dag_run_id"])
                     if t["state"] not in ("success", "skipped", "failed", "upstream_failed")}
            seen.append(f"{logical_day(run)} {run['state']} {tasks}")
    return "; ".join(seen) or "none"


# A client holding a transaction open with a row lock, then killed while a forked child (as the
# LocalExecutor's workers are forked from the scheduler) keeps the connection's socket alive.
_KILLED_MID_TRANSACTION = """
import os, signal, sys, time
import psycopg2
conn = psycopg2.connect(host="127.0.0.1", port=int(sys.argv[1]), dbname="postgres", user=sys.argv[2],
                        password=os.environ["PROBE_PASSWORD"])
conn.cursor().execute("SELECT id FROM fault_probe WHERE id = 1 FOR UPDATE")
if os.fork() == 0:   # keeps the socket, not the caller's output pipes
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.dup2(null, 2)
    time.sleep(600)
    os._exit(0)
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_transaction_of_a_killed_client_ends_while_its_socket_lives_on(story):
    """The database ends a transaction whose client was killed mid-transaction even while a forked
    child keeps the connection open (what an orphaned executor worker does after a scheduler
    crash): its row locks are released within the configured timeout, not held forever."""
    import subprocess
    import sys

    import psycopg2

    from scripts.postgres import ADMIN

    pg = story["stack"].postgres
    admin = pg.connect()
    admin.autocommit = True
    cur = admin.cursor()
    cur.execute("SELECT setting::int / 1000 FROM pg_settings WHERE name = 'idle_in_transaction_session_timeout'")
    timeout_s = cur.fetchone()[0]
    assert 0 < timeout_s <= 300, "the server ends abandoned transactions within minutes"
    cur.execute("DROP TABLE IF EXISTS fault_probe; CREATE TABLE fault_probe (id int primary key);"
                "INSERT INTO fault_probe VALUES (1)")
    out = subprocess.run([sys.executable, "-c", _KILLED_MID_TRANSACTION, str(pg.port), ADMIN], capture_output=True,
                         text=True, env={**os.environ, "PROBE_PASSWORD": pg.credentials()[ADMIN]}, timeout=60)
    assert out.stdout.strip() == "locked", out.stderr
    orphan = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[-2:] == [str(pg.port), ADMIN]]
    try:
        assert orphan, "the forked child keeps the killed client's connection"
        killed_at = time.monotonic()

        def lock_free() -> bool:
            try:
                cur.execute("SELECT id FROM fault_probe WHERE id = 1 FOR UPDATE NOWAIT")
                return True
            except psycopg2.errors.LockNotAvailable:
                return False

        assert not lock_free(), "the killed client's lock is held at first"
        wait_for(lock_free, timeout_s + 30, interval=1, what="row lock of the killed client released")
        assert time.monotonic() - killed_at >= timeout_s - 5
    finally:
        for proc in orphan:
            proc.kill()
        cur.execute("DROP TABLE IF EXISTS fault_probe")
        admin.close()


def test_manual_training_while_a_drift_one_runs_waits_its_turn(story):
    """A manual training triggered while a drift-triggered one runs: the second run waits until
    the first has promoted or rejected; every new version has a truthful decision and trigger,
    and the alias points at the last promoted one (or stayed)."""
    from pipelines.models import tracking
    client, name = story["client"], story["spec"].model.registered_name
    known = {v.version for v in tracking.client().search_model_versions(f"name = '{name}'")}
    champion = tracking.resolve_alias(name, tracking.CHAMPION).version
    as_of = (STORY_BROKEN - dt.timedelta(days=1)).isoformat()
    drift = client.trigger(TRAINING, {"reason": "drift (fault suite)", "trigger": "drift", "as_of": as_of},
                           run_id=f"drift__fault_suite_{int(time.time())}")
    wait_for(lambda: client.run(TRAINING, drift)["state"] == "running", 300, interval=0.5,
             what="the drift-triggered training running")
    manual = client.trigger(TRAINING, {"reason": "manual (fault suite)", "trigger": "manual", "as_of": as_of})
    runs = [client.wait_for_run(TRAINING, run_id, timeout=900) for run_id in (drift, manual)]
    assert [r["state"] for r in runs] == ["success", "success"], runs
    ended, started = (dt.datetime.fromisoformat(r[k]) for r, k in zip(runs, ("end_date", "start_date")))
    assert ended <= started, "the manual run started before the drift run ended"
    new = assert_trainings_took_turns(name, known, champion)
    triggers = [tracking.client().get_model_version(name, v.version).tags["trigger"] for v in new]
    assert triggers == ["drift", "manual"]
    client.wait_idle([DAILY, WATCH, TRAINING], timeout=600)


def test_scheduler_killed_mid_backfill_recovers_whole_and_leaves_nothing_behind(story):
    """SIGKILL the scheduler in the middle of a backfill: its workers and tasks end with it,
    supervision restarts it, the backfill completes, every partition is whole with no duplicates; `down` leaves no process behind
    (the next test that needs the story brings the stack up again: ``in_story``)."""
    stack, client = story["stack"], story["client"]
    first, last = STORY_BROKEN - dt.timedelta(days=3), STORY_BROKEN - dt.timedelta(days=1)
    backfill = client.backfill(DAILY, first.isoformat(), last.isoformat(), max_active_runs=3)
    wait_for(_task_processes, 300, interval=0.5, what="a task running")
    scheduler = stack.pid("airflow-scheduler")
    forked = psutil.Process(scheduler).children(recursive=True)   # its workers and their tasks
    assert forked, "the scheduler's executor runs its workers"
    os.kill(scheduler, signal.SIGKILL)
    _, orphans = psutil.wait_procs(forked, timeout=10)
    assert orphans == [], "workers and tasks of the killed scheduler outlived it"
    wait_for(lambda: (stack.pid("airflow-scheduler") or scheduler) != scheduler, 120, what="scheduler restarted")
    stack.up()   # idempotent: everything running, healthy again
    days = {(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)}
    wait_for(lambda: client.get_backfill(backfill["id"]).get("completed_at"), 1200, interval=5,
             what=lambda: f"backfill after the scheduler was killed (unfinished: {_unfinished(client, days)})")
    client.wait_idle([DAILY, WATCH, TRAINING], timeout=1200)
    states = {logical_day(r): r["state"] for r in client.runs(DAILY) if logical_day(r) in days}
    assert set(states) == days and set(states.values()) == {"success"}, states
    for day in _scored_days():
        _assert_whole(day)
    stack.down()
    assert stack.leftover_processes() == [], "a process of the stack outlived `down`"
