"""The demo: play a use case's whole story through a running Airflow, then summarise.

1. simulate the raw history into the lake's landing zone;
2. start the stack of ``$MLOPS_TOPOLOGY``: embedded by default (a private PostgreSQL for
   Airflow's and MLflow's metadata, Spark Connect, an MLflow server, Airflow's api-server,
   scheduler, dag-processor and triggerer), or ``cluster`` (the same on a Spark standalone master
   and worker);
3. backfill the daily DAG over the history before the first model;
4. trigger the training DAG (as a user would from the UI form) and promote the first champion;
5. backfill the daily DAG through the drift date to the end: scoring, monitoring, the drift
   watch firing, retraining, a new champion;
6. when the spec rolls promotions out (``deployment.strategy``), the retrained model is still a
   candidate: start the scoring service, send it traffic (Locust) and run the rollout DAG step by
   step until the candidate is champion; then a drill (a slowed copy of the champion) that the
   rollout must roll back on its own; print the rollout timeline;
7. a release: staging and prod get a copy of dev's data, the release DAG copies dev's champion
   into staging, tests it there (gate on staging's data, batch scoring, load test, prod's
   inference schema), asks for approval (the demo approves as ``risk-review``), copies it into
   prod; then prod's daily scoring runs with it, in prod's own lake;
8. print the summary (each environment's champion and where it came from) and the alerts the
   story sent (drift retraining, gate decisions, rollout steps, the drill's rollback, the
   release's approval; the local mailbox received them), stop the services, leave the state in place.

    python -m scripts.demo            # fresh state under $MLOPS_HOME (default .state/)
    python -m scripts.demo --keep     # keep earlier state (reruns are idempotent)
    MLOPS_TOPOLOGY=cluster python -m scripts.demo   # the same story on the cluster stack (.stack/)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import time

from scripts.airflow_api import TERMINAL, AirflowClient, logical_day, wait_for
from scripts.stack import ROOT, STACK_MARK, Stack

STATE_DIRS = ("lake", "mlflow", "airflow", "reports", "logs", "run", "postgres", "spark", "envs", "alerts")


def say(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


def dag_ids(use_case: str) -> dict[str, str]:
    return {"daily": f"{use_case}_daily", "training": f"{use_case}_training", "drift": f"{use_case}_drift_watch"}


PROGRESS_EVERY_S = 30


def run_backfill(client: AirflowClient, dag_id: str, start: dt.date, end: dt.date, watch: list[str],
                 max_active_runs: int = 2, timeout: float = 3600) -> list[dict]:
    """Backfill ``dag_id`` over [start, end], wait until it and ``watch`` are idle; returns its runs."""
    started = time.monotonic()
    client.backfill(dag_id, start.isoformat(), end.isoformat(), max_active_runs=max_active_runs)
    wanted = {(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)}

    def in_range() -> list[dict]:
        return [r for r in client.runs(dag_id) if logical_day(r) in wanted]

    reported = [started]

    def completed() -> bool:
        # Every day's run exists once the backfill is created (existing ones are reset to queued
        # then); they are all finished well before the scheduler's 30-second sweep marks the
        # backfill itself complete.
        done = sum(r["state"] in TERMINAL for r in in_range())
        if done == len(wanted):
            return True
        if time.monotonic() - reported[0] >= PROGRESS_EVERY_S:   # check often, report now and then
            reported[0] = time.monotonic()
            say(f"  {dag_id}: {done}/{len(wanted)} days done ({time.monotonic() - started:.0f}s)")
            client.check_healthy()
        return False

    wait_for(completed, timeout, interval=3, what=f"backfill of {dag_id}")
    client.wait_idle(watch, timeout=timeout)
    runs = in_range()
    failed = [r["dag_run_id"] for r in runs if r["state"] == "failed"]
    say(f"  {dag_id} {start}..{end}: {len(runs) - len(failed)} succeeded, {len(failed)} failed "
        f"in {time.monotonic() - started:.0f}s" + (f": {failed}" if failed else ""))
    return runs


def play_story(stack: Stack, use_case: str, start: dt.date, first_training: dt.date, end: dt.date,
               max_active_runs: int = 2) -> dict:
    """Backfill history, train the first model, backfill the rest (drift, retraining); returns timings."""
    ids = dag_ids(use_case)
    client = AirflowClient(stack.airflow_url, "admin", stack.admin_password())
    client.wait_for_dags(list(ids.values()))
    timings = {}

    say(f"backfilling {ids['daily']} over the history {start}..{first_training - dt.timedelta(days=1)}")
    t = time.monotonic()
    run_backfill(client, ids["daily"], start, first_training - dt.timedelta(days=1), [ids["daily"]],
                 max_active_runs)
    timings["history_backfill_s"] = time.monotonic() - t

    say(f"triggering {ids['training']} as of {first_training} (the first model)")
    t = time.monotonic()
    run_id = client.trigger(ids["training"], conf={"as_of": first_training.isoformat(), "trigger": "manual",
                                                   "reason": "first model of the use case"})
    run = client.wait_for_run(ids["training"], run_id)
    timings["first_training_s"] = time.monotonic() - t
    say(f"  training run {run_id}: {run['state']} ({timings['first_training_s']:.0f}s)")
    if run["state"] != "success":
        raise RuntimeError(f"first training failed; see the task logs of {ids['training']} / {run_id}")

    say(f"backfilling {ids['daily']} {first_training}..{end}: scoring, monitoring, drift watch, retraining")
    t = time.monotonic()
    run_backfill(client, ids["daily"], first_training, end, list(ids.values()), max_active_runs)
    timings["scoring_backfill_s"] = time.monotonic() - t
    timings["runs"] = {name: _states(client.runs(dag_id)) for name, dag_id in ids.items()}
    return timings


def drive_rollout(stack: Stack, client: AirflowClient, use_case: str, rounds: int = 12) -> str:
    """Run the rollout DAG until the running rollout ends, with live traffic between its runs;
    the rollout's final phase."""
    from pipelines import runtime
    from pipelines.models import tracking
    from pipelines.models.signature import signature_inputs
    from pipelines.release import rollout
    from pipelines.release.load_test import run_locust, sample_records

    spec, dag_id = runtime.spec(use_case), f"{use_case}_rollout"
    state = rollout.read_state(spec)
    columns = list(signature_inputs(tracking.model_version(spec.model.registered_name, state.champion).uri))
    work = stack.home / "run" / "rollout-traffic"
    work.mkdir(parents=True, exist_ok=True)
    records = work / "records.json"
    records.write_text(json.dumps(sample_records(runtime.lake(), spec, columns, rows=400)))
    for _ in range(rounds):
        run_id = client.trigger(dag_id, conf={})
        run = client.wait_for_run(dag_id, run_id)
        if run["state"] != "success":
            raise RuntimeError(f"{dag_id} run {run_id} {run['state']}; see its task logs")
        judged = client.xcom(dag_id, run_id, "judge_rollout") or {}
        state = rollout.read_state(spec)
        say(f"  {dag_id}: {judged.get('action')}: {judged.get('reason')} -> v{state.candidate} {state.phase} "
            f"at {state.share:.0%}")
        if not state.running:
            return state.phase
        load = run_locust("records", stack.serving_url, records, users=4, rate=25, seconds=12, out=work,
                          use_case=use_case)
        say(f"  traffic: {load.requests} requests ({load.rps:.0f}/s, p99 {load.p99_ms:.0f} ms, {load.failures} failed)")
    raise RuntimeError(f"the rollout of {use_case} did not end within {rounds} runs of {dag_id}")


