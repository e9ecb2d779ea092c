"""Environments as configuration: the file, the settings and specs of each environment, the rules
of a release that need no MLflow (approval, schema, code versions), and the CLI's refusals."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.core.config import Settings, SettingsError, child_environment, settings
from pipelines.core.environments import EnvironmentsError, acting_in, load_environments
from pipelines.core.lake import Lake
from pipelines.core.spec import Pattern, SpecError, load_spec
from pipelines.release import between_environments as release
from pipelines.release.decision import Review

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def include(tmp_path, monkeypatch) -> Path:
    """An include folder with the churn spec, as this test's MLOPS_INCLUDE and MLOPS_HOME."""
    folder = tmp_path / "include"
    shutil.copytree(ROOT / "include" / "churn", folder / "churn")
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_INCLUDE", str(folder))
    for key in ("MLOPS_ENV", "MLOPS_LAKE", "MLOPS_INBOX", "MLOPS_ONLINE_STORE", "MLOPS_REPORTS"):
        monkeypatch.delenv(key, raising=False)
    return folder


def edit_spec(include: Path, **sections) -> Path:
    path = include / "churn" / "spec.yaml"
    raw = yaml.safe_load(path.read_text())
    raw.update(sections)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_embedded_environments_keep_dev_where_state_always_was(include, tmp_path):
    envs = load_environments(include)
    assert envs.names == ["dev", "staging", "prod"] and envs.default == "dev"
    assert [e.registry_prefix for e in envs.environments] == ["", "staging.", "prod."]
    assert [e.approval for e in envs.environments] == ["none", "none", "required"]
    assert envs.before("prod").name == "staging" and envs.after("staging").name == "prod"
    assert envs.before("dev") is None and envs.after("prod") is None
    home = (tmp_path / "home").resolve()
    assert settings().env == "dev" and settings().lake == home / "lake"
    prod = Settings.from_env({"MLOPS_HOME": str(home), "MLOPS_INCLUDE": str(include), "MLOPS_ENV": "prod"})
    assert prod.lake == home / "envs" / "prod" / "lake" and prod.online_store == home / "envs" / "prod" / "online"
    assert prod.inbox == home / "envs" / "prod" / "inbox" and prod.environment.approval == "required"
    dev = Settings.from_env({"MLOPS_HOME": str(home), "MLOPS_INCLUDE": str(include)})
    assert prod.mlflow_tracking_uri == dev.mlflow_tracking_uri   # one registry, prefixes apart


def test_the_shipped_environments_file_says_what_the_embedded_defaults_say():
    from pipelines.core.environments import EMBEDDED, Environments

    assert load_environments(ROOT / "include") == Environments.model_validate(EMBEDDED)


@pytest.mark.parametrize("body, expected", [
    ({"default": "qa", "environments": {"dev": {}, "prod": {"registry_prefix": "prod."}}},
     "default 'qa' is not one of the environments"),
    ({"default": "dev", "environments": {"dev": {}, "prod": {"registry_prefix": "prod.", "aproval": "required"}}},
     "environments.prod.aproval: Extra inputs are not permitted"),
    ({"default": "dev", "environments": {"dev": {}, "prod": {}}}, "a registry_prefix and a home of its own"),
    ({"default": "dev", "environments": {"dev": {}, "Prod!": {"registry_prefix": "prod."}}},
     "environments.Prod!.name: String should match pattern"),
    ({"default": "dev", "environments": {"dev": {}, "prod": {"registry_prefix": "prod/"}}},
     "environments.prod.registry_prefix: String should match pattern"),
])
def test_a_broken_environments_file_is_one_line_naming_file_and_key(include, body, expected):
    (include / "environments.yaml").write_text(yaml.safe_dump(body))
    with pytest.raises(EnvironmentsError) as caught:
        load_environments(include)
    assert expected in str(caught.value) and "environments.yaml" in str(caught.value)
    with pytest.raises(SettingsError, match="MLOPS_ENV"):
        Settings.from_env({"MLOPS_INCLUDE": str(include)})


