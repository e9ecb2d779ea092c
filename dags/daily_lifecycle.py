"""Daily lifecycle DAG per use case: validate raw data, build features, score, monitor."""
from __future__ import annotations

from airflow.sdk import dag, task

from mlops_airflow.common import DEFAULT_ARGS, lifecycle_assets, schedule_window, use_cases

DOC = """
### {name}: daily lifecycle

For the run's date `ds`:

1. **validate_raw**: Great Expectations checks every raw source partition of `ds`.
   A failing partition is quarantined (never deleted) and the run stops with a message
   naming each column and rule; nothing downstream is written for that date.
2. **build_features**: point-in-time features on Spark (events strictly before `ds`).
3. **resolve_champion**: `@champion` resolved to a concrete version once; skipped
   (with everything after it) before the first promotion.
4. **score_batch**: Spark batch scoring into the inference table's `ds` partition.
5. **monitor_drift** (beside scoring): Evidently drift of the day's inputs against the champion's
   training reference; HTML report + MLflow run; updates the drift asset, which
   wakes the `{name}_drift_watch` DAG.
6. **measure_live_performance**: labels that landed today against the scores of
   their label date, per model version.

Every write replaces the date's partition whole: reruns and backfills are idempotent
(`airflow backfill create --dag-id {name}_daily --from-date ... --to-date ...`).
"""

def build_daily_lifecycle(spec):
    """The daily lifecycle DAG of one use case."""
    use_case = spec.name
    assets = lifecycle_assets(use_case)


    @dag(
        dag_id=f"{spec.name}_daily",
        schedule=spec.scoring.schedule,
        catchup=False,
        max_active_runs=2,
        default_args=DEFAULT_ARGS,
        tags=["mlops", spec.name, "daily"],
        doc_md=DOC.format(name=spec.name),
        description=f"{spec.name}: validate, featurize, score and monitor one day",
        **schedule_window(spec),
    )
    def daily_lifecycle():
        @task(outlets=[assets.clean])
        def validate_raw(ds=None, run_id=None) -> dict:
            """Validate every raw source of the day; land it clean or quarantine it."""
            from airflow.exceptions import AirflowFailException

            from pipelines import runtime
            from pipelines.validation import DataValidationError

            try:
                return runtime.validate(use_case, ds, run_id=run_id)
            except DataValidationError as exc:  # retrying the same bad data cannot help
                raise AirflowFailException(str(exc)) from None

        @task(outlets=[assets.features])
        def build_features(ds=None) -> int:
            """Point-in-time features for the day on Spark."""
            from airflow.exceptions import AirflowSkipException

            from pipelines import runtime

            rows = runtime.build_features(use_case, ds)
            if rows == 0:
                raise AirflowSkipException(f"no history before {ds}: nothing to featurize or score")
            return rows

        @task
        def resolve_champion() -> dict:
            """Pin @champion to a concrete model version for this run."""
            from airflow.exceptions import AirflowSkipException

            from pipelines import runtime

            champion = runtime.resolve_champion(use_case)
            if champion is None:
                raise AirflowSkipException("no champion yet: train and promote a model first")
            return champion

        @task(outlets=[assets.inference])
        def score_batch(champion: dict, ds=None, run_id=None) -> int:
            """Score the day's features with the pinned champion version."""
            from pipelines import runtime

            return runtime.score(use_case, ds, champion, run_id)

        @task(outlets=[assets.drift])
        def monitor_drift(champion: dict, ds=None, outlet_events=None) -> dict:
            """Evidently drift report and metrics for the day's scoring inputs."""
            from pipelines import runtime

            summary = runtime.monitor_drift(use_case, ds, champion)
            outlet_events[assets.drift].extra = {"ds": ds, "drift_share": summary["drift_share"],
                                                 "model_version": summary["model_version"]}
            return summary

        @task
        def measure_live_performance(ds=None) -> int:
            """Quality of earlier scores whose labels landed today."""
            from pipelines import runtime

            return len(runtime.live_performance(use_case, ds))

        validated = validate_raw()
        features = build_features()
        champion = resolve_champion()
        validated >> features >> champion
        score_batch(champion)
        monitor_drift(champion)  # compares the same inputs with the reference: runs beside scoring
        validated >> measure_live_performance()

    return daily_lifecycle()


for _spec in use_cases():
    build_daily_lifecycle(_spec)
