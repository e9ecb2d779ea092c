"""Benchmark results in ``docs/benchmarks.md``: each bench appends a dated row to its own section."""
from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def append_row(section: str, row: str, intro: str) -> None:
    """Add ``row`` at the end of the table under the ``section`` heading; a missing section is
    created at the end of the file from ``intro`` (its text and the table's header)."""
    text = DOCS.read_text()
    if section not in text:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{intro.strip()}\n"
    lines = text.rstrip("\n").split("\n")
    end = lines.index(section)
    while end + 1 < len(lines) and not lines[end + 1].startswith("|"):
        end += 1
    while end + 1 < len(lines) and lines[end + 1].startswith("|"):
        end += 1
    lines.insert(end + 1, row)   # the section's table ends at `end`
    DOCS.write_text("\n".join(lines) + "\n")


def machine() -> str:
    """The machine a row was measured on: cores, architecture, memory."""
    import os
    import platform

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {platform.machine()}, {memory:.0f} GiB"


def median_seconds(fn, repeats: int):
    """``fn`` called once to warm up (imports, caches, file listings), then the median seconds of
    ``repeats`` timed calls, and what the last call returned."""
    import statistics
    import time

    fn()
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def churn_spec():
    """The churn use case's spec, which every benchmark measures."""
    from pipelines.core.spec import load_spec

    return load_spec(Path(__file__).resolve().parent.parent / "include" / "churn")


def append_section(heading: str, body: str) -> None:
    """Add a whole section (a heading and its text) at the end of ``docs/benchmarks.md``."""
    DOCS.write_text(DOCS.read_text().rstrip("\n") + f"\n\n{heading}\n\n{body.strip()}\n")