def play_rollouts(stack: Stack, use_case: str) -> dict:
    """The retrained candidate to all traffic, then a drill the rollout must stop; timings."""
    from pipelines import runtime
    from pipelines.release import rollout
    spec = runtime.spec(use_case)
    client = AirflowClient(stack.airflow_url, "admin", stack.admin_password())
    timings = {}
    state = rollout.read_state(spec)
    say(f"starting the scoring service ({stack.serving_url})")
    stack.serve()
    if state is not None and state.running:
        say(f"rolling v{state.candidate} out beside champion v{state.champion} ({state.strategy}): "
            f"load test, shadow, canary steps, with live traffic")
        t = time.monotonic()
        phase = drive_rollout(stack, client, use_case)
        timings["rollout_s"] = time.monotonic() - t
        say(f"  rollout of v{state.candidate}: {phase}")
    else:
        say("no rollout is waiting (no retrained model passed the gate); on to the drill")
    say("drill: a copy of the champion slowed by 1.5 s per request; the rollout must roll it back by itself")
    t = time.monotonic()
    drill = runtime.rollout_drill(use_case, 1500, "demo")
    phase = drive_rollout(stack, client, use_case)
    timings["drill_s"] = time.monotonic() - t
    say(f"  drill v{drill['candidate']}: {phase}")
    if phase != rollout.ROLLED_BACK:
        raise RuntimeError(f"the drill's slowed model was not rolled back ({phase})")
    return timings


