"""A team's own snapshot table, by spec alone, on the CLI path: a CSV with no timestamp, a text
target ("bad"/"good") with some labels missing, and missing feature values goes through
`mlops init` (then a person's edits), ingest, validation, features, training (a stable random
split of the entities), promotion, scoring and live performance."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import yaml

UC = "credit_snap"
AS_OF = dt.date(2026, 3, 1)
# what a person changes in the drafted spec: the data's start, and a smaller search for a test
EDITS = {"start_date": AS_OF.isoformat(),
         "model": {"params": {"random_state": 0, "max_iter": 50}, "search_space": {}, "cv_folds": 2},
         "training": {"holdout_fraction": 0.25, "reference_rows": 200}}


def _applicants(n: int = 800, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 70, n)
    income = rng.lognormal(10, 0.4, n)
    job = rng.choice(["clerk", "engineer", "driver"], n)
    risk = 2.5 - 0.1 * (age - 20) - 1.5 * (income > np.median(income)) + 1.5 * (job == "driver")
    bad = rng.random(n) < 1 / (1 + np.exp(-risk))
    frame = pd.DataFrame({"applicant_id": [f"a{i:04d}" for i in range(n)], "age": age.round(1),
                          "income": income.round(0), "job": job, "Status": np.where(bad, "bad", "good")})
    frame.loc[frame.index[::17], "income"] = np.nan      # missing feature values
    frame["Status"] = frame["Status"].astype(object)
    frame.loc[frame.index[5::40], "Status"] = None        # labels not known for some applicants
    return frame


@pytest.fixture(scope="module")
def snapshot_case(state_home, spark, mlflow_server, tmp_path_factory):
    from pipelines.cli import main
    from tests.conftest import include_folder

    csv = tmp_path_factory.mktemp("exports") / "applicants.csv"
    frame = _applicants()
    frame.to_csv(csv, index=False)
    with include_folder(tmp_path_factory.mktemp("own-data-include")) as include:
        assert main(["init", UC, "--source", f"applicants={csv}", "--target", "Status", "--positive", "bad"]) == 0
        path = include / UC / "spec.yaml"
        spec = yaml.safe_load(path.read_text())
        for section, value in EDITS.items():
            spec[section] = {**spec[section], **value} if isinstance(value, dict) else value
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        yield {"csv": csv, "frame": frame, "include": include}


def test_snapshot_to_champion_and_scores(snapshot_case):
    from pipelines import runtime
    from pipelines.cli import main
    from pipelines.core.lake import read_partition
    from pipelines.models import tracking

    frame = snapshot_case["frame"]
    assert main(["check", UC]) == 0
    landed = runtime.ingest(UC, "applicants", str(snapshot_case["csv"]), as_of=AS_OF)
    assert landed["partitions"] == {AS_OF.isoformat(): len(frame)}
    assert runtime.validate(UC, AS_OF) == {"applicants": len(frame)}
    assert runtime.validate(UC, AS_OF + dt.timedelta(days=1)) == {"applicants": 0}   # no new snapshot: fine
    assert runtime.build_features(UC, AS_OF) == len(frame)
    assert main(["features", UC, AS_OF.isoformat()]) == 0    # a row count is not an exit code

    as_of = AS_OF + dt.timedelta(days=1)
    challenger = runtime.train(UC, as_of, "first model from the team's CSV", "manual")
    promotion = runtime.promote(UC, challenger, as_of)
    assert promotion["promoted"] is True, promotion
    run = tracking.client().get_run(challenger["run_id"])
    labelled = int(frame["Status"].notna().sum())
    assert run.data.metrics["train_labels_missing"] == len(frame) - labelled
    assert run.data.params["split"] == "random"
    assert int(run.data.params["train_rows"]) + int(run.data.params["holdout_rows"]) == labelled
    assert challenger["metrics"]["roc_auc"] > 0.7, challenger["metrics"]

    champion = runtime.resolve_champion(UC)
    assert runtime.score(UC, AS_OF, champion, "test") == len(frame)
    scores = read_partition(runtime.lake().inference(UC), AS_OF)
    assert scores["applicant_id"].is_unique and set(scores["applicant_id"]) == set(frame["applicant_id"])
    performance = runtime.live_performance(UC, AS_OF)
    assert len(performance) == 1 and performance[0]["rows"] == labelled
    assert performance[0]["roc_auc"] > 0.7
