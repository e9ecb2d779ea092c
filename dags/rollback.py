"""Rollback DAG per use case: move @champion back to an earlier champion, on demand."""
from __future__ import annotations

from airflow.sdk import Param, dag, task

from mlops_airflow.common import (DEFAULT_ARGS, alert, dag_tags, environment_names, environment_param, fail_at_once,
                                  in_environment, lifecycle_assets, measured, triggered_by, use_cases)

DOC = """
### {name}: roll back the champion

Manual only: trigger it from the UI and fill in the form.

* **roll_back_champion** moves `@champion` of `{model}` back to the champion before the current
  one, or to `to_version` (a version that was champion once). The target must still load (a
  version whose artifacts are gone is refused, and nothing moves); the move is compare-and-set.
  The reason, the time and who triggered the run are tags on both versions; the next
  `{name}_daily` run scores with the target. Same as `mlops rollback {name} --reason ...`.
* **environment** (in the form): the environment whose `@champion` moves ({environments}); no
  other environment's registry is touched. Same as `mlops --env prod rollback {name} ...`.
"""


def build_rollback(spec):
    """The rollback DAG of one use case."""
    use_case = spec.name
    assets = lifecycle_assets(use_case)

    @dag(
        dag_id=f"{use_case}_rollback",
        schedule=None,
        catchup=False,
        max_active_runs=1,
        default_args={**DEFAULT_ARGS, "retries": 1},
        tags=dag_tags(use_case, "promotion"),
        doc_md=DOC.format(name=use_case, model=spec.model.registered_name, environments=", ".join(environment_names())),
        description=f"{use_case}: move @champion back to an earlier champion",
        params={
            "reason": Param("", type="string", minLength=3, title="Reason",
                            description="Why the current champion is rolled back (recorded on both versions)."),
            "to_version": Param("", type="string", pattern=r"^(v?\d+)?$", title="Version to roll back to",
                                description="Empty: the champion before the current one."),
            "environment": environment_param("Whose @champion moves; the other environments are left alone."),
        },
        start_date=None,
    )
    def rollback():
        @task(outlets=[assets.champion])
        @measured
        @fail_at_once("rollback refused, @champion unchanged: ")
        def roll_back_champion(params=None, dag_run=None) -> dict:
            """Move @champion back; refuse (without retrying) when it cannot be done as asked."""
            from pipelines import alerts, runtime
            with in_environment(params):
                done = runtime.rollback(use_case, params["reason"], triggered_by(dag_run),
                                        params.get("to_version") or None)
                alert(use_case, alerts.rollback(use_case, done))
                return {**done, "environment": runtime.settings().env}

        roll_back_champion()

    return rollback()


for _spec in use_cases():
    build_rollback(_spec)
