"""Deployment settings: where the lake, MLflow and Spark are. Environment variables only.

The embedded default keeps all state under ``$MLOPS_HOME`` (``<project>/.state``):
a Parquet lake, MLflow on SQLite with local artifacts, Spark ``local[2]``. Pointing the
same code at a cluster is a matter of setting the variables below; nothing else changes.

=========================  ==========================================================
``MLOPS_HOME``             state root (default ``<project>/.state``)
``MLOPS_LAKE``             Parquet lake root (default ``$MLOPS_HOME/lake``)
``MLOPS_REPORTS``          drift reports (default ``$MLOPS_HOME/reports``)
``MLOPS_INBOX``            drop folders of the ingest DAGs, one per use case (default ``$MLOPS_HOME/inbox``)
``MLOPS_INCLUDE``          folder of use-case specs (default ``<project>/include``)
``MLFLOW_TRACKING_URI``    default ``sqlite:///$MLOPS_HOME/mlflow/mlflow.db``
``MLOPS_MLFLOW_ARTIFACTS`` artifact root for new experiments (default ``$MLOPS_HOME/mlflow/artifacts``)
``SPARK_REMOTE``           Spark Connect URL (``sc://host:15002``); wins over the master
``MLOPS_SPARK_MASTER``     classic Spark master (default ``local[2]``; ``spark://host:7077``)
``MLOPS_SPARK_SHARED_SESSION`` ``1`` (default): tasks share one Spark Connect session per hour;
                           ``0``: a session of its own per task process
``MLOPS_MODEL_THREADS``    threads a model may use while it is fitted (OpenMP, BLAS); unset: the
                           library's default (every core)
``MLOPS_SEARCH_JOBS``      candidates (grid) or trials (Optuna) of a hyperparameter search run at
                           once, in threads (default 1: one after the other)
``MLOPS_SCHEDULE_END``     optional last date the scheduled DAGs may run for (YYYY-MM-DD)
``MLOPS_RETRY_DELAY_S``    first retry delay of a failed task, doubled on each retry (default 20)
``MLOPS_ONLINE_STORE``     folder of the online feature stores, one SQLite file per use case
                           (default ``$MLOPS_HOME/online``)
``MLOPS_SERVING_POLL_S``   how often the scoring service checks the registry alias (default 2)
=========================  ==========================================================
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]   # pipelines/core/config.py -> the project


@dataclass(frozen=True)
class Settings:
    home: Path
    lake: Path
    reports: Path
    inbox: Path
    include: Path
    mlflow_tracking_uri: str
    mlflow_artifacts: str
    spark_remote: str | None
    spark_master: str
    schedule_end: str | None
    retry_delay_s: float = 20.0
    spark_shared_session: bool = True
    model_threads: int | None = None
    search_jobs: int = 1
    online_store: Path | None = None
    serving_poll_s: float = 2.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        home = Path(env.get("MLOPS_HOME") or PROJECT_ROOT / ".state").resolve()
        return cls(
            home=home,
            lake=Path(env.get("MLOPS_LAKE") or home / "lake"),
            reports=Path(env.get("MLOPS_REPORTS") or home / "reports"),
            inbox=Path(env.get("MLOPS_INBOX") or home / "inbox"),
            include=Path(env.get("MLOPS_INCLUDE") or PROJECT_ROOT / "include"),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
            mlflow_artifacts=env.get("MLOPS_MLFLOW_ARTIFACTS") or str(home / "mlflow" / "artifacts"),
            spark_remote=env.get("SPARK_REMOTE") or None,
            spark_master=env.get("MLOPS_SPARK_MASTER") or "local[2]",
            schedule_end=env.get("MLOPS_SCHEDULE_END") or None,
            retry_delay_s=float(env.get("MLOPS_RETRY_DELAY_S") or 20.0),
            spark_shared_session=(env.get("MLOPS_SPARK_SHARED_SESSION") or "1").strip().lower()
            not in ("0", "false", "no", "off"),
            model_threads=int(env["MLOPS_MODEL_THREADS"]) if env.get("MLOPS_MODEL_THREADS") else None,
            search_jobs=max(1, int(env.get("MLOPS_SEARCH_JOBS") or 1)),
            online_store=Path(env.get("MLOPS_ONLINE_STORE") or home / "online"),
            serving_poll_s=float(env.get("MLOPS_SERVING_POLL_S") or 2.0),
        )


def settings() -> Settings:
    """Settings from the current environment."""
    return Settings.from_env()
