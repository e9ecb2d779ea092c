"""Spec loading: the real spec loads; mistakes are reported with the file and key."""
from pathlib import Path

import pytest
import yaml

from pipelines.features import feature_columns
from pipelines.spec import SpecError, discover_specs, load_spec

ROOT = Path(__file__).resolve().parents[2]


def test_churn_spec_loads():
    spec = load_spec(ROOT / "include" / "churn")
    assert spec.name == "churn"
    assert spec.source("transactions").key == ["transaction_id"]
    assert spec.expectations_path.exists()
    cols = feature_columns(spec)
    assert "txn_count_7d" in cols.numeric and "segment" in cols.categorical
    assert len(cols.all) == len(set(cols.all))


def test_discover_finds_every_spec(tmp_path):
    for name in ("b_case", "a_case"):
        raw = yaml.safe_load((ROOT / "include/churn/spec.yaml").read_text())
        raw["name"] = name
        (tmp_path / name).mkdir()
        (tmp_path / name / "spec.yaml").write_text(yaml.safe_dump(raw))
    assert [s.name for s in discover_specs(tmp_path)] == ["a_case", "b_case"]


def _write(tmp_path, mutate):
    raw = yaml.safe_load((ROOT / "include/churn/spec.yaml").read_text())
    mutate(raw)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def test_unknown_key_is_named(tmp_path):
    path = _write(tmp_path, lambda r: r["training"].update({"windw_days": 3}))
    with pytest.raises(SpecError, match="training.*windw_days"):
        load_spec(path)


def test_feature_on_missing_column_is_named(tmp_path):
    def mutate(raw):
        raw["features"]["groups"][0]["aggregates"].append({"name": "x", "fn": "sum", "column": "price"})
    with pytest.raises(SpecError, match="price"):
        load_spec(_write(tmp_path, mutate))


def test_missing_section(tmp_path):
    with pytest.raises(SpecError, match="label"):
        load_spec(_write(tmp_path, lambda r: r.pop("label")))
