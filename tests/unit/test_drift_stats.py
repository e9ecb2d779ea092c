"""Drift over a whole day's files (DuckDB) against Evidently on the same frames (real Evidently)."""
import numpy as np
import pandas as pd
import pytest

from pipelines.monitoring.drift_stats import column_drift_over_files, sample_files, scalable
from pipelines.monitoring.watch import drift_report, with_missing_value_jumps

NUMERIC = ["shifted", "steady", "gappy", "five_values"]


def _frame(n, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "shifted": rng.gamma(2.0, 10.0, n) + shift, "steady": rng.gamma(2.0, 10.0, n),
        "gappy": rng.normal(0, 1, n), "five_values": rng.integers(0, 5, n).astype(float),
        "plan": rng.choice(["basic", "plus", "pro"] + (["max"] if shift else []), n)})
    frame.loc[frame.sample(frac=0.05, random_state=seed).index, "gappy"] = np.nan
    return frame


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """A reference sample, and a day split over two Parquet files (as Spark writes them)."""
    reference, current = _frame(2_000), _frame(12_000, shift=4.0, seed=1)
    folder = tmp_path_factory.mktemp("ds=2026-01-05")
    files = [str(folder / "part-0.parquet"), str(folder / "part-1.parquet")]
    current.iloc[:5_000].to_parquet(files[0])
    current.iloc[5_000:].to_parquet(files[1])
    return reference, current, files


@pytest.mark.parametrize("method, categorical, tolerance", [
    ("psi", ["plan"], 1e-9),
    ("jensenshannon", ["plan"], 1e-9),
    ("wasserstein", [], 1e-3),      # the day as a histogram of 4096 bins
])
def test_the_whole_day_scores_as_evidently_scores_the_full_frames(day, method, categorical, tolerance):
    reference, current, files = day
    ours = column_drift_over_files(reference, files, NUMERIC, categorical, method, 0.1)
    theirs = {c.column: c for c in drift_report(reference, current, NUMERIC, categorical, method=method, threshold=0.1)}
    assert ours.rows == len(current)
    assert [c.column for c in ours.columns] == NUMERIC + categorical
    for column in ours.columns:
        assert column.score == pytest.approx(theirs[column.column].score, abs=tolerance), column.column
        assert column.drifted == theirs[column.column].drifted, column.column
        assert column.null_share_current == pytest.approx(theirs[column.column].null_share_current)
    assert {c.column for c in ours.columns if c.drifted} >= {"shifted"}
    assert "steady" not in {c.column for c in ours.columns if c.drifted}


def test_a_column_empty_on_the_day_has_drifted_and_a_jump_in_missing_values_is_drift(tmp_path):
    reference, current = _frame(1_000), _frame(3_000, seed=2)
    current["steady"] = np.nan
    current.loc[current.index[:1_200], "shifted"] = np.nan     # 40% missing, present values alike
    current.to_parquet(tmp_path / "day.parquet")
    result = {c.column: c for c in with_missing_value_jumps(
        column_drift_over_files(reference, [str(tmp_path / "day.parquet")], NUMERIC, ["plan"], "psi", 0.2).columns)}
    assert result["steady"].drifted and result["steady"].method == "all values missing"
    assert result["shifted"].drifted and result["shifted"].method == "psi + missing-value jump"
    assert not result["plan"].drifted and not result["five_values"].drifted


def test_methods_outside_the_scan_are_refused():
    assert [scalable(m, False) for m in ("psi", "jensenshannon", "wasserstein", "ks", None)] == \
        [True, True, True, False, False]
    assert [scalable(m, True) for m in ("psi", "jensenshannon", "wasserstein")] == [True, True, False]
    with pytest.raises(ValueError, match="categorical"):
        column_drift_over_files(_frame(10), [], [], ["plan"], "wasserstein")


def test_a_sample_of_the_files_is_bounded_and_repeatable(day):
    _, current, files = day
    first, again = (sample_files(files, ["steady", "plan"], 500, seed=3) for _ in range(2))
    assert len(first) == 500 and list(first.columns) == ["steady", "plan"]
    pd.testing.assert_frame_equal(first, again)
    assert set(first["steady"]) <= set(current["steady"])
    assert len(sample_files(files, ["steady"], 50_000)) == len(current)


def test_nan_and_infinite_values_in_the_files_count_as_missing(tmp_path):
    """Spark writes NaN as a value (pandas writes it as null); Parquet's ranges then are not finite."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(4)
    reference = pd.DataFrame({"a": rng.normal(0, 1, 2_000)})
    values = rng.normal(0.3, 1, 5_000)
    values[:4] = [np.nan, np.inf, -np.inf, np.nan]
    pq.write_table(pa.table({"a": pa.array(values, from_pandas=False)}), tmp_path / "day.parquet")
    assert pq.read_table(tmp_path / "day.parquet").column("a").null_count == 0
    ours = column_drift_over_files(reference, [str(tmp_path / "day.parquet")], ["a"], [], "psi", 0.1).columns[0]
    theirs = drift_report(reference, pd.DataFrame({"a": values}).replace([np.inf, -np.inf], np.nan), ["a"], [],
                          method="psi", threshold=0.1)[0]
    assert ours.score == pytest.approx(theirs.score, abs=1e-9) and ours.drifted == theirs.drifted
    assert ours.null_share_current == pytest.approx(4 / 5_000)
