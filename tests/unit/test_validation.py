"""The GX gate: good data lands clean; each kind of breakage fails, names column and rule, quarantines."""
import datetime as dt
import json

import pandas as pd
import pytest

from pipelines.core.lake import Lake, list_partitions, read_partition, write_raw_partition
from pipelines.data.simulate import config_from_spec, simulate_day
from pipelines.data.validation import DataValidationError, validate_day

DAY = dt.date(2026, 1, 15)


@pytest.fixture()
def lake(tmp_path, small_spec):
    lake = Lake(tmp_path / "lake")
    for name, frame in simulate_day(small_spec, config_from_spec(small_spec), DAY).items():
        write_raw_partition(lake, small_spec, name, DAY, frame)
    return lake


def _break(lake, spec, source, mutate):
    frame = read_partition(lake.raw(spec.name, source), DAY)
    frame = mutate(frame)
    # write with the frame's own columns (a broken delivery need not follow the spec's schema)
    from pipelines.core.lake import replace_partition

    replace_partition(lake.raw(spec.name, source), DAY, frame)


def test_good_day_lands_clean(lake, small_spec):
    counts = validate_day(small_spec, lake, DAY)
    assert counts["transactions"] > 0
    for source in small_spec.sources:
        assert list_partitions(lake.clean(small_spec.name, source)) == [DAY.isoformat()]
    assert not (lake.root / "quarantine").exists()


def _fails(lake, spec, *expected):
    with pytest.raises(DataValidationError) as err:
        validate_day(spec, lake, DAY)
    for text in expected:
        assert text in str(err.value), str(err.value)
    return err.value


def test_missing_column(lake, small_spec):
    _break(lake, small_spec, "transactions", lambda f: f.drop(columns=["channel"]))
    _fails(lake, small_spec, "transactions", "expect_table_columns_to_match_set", "missing columns ['channel']")


def test_null_key(lake, small_spec):
    def mutate(f):
        f.loc[f.index[:3], "transaction_id"] = None
        return f
    _break(lake, small_spec, "transactions", mutate)
    _fails(lake, small_spec, "column 'transaction_id'", "expect_column_values_to_not_be_null", "3 of")


def test_unknown_category(lake, small_spec):
    def mutate(f):
        f.loc[f.index[0], "category"] = "weapons"
        return f
    _break(lake, small_spec, "transactions", mutate)
    _fails(lake, small_spec, "column 'category'", "expect_column_values_to_be_in_set", "weapons")


def test_failure_quarantines_and_removes_clean(lake, small_spec):
    validate_day(small_spec, lake, DAY)                     # first delivery was good
    _break(lake, small_spec, "transactions", lambda f: f.assign(amount=-1.0))
    err = _fails(lake, small_spec, "column 'amount'", "expect_column_values_to_be_between")
    assert list_partitions(lake.clean(small_spec.name, "transactions")) == []
    assert list_partitions(lake.clean(small_spec.name, "labels")) == [DAY.isoformat()]  # valid sources still land
    report = next(r for r in err.reports if r.source == "transactions")
    quarantined = pd.read_parquet(f"{report.quarantined_to}/data.parquet")
    assert len(quarantined) == report.rows and (quarantined["amount"] == -1.0).all()
    saved = json.loads(open(f"{report.quarantined_to}/validation.json").read())
    assert saved["success"] is False and saved["failures"][0]["column"] == "amount"
    _fails(lake, small_spec, "amount")                       # a retry keeps the first attempt too
    attempts = list((lake.quarantine(small_spec.name, "transactions") / f"ds={DAY}").iterdir())
    assert len(attempts) == 2


def test_nothing_delivered(lake, small_spec):
    import shutil

    shutil.rmtree(lake.raw(small_spec.name, "labels"))
    _fails(lake, small_spec, "labels", "nothing delivered")


@pytest.mark.parametrize("kind, values, dtype", [
    ("int", [1, 2, 3], "Int64"),            # what ingest writes for an int column
    ("int", [1, 2, 3], "int64"),
    ("double", [1.5, None, 3.0], "Float64"),
    ("bool", [True, False, None], "boolean"),
])
def test_nullable_pandas_types_pass_the_type_rule(kind, values, dtype):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    from pipelines.data.validation import PANDAS_TYPES

    frame = pd.DataFrame({"c": pd.Series(values, dtype=dtype)})
    context = gx.get_context(mode="ephemeral")
    batch = (context.data_sources.add_pandas("p").add_dataframe_asset("a").add_batch_definition_whole_dataframe("b")
             .get_batch(batch_parameters={"dataframe": frame}))
    assert batch.validate(gxe.ExpectColumnValuesToBeInTypeList(column="c", type_list=PANDAS_TYPES[kind])).success
    wrong = "double" if kind != "double" else "int"
    assert not batch.validate(gxe.ExpectColumnValuesToBeInTypeList(column="c", type_list=PANDAS_TYPES[wrong])).success
