"""Use-case specs: the one place that describes a use case (sources, features, model, rules).

A spec is ``include/<name>/spec.yaml``. Loading it needs only PyYAML, so DAG files can
discover specs while parsing without slowing the parse down.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

SPEC_FILE = "spec.yaml"


class SpecError(ValueError):
    """A spec file is missing a section, has an unknown key or a value of the wrong kind."""


def _build(cls, data: dict[str, Any] | None, where: str):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys with a clear message."""
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:  # a required key is missing
        raise SpecError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class SourceSpec:
    """A raw source: its key, event timestamp, partitioning timestamp and column types."""

    key: list[str]
    timestamp: str
    partition_by: str
    columns: dict[str, str]
    min_rows: int = 1   # rows every daily delivery has; 0 for sources with legitimately empty days


@dataclass(frozen=True)
class LabelSpec:
    source: str
    date_column: str
    target: str
    horizon_days: int


@dataclass(frozen=True)
class ModelSpec:
    registered_name: str
    estimator: str
    params: dict[str, Any] = field(default_factory=dict)
    search_space: dict[str, list[Any]] = field(default_factory=dict)
    cv_folds: int = 3
    threshold: float = 0.5


@dataclass(frozen=True)
class TrainingSpec:
    schedule: str | None = None
    window_days: int = 60
    holdout_days: int = 7
    recency_half_life_days: float | None = None
    max_rows: int = 500_000
    reference_rows: int = 5000
    reference_days: int = 7


@dataclass(frozen=True)
class PromotionSpec:
    metric: str = "roc_auc"
    floor: float = 0.6
    min_improvement: float = 0.0


@dataclass(frozen=True)
class ScoringSpec:
    schedule: str = "@daily"


@dataclass(frozen=True)
class MonitoringSpec:
    reference_sample_rows: int = 5000
    current_sample_rows: int = 5000
    drift_share_threshold: float = 0.5
    method: str | None = None             # Evidently stat test for every column (None: its defaults)
    column_threshold: float | None = None  # that test's per-column threshold
    consecutive_days: int = 1
    cooldown_days: int = 7


@dataclass(frozen=True)
class SimulationSpec:
    seed: int = 42
    customers: int = 2000
    history_start: str = "2026-01-01"
    days: int = 60
    drift_start: str | None = None
    first_training: str | None = None
    backlog_days: int = 0


@dataclass(frozen=True)
class UseCaseSpec:
    """One use case, as read from ``include/<name>/spec.yaml``."""

    name: str
    description: str
    start_date: str
    entity: str
    sources: dict[str, SourceSpec]
    expectations: str
    features: dict[str, Any]
    label: LabelSpec
    model: ModelSpec
    training: TrainingSpec
    promotion: PromotionSpec
    scoring: ScoringSpec
    monitoring: MonitoringSpec
    simulation: SimulationSpec | None
    directory: Path

    @property
    def start(self) -> dt.date:
        return dt.date.fromisoformat(self.start_date)

    @property
    def expectations_path(self) -> Path:
        return self.directory / self.expectations

    def source(self, name: str) -> SourceSpec:
        try:
            return self.sources[name]
        except KeyError:
            raise SpecError(f"{self.name}: no source named {name!r}; sources are {sorted(self.sources)}") from None

    def feature_sources(self) -> list[str]:
        """Sources read by the feature groups, in order of first use."""
        names = [self.features["population"]] + [g["source"] for g in self.features["groups"]]
        return list(dict.fromkeys(names))


def load_spec(path: str | Path) -> UseCaseSpec:
    """Load and check one spec file (or a use-case directory holding ``spec.yaml``)."""
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    if not path.exists():
        raise SpecError(f"spec file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    where = str(path)
    required = ["name", "entity", "sources", "features", "label", "model", "start_date"]
    missing = [k for k in required if k not in raw]
    if missing:
        raise SpecError(f"{where}: missing section(s) {missing}")
    sources = {n: _build(SourceSpec, s, f"{where}: sources.{n}") for n, s in raw["sources"].items()}
    spec = UseCaseSpec(
        name=raw["name"],
        description=str(raw.get("description", "")).strip(),
        start_date=str(raw["start_date"]),
        entity=raw["entity"],
        sources=sources,
        expectations=raw.get("expectations", "expectations.yaml"),
        features=raw["features"],
        label=_build(LabelSpec, raw["label"], f"{where}: label"),
        model=_build(ModelSpec, raw["model"], f"{where}: model"),
        training=_build(TrainingSpec, raw.get("training"), f"{where}: training"),
        promotion=_build(PromotionSpec, raw.get("promotion"), f"{where}: promotion"),
        scoring=_build(ScoringSpec, raw.get("scoring"), f"{where}: scoring"),
        monitoring=_build(MonitoringSpec, raw.get("monitoring"), f"{where}: monitoring"),
        simulation=_build(SimulationSpec, raw["simulation"], f"{where}: simulation") if raw.get("simulation") else None,
        directory=path.parent,
    )
    _check_references(spec, where)
    return spec


def _check_references(spec: UseCaseSpec, where: str) -> None:
    """Every source a feature group or the label names must exist, with the named columns."""
    for name in spec.feature_sources() + [spec.label.source]:
        spec.source(name)
    for group in spec.features.get("groups", []):
        if group.get("kind") not in {"window_aggregates", "recency", "attributes"}:
            raise SpecError(f"{where}: features: unknown group kind {group.get('kind')!r}")
        cols = spec.source(group["source"]).columns
        for agg in group.get("aggregates", []):
            if "column" in agg and agg["column"] not in cols:
                raise SpecError(f"{where}: feature {agg['name']}: column {agg['column']!r} not in source {group['source']}")
        for col in group.get("columns", []):
            if col not in cols:
                raise SpecError(f"{where}: attributes: column {col!r} not in source {group['source']}")
    label_cols = spec.source(spec.label.source).columns
    for col in (spec.label.date_column, spec.label.target, spec.entity):
        if col not in label_cols:
            raise SpecError(f"{where}: label: column {col!r} not in source {spec.label.source}")


def discover_specs(include_dir: str | Path) -> list[UseCaseSpec]:
    """All specs under ``include_dir`` (one per sub-directory holding ``spec.yaml``), by name."""
    root = Path(include_dir)
    specs = [load_spec(p) for p in sorted(root.glob(f"*/{SPEC_FILE}"))]
    return sorted(specs, key=lambda s: s.name)
