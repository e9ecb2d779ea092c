"""Daily lifecycle DAG per use case: validate raw data, build features, score, monitor."""
from __future__ import annotations

from airflow.sdk import Param, dag, task

from mlops_airflow.common import (DEFAULT_ARGS, MODELS_QUEUE, SPARK_QUEUE, alert, dag_tags, daily_deadline,
                                  fail_at_once, lifecycle_assets, measured, run_day, schedule_window, use_cases)
from mlops_airflow.sensors import LookBackSensor

DOC = """
### {name}: daily lifecycle

For the run's date `ds`: the `ds` param when given (a manual run), else the run's logical date
(a scheduled run or a backfill), else, for a run woken by `{name}_ingest` ({woken}), the newest date
the ingest landed.

1. **validate_raw**: Great Expectations checks every raw source partition of `ds`.
   A failing partition is quarantined (never deleted) and the run stops with a message
   naming each column and rule; nothing downstream is written for that date.
2. **wait_for_look_back** (`LookBackSensor`): every day of the features' look-back window
   must have a validated partition; it waits while an earlier day is still being validated
   and fails at once, naming the days, when one was rejected or never delivered.
   **build_features**: point-in-time features on Spark (events strictly before `ds`);
   **refresh_online_store** then puts them in the online store the scoring service reads
   (unless it already holds a newer date).
3. **resolve_champion**: `@champion` resolved to a concrete version once; skipped
   (with everything after it) before the first promotion; fails loudly, naming the alias
   and the version, when a champion was promoted but the alias no longer resolves.
4. **score_batch**: Spark batch scoring into the inference table's `ds` partition.
5. **monitor_drift** (beside scoring): Evidently drift of the day's inputs against the champion's
   training reference; HTML report + MLflow run; updates the drift asset, which
   wakes the `{name}_drift_watch` DAG.
6. **measure_live_performance**: labels that landed today against the scores of
   their label date, per model version. With `monitoring.performance` in the spec,
   **decide_performance_retraining** compares the champion's recent label dates with its bound
   (alerting when it is missed) and **trigger_retraining** starts `{name}_training` with
   `trigger=performance` (one run a day, none within `monitoring.cooldown_days`).

Every write replaces the date's partition whole: reruns and backfills are idempotent
(`airflow backfill create --dag-id {name}_daily --from-date ... --to-date ...`).

Deadline: {deadline}. Every task's OpenLineage events name the partitions and model versions it
read and wrote.
"""

