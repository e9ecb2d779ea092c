"""The use cases of this deployment: their specs from the include folder, and the lake.

Every layer above reads specs through :func:`spec`: a name that is not a use-case name is
refused before any path is built from it, and a broken spec breaks only its own use case.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pipelines.core.config import settings
from pipelines.core.environments import ENVIRONMENTS_FILE, load_environments
from pipelines.core.errors import Refusal
from pipelines.core.lake import Lake
from pipelines.core.spec import USE_CASE_NAME, SpecError, UseCaseSpec, discover_specs_and_errors


class UnknownUseCase(Refusal, KeyError):
    """No spec of that name under the include folder."""

    def __str__(self) -> str:
        return str(self.args[0])


@lru_cache(maxsize=64)
def _load_specs(include: str, stamp: tuple, env: str) -> tuple[dict[str, UseCaseSpec], dict[str, SpecError]]:
    """The specs that load in environment ``env``, by name, and the errors of those that do not,
    by folder name."""
    environments = load_environments(Path(include))
    specs, errors = discover_specs_and_errors(include, environments.get(env), environments.names)
    return {s.name: s for s in specs}, {Path(e.file).parent.name: e for e in errors}


def forget_specs() -> None:
    """Read every spec again on the next call (a test or a process that rewrote specs in place)."""
    _load_specs.cache_clear()


def _specs_and_errors(include: str) -> tuple[dict[str, UseCaseSpec], dict[str, SpecError]]:
    """The include folder's specs, read again when a spec or expectation file changed (a use case
    drafted by `mlops init` in the same process is seen at once)."""
    files = sorted(Path(include).glob("*/*.yaml")) + [Path(include) / ENVIRONMENTS_FILE]
    stamp = tuple((str(f), f.stat().st_mtime_ns) for f in files if f.exists())
    return _load_specs(include, stamp, settings().env)


def _specs(include: str) -> dict[str, UseCaseSpec]:
    return _specs_and_errors(include)[0]


def spec(use_case: str) -> UseCaseSpec:
    """The spec of ``use_case`` from the configured include folder. A name that is not a use-case
    name is refused before any path is built from it; a broken spec breaks only its own use case."""
    if not isinstance(use_case, str) or not USE_CASE_NAME.fullmatch(use_case):
        raise UnknownUseCase(f"{use_case!r} is not a use-case name (lower-case letters, digits and _, "
                             f"starting with a letter)")
    specs, errors = _specs_and_errors(str(settings().include))
    if use_case in specs:
        return specs[use_case]
    if use_case in errors:
        raise errors[use_case]
    raise UnknownUseCase(f"unknown use case {use_case!r}; specs found: {sorted(specs)} in {settings().include}")


def use_case_names() -> list[str]:
    """Every use case of the configured include folder whose spec loads."""
    return sorted(_specs(str(settings().include)))


def lake() -> Lake:
    return Lake(settings().lake)
