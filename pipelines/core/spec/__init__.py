"""Use-case specs: the one place that describes a use case (sources, features, model, rules).

A spec is ``include/<name>/spec.yaml``, parsed into typed, frozen models (pydantic): every
closed set is an enum, unknown keys are refused, each section checks its own rules (a
validator on its model: an events source has timestamps, a grid lists values, a calibration
check has a ceiling), and one root validator ties the parts together once every section is
valid on its own (referenced sources and columns exist, the target is not a feature, the
promotion metric and checks fit the task). Every problem found is reported at once, one line
each, naming the file and key:

    include/churn/spec.yaml: model.cv_folds: Input should be a valid integer, got 'three'
    include/churn/spec.yaml: training.windw_days: unknown key (did you mean window_days?)

Loading needs only PyYAML and pydantic, so DAG files can read specs while parsing. The deeper
check of the estimator and its parameters imports scikit-learn: :func:`check_estimator`, run
by ``mlops check`` and before any training.
"""
from pipelines.core.spec.alerts import AlertChannel, AlertEvent, AlertsSpec
from pipelines.core.spec.loading import (check_estimator, check_spec, discover_specs, discover_specs_and_errors,
                                         estimator_class, load_spec)
from pipelines.core.spec.performance import PerformanceSpec
from pipelines.core.spec.sections import (Aggregate, AttributesGroup, BatchingSpec, CalibrationCheck,
                                          CircuitBreakerSpec, CsvFormat, DeploymentSpec, FairnessCheck, FeatureGroup,
                                          FeaturesSpec, LabelSpec, LatencyCheck, LoadTestSpec, MetricCheck, ModelSpec,
                                          MonitoringSpec, PromotionCheck, PromotionSpec, RecencyGroup, RolloutBudgets,
                                          SchemaCheck, ScoringSpec, SearchRange, SearchSpec, ServingLimits,
                                          SimulationSpec, SlicesCheck, SourceSpec, TrainingSpec, WindowAggregatesGroup)
from pipelines.core.spec.use_case import UseCaseSpec, cross_check
from pipelines.core.spec.vocabulary import (SPEC_FILE, USE_CASE_NAME, AggregateFn, Approval, CheckKind, CheckMode,
                                            ColumnType, DriftMethod, FairnessMeasure, FeatureKind, Metric, Pattern,
                                            SearchMethod, ServingInput, Snapshots, SourceKind, SpecError, Split,
                                            Strategy, TaskType)

__all__ = [
    "AlertChannel",
    "AlertEvent",
    "AlertsSpec",
    "Aggregate",
    "AggregateFn",
    "Approval",
    "AttributesGroup",
    "BatchingSpec",
    "CalibrationCheck",
    "CheckKind",
    "CheckMode",
    "CircuitBreakerSpec",
    "ColumnType",
    "CsvFormat",
    "DeploymentSpec",
    "DriftMethod",
    "FairnessCheck",
    "FairnessMeasure",
    "FeatureGroup",
    "FeatureKind",
    "FeaturesSpec",
    "LabelSpec",
    "LatencyCheck",
    "LoadTestSpec",
    "Metric",
    "MetricCheck",
    "ModelSpec",
    "Pattern",
    "MonitoringSpec",
    "PerformanceSpec",
    "PromotionCheck",
    "PromotionSpec",
    "RecencyGroup",
    "RolloutBudgets",
    "SPEC_FILE",
    "SchemaCheck",
    "ScoringSpec",
    "SearchMethod",
    "SearchRange",
    "SearchSpec",
    "ServingInput",
    "ServingLimits",
    "SimulationSpec",
    "SlicesCheck",
    "Snapshots",
    "SourceKind",
    "SourceSpec",
    "SpecError",
    "Split",
    "Strategy",
    "TaskType",
    "TrainingSpec",
    "USE_CASE_NAME",
    "UseCaseSpec",
    "WindowAggregatesGroup",
    "check_estimator",
    "check_spec",
    "cross_check",
    "discover_specs",
    "discover_specs_and_errors",
    "estimator_class",
    "load_spec",
]
