"""Rollout DAG per use case with a rollout strategy: move a candidate to live traffic step by step."""
from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from mlops_airflow.common import (DEFAULT_ARGS, MODELS_QUEUE, alert, dag_tags, lifecycle_assets, measured,
                                  schedule_window, triggered_by, use_cases)

DOC = """
### {name}: roll the candidate out to live traffic ({strategy})

A promotion that passes the gate starts a rollout of the new version beside `@champion`
instead of replacing it (`deployment.strategy: {strategy}` in the spec). Every {every:g} minutes,
and on a manual trigger, this DAG:

* **load_test_candidate**: before any traffic moves, a staging instance of the scoring service
  loaded with the candidate alone takes a Locust load test ({users} users, {rate:g} req/s, {seconds} s).
  Throughput, p50/p99 and errors go to the candidate's MLflow run and `gate.load_test.*` tags;
  outside `deployment.load_test` the rollout is rolled back.
* **judge_rollout** reads the service's request log for the current step: the candidate's error
  rate (answers the fallback had to give), the p99 of its own scoring time, and its agreement
  with the champion on the same records. Over budget: rolled back to 0% with the reason.
  Within budget for {window:g} minutes and {min_requests} requests: the next step
  ({steps}); after the last, the candidate becomes `@champion` (compare-and-set).

The state is the `rollout.state` tag on `{model}` (the service follows it within seconds); the
history is the `rollouts` monitoring table. `mlops rollout status {name}` prints both;
`mlops rollout stop {name} --reason ...` rolls back by hand; so does a manual run of this DAG with
**stop_reason** filled in (the control room's "Stop the rollout" button): no load test, no
judging, the candidate back to 0% with the reason and who asked.
"""


def build_rollout(spec):
    """The rollout DAG of one use case."""
    use_case, deployment = spec.name, spec.deployment
    assets = lifecycle_assets(use_case)
    every = max(deployment.window_minutes / 2, 5.0)
    steps = " → ".join(f"{s:.0%}" if s else "shadow" for s in deployment.steps) \
        if deployment.strategy == "canary" else deployment.strategy.value

    @dag(
        dag_id=f"{use_case}_rollout",
        schedule=dt.timedelta(minutes=every),
        catchup=False,
        max_active_runs=1,
        default_args={**DEFAULT_ARGS, "retries": 1},
        tags=dag_tags(use_case, "deployment"),
        doc_md=DOC.format(name=use_case, strategy=deployment.strategy.value, every=every,
                          users=deployment.load_test.users, rate=deployment.load_test.rate,
                          seconds=deployment.load_test.seconds, window=deployment.window_minutes,
                          min_requests=deployment.min_requests, steps=steps, model=spec.model.registered_name),
        description=f"{use_case}: move a candidate version to live traffic ({deployment.strategy.value})",
        params={"stop_reason": Param("", type="string", maxLength=500, title="Stop the rollout: reason",
                                     description="Filled in: roll the running rollout back to 0% now (the champion "
                                                 "keeps all traffic). Empty: judge the step as scheduled.")},
        **schedule_window(spec),
    )
    def rollout():
        @task(queue=MODELS_QUEUE)
        @measured
        def load_test_candidate(params=None) -> dict:
            from pipelines import alerts, runtime
            if (params or {}).get("stop_reason"):
                return {"tested": False, "reason": "the rollout is being stopped"}
            result = runtime.rollout_load_test(use_case)
            alert(use_case, alerts.rollout(use_case, result))   # a failed load test rolls the rollout back
            return result

        @task(outlets=[assets.champion])
        @measured
        def judge_rollout(params=None, dag_run=None) -> dict:
            from pipelines import alerts, runtime
            stop = (params or {}).get("stop_reason")
            result = runtime.stop_rollout(use_case, stop, triggered_by(dag_run)) if stop else \
                runtime.judge_rollout(use_case)
            alert(use_case, alerts.rollout(use_case, result))
            return result

        load_test_candidate() >> judge_rollout()

    return rollout()


for _spec in use_cases():
    if _spec.deployment.strategy != "direct":
        build_rollout(_spec)
