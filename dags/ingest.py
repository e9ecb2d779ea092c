"""Ingest DAG per use case: land the files dropped in its inbox, wake the daily lifecycle."""
from __future__ import annotations

from airflow.sdk import dag, task

from mlops_airflow.common import DEFAULT_ARGS, alert, dag_tags, inbox_asset, lifecycle_assets, measured, use_cases

DOC = """
### {name}: ingest

Event-driven: an `AssetWatcher` in the triggerer watches the inbox `{inbox}` and every new file
there queues a run (no schedule, no polling task). Drop CSV or Parquet files into
`{inbox}/<source>/`, one folder per source of the spec ({sources}). A snapshot source takes
its as-of date from a `YYYY-MM-DD` in the file name (else the day the file was written).
Write slow copies under a name ending in `.tmp` and rename them when done.

1. **land_inbox**: checks every settled file against the spec (`mlops ingest`'s rules), lands
   the good ones as raw daily partitions (each touched day replaced whole) and moves them to
   `archive/<source>/`; a refused file goes to `rejected/<source>/` with `<file>.error.txt`
   naming the column, row and value.
2. **announce_landed**: updates the `{name}_landed` asset with the dates landed; {woken}
3. **report_rejected**: fails the run, listing each refused file and why, when any was refused
   (the files that were fine have landed and been announced all the same).
"""


def build_ingest(spec):
    """The ingest DAG of one use case."""
    use_case = spec.name
    assets = lifecycle_assets(use_case)
    inbox = inbox_asset(use_case)
    woken = ("it wakes `{0}_daily` for the newest of them." if spec.scoring.schedule is None else
             "`{0}_daily` runs on its own schedule and finds them there.").format(use_case)

    @dag(
        dag_id=f"{use_case}_ingest",
        schedule=[inbox],
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=dag_tags(use_case, "ingest"),
        doc_md=DOC.format(name=use_case, inbox=inbox.watchers[0].trigger.directory, sources=", ".join(spec.sources),
                          woken=woken),
        description=f"{use_case}: land files dropped in the inbox as raw partitions",
        start_date=None,
    )
    def ingest():
        @task
        @measured
        def land_inbox() -> dict:
            """Land every settled file of the inbox; archive it, or reject it with its error."""
            from pipelines import runtime
            return runtime.ingest_inbox(use_case)

        @task(outlets=[assets.landed])
        @measured
        def announce_landed(result: dict, outlet_events=None) -> list[str]:
            """Tell the daily lifecycle which dates landed (skipped when none did)."""
            from airflow.sdk.exceptions import AirflowSkipException

            if not result["dates"]:
                raise AirflowSkipException("nothing landed: no file was fine, or an earlier run took them")
            outlet_events[assets.landed].extra = {"ds": result["dates"][-1], "dates": result["dates"]}
            return result["dates"]

        @task
        @measured
        def report_rejected(result: dict) -> int:
            """Fail the run, naming each refused file and its error, when any was refused."""
            from airflow.sdk.exceptions import AirflowFailException

            from pipelines import alerts
            if result["rejected"]:
                alert(use_case, *alerts.inbox_refused(use_case, result["rejected"]))
                raise AirflowFailException(f"{len(result['rejected'])} file(s) refused (each moved to rejected/ with "
                                           "its error beside it):\n" + "\n".join(
                                               f"{path}: {error}" for path, error in result["rejected"].items()))
            return sum(len(files) for files in result["landed"].values())

        landed = land_inbox()
        announce_landed(landed)
        report_rejected(landed)

    return ingest()


for _spec in use_cases():
    build_ingest(_spec)
