"""Triggers of the lifecycle: the inbox watcher behind each use case's ingest DAG.

An :class:`InboxTrigger` runs in the triggerer as the ``AssetWatcher`` of a use case's inbox
asset (event-driven scheduling): it polls the drop folder and fires an event, which becomes
an asset event and queues a ``<use case>_ingest`` run, whenever files it has not reported yet
are ready there (see :mod:`pipelines.data.inbox` for the layout and what "ready" means).

It reports each delivery (path, size, modification time) once while the file stays in the
inbox; a file moved away and dropped again is a new delivery. After a triggerer restart the
files still waiting are reported again: the ingest run that follows is idempotent, and one
that finds the inbox already emptied lands nothing.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent


class InboxTrigger(BaseEventTrigger):
    """Fires when new, settled files are in ``directory`` (outside its archive and rejected folders)."""

    def __init__(self, *, directory: str, poll_interval: float = 5.0, settle_seconds: float | None = None):
        super().__init__()
        self.directory = directory
        self.poll_interval = poll_interval
        self.settle_seconds = settle_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"directory": self.directory, "poll_interval": self.poll_interval,
                 "settle_seconds": self.settle_seconds})

    def _scan(self) -> set[tuple[str, int, int]]:
        from pipelines.data.inbox import ready_files, signature

        found = set()
        for path in ready_files(self.directory, self.settle_seconds):
            try:
                found.add(signature(path))
            except FileNotFoundError:   # taken by an ingest run between listing and stat
                continue
        return found

    async def run(self) -> AsyncIterator[TriggerEvent]:
        reported: set[tuple[str, int, int]] = set()
        self.log.info("watching %s every %ss", self.directory, self.poll_interval)
        while True:
            ready = await asyncio.to_thread(self._scan)
            new = ready - reported
            reported = (reported & ready) | new     # forget files that left the inbox
            if new:
                files = sorted(path for path, _, _ in new)
                self.log.info("%d new file(s) in %s: %s", len(files), self.directory, files)
                yield TriggerEvent({"directory": self.directory, "files": files})
            await asyncio.sleep(self.poll_interval)
