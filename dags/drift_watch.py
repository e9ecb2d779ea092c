"""Drift watch DAG per use case: on each new drift result, decide whether to retrain, and trigger it."""
from __future__ import annotations

from airflow.sdk import Param, dag, task

from mlops_airflow.common import DEFAULT_ARGS, alert, dag_tags, lifecycle_assets, measured, use_cases
from mlops_airflow.operators import retrain_trigger
from mlops_airflow.sensors import DriftSensor

DOC = """
### {name}: drift watch

Scheduled on the `{name}_drift_summary` asset: each daily monitoring result wakes it.

* **wait_for_drift_result** (`DriftSensor`) waits until the date's drift row is in the
  monitoring table and applies the spec's policy: drift share over the threshold, for the
  required number of consecutive days, outside the cooldown after the last retraining.
* **decide_retraining** records the request (drives the cooldown) or stops here.
* **trigger_retraining** starts `{name}_training` with `trigger=drift`, the reason in its
  conf and note, and one run id per date (`drift__<ds>`), so a rerun never retrains twice.

Manual runs: set `ds` to evaluate a given date.
"""

def build_drift_watch(spec):
    """The drift watch DAG of one use case."""
    use_case = spec.name
    assets = lifecycle_assets(use_case)


    @dag(
        dag_id=f"{spec.name}_drift_watch",
        schedule=[assets.drift],
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=dag_tags(spec.name, "monitoring"),
        doc_md=DOC.format(name=spec.name),
        description=f"{spec.name}: retrain when input drift persists",
        params={"ds": Param("", type="string", title="Date to evaluate (YYYY-MM-DD)",
                            description="Empty: the date carried by the triggering drift asset event.")},
        start_date=None,
    )
    def drift_watch():
        decision = DriftSensor(task_id="wait_for_drift_result", use_case=use_case, ds="{{ params.ds }}",
                               mode="reschedule", poke_interval=30, timeout=60 * 60)

        @task.short_circuit
        @measured
        def decide_retraining(decision: dict) -> dict | None:
            """Record a retrain request when the policy says so; otherwise stop here."""
            from pipelines import alerts, runtime
            if not decision["retrain"]:
                print(f"no retraining: {decision['reason']}")
                return None
            request = runtime.request_retraining(use_case, decision)
            alert(use_case, alerts.retraining(use_case, request))
            return request

        request = decide_retraining(decision.output)
        request >> retrain_trigger(use_case, "trigger_retraining", "decide_retraining", "drift", "Retraining on drift")

    return drift_watch()


for _spec in use_cases():
    build_drift_watch(_spec)
