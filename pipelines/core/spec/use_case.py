"""A whole use case: its sections, and the cross-checks that tie them together (referenced
sources and columns exist, the target is not a feature, the metrics and checks fit the task)."""
from __future__ import annotations

import datetime as dt
import difflib
import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from pipelines.core.spec.alerts import AlertsSpec
from pipelines.core.spec.sections import (AttributesGroup, CalibrationCheck, DeploymentSpec, FairnessCheck,
                                          FeaturesSpec, LabelSpec, ModelSpec, MonitoringSpec, PromotionSpec,
                                          RecencyGroup, ScoringSpec, SimulationSpec, SourceSpec, TrainingSpec,
                                          WindowAggregatesGroup, _Section, broken)
from pipelines.core.spec.vocabulary import (SPEC_FILE, AggregateFn, ColumnType, FairnessMeasure, Metric, SourceKind,
                                            SpecError, TaskType)


class UseCaseSpec(_Section):
    """One use case, as read from ``include/<name>/spec.yaml``."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")   # DAG ids, tables and model names derive from it
    description: str = ""
    owner: str = ""                  # who answers for the model (model cards)
    intended_use: str = ""           # what its scores may be used for, and what not (model cards)
    start_date: dt.date
    entity: str
    sources: dict[str, SourceSpec] = Field(min_length=1)
    expectations: str = "expectations.yaml"
    features: FeaturesSpec
    label: LabelSpec
    model: ModelSpec
    training: TrainingSpec = TrainingSpec()
    promotion: PromotionSpec = PromotionSpec()
    scoring: ScoringSpec = ScoringSpec()
    deployment: DeploymentSpec = DeploymentSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    alerts: AlertsSpec = AlertsSpec()
    simulation: SimulationSpec | None = None
    # explicit, named differences per environment: {prod: {training.max_rows: 500000}}
    environments: dict[str, dict[str, Any]] = Field(default_factory=dict)
    directory: Path = Path(".")
    environment: str = "dev"          # set by the loader: the environment this spec is of
    registry_prefix: str = ""         # set by the loader: the environment's registry prefix

    def experiment(self, kind: str) -> str:
        """The MLflow experiment of one kind of run (training, monitoring, drills) in this environment."""
        return f"{self.registry_prefix}{self.name}-{kind}"

    @field_validator("description", "owner", "intended_use", mode="before")
    @classmethod
    def _strip(cls, value):
        return str(value or "").strip()

    @model_validator(mode="before")
    @classmethod
    def _metric_of_the_task(cls, raw):
        """Without ``promotion.metric``, the task's usual one (a regression has no ROC AUC)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            return raw
        promotion = raw.get("promotion", {})
        if not isinstance(promotion, dict) or "metric" in promotion:
            return raw
        try:
            task = TaskType(raw["model"].get("task", TaskType.BINARY))
        except ValueError:
            return raw   # reported as the task's own error
        return {**raw, "promotion": {**promotion, "metric": Metric.default_for(task).value}}

    @model_validator(mode="after")
    def _references_hold(self):
        """The cross-references (sources and columns named, the target, the task's metrics and
        checks): all checked once every section is valid on its own."""
        if problems := cross_check(self):
            raise broken(*problems)
        return self

    @property
    def start(self) -> dt.date:
        return self.start_date

    @property
    def expectations_path(self) -> Path:
        return self.directory / self.expectations

    def source(self, name: str) -> SourceSpec:
        try:
            return self.sources[name]
        except KeyError:
            raise SpecError(str(self.directory / SPEC_FILE),
                            [("", f"no source named {name!r}; sources are {sorted(self.sources)}")]) from None

    def feature_sources(self) -> list[str]:
        """Sources read by the feature groups, in order of first use."""
        return list(dict.fromkeys([self.features.population] + [g.source for g in self.features.groups]))

    def feature_names(self) -> list[str]:
        """Every feature column the groups produce (no types needed)."""
        names: list[str] = []
        for group in self.features.groups:
            if isinstance(group, WindowAggregatesGroup):
                names += [f"{agg.name}_{w}d" for w in group.windows_days for agg in group.aggregates]
            elif isinstance(group, RecencyGroup):
                names.append(group.name)
            else:
                names += list(group.columns) + list(group.days_since)
        return names


