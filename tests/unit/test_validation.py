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


def _delivery(lake, spec, source: str, mutate=None):
    """The day's raw delivery of ``source`` as Arrow, broken by ``mutate`` (a frame to a frame)."""
    import pyarrow as pa

    frame = read_partition(lake.raw(spec.name, source), DAY)
    return pa.Table.from_pandas(mutate(frame) if mutate else frame, preserve_index=False)


def _set(column, rows, value):
    def mutate(f):
        f[column] = f[column].astype(object)
        f.loc[f.index[rows], column] = value
        return f
    return mutate


def _duplicate_ids(f):
    f.loc[f.index[-1], "transaction_id"] = f["transaction_id"].iloc[0]   # the first and last slices: one key
    return f


MORE_RULES = [{"type": "ExpectColumnValuesToNotBeNull", "kwargs": {"column": "amount", "mostly": 0.99}},
              {"type": "ExpectColumnMeanToBeBetween", "kwargs": {"column": "amount", "min_value": 0, "max_value": 1}},
              {"type": "ExpectColumnValuesToMatchRegex", "kwargs": {"column": "channel", "regex": "^[a-z]+$"}}]


@pytest.mark.parametrize("source, mutate", [
    ("transactions", None),
    ("transactions", _set("category", [0, 40, -1], "weapons")),          # unknown category in three slices
    ("transactions", _set("transaction_id", [3, -2], None)),             # null keys in two slices
    ("transactions", _duplicate_ids),                                    # a key repeated across slices
    ("transactions", _set("amount", list(range(0, 170, 9)), None)),      # nulls over `mostly`'s share
    ("transactions", lambda f: f.drop(columns=["channel"])),             # a missing column
    ("transactions", _set("channel", [5], "<script>Web</script>")),
    ("customers", _set("segment", [1, -1], "platinum")),
], ids=["good", "categories", "null keys", "repeated key", "mostly", "missing column", "regex", "customers"])
def test_a_partition_checked_in_slices_fails_as_it_does_whole(lake, small_spec, monkeypatch, source, mutate):
    """A partition above the validator's slice size is checked a slice at a time (its pandas copy
    never exists whole): row rules add up over the slices, the rest (unique keys, `mostly`, means,
    row counts) see every row. The failures are the same, word for word, as checking it whole."""
    from pipelines.data import validation

    rules = validation.load_rules(small_spec)
    monkeypatch.setattr(validation, "load_rules", lambda spec: {**rules, "transactions": rules["transactions"] +
                                                                MORE_RULES})
    table = _delivery(lake, small_spec, source, mutate)
    chunk = max(1, table.num_rows // 5)
    assert table.num_rows > 2 * chunk   # three slices at least
    whole = validation.PartitionValidator(small_spec, lake).check(source, validation.frame_for_checks(table))
    sliced = validation.PartitionValidator(small_spec, lake, chunk_rows=chunk).check_table(source, table)
    assert [str(f) for f in sliced] == [str(f) for f in whole]
    assert any("expect_column_mean_to_be_between" in str(f) for f in whole) == (source == "transactions")
    if mutate is not None:
        assert len(whole) > (source == "transactions")   # the breakage itself is found, beside the mean


@pytest.mark.parametrize("rule, row_by_row", [
    ({"type": "ExpectColumnValuesToBeInSet", "kwargs": {"column": "c", "value_set": [1]}}, True),
    ({"type": "ExpectColumnValuesToBeInSet", "kwargs": {"column": "c", "value_set": [1], "mostly": 0.9}}, False),
    ({"type": "ExpectColumnValuesToBeUnique", "kwargs": {"column": "c"}}, False),
    ({"type": "ExpectCompoundColumnsToBeUnique", "kwargs": {"column_list": ["c", "d"]}}, False),
    ({"type": "ExpectSelectColumnValuesToBeUniqueWithinRecord", "kwargs": {"column_list": ["c", "d"]}}, True),
    ({"type": "ExpectColumnPairValuesToBeEqual", "kwargs": {"column_A": "c", "column_B": "d"}}, True),
    ({"type": "ExpectTableColumnsToMatchSet", "kwargs": {"column_set": ["c"]}}, True),
    ({"type": "ExpectTableRowCountToBeBetween", "kwargs": {"min_value": 1}}, False),
    ({"type": "ExpectColumnMeanToBeBetween", "kwargs": {"column": "c", "min_value": 1}}, False),
])
def test_which_rules_add_up_over_slices(rule, row_by_row):
    import great_expectations.expectations as gxe

    from pipelines.data.validation import judged_row_by_row

    assert judged_row_by_row(getattr(gxe, rule["type"])(**rule["kwargs"])) is row_by_row
