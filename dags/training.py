"""Training DAG per use case: train a challenger, evaluate it against the champion, promote if better."""
from __future__ import annotations

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Param, dag, task

from mlops_airflow.common import (DEFAULT_ARGS, MODELS_QUEUE, alert, dag_tags, environment_names, environment_param,
                                  fail_at_once, in_environment, lifecycle_assets, measured, schedule_window, use_cases)

DOC = """
### {name}: train, evaluate through the promotion gate, promote

* **train_challenger** builds the point-in-time training set (labels known before
  `as_of`, joined to the features of their label date), searches the spec's model (grid or
  Optuna), logs params, metrics, plots, SHAP explanations, signature, input example, code
  version and the training data's identity to MLflow, registers a new version and sets the
  alias `challenger`. Returns the model URI. A retry or a cleared rerun of the same run reuses
  what an earlier try registered (or logged): one run never leaves two versions.
* **evaluate_challenger** runs the promotion gate on the recent holdout: the metric against its
  floor and the champion, then the spec's checks (slices, fairness, calibration, latency, schema),
  each enforced or only recorded. Every result goes to the `promotion_checks` table and the
  version's tags, and a model card is written (reports folder and MLflow).
{review}* **promote_if_better** moves `champion` only if the gate passed{approved}, guarded by a
  compare-and-set on the champion the gate judged against. The decision and its reasons are
  tags on the model version and in its model card.

Runs on its schedule, by manual trigger (fill in the form: `as_of`, `reason`, and the
`environment` to train in: {environments}), and when
`{name}_drift_watch` detects drift, or `{name}_daily` finds live performance beyond its bound
(`monitoring.performance`; the reason is in the run's note and conf).
"""

REVIEW_DOC = """* **passed_gate** skips the review of a challenger the gate rejected.
* **review_challenger** (human in the loop) waits for a reviewer to approve or reject in the
  Airflow UI (Browse, Required Actions, or the task's page); no answer within {hours:g} h rejects.
"""


def build_training(spec):
    """The training DAG of one use case."""
    use_case = spec.name
    assets = lifecycle_assets(use_case)
    reviewed = spec.promotion.approval == "required"
    doc = DOC.format(name=spec.name, review=REVIEW_DOC.format(hours=spec.promotion.approval_timeout_hours)
                     if reviewed else "", approved=" and the reviewer approved" if reviewed else "",
                     environments=", ".join(environment_names()))

    @dag(
        dag_id=f"{spec.name}_training",
        schedule=spec.training.schedule,
        catchup=False,
        max_active_runs=1,  # promotions never race each other
        # ahead of a backfill's daily tasks in the executor's queue: a retraining asked for by drift
        # lands while the backfill runs, and the days after it are scored by the new champion
        default_args={**DEFAULT_ARGS, "priority_weight": 100},
        tags=dag_tags(spec.name, "training"),
        doc_md=doc,
        description=f"{spec.name}: train a challenger and promote it if it passes the gate",
        params={
            "as_of": Param("", type="string", title="Training cut-off date (YYYY-MM-DD)",
                           description="Use labels that landed before this date. Empty: the newest labels."),
            "reason": Param("manual retraining", type="string", title="Reason",
                            description="Why this model is trained; recorded on the MLflow run and model version."),
            "trigger": Param("manual", type="string", enum=["manual", "drift", "performance", "schedule"],
                             title="Trigger", description="What started the run (set to 'drift' by the drift "
                                                          "watch, 'performance' by the daily DAG)."),
            "environment": environment_param("Where to train, on that environment's data and registry. Prod "
                                             "never trains a deploy-models use case, and trains a deploy-code "
                                             "one only with code staging passed."),
        },
        **schedule_window(spec),
    )
    def training():
        @task(queue=MODELS_QUEUE)
        @measured
        @fail_at_once("training refused: ")
        def train_challenger(params=None, dag_run=None, run_id=None, data_interval_end=None) -> dict:
            """Fit, log and register a challenger; returns its model URI and version."""
            from pipelines import runtime
            scheduled = dag_run.run_type == "scheduled"
            with in_environment(params):
                runtime.require_may_train(use_case)   # before anything else (prod of deploy models never trains)
                as_of = runtime.resolve_as_of(use_case, params.get("as_of") or None,
                                              data_interval_end.date() if scheduled and data_interval_end else None)
                trigger = "schedule" if scheduled else params.get("trigger", "manual")
                reason = "scheduled retraining" if scheduled else params.get("reason", "")
                return runtime.train(use_case, as_of, reason, trigger, run_id)

        @task(queue=MODELS_QUEUE)
        @measured
        def evaluate_challenger(challenger: dict, params=None) -> dict:
            """The promotion gate on the holdout: every check recorded, a model card written."""
            from pipelines import runtime
            with in_environment(params):
                return runtime.evaluate(use_case, challenger, challenger["as_of"])

        @task(outlets=[assets.champion], trigger_rule="none_failed" if reviewed else "all_success")
        @measured
        def promote_if_better(evaluation: dict, params=None, ti=None) -> dict:
            """Move @champion to the challenger if the gate passed (and the reviewer approved)."""
            from pipelines import alerts, runtime
            review = None
            if reviewed:
                from mlops_airflow.review import REVIEW_XCOM

                review = ti.xcom_pull(task_ids="review_challenger", key=REVIEW_XCOM)
            with in_environment(params):
                decision = runtime.decide(use_case, evaluation, review)
                alert(use_case, alerts.gate_decision(use_case, decision, evaluation.get("as_of", ""),
                                                     runtime.spec(use_case).model.registered_name))
            return decision

        evaluation = evaluate_challenger(train_challenger())
        decision = promote_if_better(evaluation)
        if reviewed:
            from mlops_airflow.review import promotion_review  # loaded only where a person reviews

            @task.short_circuit(ignore_downstream_trigger_rules=False)
            def passed_gate(evaluation: dict) -> bool:
                """Ask a reviewer only about a challenger the gate let through (and tell them)."""
                from pipelines import alerts
                if evaluation["eligible"]:
                    version = (evaluation["challenger"] or {}).get("version")
                    alert(use_case, alerts.approval_waiting(use_case, "promotion", version, evaluation.get("as_of", ""),
                                                            spec.model.registered_name))
                return bool(evaluation["eligible"])

            # a rejection skips `approved` only; promote_if_better then records the rejection
            approved = EmptyOperator(task_id="approved")
            passed_gate(evaluation) >> promotion_review(spec) >> approved >> decision

    return training()


for _spec in use_cases():
    build_training(_spec)