# ----------------------------------------------------------------- cross-checks
TIMES = {ColumnType.TIMESTAMP, ColumnType.DATE}
SOURCE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
NUMBERS = {ColumnType.INT, ColumnType.DOUBLE, ColumnType.BOOL}


def cross_check(spec: UseCaseSpec) -> list[tuple[str, str]]:
    """Problems that tie parts of a spec together: references, the target, the task; in the order
    of the spec's sections."""
    refs = _References(spec)
    _check_sources(spec, refs)
    _check_features(spec, refs)
    _check_label(spec, refs)
    problems = refs.problems
    performance = spec.monitoring.performance
    for key, metric in (("promotion.metric", spec.promotion.metric),
                        ("monitoring.performance.metric", performance and performance.metric)):
        if metric is not None and spec.model.task not in metric.tasks:
            fits = sorted(m.value for m in Metric if spec.model.task in m.tasks)
            problems.append((key, f"{metric.value} does not fit a {spec.model.task.value} task; use one of {fits}"))
    problems += _check_gate(spec)
    return problems


class _References:
    """Checks that a spec's references to sources and their columns hold; collects the problems."""

    def __init__(self, spec: UseCaseSpec):
        self.spec, self.problems = spec, []

    def source_columns(self, key: str, name: str) -> dict[str, ColumnType] | None:
        """The columns of source ``name``; None (and a problem at ``key``) if there is no such source."""
        sources = self.spec.sources
        if name not in sources:
            close = difflib.get_close_matches(name, list(sources), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; sources are {sorted(sources)}"
            self.problems.append((key, f"no source named {name!r}{hint}"))
            return None
        return sources[name].columns

    def column(self, key: str, source: str, name: str | None, types_: set[ColumnType] | None = None) -> None:
        """Column ``name`` is one of ``source``'s (of one of ``types_``); silent when either is unset."""
        cols = self.source_columns(key, source) if source in self.spec.sources else None
        if cols is None or name is None:
            return
        if name not in cols:
            close = difflib.get_close_matches(name, list(cols), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            self.problems.append((key, f"column {name!r} is not a column of source {source}{hint}"))
        elif types_ and cols[name] not in types_:
            self.problems.append((key, f"column {name!r} of source {source} is {cols[name].value}; "
                                       f"expected {' or '.join(sorted(t.value for t in types_))}"))


def _check_sources(spec: UseCaseSpec, refs: _References) -> None:
    for name, src in spec.sources.items():
        if not SOURCE_NAME.fullmatch(name):
            refs.problems.append((f"sources.{name[:40]!r}", "a source's name is letters, digits and _, starting with "
                                                            "a letter, at most 63 (it names folders and tables)"))
            continue
        for i, k in enumerate(src.key):
            refs.column(f"sources.{name}.key[{i}]", name, k)
        refs.column(f"sources.{name}.row_id", name, src.row_id, {ColumnType.INT})
        for key in ("timestamp", "partition_by"):
            refs.column(f"sources.{name}.{key}", name, getattr(src, key), TIMES)


def _check_features(spec: UseCaseSpec, refs: _References) -> None:
    problems = refs.problems
    refs.source_columns("features.population", spec.features.population)
    refs.column("features.population", spec.features.population, spec.entity)
    for i, group in enumerate(spec.features.groups):
        where = f"features.groups[{i}]"
        if refs.source_columns(f"{where}.source", group.source) is None:
            continue
        refs.column(f"{where}.source", group.source, spec.entity)
        if isinstance(group, WindowAggregatesGroup):
            for j, agg in enumerate(group.aggregates):
                _check_aggregate(refs, f"{where}.aggregates[{j}]", group.source, agg)
        elif isinstance(group, AttributesGroup):
            for j, col in enumerate(group.columns):
                refs.column(f"{where}.columns[{j}]", group.source, col)
            for name, ts in group.days_since.items():
                refs.column(f"{where}.days_since.{name}", group.source, ts, TIMES)
    names = spec.feature_names()
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(("features", f"feature {name!r} is produced twice"))
    for reserved, what in ((spec.label.target, "the label's target"), (spec.entity, "the entity key")):
        if reserved in names:
            problems.append(("features", f"{reserved!r} is {what}; it cannot also be a feature"))


def _check_aggregate(refs: _References, where: str, source: str, agg) -> None:
    if agg.fn in {AggregateFn.SUM, AggregateFn.AVG}:
        refs.column(f"{where}.column", source, agg.column, NUMBERS)
    elif agg.fn in {AggregateFn.COUNT_DISTINCT, AggregateFn.SHARE}:
        refs.column(f"{where}.column", source, agg.column)


def _check_label(spec: UseCaseSpec, refs: _References) -> None:
    label, problems = spec.label, refs.problems
    if refs.source_columns("label.source", label.source) is None:
        return
    refs.column("label.date_column", label.source, label.date_column, TIMES)
    if label.date_column is None and spec.sources[label.source].kind is SourceKind.EVENTS:
        problems.append(("label.date_column", "required when labels come from an events source"))
    refs.column("label.target", label.source, label.target)
    refs.column("label.source", label.source, spec.entity)
    problems += _label_fits_task(label, spec.model.task, spec.sources[label.source].columns.get(label.target))


def _label_fits_task(label, task: TaskType, target_type: ColumnType | None) -> list[tuple[str, str]]:
    """The label's classes suit the task: 0/1 for a binary one, 0, 1, 2, ... for a multiclass one,
    none for a regression (whose target is a number)."""
    problems = []
    if task is TaskType.BINARY:
        if label.values is not None and set(label.values.values()) - {0, 1}:
            problems.append(("label.values", "a binary task maps every value to 0 or 1"))
        if label.positive is None and label.values is None and target_type is ColumnType.STRING:
            problems.append(("label.target", f"column {label.target!r} holds text; name the positive class "
                                             f"with label.positive (or map values with label.values)"))
    elif task is TaskType.MULTICLASS:
        if label.positive is not None:
            problems.append(("label.positive", "a multiclass task has no positive class; map every value "
                                               "to a class with label.values"))
        elif label.values is None:
            problems.append(("label.values", "a multiclass task maps each value of the target to a class "
                                             "0, 1, 2, ... (label.values)"))
        else:
            classes = sorted(set(label.values.values()))
            if len(classes) < 3 or classes != list(range(len(classes))):
                problems.append(("label.values", f"a multiclass task needs classes 0, 1, 2, ... (at least "
                                                 f"three), got {classes}"))
    else:
        for key in ("positive", "values"):
            if getattr(label, key) is not None:
                problems.append((f"label.{key}", "a regression predicts the target's value; it has no classes"))
        if target_type is not None and target_type not in {ColumnType.INT, ColumnType.DOUBLE}:
            problems.append(("label.target", f"column {label.target!r} is {target_type.value}; "
                                             f"a regression needs an int or double target"))
    return problems


def _check_gate(spec: UseCaseSpec) -> list[tuple[str, str]]:
    """The promotion checks fit the spec: columns that are features, metrics and measures that
    suit the task."""
    problems: list[tuple[str, str]] = []
    task, features = spec.model.task, spec.feature_names()
    for i, check in enumerate(spec.promotion.checks):
        key = f"promotion.checks[{i}]"
        metric = getattr(check, "metric", None)
        if metric is not None and task not in metric.tasks:
            problems.append((f"{key}.metric", f"{metric.value} does not fit a {task.value} task"))
        for field in ("columns", "sensitive"):
            for column in getattr(check, field, None) or []:
                if column not in features:
                    problems.append((f"{key}.{field}", f"{column!r} is not a feature column; features are "
                                                       f"{sorted(features)}"))
        if isinstance(check, FairnessCheck) and check.measure is not FairnessMeasure.METRIC_DIFFERENCE \
                and task is not TaskType.BINARY:
            problems.append((f"{key}.measure", f"{check.measure.value} needs a binary task; use metric_difference"))
        if isinstance(check, CalibrationCheck) and task is TaskType.REGRESSION:
            problems.append((f"{key}.kind", "calibration applies to classifiers, not a regression"))
    return problems

