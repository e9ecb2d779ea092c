"""Hostile and broken input on the inbox, the lake's redeliveries, model cards and the CLI.
Threat model and the cases: docs/security.md. Each test failed before its fix."""
from __future__ import annotations

import datetime as dt
import os
import stat
import time

import pytest
import yaml

from pipelines.core.lake import Lake, list_partitions
from pipelines.core.spec import load_spec
from pipelines.data.inbox import process_inbox
from tests.conftest import ROOT

SECRET = "s3cr3t-token-that-must-never-leak"


def _drop(path, text: str, age: float = 60.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    then = time.time() - age
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def _patients(rows: int = 5) -> str:
    from pipelines.data.example_data import example_frame

    return example_frame("breast_cancer").head(rows).to_csv(index=False)


@pytest.fixture(scope="module")
def patients_spec():
    return load_spec(ROOT / "include" / "breast_cancer" / "spec.yaml")


@pytest.fixture()
def lake(tmp_path):
    return Lake(tmp_path / "lake")


# ----------------------------------------------------------------- the inbox
def test_a_symlink_to_a_secret_is_refused_without_being_read(patients_spec, lake, tmp_path, caplog):
    secret = tmp_path / "jwt-secret"
    secret.write_text(f"{SECRET}\n")
    inbox = tmp_path / "inbox"
    link = inbox / "patients" / "patients_2026-03-01.csv"
    link.parent.mkdir(parents=True)
    link.symlink_to(secret)
    os.utime(link, (time.time() - 60,) * 2, follow_symlinks=False)
    result = process_inbox(patients_spec, lake, inbox)
    [(rejected, error)] = result.rejected.items()
    assert "symbolic link" in error and SECRET not in error and SECRET not in caplog.text
    beside = f"{rejected}.error.txt"
    assert SECRET not in open(beside).read()
    assert stat.S_IMODE(os.stat(beside).st_mode) & 0o077 == 0, "an error file is the owner's only"
    assert os.path.islink(rejected) and secret.read_text() == f"{SECRET}\n", "the link moved, its target untouched"
    assert not list_partitions(lake.raw(patients_spec.name, "patients"))


def test_a_linked_folder_is_not_walked_into(patients_spec, lake, tmp_path):
    outside = tmp_path / "elsewhere"
    _drop(outside / "patients_2026-03-01.csv", _patients())
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "patients").symlink_to(outside, target_is_directory=True)
    os.utime(inbox / "patients", (time.time() - 60,) * 2, follow_symlinks=False)
    result = process_inbox(patients_spec, lake, inbox)
    assert len(result.rejected) == 1 and "symbolic link" in next(iter(result.rejected.values()))
    assert (outside / "patients_2026-03-01.csv").exists(), "nothing outside the inbox is moved or read"
    assert not list_partitions(lake.raw(patients_spec.name, "patients"))


@pytest.mark.parametrize("name, words", [
    ("patients_2026-02-30.csv", "2026-02-30 in the file name is not a calendar date"),
    ("patients_2099-12-31.csv", "is after today"),
    ("patients_2025-06-01.csv", "is before the use case's start_date 2026-01-01"),
])
def test_a_date_in_the_name_must_be_a_real_day_between_start_and_today(patients_spec, lake, tmp_path, name, words):
    inbox = tmp_path / "inbox"
    _drop(inbox / "patients" / name, _patients())
    result = process_inbox(patients_spec, lake, inbox)
    [error] = result.rejected.values()
    assert words in error and not list_partitions(lake.raw(patients_spec.name, "patients"))


def test_a_header_only_snapshot_is_an_empty_delivery(patients_spec, lake, tmp_path):
    from pipelines.data.validation import validate_day

    inbox = tmp_path / "inbox"
    _drop(inbox / "patients" / "patients_2026-03-01.csv", _patients(0))
    result = process_inbox(patients_spec, lake, inbox)
    assert result.partitions == {"patients": {"2026-03-01": 0}}
    from pipelines.data.validation import DataValidationError

    with pytest.raises(DataValidationError, match="patients"):
        validate_day(patients_spec, lake, dt.date(2026, 3, 1), "t1")   # min_rows 1: quarantined
    assert list_partitions(lake.quarantine(patients_spec.name, "patients")) == ["2026-03-01"]


def test_a_late_small_redelivery_does_not_replace_a_days_rows(patients_spec, lake, tmp_path):
    from pipelines.core.lake import partition_rows
    from pipelines.data.ingest import ingest
    from pipelines.data.validation import DataValidationError, validate_day

    day = dt.date(2026, 3, 1)
    full, late = tmp_path / "full.csv", tmp_path / "late.csv"
    full.write_text(_patients(40))
    late.write_text(_patients(1))
    ingest(patients_spec, lake, "patients", full, day)
    validate_day(patients_spec, lake, day, "t1")
    ingest(patients_spec, lake, "patients", late, day)
    with pytest.raises(DataValidationError, match="a delivery of 1 rows .* would replace the clean partition's 40"):
        validate_day(patients_spec, lake, day, "t2")
    assert partition_rows(lake.clean(patients_spec.name, "patients"), day) == 40
    assert validate_day(patients_spec, lake, day, "t3", allow_empty_redelivery=True) == {"patients": 1}


