"""Deployment settings: where the lake, MLflow and Spark are. Environment variables only.

The embedded default keeps all state under ``$MLOPS_HOME`` (``<project>/.state``):
a Parquet lake, MLflow on SQLite with local artifacts, Spark ``local[2]``. Pointing the
same code at a cluster is a matter of setting the variables below; nothing else changes.
An empty variable counts as unset; a value that cannot be read (``MLOPS_RETRY_DELAY_S=soon``)
is refused in one line naming the variable (pydantic-settings reads and checks them).

=========================  ==========================================================
``MLOPS_HOME``             state root (default ``<project>/.state``)
``MLOPS_ENV``              the environment this process runs in (``dev``, ``staging``, ``prod``: see
                           :mod:`pipelines.core.environments`); its state lies under its own
                           home (dev: ``$MLOPS_HOME``, the others ``$MLOPS_HOME/envs/<name>``)
``MLOPS_LAKE``             Parquet lake root (default ``<environment home>/lake``)
``MLOPS_REPORTS``          drift reports (default ``<environment home>/reports``)
``MLOPS_INBOX``            drop folders of the ingest DAGs, one per use case (default ``<environment home>/inbox``)
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
                           (default ``<environment home>/online``)
``MLOPS_SERVING_POLL_S``   how often the scoring service checks the registry alias (default 2)
=========================  ==========================================================

The four paths of an environment (lake, reports, inbox, online store) set by variable belong to
the process's own environment: code acting on another one (a release moving a version into
staging, :func:`pipelines.core.environments.acting_in`) uses that one's home.
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

from pipelines.core.environments import Environment, EnvironmentsError, acting_environment, load_environments
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
    env: str | None = None                       # the environment file's default (dev)
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
        try:
            environments = load_environments(self.include)
            env = environments.get(self.env or environments.default)
        except EnvironmentsError as exc:
            raise ValueError(str(exc)) from None
        state = env.state_home(home)
        defaults = {"home": home, "env": env.name, "lake": state / "lake", "reports": state / "reports",
                    "inbox": state / "inbox", "mlflow_tracking_uri": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
                    "mlflow_artifacts": str(home / "mlflow" / "artifacts"), "online_store": state / "online"}
        for name, default in defaults.items():
            if name in ("home", "env") or getattr(self, name) is None:
                object.__setattr__(self, name, default)   # frozen: set once, while it is made
        return self

    @property
    def environment(self) -> Environment:
        """The environment these settings are of (its registry prefix, its approval rule)."""
        return load_environments(self.include).get(self.env)

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
            raise SettingsError("; ".join(
                f"{_variable(e['loc'][0])}: {e['msg']}, got {e.get('input')!r}" if e["loc"]
                else f"MLOPS_ENV: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())) from None
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
    """Settings from the process's environment variables (made again only when one of them
    changed), of the environment the code acts in (:func:`~pipelines.core.environments.acting_in`)."""
    variables = {k: v for k, v in os.environ.items() if k in _VARIABLES or k.startswith("MLOPS_")}
    acting = acting_environment()
    if acting is not None and acting != _own_environment(variables):
        variables = {k: v for k, v in variables.items() if k not in _OWN_PATHS} | {"MLOPS_ENV": acting}
    return _settings_of(tuple(sorted(variables.items())))


_VARIABLES = {"MLFLOW_TRACKING_URI", "SPARK_REMOTE"}
_OWN_PATHS = {"MLOPS_LAKE", "MLOPS_REPORTS", "MLOPS_INBOX", "MLOPS_ONLINE_STORE"}   # the process's own environment's


def _own_environment(variables: Mapping[str, str]) -> str:
    own = variables.get("MLOPS_ENV")
    if own:
        return own
    return load_environments(Path(variables.get("MLOPS_INCLUDE") or PROJECT_ROOT / "include")).default


@lru_cache(maxsize=16)
def _settings_of(variables: tuple[tuple[str, str], ...]) -> Settings:
    return Settings.from_env(dict(variables))


def child_environment() -> dict[str, str]:
    """Variables a child process needs to act where this code acts (its environment, that
    environment's paths): a staging scoring service started by a release from a dev process."""
    current = settings()
    return {"MLOPS_ENV": current.env, "MLOPS_LAKE": str(current.lake), "MLOPS_REPORTS": str(current.reports),
            "MLOPS_INBOX": str(current.inbox), "MLOPS_ONLINE_STORE": str(current.online_store)}