def test_an_unknown_environment_is_refused_naming_the_known_ones(include):
    with pytest.raises(SettingsError, match="MLOPS_ENV: 'qa' is not an environment; the environments are dev, "
                                            "staging, prod"):
        Settings.from_env({"MLOPS_INCLUDE": str(include), "MLOPS_ENV": "qa"})


def test_acting_in_another_environment_leaves_the_process_own_paths_behind(include, tmp_path, monkeypatch):
    """MLOPS_LAKE is the process's own environment's lake: a release acting on prod from a dev
    process must not write prod's tables into it."""
    monkeypatch.setenv("MLOPS_LAKE", str(tmp_path / "dev-lake"))
    assert settings().lake == tmp_path / "dev-lake"
    with acting_in("prod"):
        assert settings().env == "prod"
        assert settings().lake == (tmp_path / "home").resolve() / "envs" / "prod" / "lake"
        child = child_environment()
    assert child["MLOPS_ENV"] == "prod" and child["MLOPS_LAKE"].endswith("envs/prod/lake")
    with acting_in("dev"):   # its own environment, named: its own paths stay
        assert settings().lake == tmp_path / "dev-lake"
    assert settings().env == "dev"


def test_a_spec_is_the_same_in_every_environment_but_its_named_overrides(include):
    edit_spec(include, environments={"prod": {"training.max_rows": 500000, "scoring.schedule": "30 1 * * *"}})
    envs = load_environments(include)
    dev = load_spec(include / "churn", envs.get("dev"), envs.names)
    prod = load_spec(include / "churn", envs.get("prod"), envs.names)
    assert dev.training.max_rows == 200000 and prod.training.max_rows == 500000
    assert prod.scoring.schedule == "30 1 * * *" and dev.scoring.schedule == "@daily"
    assert dev.model.registered_name == "churn_classifier" and prod.model.registered_name == "prod.churn_classifier"
    assert prod.experiment("training") == "prod.churn-training" and dev.experiment("training") == "churn-training"
    assert prod.environment == "prod" and prod.deployment.pattern is Pattern.DEPLOY_MODELS
    # everything else is equal
    same = {k: v for k, v in prod.model_dump().items() if k not in ("training", "scoring", "model", "environment",
                                                                    "registry_prefix")}
    assert same == {k: v for k, v in dev.model_dump().items() if k in same}


@pytest.mark.parametrize("overrides, expected", [
    ({"qa": {"training.max_rows": 1}}, "environments.qa: not an environment; the environments are dev, staging, prod"),
    ({"prod": {"model.registered_name": "x"}}, "environments.prod.model.registered_name: cannot differ"),
    ({"prod": {"name": "other"}}, "environments.prod.name: cannot differ"),
    ({"prod": {"training.max_rowz": 1}}, "environments.prod.training.max_rowz: unknown key (did you mean max_rows?)"),
    ({"prod": {"training.max_rows": "many"}}, "environments.prod.training.max_rows: Input should be a valid integer"),
    ({"prod": {"../x": 1}}, "environments.prod.../x: not a dotted key"),
])
def test_a_broken_override_names_the_environment_and_key(include, overrides, expected, capsys):
    from pipelines import cli

    edit_spec(include, environments=overrides)
    envs = load_environments(include)
    with pytest.raises(SpecError) as caught:
        load_spec(include / "churn", envs.get("prod"), envs.names)
    assert expected in str(caught.value) and "spec.yaml" in str(caught.value)
    assert cli.main(["check", "churn"]) == 1   # mlops check reads the spec as every environment does
    assert expected in capsys.readouterr().out


@pytest.mark.parametrize("environment, review, refused", [
    ("prod", None, "needs a person's approval"),
    ("prod", Review(False, "risk", "2026-12-06T10:00:00+00:00", "no"), "(risk)"),
    ("prod", Review(False, None), "nobody answered in time"),
    ("prod", Review(True, "risk", "2026-12-06T10:00:00+00:00", "ok"), None),
    ("staging", None, None),
])
def test_a_release_into_an_environment_that_requires_approval_needs_an_approving_review(include, environment,
                                                                                       review, refused):
    env = load_environments(include).get(environment)
    spec = load_spec(include / "churn", env, ["dev", "staging", "prod"])
    if refused is None:
        release.require_approval(spec, env, review)
        return
    with pytest.raises(release.ReleaseRefused, match="nothing was copied") as caught:
        release.require_approval(spec, env, review)
    assert refused in str(caught.value)


