"""The architecture's contract: the stages of `pipelines` import only the stages below them, and
no modules of one stage import each other in a circle (import-linter, contracts in pyproject.toml).
A second run on a copy with one back-arrow shows that the contract can fail."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=project, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(project)}, timeout=120)


def test_the_stages_keep_their_layers_and_have_no_circles():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_a_back_arrow_or_a_circle_breaks_the_build(tmp_path):
    shutil.copytree(ROOT / "pipelines", tmp_path / "pipelines")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lake = tmp_path / "pipelines" / "core" / "lake.py"
    lake.write_text(lake.read_text() + "\n\ndef _back_arrow():\n    from pipelines.release import gate  # noqa\n")
    ingest = tmp_path / "pipelines" / "data" / "ingest.py"
    ingest.write_text(ingest.read_text() + "\n\ndef _circle():\n    from pipelines.data import inbox  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "pipelines.core.lake -> pipelines.release.gate" in result.stdout, result.stdout[-3000:]
    assert "Contracts: 0 kept, 2 broken." in result.stdout, result.stdout[-3000:]


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 60


def _python_files():
    for folder in ("pipelines", "plugins", "scripts"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_modules_and_functions_stay_small_enough_to_read():
    """No module over 500 lines and no function over 60 in the product code (the DAG files'
    factories are tables of contents and exempt): a function that grows past that is doing
    several jobs."""
    import ast

    too_long = []
    for path in _python_files():
        text = path.read_text()
        name = path.relative_to(ROOT)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {size} lines")
    assert not too_long, "split these:\n" + "\n".join(too_long)


def test_every_test_the_docs_cite_exists():
    """docs/security.md and docs/control_room.md name a test for every case: each name must be a
    test function of the suite (a renamed or deleted test leaves a case unheld)."""
    import re

    defined = {m for path in (ROOT / "tests").rglob("test_*.py")
               for m in re.findall(r"^\s*def (test_\w+)", path.read_text(), re.MULTILINE)}
    cited = {name for doc in ("security.md", "control_room.md")
             for name in re.findall(r"`(?:[\w/]+\.py::)?(test_\w+)`", (ROOT / "docs" / doc).read_text())}
    assert len(cited) > 40 and not cited - defined, f"cited but not defined: {sorted(cited - defined)}"
