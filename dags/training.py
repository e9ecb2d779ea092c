"""Training DAG per use case: train a challenger, evaluate it against the champion, promote if better."""
from __future__ import annotations

from airflow.sdk import Param, dag, task

from mlops_airflow.common import DEFAULT_ARGS, lifecycle_assets, measured, schedule_window, use_cases

DOC = """
### {name}: train, evaluate, promote

* **train_challenger** builds the point-in-time training set (labels known before
  `as_of`, joined to the features of their label date), grid-searches the spec's model,
  logs params, metrics, plots, signature, input example and the training data's identity
  to MLflow, registers a new version and sets the alias `challenger`. Returns the model URI.
  A retry or a cleared rerun of the same run reuses what an earlier try registered (or logged):
  one run never leaves two versions.
* **promote_if_better** scores champion and challenger on the same recent holdout and
  moves `champion` only if the challenger passes the floor and beats the champion by the
  spec's margin. The decision and its reasons are tags on the model version.

Runs on its schedule, by manual trigger (fill in the form: `as_of`, `reason`), and when
`{name}_drift_watch` detects drift (the reason is in the run's note and conf).
"""

def build_training(spec):
    """The training DAG of one use case."""
    use_case = spec.name
    assets = lifecycle_assets(use_case)


    @dag(
        dag_id=f"{spec.name}_training",
        schedule=spec.training.schedule,
        catchup=False,
        max_active_runs=1,  # promotions never race each other
        # ahead of a backfill's daily tasks in the executor's queue: a retraining asked for by drift
        # lands while the backfill runs, and the days after it are scored by the new champion
        default_args={**DEFAULT_ARGS, "priority_weight": 100},
        tags=["mlops", spec.name, "training"],
        doc_md=DOC.format(name=spec.name),
        description=f"{spec.name}: train a challenger and promote it if it beats the champion",
        params={
            "as_of": Param("", type="string", title="Training cut-off date (YYYY-MM-DD)",
                           description="Use labels that landed before this date. Empty: the newest labels."),
            "reason": Param("manual retraining", type="string", title="Reason",
                            description="Why this model is trained; recorded on the MLflow run and model version."),
            "trigger": Param("manual", type="string", enum=["manual", "drift", "schedule"], title="Trigger",
                             description="What started the run (set to 'drift' by the drift watch)."),
        },
        **schedule_window(spec),
    )
    def training():
        @task
        @measured
        def train_challenger(params=None, dag_run=None, run_id=None, data_interval_end=None) -> dict:
            """Fit, log and register a challenger; returns its model URI and version."""
            from pipelines import runtime

            scheduled = dag_run.run_type == "scheduled"
            as_of = runtime.resolve_as_of(use_case, params.get("as_of") or None,
                                          data_interval_end.date() if scheduled and data_interval_end else None)
            trigger = "schedule" if scheduled else params.get("trigger", "manual")
            reason = "scheduled retraining" if scheduled else params.get("reason", "")
            return runtime.train(use_case, as_of, reason, trigger, run_id)

        @task(outlets=[assets.champion])
        @measured
        def promote_if_better(challenger: dict) -> dict:
            """Champion vs challenger on the same holdout; move @champion only on a clear win."""
            from pipelines import runtime

            return runtime.promote(use_case, challenger, challenger["as_of"])

        promote_if_better(train_challenger())

    return training()


for _spec in use_cases():
    build_training(_spec)
