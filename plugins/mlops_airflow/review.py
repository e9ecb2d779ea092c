"""The promotion review: a person approves or rejects a challenger that passed the gate.

Its own module: Airflow's human-in-the-loop operators cost every DAG file that imports them
about 70 ms of parsing, so only the training DAGs of use cases that require approval load them.
"""
from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param

REVIEW_XCOM = "review"


class PromotionReview(ApprovalOperator):
    """Airflow's ApprovalOperator, keeping the answer as XCom ``review`` before acting on it (a
    rejection skips the tasks after it before the operator's own return value would be pushed)."""

    def execute_complete(self, context, event):
        if "error" not in event:
            context["ti"].xcom_push(key=REVIEW_XCOM, value={
                "chosen_options": list(event["chosen_options"]),
                "params_input": dict(event.get("params_input") or {}),
                "responded_by_user": event.get("responded_by_user"),
                "responded_at": str(event["responded_at"]) if event.get("responded_at") else None})
        return super().execute_complete(context, event)


def promotion_review(spec, evaluation_task_id: str = "evaluate_challenger") -> PromotionReview:
    """The review of a challenger that passed the gate: the reviewer reads the gate's summary (and
    the model card's path) in the Airflow UI, and approves or rejects, with an optional comment.
    No answer within ``promotion.approval_timeout_hours`` counts as a rejection. A rejection skips
    the task right after it (see the training DAG); the answer, either way, is the XCom ``review``."""
    summary = f"ti.xcom_pull(task_ids='{evaluation_task_id}')"
    return PromotionReview(
        task_id="review_challenger",
        subject=(f"Promote {spec.model.registered_name} v{{{{ {summary}['challenger']['version'] }}}} "
                 f"to champion?"),
        body=f"{{{{ {summary}['review_summary'] }}}}",
        defaults=ApprovalOperator.REJECT,   # what a timeout answers
        response_timeout=dt.timedelta(hours=spec.promotion.approval_timeout_hours),
        params={"comment": Param("", type="string", title="Comment",
                                 description="Why you approve or reject; recorded on the model version.")},
        doc_md="A person approves or rejects the challenger's promotion (the model card is linked in the body).",
    )


def release_review(spec, environment: str, staged_task_id: str = "pass_staging") -> PromotionReview:
    """The approval of a release into ``environment`` (prod): the approver reads what staging
    tested, then approves or rejects with a comment. No answer in
    ``promotion.approval_timeout_hours`` rejects; a rejection skips the release into prod."""
    staged = f"ti.xcom_pull(task_ids='{staged_task_id}')"
    return PromotionReview(
        task_id=f"approve_{environment}",
        subject=f"Release {spec.name} v{{{{ {staged}['version'] }}}} of staging into {environment}?",
        body=(f"{{{{ {staged}['name'] }}}} v{{{{ {staged}['version'] }}}} passed staging's tests "
              f"({{{{ {staged}['tests'] | join(', ') }}}}) in release {{{{ {staged}['release_id'] }}}}. "
              f"Approving copies the same artifact into {environment}'s registry and makes it its champion."),
        defaults=ApprovalOperator.REJECT,
        response_timeout=dt.timedelta(hours=spec.promotion.approval_timeout_hours),
        params={"comment": Param("", type="string", title="Comment",
                                 description="Why you approve or reject; recorded on the released version.")},
        doc_md=f"A person approves or rejects the release into {environment}.",
    )
