"""What real tables bring, unit by unit: yes/no targets in any spelling, bool and 0/1 flags, ids
that look like numbers (or no id at all), NA tokens, other delimiters and encodings, several
snapshots per entity, and refusals that are one line, never a traceback. The zoo
(`bench/zoo.py`, tests/e2e/test_zoo.py) takes whole tables through every stage."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.core.spec import ColumnType, CsvFormat, load_spec
from pipelines.data.ingest import IngestError, read_file, sniff_delimiter
from pipelines.data.spec_init import InitError, draft, infer_type, write_use_case


def _table(n: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "rownames": np.arange(1, n + 1),                   # a row number, not named like an id
        "income": rng.normal(3.0, 1.0, n).round(3),        # a measurement: unique but never an entity
        "owner": rng.choice(["yes", "no"], n),              # a yes/no flag
        "married": rng.choice([0, 1], n),                   # a 0/1 flag
        "region": rng.choice(["north", "south", "east"], n),
        "card": rng.choice(["yes", "no"], n),               # the target
    })


def _draft(tmp_path, frame, target="card", write=True, **options):
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False, sep=options.pop("sep", ","), na_rep=options.pop("na_rep", ""),
                 encoding=options.pop("encoding", "utf-8"))
    spec_text, rules_text = draft("table", {"data": str(path)}, target, **options)
    if not write:
        return spec_text, rules_text
    return load_spec(write_use_case(tmp_path / "include", "table", spec_text, rules_text)), yaml.safe_load(rules_text)


@pytest.mark.parametrize("values, positive, expected", [
    (["yes", "no"], None, True),          # yes/no is a bool column; yes is conventionally positive
    (["Yes", "No"], "Yes", True),         # the user's spelling ...
    (["Yes", "No"], "yes", True),         # ... in any case
    (["Y", "N"], None, True),
    (["true", "false"], "False", False),  # the negative named positive, on purpose
    (["good", "bad"], "bad", "bad"),      # two texts: the user says which
    (["Alive", "Dead"], "dead", "Dead"),  # matched to the file's spelling
    (["pos", "neg"], None, "pos"),
])
def test_two_valued_targets_take_positive_in_any_spelling(tmp_path, values, positive, expected):
    frame = _table()
    frame["card"] = np.resize(values, len(frame))
    spec, _ = _draft(tmp_path, frame, positive=positive)
    assert spec.label.positive == expected


@pytest.mark.parametrize("values, positive, words", [
    (["good", "bad"], None, "say which is the positive class"),
    (["Yes", "No"], "maybe", "not a value of card"),
    (["good", "bad"], "excellent", "not a value of card (values: bad, good)"),
])
def test_a_positive_that_is_not_there_is_refused(tmp_path, values, positive, words):
    frame = _table()
    frame["card"] = np.resize(values, len(frame))
    with pytest.raises(InitError, match=words.replace("(", r"\(").replace(")", r"\)")):
        _draft(tmp_path, frame, positive=positive)


def test_flags_ids_and_measurements(tmp_path):
    spec, rules = _draft(tmp_path, _table())
    assert spec.entity == "rownames"                         # numbers the rows: an id
    columns = spec.sources["data"].columns
    assert columns["owner"] == ColumnType.BOOL and columns["married"] == ColumnType.INT
    assert "income" in spec.feature_names() and "rownames" not in spec.feature_names()
    by_column = {}
    for rule in rules["data"]:
        by_column.setdefault(rule["kwargs"].get("column"), []).append(rule)
    assert not [r for r in by_column["rownames"] if r["type"] == "ExpectColumnValuesToBeBetween"], \
        "a range on an id quarantines the next snapshot's new entities"
    married = {r["type"]: r["kwargs"] for r in by_column["married"]}
    assert married["ExpectColumnValuesToBeInSet"]["value_set"] == [0, 1]
    assert "ExpectColumnValuesToBeBetween" not in married


def test_no_id_column_gets_a_generated_row_id(tmp_path):
    spec, _ = _draft(tmp_path, _table().drop(columns="rownames"))
    assert spec.entity == "row_id" and spec.sources["data"].row_id == "row_id"
    assert spec.sources["data"].columns["row_id"] == ColumnType.INT and "row_id" not in spec.feature_names()


def test_na_tokens_and_the_delimiter_are_drafted(tmp_path):
    frame = _table()
    frame.loc[::9, "income"] = np.nan
    spec, _ = _draft(tmp_path, frame, sep=";", na_rep="NA")
    fmt = spec.sources["data"].csv
    assert fmt.delimiter == ";" and fmt.na_values == ["NA"]
    assert spec.sources["data"].columns["income"] == ColumnType.DOUBLE


def test_free_text_is_not_a_feature(tmp_path):
    frame = _table(300)
    frame["comment"] = [f"free text number {i}" for i in range(299)] + ["free text number 0"]
    spec, _ = _draft(tmp_path, frame)
    assert "comment" not in spec.feature_names()


def test_init_writes_nothing_when_the_draft_has_problems(tmp_path):
    from pipelines.data.spec_init import write_use_case

    with pytest.raises(InitError, match="nothing was written"):
        write_use_case(tmp_path / "include", "broken", "name: broken\n", "")
    assert not (tmp_path / "include" / "broken").exists()
    with pytest.raises(InitError, match="lower-case letters"):
        write_use_case(tmp_path / "include", "../evil", "name: evil\n", "")


# ----------------------------------------------------------------- reading files
@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_the_delimiter_is_sniffed(tmp_path, sep):
    path = tmp_path / "t.csv"
    _table(20).to_csv(path, index=False, sep=sep)
    assert sniff_delimiter(path.read_text()) == sep
    assert list(read_file(path).columns) == list(_table(20).columns)


def test_a_header_holding_another_delimiter_names_it(tmp_path):
    path = tmp_path / "t.csv"
    _table(20).to_csv(path, index=False, sep=";")
    with pytest.raises(IngestError, match="looks semicolon-separated .* csv.delimiter: ';'"):
        read_file(path, CsvFormat(delimiter=","))


def test_only_declared_tokens_are_missing(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,NA\n2,n/a\n3,\n")
    assert read_file(path)["b"].isna().tolist() == [False, False, True]      # pandas' list is not ours
    assert read_file(path, CsvFormat(na_values=["NA", "n/a"]))["b"].isna().all()


def test_a_latin1_file_names_its_encoding(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("name,city\nJosé,Zürich\n".encode("latin-1"))
    with pytest.raises(IngestError, match="not utf-8 text .* csv.encoding"):
        read_file(path)
    assert read_file(path, CsvFormat(encoding="latin-1"))["city"].tolist() == ["Zürich"]


@pytest.mark.parametrize("values, kind", [
    (["Y", "N", "y"], ColumnType.BOOL),
    (["yes", "no", None], ColumnType.BOOL),
    (["0", "1", "1"], ColumnType.INT),
])
def test_flag_types(values, kind):
    assert infer_type(pd.Series(values, dtype=object)) is kind


# ----------------------------------------------------------------- training over snapshots
def test_each_entity_trains_once_on_its_newest_snapshot():
    from pipelines.training.fit import newest_per_entity

    rows = pd.DataFrame({"id": [1, 2, 1, 2, 3], "ds": ["d1", "d1", "d2", "d2", "d2"], "y": [0, 1, 1, 1, 0]})
    newest = newest_per_entity(rows, "id")
    assert sorted(newest["id"]) == [1, 2, 3] and set(newest["ds"]) == {"d2"}


def test_folds_never_split_an_entity(tmp_path):
    from pipelines.training.fit import cross_validation

    spec, _ = _draft(tmp_path, _table())
    entities = pd.Series(np.repeat(np.arange(40), 2))
    y = np.tile([0, 1], 40)
    folds = cross_validation(spec, entities, y)
    assert len(folds) == spec.model.cv_folds
    for train, test in folds:
        assert not set(entities[train]) & set(entities[test])


# ----------------------------------------------------------------- labels against the data
@pytest.mark.parametrize("positive, occurs", [("Yes", True), (True, True), ("y", True), ("maybe", False)])
def test_a_yes_no_target_matches_its_positive_in_any_spelling(positive, occurs):
    from pipelines.core.spec import LabelSpec
    from pipelines.data.labels import encode_labels

    values = pd.Series([True, False, None], dtype=object)
    classes = encode_labels(values, LabelSpec(source="s", target="t", positive=positive))
    assert (classes == 1).any() == occurs and pd.isna(classes.iloc[2])


# ----------------------------------------------------------------- the CLI's refusals
@pytest.fixture()
def own_table(tmp_path, monkeypatch):
    """A drafted use case `table` in its own include folder and state home."""
    from pipelines import runtime
    _draft(tmp_path, _table())
    monkeypatch.setenv("MLOPS_INCLUDE", str(tmp_path / "include"))
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    runtime.forget_specs()
    return tmp_path


@pytest.mark.parametrize("argv, words", [
    (["ingest", "table", "data", "{bad}", "--as-of", "2026-01-01"], r"column 'income', row 2 \(line 3\): value 'lots'"),
    (["train", "table"], "no clean data partitions yet"),
    (["features", "table", "2026-01-01"], "no clean data partitions|no population"),
    (["check", "nosuch"], "spec file not found"),
    (["validate", "nosuch", "2026-01-01"], "unknown use case 'nosuch'"),
])
def test_a_refusal_is_one_line_and_exit_1(own_table, capsys, argv, words):
    import re

    from pipelines.cli import main

    bad = own_table / "bad.csv"
    frame = _table().astype({"income": object})
    frame.loc[1, "income"] = "lots"
    frame.to_csv(bad, index=False)
    code = main([a.replace("{bad}", str(bad)) for a in argv])
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert "Traceback" not in err
    if argv[0] == "features":
        assert code == 0 or re.search(words, err)   # the first day has no history: nothing to build
        return
    assert code == 1
    assert re.search(words, err.strip().splitlines()[-1]), err


def test_debug_shows_the_traceback_of_a_refusal(own_table):
    from pipelines.cli import main
    from pipelines.core.errors import Refusal

    with pytest.raises(Refusal):
        main(["--debug", "train", "table"])


@pytest.mark.parametrize("day", ["2026-13-01", "06/12/2026", "20261206", "2026-12-06garbage"])
def test_dates_are_strict(own_table, capsys, day):
    from pipelines.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["validate", "table", day])
    assert exited.value.code == 2 and "YYYY-MM-DD" in capsys.readouterr().err


def test_check_finds_a_positive_class_the_data_never_holds(own_table, capsys):
    from pipelines.cli import main

    csv = own_table / "table.csv"
    assert main(["ingest", "table", "data", str(csv), "--as-of", "2026-01-01"]) == 0
    assert main(["check", "table"]) == 0
    spec = own_table / "include" / "table" / "spec.yaml"
    spec.write_text(spec.read_text().replace("positive: true", "positive: false"))   # still holds
    assert main(["check", "table"]) == 0
    raw = yaml.safe_load(spec.read_text())
    raw["sources"]["data"]["columns"]["card"] = "string"
    raw["label"]["positive"] = "maybe"
    spec.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["check", "table"]) == 1
    assert "label.positive: 'maybe' never occurs in card" in capsys.readouterr().out
