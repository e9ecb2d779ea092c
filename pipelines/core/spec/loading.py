"""Reading specs: one file or a whole include folder, every problem of a file reported at once,
one line each, naming the file and the key; and the deeper check of the estimator."""
from __future__ import annotations

import copy
import difflib
import importlib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from pipelines.core.environments import Environment
from pipelines.core.spec.sections import ModelSpec
from pipelines.core.spec.use_case import UseCaseSpec
from pipelines.core.spec.vocabulary import SPEC_FILE, CheckKind, FeatureKind, SpecError, TaskType

# ----------------------------------------------------------------- loading
FIXED_KEYS = {"name", "environments", "directory", "environment", "registry_prefix", "model.registered_name"}


def load_spec(path: str | Path, environment: Environment | None = None,
              known_environments: list[str] | None = None) -> UseCaseSpec:
    """Load and check one spec file (or a use-case directory holding ``spec.yaml``), as it is in
    ``environment`` (default: as written): the spec's named overrides for it applied, the
    registered model's name behind the environment's registry prefix.

    Raises :class:`SpecError` listing every problem found."""
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    file = _display(path)
    if not path.exists():
        raise SpecError(file, [("", "spec file not found")])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(file, [("", f"not valid YAML: {exc}")]) from None
    if not isinstance(raw, dict):
        raise SpecError(file, [("", "a spec is a mapping of sections (name, sources, features, ...)")])
    overridden: dict[str, str] = {}
    if environment is not None:
        raw, overridden, problems = _in_environment(raw, environment, known_environments or [environment.name])
        if problems:
            raise SpecError(file, problems)
    try:
        spec = UseCaseSpec.model_validate({**raw, "directory": path.parent})
    except ValidationError as exc:
        raise SpecError(file, [_overridden_key(problem, overridden) for error in exc.errors()
                               for problem in _describe(error)]) from None
    return spec


def _in_environment(raw: dict, environment: Environment, known: list[str]) -> tuple[dict, dict[str, str], list]:
    """``raw`` with the overrides of ``environment`` applied (a deep copy), which keys came from
    an override (key -> where it was written), and the problems of the overrides section."""
    overrides = raw.get("environments") or {}
    if not isinstance(overrides, dict):
        return raw, {}, []   # reported by validation
    problems = [(f"environments.{name}", f"not an environment; the environments are {', '.join(known)}")
                for name in overrides if name not in known]
    mine = overrides.get(environment.name) or {}
    raw = copy.deepcopy(raw)
    overridden: dict[str, str] = {}
    for key, value in (mine.items() if isinstance(mine, dict) else []):
        where = f"environments.{environment.name}.{key}"
        if key in FIXED_KEYS or not all(part.isidentifier() for part in str(key).split(".")):
            problems.append((where, "cannot differ between environments" if key in FIXED_KEYS
                             else "not a dotted key of the spec (like training.max_rows)"))
            continue
        *sections, last = str(key).split(".")
        target = raw
        for part in sections:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                problems.append((where, f"{part} is not a section"))
                break
        else:
            target[last] = value
            overridden[str(key)] = where
    if isinstance(raw.get("model"), dict) and isinstance(raw["model"].get("registered_name"), str):
        raw["model"]["registered_name"] = environment.registry_prefix + raw["model"]["registered_name"]
    raw.update(environment=environment.name, registry_prefix=environment.registry_prefix)
    return raw, overridden, problems


def _overridden_key(problem: tuple[str, str], overridden: dict[str, str]) -> tuple[str, str]:
    """A problem at a key an environment override wrote, named where the override is written."""
    key, message = problem
    for written, where in overridden.items():
        if key == written or key.startswith(written + ".") or key.startswith(written + "["):
            return where + key[len(written):], message
    return problem


def discover_specs(include_dir: str | Path, environment: Environment | None = None,
                   known_environments: list[str] | None = None) -> list[UseCaseSpec]:
    """All specs under ``include_dir`` (one per sub-directory holding ``spec.yaml``), by name.
    Raises on the first broken one: see :func:`discover_specs_and_errors` to keep the rest."""
    specs, errors = discover_specs_and_errors(include_dir, environment, known_environments)
    if errors:
        raise errors[0]
    return specs


def discover_specs_and_errors(include_dir: str | Path, environment: Environment | None = None,
                              known_environments: list[str] | None = None
                              ) -> tuple[list[UseCaseSpec], list[SpecError]]:
    """The specs that load (in ``environment``, see :func:`load_spec`), by name, and the errors of
    those that do not (a broken spec breaks only its own use case)."""
    specs, errors = [], []
    for path in sorted(Path(include_dir).glob(f"*/{SPEC_FILE}")):
        try:
            specs.append(load_spec(path, environment, known_environments))
        except SpecError as exc:
            errors.append(exc)
    return sorted(specs, key=lambda s: s.name), errors


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------- messages
def _key(loc: tuple) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        elif (part in FeatureKind.__members__.values() or part in CheckKind.__members__.values()) \
                and parts and parts[-1].endswith("]"):
            continue   # the discriminator's tag pydantic adds to the location
        else:
            parts.append(str(part))
    return ".".join(parts)


