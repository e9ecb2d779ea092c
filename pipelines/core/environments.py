"""Environments (dev, staging, prod): where each keeps its state and models, and what a release
into it requires. Declared once in ``<include>/environments.yaml``; without that file the
embedded defaults below hold. ``MLOPS_ENV`` names the environment a process runs in (default:
the file's ``default``, ``dev``).

Each environment has:

``home``            its state folder (lake, online store, inbox, reports), relative to
                    ``MLOPS_HOME`` or absolute; dev's is ``MLOPS_HOME`` itself
``registry_prefix`` put before every registered model and experiment name: dev's ``churn_classifier``
                    is staging's ``staging.churn_classifier`` and prod's ``prod.churn_classifier``
                    in the one MLflow registry (the catalogs of a Unity-Catalog-style registry)
``approval``        ``required``: a person approves each release into it (prod); ``none``

The order of the file is the release path: a version moves from each environment to the next.
A use case's spec may differ between environments only by the named keys under its own
``environments:`` section (``prod: {training.max_rows: 500000}``).
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.core.errors import Refusal

ENVIRONMENTS_FILE = "environments.yaml"
ENVIRONMENT_NAME = r"^[a-z][a-z0-9_]{0,30}$"
# the environment a block of code acts on, set by :func:`acting_in` (the release acts on staging
# and prod from one process); None: the process's own (MLOPS_ENV)
_ACTING_IN: ContextVar[str | None] = ContextVar("acting_in", default=None)


class EnvironmentsError(Refusal, ValueError):
    """The environments file is broken, or an environment that is not in it was asked for."""


class Environment(BaseModel):
    """One environment: its state folder, its registry prefix, what a release into it needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=ENVIRONMENT_NAME)
    home: Path
    registry_prefix: str = Field("", pattern=r"^([a-z][a-z0-9_]*\.)?$")
    approval: Literal["none", "required"] = "none"
    description: str = ""

    def state_home(self, mlops_home: Path) -> Path:
        return self.home if self.home.is_absolute() else (mlops_home / self.home)


class Environments(BaseModel):
    """Every environment, in release order, and the one a process runs in without MLOPS_ENV."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str
    environments: list[Environment] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _named(cls, raw):
        """``environments`` is a mapping of name to settings in the file; a list of records here."""
        if isinstance(raw, dict) and isinstance(raw.get("environments"), dict):
            listed = [{"name": name, **(body or {})} if isinstance(body, dict | None) else body
                      for name, body in raw["environments"].items()]
            for item in listed:
                if isinstance(item, dict):
                    item.setdefault("home", "." if item["name"] == raw.get("default") else f"envs/{item['name']}")
            return {**raw, "environments": listed}
        return raw

    @model_validator(mode="after")
    def _consistent(self):
        names = [e.name for e in self.environments]
        if self.default not in names:
            raise ValueError(f"default {self.default!r} is not one of the environments ({', '.join(names)})")
        prefixes = [e.registry_prefix for e in self.environments]
        homes = [str(e.home) for e in self.environments]
        if len(set(prefixes)) != len(prefixes) or len(set(homes)) != len(homes):
            raise ValueError("each environment needs a registry_prefix and a home of its own (they would share "
                             "models or state)")
        return self

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.environments]

    def get(self, name: str) -> Environment:
        for environment in self.environments:
            if environment.name == name:
                return environment
        raise EnvironmentsError(f"{name!r} is not an environment; the environments are "
                                f"{', '.join(self.names)}")

    def before(self, name: str) -> Environment | None:
        """The environment a release into ``name`` comes from (None for the first)."""
        index = self.names.index(self.get(name).name)
        return self.environments[index - 1] if index else None

    def after(self, name: str) -> Environment | None:
        """The environment a release from ``name`` goes to (None for the last)."""
        index = self.names.index(self.get(name).name)
        return self.environments[index + 1] if index + 1 < len(self.environments) else None

    def is_first(self, name: str) -> bool:
        return self.get(name).name == self.names[0]

    def is_last(self, name: str) -> bool:
        return self.get(name).name == self.names[-1]


EMBEDDED = {
    "default": "dev",
    "environments": {
        "dev": {"home": ".", "registry_prefix": "", "description": "trains and experiments"},
        "staging": {"home": "envs/staging", "registry_prefix": "staging.",
                    "description": "tests a release on its own data before prod"},
        "prod": {"home": "envs/prod", "registry_prefix": "prod.", "approval": "required",
                 "description": "scores and serves; a release needs a person's approval"},
    },
}


def load_environments(include: Path) -> Environments:
    """The environments of ``include/environments.yaml`` (the embedded defaults without it); a
    broken file is one line per problem, naming the file and key."""
    path = Path(include) / ENVIRONMENTS_FILE
    stamp = path.stat().st_mtime_ns if path.is_file() else None
    return _load(str(path), stamp)


@lru_cache(maxsize=8)
def _load(path: str, stamp: int | None) -> Environments:
    raw = EMBEDDED
    if stamp is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            raise EnvironmentsError(f"{path}: not valid YAML: {exc}") from None
    try:
        return Environments.model_validate(raw)
    except ValidationError as exc:
        names = list(raw["environments"]) if isinstance(raw, dict) and isinstance(raw.get("environments"), dict) else []
        raise EnvironmentsError("\n".join(f"{path}: {_key(e['loc'], names)}: {e['msg'].removeprefix('Value error, ')}"
                                           for e in exc.errors())) from None


def _key(loc: tuple, names: list[str]) -> str:
    """An error's location, an environment named rather than numbered (``environments.prod.approval``)."""
    parts = [str(names[p]) if i == 1 and loc[0] == "environments" and isinstance(p, int) and p < len(names) else str(p)
             for i, p in enumerate(loc)]
    return ".".join(parts) or "(file)"


def acting_environment() -> str | None:
    """The environment :func:`acting_in` set for this block of code, if any."""
    return _ACTING_IN.get()


@contextlib.contextmanager
def acting_in(name: str | None) -> Iterator[None]:
    """Act on environment ``name`` inside the block (``None``: the process's own): settings, specs,
    lake and registry names all follow. The release DAG moves a version dev -> staging -> prod so."""
    token = _ACTING_IN.set(name)
    try:
        yield
    finally:
        _ACTING_IN.reset(token)
