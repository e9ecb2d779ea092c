"""Whole-partition writes: a rewrite replaces, never appends, and leaves no staging behind."""
import pandas as pd

from pipelines.core.lake import (drop_partition, list_partitions, partition_rows, read_partition, read_table,
                                 replace_partition)


def test_replace_partition_replaces_whole(tmp_path):
    table = tmp_path / "t"
    replace_partition(table, "2026-01-01", pd.DataFrame({"a": [1, 2, 3]}))
    replace_partition(table, "2026-01-02", pd.DataFrame({"a": [9]}))
    replace_partition(table, "2026-01-01", pd.DataFrame({"a": [4, 5]}))
    assert read_partition(table, "2026-01-01")["a"].tolist() == [4, 5]
    assert list_partitions(table) == ["2026-01-01", "2026-01-02"]
    assert partition_rows(table, "2026-01-02") == 1
    assert sorted(p.name for p in table.iterdir()) == ["ds=2026-01-01", "ds=2026-01-02"]
    whole = read_table(table)
    assert sorted(whole["a"]) == [4, 5, 9] and set(whole["ds"]) == {"2026-01-01", "2026-01-02"}


def test_drop_and_missing(tmp_path):
    table = tmp_path / "t"
    replace_partition(table, "2026-01-01", pd.DataFrame({"a": [1]}))
    assert drop_partition(table, "2026-01-01") and not drop_partition(table, "2026-01-01")
    assert read_table(table).empty
    import pytest

    with pytest.raises(FileNotFoundError):
        read_partition(table, "2026-01-01")