def _describe(error: dict) -> list[tuple[str, str]]:
    """Readable ``(key, message)`` problems of a pydantic error: a section's broken rules
    (:func:`pipelines.core.spec.sections.broken`) give one each, any other error one."""
    loc, kind = tuple(error["loc"]), error["type"]
    if kind == "spec_rules":
        return [(_key(loc + tuple(at.split(".")) if at else loc), message)
                for at, message in error["ctx"]["problems"]]
    return [_describe_one(error, loc, kind)]


def _describe_one(error: dict, loc: tuple, kind: str) -> tuple[str, str]:
    key = _key(loc)
    if kind == "extra_forbidden":
        known = _known_keys(UseCaseSpec, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else (f"; expected one of {sorted(known)}" if known else "")
        return key, f"unknown key{hint}"
    if kind == "missing":
        return key, "required key is missing"
    if kind == "union_tag_invalid":
        kinds = CheckKind if "checks" in loc else FeatureKind
        return key, f"unknown kind {error['input'].get('kind')!r}; kinds are {[k.value for k in kinds]}"
    message = error["msg"]
    if "input" in error and not isinstance(error["input"], dict | list):
        message += f", got {error['input']!r}"
    return key, message


def _known_keys(model: Any, loc: tuple) -> list[str]:
    """Field names of the model found at ``loc`` (walking dicts, lists and tagged unions)."""
    current = model
    for part in loc:
        current = _inner(current, part)
        if current is None:
            return []
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _inner(current: Any, part: Any) -> Any:
    if isinstance(current, type) and issubclass(current, BaseModel):
        field = current.model_fields.get(str(part))
        return _strip(field.annotation) if field else None
    origin, args = typing.get_origin(current), typing.get_args(current)
    if origin in (dict, list):
        return _strip(args[-1])
    if origin in (Union, types.UnionType):   # a tagged feature group: pydantic puts the tag in the location
        return next((m for m in map(_strip, args) if typing.get_args(m.model_fields["kind"].annotation)[0] == part),
                    None)
    return None


def _strip(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` to ``X``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType) and type(None) in typing.get_args(annotation):
            rest = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = rest[0] if len(rest) == 1 else Union[tuple(rest)]
        else:
            return annotation


# ----------------------------------------------------------------- the estimator (imports scikit-learn)
def estimator_class(model: ModelSpec):
    """The class ``model.estimator`` names; SpecError when it cannot be imported."""

    module_name, _, class_name = model.estimator.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise SpecError("spec", [("model.estimator", f"{model.estimator!r} cannot be imported")]) from None


def check_estimator(model: ModelSpec) -> list[tuple[str, str]]:
    """Problems of a ``model`` section: the estimator imports, suits the task, knows every parameter."""
    from sklearn.base import is_classifier, is_regressor

    try:
        cls = estimator_class(model)
    except SpecError as exc:
        return exc.problems
    try:
        instance = cls()
        known = set(instance.get_params())
    except Exception as exc:   # not a scikit-learn estimator
        return [("model.estimator", f"{model.estimator} is not a scikit-learn estimator ({exc})")]
    problems = []
    kind = "classifier" if is_classifier(instance) else "regressor" if is_regressor(instance) else "transformer"
    wanted = "regressor" if model.task is TaskType.REGRESSION else "classifier"
    if kind != wanted:
        problems.append(("model.estimator", f"{cls.__name__} is a {kind}; a {model.task.value} task needs a {wanted}"))
    for section, names in (("params", model.params), ("search_space", model.search_space)):
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                problems.append((f"model.{section}.{name}", f"unknown parameter of {cls.__name__}{hint}"))
    for name, values in model.search_space.items():
        if not values:
            problems.append((f"model.search_space.{name}", "an empty list of values to search"))
    return problems


def check_spec(path: str | Path, environments: list[Environment] | None = None) -> list[str]:
    """Every problem of one spec, of its structure and of its estimator, as printable lines
    (the estimator is checked whenever the ``model`` section itself is well-formed); with
    ``environments``, the spec as each of them reads it too (its overrides applied)."""
    path = Path(path)
    path = path / SPEC_FILE if path.is_dir() else path
    problems: list[tuple[str, str]] = []
    try:
        model = load_spec(path).model
        names = [e.name for e in environments or []]
        for environment in environments or []:
            try:
                load_spec(path, environment, names)
            except SpecError as exc:
                problems += [p for p in exc.problems if p not in problems]
    except SpecError as exc:
        problems += exc.problems
        raw = yaml.safe_load(path.read_text()) if path.exists() else None
        try:
            model = ModelSpec.model_validate(raw["model"]) if isinstance(raw, dict) else None
        except (ValidationError, KeyError, TypeError, yaml.YAMLError):
            model = None
    if model is not None:
        problems += check_estimator(model)
    raw = yaml.safe_load(path.read_text()) if path.exists() else None
    expectations = path.parent / str((raw or {}).get("expectations", "expectations.yaml")) if isinstance(raw, dict) else None
    if expectations is not None and not expectations.exists():
        problems.append(("expectations", f"{_display(expectations)} not found (write the rules, or an empty "
                                         f"file for none)"))
    return str(SpecError(_display(path), problems)).splitlines() if problems else []