def start_release(stack: Stack, use_case: str) -> str:
    """Give staging and prod a copy of dev's data and trigger the release DAG; its run id."""
    from pipelines import releases

    client = AirflowClient(stack.airflow_url, "admin", stack.admin_password())
    for target in ("staging", "prod"):   # their own feeds, in a real deployment
        copied = releases.copy_data(use_case, "dev", target)
        say(f"  {target}: a copy of dev's data ({copied['partitions']['features']} feature partitions)")
    run_id = client.trigger(f"{use_case}_release", conf={"reason": "weekly release of the retrained model"})
    say(f"release {run_id}: dev's champion into staging, staging's tests, then approval for prod")
    return run_id


def finish_release(stack: Stack, use_case: str, run_id: str, day: dt.date) -> dict:
    """Approve the release into prod once staging passed it, wait for it, then run prod's daily
    scoring of ``day`` with prod's new champion, in prod's own lake; timings."""
    from pipelines import runtime
    from pipelines.core.environments import acting_in

    client = AirflowClient(stack.airflow_url, "admin", stack.admin_password())
    dag_id, timings, t = f"{use_case}_release", {}, time.monotonic()
    client.wait_for_review(dag_id, run_id, "approve_prod", timeout=900)
    tests = client.xcom(dag_id, run_id, "pass_staging") or {}
    say(f"  staging v{tests.get('version')} passed {', '.join(tests.get('tests', []))}; a reviewer (admin) "
        f"approves the release into prod")
    client.review(dag_id, run_id, "approve_prod", approve=True, comment="staging's gate and load test look right")
    run = client.wait_for_run(dag_id, run_id)
    timings["release_s"] = time.monotonic() - t
    released = client.xcom(dag_id, run_id, "release_into_prod") or {}
    say(f"  release {run['state']}: prod v{released.get('version')}")
    if run["state"] != "success":
        raise RuntimeError(f"the release failed; see the task logs of {dag_id} / {run_id}")
    t = time.monotonic()
    with acting_in("prod"):
        rows = runtime.score(use_case, day, runtime.resolve_champion(use_case), f"prod_daily__{day}")
    timings["prod_scoring_s"] = time.monotonic() - t
    say(f"  prod's daily scoring of {day}: {rows} rows with prod v{released.get('version')}")
    return timings


