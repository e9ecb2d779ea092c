"""The shipped use cases on real data (datasets scikit-learn ships), one per task type, on the
CLI path: export, ingest, validation, features, training, promotion, scoring, drift and live
performance, with the metric each spec names. A second, deliberately weak challenger must be
rejected: that holds only if promotion reads the metric in its direction (lower RMSE is better)."""
from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
import yaml

from tests.conftest import ROOT, assert_scored_compiled_as_scikit_learn, include_folder

AS_OF = dt.date(2026, 1, 1)
# (use case, source, metric, the worst holdout value accepted, the plots its training run logs)
CASES = [
    ("breast_cancer", "patients", "roc_auc", 0.95, {"roc_curve.png", "precision_recall.png", "confusion_matrix.png"}),
    ("wine", "wines", "f1_macro", 0.85, {"confusion_matrix.png"}),
    ("diabetes", "patients", "rmse", 65.0, {"predicted_vs_actual.png", "residuals.png"}),
]


def _cli(*args: str):
    """Run ``mlops`` in-process; the parsed JSON it prints (an exit code of 0 asserted)."""
    import contextlib
    import io

    from pipelines.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    assert code == 0, (args, out.getvalue())
    text = out.getvalue().strip()
    return json.loads(text) if text[:1] in "[{" else text


@pytest.fixture(scope="module")
def shipped_include(tmp_path_factory):
    """A copy of the shipped use cases' folders, each searching only the first point of its grid
    (small data fits cost little, but a gradient-boosting iteration has a fixed cost)."""
    include = tmp_path_factory.mktemp("shipped-include")
    for uc, *_ in CASES:
        shutil.copytree(ROOT / "include" / uc, include / uc)
        _edit_model(include / uc, search_space={k: v[:1] for k, v in _model(include / uc)["search_space"].items()})
    return include


def _model(folder) -> dict:
    return yaml.safe_load((folder / "spec.yaml").read_text())["model"]


def _edit_model(folder, **changes) -> None:
    from pipelines import runtime
    path = folder / "spec.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["model"].update(changes)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    runtime.forget_specs()


@pytest.mark.parametrize("uc, source, metric, bound, plots", CASES, ids=[c[0] for c in CASES])
def test_shipped_use_case_end_to_end(state_home, spark, mlflow_server, shipped_include, tmp_path,
                                     uc, source, metric, bound, plots):
    import pandas as pd

    from pipelines import runtime
    from pipelines.core.lake import read_partition
    from pipelines.core.spec import Metric
    from pipelines.models import tracking
    from pipelines.models.tasks import ModelTask

    with include_folder(shipped_include):
        assert _cli("check", uc).endswith("ok")
        csv = _cli("example-data", uc, "--out", str(tmp_path))
        rows = len(pd.read_csv(csv))
        assert _cli("ingest", uc, source, csv, "--as-of", AS_OF.isoformat())["partitions"] == {AS_OF.isoformat(): rows}
        assert _cli("validate", uc, AS_OF.isoformat()) == {source: rows}
        assert _cli("features", uc, AS_OF.isoformat())["feature_rows"] == rows

        first = _cli("train", uc, "--as-of", (AS_OF + dt.timedelta(days=1)).isoformat(), "--reason", "first")
        challenger, promotion = first["challenger"], first["promotion"]
        value = challenger["metrics"][metric]
        direction = Metric(metric).higher_is_better
        assert (value >= bound) if direction else (value <= bound), challenger["metrics"]
        assert promotion["promoted"] is True and promotion["metric"] == metric, promotion
        run = tracking.client().get_run(challenger["run_id"])
        assert run.data.metrics[f"holdout_{metric}"] == pytest.approx(value)
        assert f"cv_{metric}" in run.data.metrics and run.data.params["task"] == runtime.spec(uc).model.task.value
        assert run.data.metrics["search_candidates"] == 1 and run.data.metrics["search_seconds"] > 0   # one grid point
        assert "search/trials.json" in {a.path for a in tracking.client().list_artifacts(challenger["run_id"], "search")}
        logged = {a.path.rsplit("/", 1)[-1] for a in tracking.client().list_artifacts(challenger["run_id"], "plots")}
        assert plots <= logged, logged

        scored = _cli("score", uc, AS_OF.isoformat())
        assert scored["scored_rows"] == rows and scored["model_version"] == challenger["version"]
        spec = runtime.spec(uc)
        task = ModelTask.of(spec)
        table = read_partition(runtime.lake().inference(uc), AS_OF)
        assert set(task.output_columns) <= set(table.columns) and table[spec.entity].is_unique
        assert_scored_compiled_as_scikit_learn(spec, task, challenger, AS_OF, table)
        drift = _cli("monitor", uc, AS_OF.isoformat())
        assert drift["output_column"] == task.monitored_output and drift["output_drift"] is False
        assert drift["drift_share"] == 0.0, drift      # the champion's own training data has not drifted
        live = _cli("performance", uc, AS_OF.isoformat())
        assert len(live) == 1 and live[0]["rows"] == rows and live[0][metric] is not None

        # a weak challenger (one boosting iteration) must lose in the metric's direction
        _edit_model(shipped_include / uc, params={"random_state": 0, "max_iter": 1}, search_space={})
        second = _cli("train", uc, "--as-of", (AS_OF + dt.timedelta(days=1)).isoformat(), "--reason", "weak")
        weak = second["challenger"]["metrics"][metric]
        assert (weak < value) if direction else (weak > value), (weak, value)
        assert second["promotion"]["promoted"] is False and "does not beat" in second["promotion"]["reason"]
        assert tracking.resolve_alias(spec.model.registered_name, tracking.CHAMPION).version == challenger["version"]

