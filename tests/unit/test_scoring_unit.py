"""Scoring errors (the scorer itself: tests/unit/test_model_tasks.py)."""
def test_scoring_without_features_is_a_clear_error(tmp_path, small_spec):
    import datetime as dt

    import pytest

    from pipelines.core.lake import Lake
    from pipelines.serving.batch import score_partition

    champion = {"name": "m", "version": "1", "run_id": "r", "model_uri": "models:/m/1"}
    with pytest.raises(FileNotFoundError, match="no features for 2026-01-05"):
        score_partition(None, small_spec, Lake(tmp_path), dt.date(2026, 1, 5), champion, "run")