def _states(runs: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in runs:
        out[r["state"]] = out.get(r["state"], 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--use-case", default="churn")
    parser.add_argument("--keep", action="store_true", help="keep the state of an earlier run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()

    stack = Stack()
    os.environ.update({k: v for k, v in stack.env().items()
                       if k.startswith(("MLOPS", "MLFLOW")) and k != STACK_MARK})
    from pipelines import releases, runtime
    from pipelines.report import summarize

    spec = runtime.spec(args.use_case)
    sim = spec.simulation
    if sim is None or not sim.first_training:
        raise SystemExit(f"{args.use_case}: the spec's simulation section needs history_start, days, first_training")
    start = sim.history_start
    end = start + dt.timedelta(days=sim.days - 1)
    first_training = sim.first_training
    stack.down()   # whatever an earlier run left behind
    if not args.keep:
        for name in STATE_DIRS:
            shutil.rmtree(stack.home / name, ignore_errors=True)
    # no scheduled runs past the simulated calendar, now or when `make ui` restarts the stack
    stack.save_defaults({"MLOPS_SCHEDULE_END": end.isoformat()})
    say(f"state in {stack.home}; simulating {sim.days} days of {args.use_case} from {start} "
        f"({sim.customers} customers, drift from {sim.drift_start})")
    totals = runtime.simulate(args.use_case)
    say(f"  raw rows: {totals}")

    say(f"starting the {stack.topology} stack ({', '.join(stack.service_names())})")
    timings = {}
    try:
        t = time.monotonic()
        stack.up()
        timings["stack_start_s"] = time.monotonic() - t
        timings.update(play_story(stack, args.use_case, start, first_training, end))
        os.environ["MLFLOW_TRACKING_URI"] = stack.mlflow_url
        if spec.deployment.strategy != "direct":
            timings.update(play_rollouts(stack, args.use_case))
            print()
            print(runtime.rollout_status(args.use_case, timelines=2))
        timings.update(finish_release(stack, args.use_case, start_release(stack, args.use_case), end))
        print()
        print(summarize(spec))
        print()
        print(releases.environments_text(args.use_case))
        print()
        print(alerts_text(stack))
        print()
        print(lineage_text(stack, args.use_case))
    finally:
        say("stopping the stack")
        stack.down()
    return report(stack, timings, time.monotonic() - started)


def alerts_text(stack: Stack) -> str:
    """What the demo told people: every alert the local mailbox received (the shipped spec's
    ``mlops_alerts`` channel), oldest first."""
    from scripts.services import mailbox_folder, mailbox_messages

    messages = mailbox_messages(stack)
    return "\n".join([f"Alerts sent: {len(messages)} (each a mail in {mailbox_folder(stack)})",
                      *(f"  {m['date'].datetime:%H:%M:%S}  {m['subject']}" for m in messages)])


def lineage_text(stack: Stack, use_case: str) -> str:
    """Where the newest scores of dev came from, walked back through the tasks' OpenLineage events."""
    from pipelines import runtime
    from pipelines.core.lake import Lake, list_partitions
    from scripts.lineage import completed, describe, walk_back
    from scripts.services import lineage_file

    lake, events = runtime.lake(), completed(lineage_file(stack))
    scored = list_partitions(lake.inference(use_case))
    if not scored:
        return f"Lineage: {len(events)} task events; nothing scored"
    newest = Lake.partition(lake.inference(use_case), scored[-1]).absolute()
    chain = walk_back(events, "file", str(newest))
    return "\n".join([f"Lineage of {newest.relative_to(lake.root.absolute())} ({len(events)} task events in "
                      f"{lineage_file(stack)}):", *describe(chain, lake.root.absolute())])


def report(stack: Stack, timings: dict, total: float) -> int:
    """The runs by state, the timings and where to look; 1 if any run of the story failed."""
    print()
    print("Airflow runs by state:", timings.get("runs"))
    print("Timings (s): " + ", ".join(f"{k}={v:.0f}" for k, v in timings.items() if isinstance(v, float)))
    print(f"Demo wall time: {total:.0f}s ({total / 60:.1f} min)")
    explore = "make stack-up" if stack.clustered else "make ui"
    print(f"Explore the state: {explore}   (Airflow http://127.0.0.1:{stack.airflow_port}, the control room "
          f"http://127.0.0.1:{stack.airflow_port}/plugin/control-room, MLflow http://127.0.0.1:{stack.mlflow_port})")
    failed = {name: states["failed"] for name, states in (timings.get("runs") or {}).items() if states.get("failed")}
    if failed:   # the demo passes only when every run of the story did
        print(f"FAILED runs: {failed}; see their task logs there")
        return 1
    return 0

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
