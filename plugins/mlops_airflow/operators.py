"""Operators of the lifecycle."""
from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator


class RetrainTriggerOperator(TriggerDagRunOperator):
    """TriggerDagRunOperator whose run note is templated, so the retrain reason shows on the run."""

    template_fields = (*TriggerDagRunOperator.template_fields, "note")


def retrain_trigger(use_case: str, task_id: str, request_task_id: str, trigger: str,
                    why: str) -> RetrainTriggerOperator:
    """Start ``<use case>_training`` for the request ``request_task_id`` returned (its run id, reason
    and cut-off), like a UI trigger; a run of the same id (the same trigger and day) is not started twice."""
    request = f"ti.xcom_pull(task_ids='{request_task_id}')"
    return RetrainTriggerOperator(
        task_id=task_id,
        trigger_dag_id=f"{use_case}_training",
        logical_date=None,  # like a UI trigger: a logical date of "now" would fall past a bounded schedule
        trigger_run_id="{{ " + request + "['run_id'] }}",
        conf={"reason": "{{ " + request + "['reason'] }}", "trigger": trigger,
              "as_of": "{{ " + request + "['as_of'] }}"},
        note=f"{why}: {{{{ {request}['reason'] }}}}",
        skip_when_already_exists=True,
    )
