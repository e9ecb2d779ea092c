"""The one base class of expected refusals.

A refusal is the project saying no to its input, not a bug: a file that does not fit its
spec, a broken spec, a day that failed validation, a champion that cannot be loaded. Its
message names the file, column, rule or field and what to do; the CLI prints it as one
line and exits 1, without a traceback (``mlops --debug`` shows one). Every other exception
is a bug and keeps its traceback.

Each stage's own error class inherits from :class:`Refusal` beside its usual base
(``class IngestError(Refusal, ValueError)``), so callers that catch ``ValueError`` keep working.
"""
from __future__ import annotations


class Refusal(Exception):
    """An expected refusal; ``str(exc)`` is the whole message a person needs."""


class FinalRefusal(Refusal):
    """A refusal that retrying the same step cannot change (bad data, a lost champion, a release a
    test refused): an Airflow task fails at once on it, without spending its retries."""


class MissingData(Refusal, FileNotFoundError):
    """A step needs data an earlier step writes (clean partitions, features, labels, a store)."""


class NotEnoughData(Refusal, ValueError):
    """The data is there but cannot serve the step (no labelled dates, too few rows to hold out)."""
