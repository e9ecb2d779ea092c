"""Deployment settings: where the lake, MLflow and Spark are. Environment variables only.

The embedded default keeps all state under ``$MLOPS_HOME`` (``<project>/.state``):
a Parquet lake, MLflow on SQLite with local artifacts, Spark ``local[2]``. Pointing the
same code at a cluster is a matter of setting the variables below; nothing else changes.
An empty variable counts as unset; a value that cannot be read (``MLOPS_RETRY_DELAY_S=soon``)
is refused in one line naming the variable (pydantic-settings reads and checks them).

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
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from pipelines.core.errors import Refusal

PROJECT_ROOT = Path(__file__).resolve().parents[2]   # pipelines/core/config.py -> the project
_GIVEN_ENV: ContextVar[Mapping[str, str] | None] = ContextVar("given_env", default=None)


class SettingsError(Refusal, ValueError):
    """An environment variable of the settings has a value that cannot be read."""


class Settings(BaseSettings):
    """The deployment's settings, each from its environment variable (``MLOPS_<FIELD>`` unless
    named otherwise); empty means unset. Paths left unset lie under ``home``."""

    model_config = SettingsConfigDict(env_prefix="MLOPS_", frozen=True, extra="ignore", env_ignore_empty=True)

    home: Path = PROJECT_ROOT / ".state"
    lake: Path | None = None                     # $MLOPS_HOME/lake
    reports: Path | None = None                  # $MLOPS_HOME/reports
    inbox: Path | None = None                    # $MLOPS_HOME/inbox
    include: Path = PROJECT_ROOT / "include"
    mlflow_tracking_uri: str | None = Field(None, validation_alias="MLFLOW_TRACKING_URI")   # SQLite under home
    mlflow_artifacts: str | None = None          # $MLOPS_HOME/mlflow/artifacts
    spark_remote: str | None = Field(None, validation_alias="SPARK_REMOTE")
    spark_master: str = "local[2]"
    schedule_end: str | None = None
    retry_delay_s: float = Field(20.0, ge=0)
    spark_shared_session: bool = True
    model_threads: int | None = Field(None, ge=1)
    search_jobs: int = 1
    online_store: Path | None = None             # $MLOPS_HOME/online
    serving_poll_s: float = Field(2.0, gt=0)

    @field_validator("search_jobs")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        return max(1, value)

    @model_validator(mode="after")
    def _under_home(self) -> "Settings":
        home = self.home.resolve()
        defaults = {"home": home, "lake": home / "lake", "reports": home / "reports", "inbox": home / "inbox",
                    "mlflow_tracking_uri": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
                    "mlflow_artifacts": str(home / "mlflow" / "artifacts"), "online_store": home / "online"}
        for name, default in defaults.items():
            if name == "home" or getattr(self, name) is None:
                object.__setattr__(self, name, default)   # frozen: set once, while it is made
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        given = _GIVEN_ENV.get()
        return (init_settings, _MappingSource(settings_cls, given) if given is not None else env_settings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """The settings of ``env`` (default: this process's environment); one line naming the
        variable if a value cannot be read."""
        token = _GIVEN_ENV.set(os.environ if env is None else env)
        try:
            return cls()
        except ValidationError as exc:
            raise SettingsError("; ".join(f"{_variable(e['loc'][0])}: {e['msg']}, got {e.get('input')!r}"
                                          for e in exc.errors())) from None
        finally:
            _GIVEN_ENV.reset(token)


class _MappingSource(EnvSettingsSource):
    """The environment-variable source over a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls, env: Mapping[str, str]):
        self._given = env
        super().__init__(settings_cls)

    def _load_env_vars(self):
        return parse_env_vars(self._given, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def _variable(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias if field in Settings.model_fields else None
    return alias if isinstance(alias, str) else f"MLOPS_{field.upper()}"


def settings() -> Settings:
    """Settings from the current environment (made again only when one of its variables changed)."""
    return _settings_of(tuple(sorted((k, v) for k, v in os.environ.items() if k in _VARIABLES or k.startswith("MLOPS_"))))


_VARIABLES = {"MLFLOW_TRACKING_URI", "SPARK_REMOTE"}


@lru_cache(maxsize=16)
def _settings_of(variables: tuple[tuple[str, str], ...]) -> Settings:
    return Settings.from_env(dict(variables))
