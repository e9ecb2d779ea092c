"""Operators of the lifecycle."""
from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator


class RetrainTriggerOperator(TriggerDagRunOperator):
    """TriggerDagRunOperator whose run note is templated, so the retrain reason shows on the run."""

    template_fields = (*TriggerDagRunOperator.template_fields, "note")