def build_daily_lifecycle(spec):
    """The daily lifecycle DAG of one use case."""
    use_case = spec.name
    assets = lifecycle_assets(use_case)
    timed = spec.scoring.schedule is not None   # else each ingest's landed partitions wake it


    @dag(
        dag_id=f"{spec.name}_daily",
        schedule=spec.scoring.schedule if timed else [assets.landed],
        catchup=False,
        max_active_runs=2,
        default_args=DEFAULT_ARGS,
        tags=dag_tags(spec.name, "daily"),
        doc_md=DOC.format(name=spec.name, woken="this use case has no schedule: every ingest wakes it" if not timed
                          else f"not this use case: it runs on its schedule, `{spec.scoring.schedule}`",
                          deadline=f"a scheduled run not finished by {spec.scoring.deadline} UTC alerts "
                                   f"`deadline_missed` (`scoring.deadline`)" if spec.scoring.deadline else
                                   "none (`scoring.deadline` sets a time of day by which each scheduled run "
                                   "must have finished)"),
        description=f"{spec.name}: validate, featurize, score and monitor one day",
        params={"ds": Param("", type="string", title="Date to run for (YYYY-MM-DD)", pattern=r"^(\d{4}-\d{2}-\d{2})?$",
                            description="Empty: the run's logical date, or the newest date the waking ingest landed.")},
        deadline=daily_deadline(spec),
        **schedule_window(spec, timed),
    )
    def daily_lifecycle():
        @task(outlets=[assets.clean])
        @measured
        @fail_at_once()   # retrying the same bad data cannot help
        def validate_raw(run_id=None) -> dict:
            """Validate every raw source of the day; land it clean or quarantine it."""
            from pipelines import alerts, runtime
            from pipelines.data.validation import DataValidationError
            try:
                return runtime.validate(use_case, run_day(), run_id=run_id)
            except DataValidationError as exc:
                alert(use_case, *alerts.quarantined(use_case, exc.reports))
                raise

        @task(outlets=[assets.features], queue=SPARK_QUEUE)
        @measured
        @fail_at_once()   # a window checked a moment ago lost a day: not retryable
        def build_features() -> int:
            """Point-in-time features for the day on Spark."""
            from airflow.sdk.exceptions import AirflowSkipException

            from pipelines import runtime

            ds = run_day()
            rows = runtime.build_features(use_case, ds)
            if rows == 0:
                raise AirflowSkipException(f"no history before {ds}: nothing to featurize or score")
            return rows

        @task
        @measured
        def refresh_online_store() -> dict:
            """The day's features as the online store the scoring service reads (newest date wins)."""
            from pipelines import runtime
            return runtime.refresh_online_store(use_case, run_day())

        @task
        @measured
        @fail_at_once()   # a champion promoted once and gone now: loud, and retrying cannot help
        def resolve_champion() -> dict:
            """Pin @champion to a concrete model version for this run."""
            from airflow.sdk.exceptions import AirflowSkipException

            from pipelines import runtime

            champion = runtime.resolve_champion(use_case)
            if champion is None:
                raise AirflowSkipException("no champion yet: train and promote a model first")
            return champion

        @task(outlets=[assets.inference], queue=SPARK_QUEUE)
        @measured
        @fail_at_once()   # nothing was written; retrying cannot bring missing model files back
        def score_batch(champion: dict, run_id=None) -> int:
            """Score the day's features with the pinned champion version."""
            from pipelines import runtime
            return runtime.score(use_case, run_day(), champion, run_id)

        @task(outlets=[assets.drift], queue=MODELS_QUEUE)
        @measured
        def monitor_drift(champion: dict, outlet_events=None) -> dict:
            """Evidently drift report and metrics for the day's scoring inputs."""
            from pipelines import runtime
            ds = run_day()
            summary = runtime.monitor_drift(use_case, ds, champion)
            outlet_events[assets.drift].extra = {"ds": ds, "drift_share": summary["drift_share"],
                                                 "model_version": summary["model_version"]}
            return summary

        @task(trigger_rule="none_failed")
        @measured
        def measure_live_performance() -> int:
            """Quality of earlier scores whose labels landed today."""
            from pipelines import runtime
            return len(runtime.live_performance(use_case, run_day()))

        validated = validate_raw()
        look_back = LookBackSensor(task_id="wait_for_look_back", use_case=use_case, mode="reschedule",
                                   poke_interval=10, timeout=30 * 60)
        features = build_features()
        champion = resolve_champion()
        validated >> look_back >> features >> champion
        features >> refresh_online_store()
        scored = score_batch(champion)
        monitor_drift(champion)  # compares the same inputs with the reference: runs beside scoring
        performance = measure_live_performance()
        validated >> performance
        if spec.label.date_column is None:   # a snapshot's labels are about its own day: after its scoring
            scored >> performance
        if spec.monitoring.performance is not None:
            from mlops_airflow.operators import retrain_trigger

            @task.short_circuit
            @measured
            def decide_performance_retraining() -> dict | None:
                """Live performance beyond its bound on the policy's label dates: tell people, and
                request a training (one a day, none within the cooldown)."""
                from pipelines import alerts, runtime
                decision = runtime.performance_decision(use_case, run_day())
                alert(use_case, alerts.performance_low(use_case, decision))
                print(decision["reason"])
                if not decision["retrain"]:
                    return None
                request = runtime.request_retraining(use_case, decision, trigger="performance")
                alert(use_case, alerts.retraining(use_case, request))
                return request

            performance >> decide_performance_retraining() >> retrain_trigger(
                use_case, "trigger_retraining", "decide_performance_retraining", "performance",
                "Retraining on live performance")

    return daily_lifecycle()


for _spec in use_cases():
    build_daily_lifecycle(_spec)
