"""Release DAG per use case: a model moves dev -> staging -> prod, tested on the way, approved."""
from __future__ import annotations

from airflow.sdk import Param, dag, task

from mlops_airflow.common import (DEFAULT_ARGS, MODELS_QUEUE, SPARK_QUEUE, alert, dag_tags, environment_names,
                                  fail_at_once, measured, triggered_by, use_cases)
from pipelines.core.errors import Refusal

DOC = """
### {name}: release from dev through staging into prod ({pattern})

Manual only: trigger it from the UI (fill in the form) or with `mlops release`.

* **pick_version**: dev's `@champion` of `{model}`, or the version named in the form.
* **bring_into_staging**: {staging_step}
* **staging_gate**, **staging_batch_scoring**, **staging_load_test**, **staging_prod_schema**:
  the promotion gate on staging's own data against staging's champion, a batch scoring of
  staging's newest feature partition, the pre-deployment load test (Locust on a staging
  scoring service), and the inference table's schema against prod's. A failing test stops the
  release (the task fails without retrying) and is tagged on the staging version with its reason.
* **pass_staging**: records the pass and makes the version staging's `@champion`.
* **approve_prod** (human in the loop): a person approves or rejects in the Airflow UI; no
  answer in {hours:g} h rejects, and a rejection skips the rest.
* **release_into_prod**: {prod_step} Who approved, why and when are tags on
  both versions; prod's daily scoring uses it from its next run.
"""

# any refusal on the way (a test that failed, data staging lacks) stops the release at once
refused = fail_at_once("release refused: ", (Refusal,))


STEPS = {
    "deploy_models": ("copies the version (the same artifact and run) into staging's registry, tagged "
                      "with where it came from (version, run, data digest, code version).",
                      "copies the staging version into prod's registry and makes it prod's `@champion`."),
    "deploy_code": ("trains a version with this commit of the code on staging's own data.",
                    "trains with the same commit on prod's data (refused for a commit staging did not pass); "
                    "it becomes prod's `@champion` if it passes the gate."),
}


def build_release(spec, tested: str = "staging", last: str = "prod"):
    """The release DAG of one use case: the first environment's version through ``tested`` into ``last``."""
    use_case = spec.name
    pattern = spec.deployment.pattern.value

    @dag(
        dag_id=f"{use_case}_release",
        schedule=None,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=dag_tags(use_case, "release"),
        doc_md=DOC.format(name=use_case, model=spec.model.registered_name, pattern=pattern,
                          staging_step=STEPS[pattern][0], prod_step=STEPS[pattern][1],
                          hours=spec.promotion.approval_timeout_hours),
        description=f"{use_case}: release a model from dev through staging into prod",
        params={
            "version": Param("", type="string", pattern=r"^(v?\d+)?$", title="dev version",
                             description="Empty: dev's champion."),
            "reason": Param("release", type="string", minLength=3, title="Reason",
                            description="Why this release; recorded on the versions in every environment."),
        },
        start_date=None,
    )
    def release():
        @task
        @measured
        @refused
        def pick_version(params=None) -> dict:
            """The dev version to release."""
            from pipelines import releases
            return releases.release_source(use_case, tested, params.get("version") or None)

        @task(queue=MODELS_QUEUE)
        @measured
        @refused
        def bring_into_staging(source: dict, params=None, run_id=None, dag_run=None) -> dict:
            """The version in staging: copied (deploy models) or trained there (deploy code)."""
            from pipelines import releases
            return releases.stage_release(use_case, source, run_id, triggered_by(dag_run), params["reason"])

        def staging_test(test: str):
            @task(task_id=f"staging_{test}", queue=SPARK_QUEUE if test == "batch_scoring" else MODELS_QUEUE)
            @measured
            @refused
            def run_test(staged: dict) -> dict:
                from pipelines import releases
                return releases.staging_test(use_case, test, staged)
            return run_test

        @task
        @measured
        def pass_staging(staged: dict, results: list[dict]) -> dict:
            """Every staging test passed: record it; the version becomes staging's champion."""
            from pipelines import alerts, releases
            passed = releases.pass_staging(use_case, staged, results)
            alert(use_case, alerts.approval_waiting(use_case, f"release into {last}", staged["version"], "",
                                                    staged["name"]))
            return passed

        @task
        @measured
        @refused
        def release_into_prod(staged: dict, params=None, run_id=None, dag_run=None, ti=None) -> dict:
            """After approval: the version into prod's registry, prod's champion."""
            from mlops_airflow.review import REVIEW_XCOM
            from pipelines import releases
            from pipelines.release.decision import Review

            review = Review.from_hitl(ti.xcom_pull(task_ids=f"approve_{last}", key=REVIEW_XCOM))
            return releases.release_to_last(use_case, staged, run_id, triggered_by(dag_run), params["reason"],
                                            review)

        from mlops_airflow.review import release_review

        staged = bring_into_staging(pick_version())
        results, previous = [], staged
        for test in ("gate", "batch_scoring", "load_test", "prod_schema"):   # one at a time: 2 cores
            result = staging_test(test)(staged)
            previous >> result
            results.append(result)
            previous = result
        passed = pass_staging(staged, results)
        passed >> release_review(spec, last) >> release_into_prod(passed)

    return release()


_path = environment_names()
if len(_path) == 3:   # a first environment, a tested one, and the one that serves
    for _spec in use_cases():
        build_release(_spec, _path[1], _path[2])