def _inference(lake: Lake, columns: dict[str, pa.DataType]) -> None:
    folder = Lake.partition(lake.inference("churn"), "2026-01-05")
    folder.mkdir(parents=True)
    pq.write_table(pa.table({name: pa.array([], type=kind) for name, kind in columns.items()}),
                   folder / "part-0.parquet")


def test_the_inference_schema_test_names_each_column_that_differs(tmp_path):
    staging, prod = Lake(tmp_path / "staging"), Lake(tmp_path / "prod")
    assert release.inference_schema_problem(staging, prod, "churn") == "staging wrote no inference partition to compare"
    _inference(staging, {"customer_id": pa.string(), "score": pa.float64(), "prediction": pa.int64()})
    assert release.inference_schema_problem(staging, prod, "churn") is None   # prod has none yet: any fits
    _inference(prod, {"customer_id": pa.string(), "score": pa.float32(), "label": pa.int64()})
    problem = release.inference_schema_problem(staging, prod, "churn")
    assert problem == ("label: staging missing, prod int64; prediction: staging int64, prod missing; "
                       "score: staging double, prod float")


@pytest.mark.parametrize("code_version", ["abc123+dirty", "unknown"])
def test_the_last_environment_trains_only_committed_code(include, code_version):
    envs = load_environments(include)
    prod = load_spec(include / "churn", envs.get("prod"), envs.names)
    staging = load_spec(include / "churn", envs.get("staging"), envs.names)
    with pytest.raises(release.ReleaseRefused, match="trains only a committed release"):
        release.require_code_passed(prod, staging, code_version)


def test_the_cli_refuses_an_unknown_environment_and_training_in_prod(include, capsys):
    from pipelines import cli, runtime

    runtime.forget_specs()
    assert cli.main(["--env", "qa", "env"]) == 1
    assert capsys.readouterr().err.strip() == ("mlops env: 'qa' is not an environment; the environments are dev, "
                                               "staging, prod")
    assert cli.main(["--env", "prod", "train", "churn"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("mlops train: churn: prod does not train (deployment.pattern: deploy_models, only dev trains); "
                   "release a dev version: mlops release churn --to prod")
    for hostile in ("../prod", "prod/../../etc", "PROD", "prod\n", ""):
        assert cli.main(["--env", hostile, "env"]) in (1, 0 if hostile == "" else 1)
        assert "is not an environment" in capsys.readouterr().err or hostile == ""
    assert cli.main(["release", "churn", "--to", "dev", "--reason", "x"]) == 1
    assert "nothing is released into dev: it is the first environment" in capsys.readouterr().err
    for hostile in ("../x", "prod/../../etc", "/etc", "prod\n<script>"):   # each refused before anything runs
        assert cli.main(["release", "churn", "--to", hostile, "--reason", "<script>alert(1)</script>"]) == 1
        assert capsys.readouterr().err.strip() == (f"mlops release: {hostile!r} is not an environment; "
                                                   "the environments are dev, staging, prod")
        for argv, field in ((["--from", hostile, "--to", "prod"], "--from"),
                            (["--from", "dev", "--to", hostile], "--to")):
            assert cli.main(["env", "copy-data", "churn", *argv]) == 1
            assert capsys.readouterr().err.strip() == (f"mlops env: {field}: {hostile!r} is not an environment; "
                                                       "the environments are dev, staging, prod")
    assert cli.main(["release", "churn", "--to", "dev", "--reason", "x"]) == 1
    assert "nothing is released into dev: it is the first environment" in capsys.readouterr().err
    assert cli.main(["env"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["environment"] == "dev" and shown["release_path"] == "dev -> staging -> prod"
    assert [e["name"] for e in shown["environments"] if e["current"]] == ["dev"]