# ----------------------------------------------------------------- model cards
def test_a_model_card_shows_script_as_text_and_forbids_scripts():
    from pipelines.release.model_card import _table, render_html

    hostile = "<script>alert(document.cookie)</script>"
    markdown = "\n".join([f"# Model card: m v1", "", f"Owner: {hostile}", "",
                          *_table(["slice", "value"], [[f"segment={hostile}", 0.5], ["<img src=x onerror=alert(1)>", 1]]),
                          "[click](javascript:alert(1))"])
    page = render_html(markdown, {}, f"title {hostile}")
    assert "<script>" not in page and "<img src=x" not in page and 'href="javascript:' not in page
    assert "&lt;script&gt;alert(document.cookie)&lt;/script&gt;" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


# ----------------------------------------------------------------- the CLI
@pytest.fixture()
def own_include(tmp_path, monkeypatch):
    import shutil

    from pipelines import runtime
    include = tmp_path / "include"
    shutil.copytree(ROOT / "include" / "breast_cancer", include / "breast_cancer")
    monkeypatch.setenv("MLOPS_INCLUDE", str(include))
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    runtime.forget_specs()
    return tmp_path


@pytest.mark.parametrize("argv", [["train", "../../x"], ["validate", "../evil", "2026-01-01"], ["inbox", "../../tmp"],
                                  ["features", "Tumours2", "2026-01-01"]])
def test_a_name_that_is_no_use_case_builds_no_path(own_include, capsys, argv):
    from pipelines.cli import main

    before = {p for p in own_include.rglob("*")}
    assert main(argv) == 1
    assert "is not a use-case name" in capsys.readouterr().err
    assert {p for p in own_include.rglob("*")} == before, "nothing written anywhere"


def test_init_refuses_a_path_as_a_name_and_writes_nothing(own_include, capsys):
    from pipelines.cli import main

    csv = own_include / "t.csv"
    csv.write_text(_patients(30))
    assert main(["init", "../evil", "--source", f"p={csv}", "--target", "diagnosis", "--positive", "malignant"]) == 1
    assert not (own_include / "evil").exists() and not (own_include / "include" / ".." / "evil").exists()
    assert main(["init", "Tumours2", "--source", f"p={csv}", "--target", "diagnosis", "--positive", "malignant"]) == 1
    assert sorted(p.name for p in (own_include / "include").iterdir()) == ["breast_cancer"]
    assert "lower-case letters" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["../../evil", "a/b", "..", "x" * 64, "1st", "dot.ted"])
def test_a_source_name_that_is_a_path_is_refused_and_lands_nothing(own_include, capsys, source):
    """A source's name names its folders in the lake: one that is a path (or could not be a folder
    and table name) is refused by init, and by a hand-written spec, before any file is read."""
    from pipelines.cli import main

    csv = own_include / "t.csv"
    csv.write_text(_patients(30))
    lake = own_include / "home"
    assert main(["init", "gapx", "--source", f"{source}={csv}", "--target", "diagnosis", "--positive",
                 "malignant"]) == 1
    assert not (own_include / "include" / "gapx").exists()
    assert "a source's name is letters, digits and _" in capsys.readouterr().err

    spec = yaml.safe_load((own_include / "include" / "breast_cancer" / "spec.yaml").read_text())
    spec["sources"][source] = spec["sources"].pop("patients")
    (own_include / "include" / "breast_cancer" / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["ingest", "breast_cancer", source, str(csv), "--as-of", "2026-12-01"]) == 1
    assert "a source's name is letters, digits and _" in capsys.readouterr().err
    assert not [p for p in lake.rglob("*.parquet")], "nothing landed anywhere"


def test_a_broken_spec_breaks_only_its_own_use_case(own_include, capsys):
    from pipelines.cli import main

    broken = own_include / "include" / "broken"
    broken.mkdir()
    (broken / "spec.yaml").write_text(yaml.safe_dump({"name": "broken", "sources": "nonsense"}))
    assert main(["inbox", "breast_cancer"]) == 0
    assert main(["inbox", "broken"]) == 1
    assert "include/broken/spec.yaml" in capsys.readouterr().err


def test_a_half_written_parquet_file_waits(tmp_path):
    import pandas as pd

    from pipelines.data.inbox import ready_files

    whole = tmp_path / "whole.parquet"
    pd.DataFrame({"a": range(1000)}).to_parquet(whole)
    inbox = tmp_path / "inbox"
    half = inbox / "patients" / "p_2026-03-01.parquet"
    half.parent.mkdir(parents=True)
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    os.utime(half, (time.time() - 60,) * 2)
    assert ready_files(inbox, settle_seconds=2) == []
    half.write_bytes(whole.read_bytes())
    os.utime(half, (time.time() - 60,) * 2)
    assert ready_files(inbox, settle_seconds=2) == [half]


def test_a_file_still_being_written_is_not_taken(patients_spec, lake, tmp_path):
    """A writer that pauses for less than the settle time between chunks: nothing lands until it is done."""
    import threading

    inbox = tmp_path / "inbox"
    path = inbox / "patients" / "patients_2026-03-01.csv"
    path.parent.mkdir(parents=True)
    lines = _patients(40).splitlines(keepends=True)
    done = threading.Event()

    def slow_writer():
        with path.open("w") as out:
            for start in range(0, len(lines), 10):
                out.writelines(lines[start:start + 10])
                out.flush()
                time.sleep(0.6)
        done.set()

    writer = threading.Thread(target=slow_writer)
    writer.start()
    seen = []
    while not done.is_set():
        seen.append(process_inbox(patients_spec, lake, inbox, settle_seconds=1.5).partitions)
        time.sleep(0.2)
    writer.join()
    assert all(not landed for landed in seen), "a part of the file landed while it was being written"
    time.sleep(1.6)
    assert process_inbox(patients_spec, lake, inbox, settle_seconds=1.5).partitions == {"patients": {"2026-03-01": 40}}
