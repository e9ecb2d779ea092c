"""Rollback DAG per use case: move @champion back to an earlier champion, on demand."""
from __future__ import annotations

from airflow.sdk import Param, dag, task

from mlops_airflow.common import DEFAULT_ARGS, dag_tags, lifecycle_assets, measured, use_cases
from pipelines.core.config import settings
from pipelines.core.environments import load_environments

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
    environments = load_environments(settings().include).names

    @dag(
        dag_id=f"{use_case}_rollback",
        schedule=None,
        catchup=False,
        max_active_runs=1,
        default_args={**DEFAULT_ARGS, "retries": 1},
        tags=dag_tags(use_case, "promotion"),
        doc_md=DOC.format(name=use_case, model=spec.model.registered_name, environments=", ".join(environments)),
        description=f"{use_case}: move @champion back to an earlier champion",
        params={
            "reason": Param("", type="string", minLength=3, title="Reason",
                            description="Why the current champion is rolled back (recorded on both versions)."),
            "to_version": Param("", type="string", pattern=r"^(v?\d+)?$", title="Version to roll back to",
                                description="Empty: the champion before the current one."),
            "environment": Param(settings().env, type="string", enum=environments, title="Environment",
                                 description="Whose @champion moves; the other environments are left alone."),
        },
        start_date=None,
    )
    def rollback():
        @task(outlets=[assets.champion])
        @measured
        def roll_back_champion(params=None, dag_run=None) -> dict:
            """Move @champion back; refuse (without retrying) when it cannot be done as asked."""
            from airflow.sdk.exceptions import AirflowFailException

            from pipelines import runtime
            from pipelines.core.environments import acting_in
            from pipelines.release.rollback import RollbackRefused

            who = getattr(dag_run, "triggering_user_name", None) or "airflow"
            try:
                with acting_in(params.get("environment") or None):
                    return {**runtime.rollback(use_case, params["reason"], who, params.get("to_version") or None),
                            "environment": runtime.settings().env}
            except RollbackRefused as exc:
                raise AirflowFailException(f"rollback refused, @champion unchanged: {exc}") from None

        roll_back_champion()

    return rollback()


for _spec in use_cases():
    build_rollback(_spec)
