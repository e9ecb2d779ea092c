"""The ``alerts`` section: who is told what, through which channels.

A channel is an Airflow connection (the Apprise connection type: Slack, Teams, e-mail, webhooks
and the rest through one URL scheme), so credentials live where Airflow keeps connections (its
metadata database, a secrets backend, or an ``AIRFLOW_CONN_*`` variable), never in a spec::

    alerts:
      channels:
        - connection: mlops_alerts              # every event
        - connection: ml_oncall_slack
          events: [task_failed, performance_low]
"""
from __future__ import annotations

import enum
import re

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from pipelines.core.spec.base import _Section

CONNECTION_ID = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$"


class AlertEvent(enum.StrEnum):
    """What a person may need to hear about."""

    TASK_FAILED = "task_failed"               # a task failed for good (its retries spent)
    QUARANTINED = "quarantined"               # a raw partition failed validation and was quarantined
    INBOX_REFUSED = "inbox_refused"           # a file dropped in the inbox was refused
    RETRAINING = "retraining"                 # drift or live performance asked for a training
    GATE_REJECTED = "gate_rejected"           # a challenger was not promoted: the gate's failing checks, or a no
    PROMOTED = "promoted"                     # a challenger passed: champion now, or its rollout started
    APPROVAL_WAITING = "approval_waiting"     # a promotion or a release waits for a person
    ROLLOUT = "rollout"                       # a rollout advanced, completed or was rolled back
    ROLLBACK = "rollback"                     # @champion was moved back
    PERFORMANCE_LOW = "performance_low"       # live performance under its bound
    DEADLINE_MISSED = "deadline_missed"       # a scheduled day's run had not finished by scoring.deadline


class AlertChannel(_Section):
    connection: str
    events: list[AlertEvent] = Field(default_factory=lambda: list(AlertEvent), min_length=1)

    @field_validator("connection")
    @classmethod
    def _connection_id(cls, value: str) -> str:
        if not re.fullmatch(CONNECTION_ID, value):
            raise PydanticCustomError("connection_id", "an Airflow connection id (letters, digits, _ . -)")
        return value


class AlertsSpec(_Section):
    channels: list[AlertChannel] = Field(default_factory=list)

    def connections_for(self, event: AlertEvent) -> list[str]:
        """The connections that take ``event``, each once, in the spec's order."""
        return list(dict.fromkeys(c.connection for c in self.channels if event in c.events))
