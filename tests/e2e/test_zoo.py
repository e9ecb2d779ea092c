"""Real tables the project has never seen, through the path a user takes (README "Your own
data"), with no edit of the drafted spec: the zoo's fast subset (bench/zoo.yaml, one table per
kind of trap: yes/no targets and flags, a semicolon file, no id column, a logical target, spaces,
dots and unicode in column names, a regression with yes/no flags). Every step must pass, with
no traceback, and the model must be as good as plain scikit-learn on the same holdout entities.
`make zoo` runs all of them."""
from __future__ import annotations

import datetime as dt

import pytest

from bench.zoo import FIRST_STEPS, SECOND_STEPS, load_zoo, run_table
from tests.conftest import include_folder

FAST = [t for t in load_zoo() if t.fast]


@pytest.fixture(scope="module")
def zoo_include(tmp_path_factory):
    with include_folder(tmp_path_factory.mktemp("zoo-include")) as include:
        yield include


def test_the_fast_subset_covers_every_kind_of_trap():
    assert {t.task for t in FAST} == {"binary", "multiclass", "regression"}
    assert {t.export for t in FAST} >= {"r", "semicolon", "plain"}
    assert any(t.rename for t in FAST) and 4 <= len(FAST) <= 7


@pytest.mark.spark
@pytest.mark.e2e
@pytest.mark.parametrize("table", FAST, ids=[t.name for t in FAST])
def test_a_real_table_through_every_step(state_home, spark, mlflow_server, zoo_include, tmp_path, table):
    result = run_table(table, tmp_path, dt.date.today())
    assert not result.traceback, result.failure
    assert result.failure is None, result.failure
    assert result.passed == [*FIRST_STEPS, *SECOND_STEPS]
    assert result.within, f"{table.name}: holdout {result.metric} against plain scikit-learn {result.baseline}"
