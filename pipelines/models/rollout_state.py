"""Where a rollout stands, as one JSON tag on the registered model, and which model answers whom.

The scoring service reads this state on every registry poll to route records
(:func:`arm_of`); the rollout DAG (:mod:`pipelines.release.rollout`) judges and moves it.
Routing is by a stable hash of the entity id salted with the rollout id (:func:`bucket`): one
customer sees the same model for the whole rollout, and raising the share only adds customers
to the candidate's side.
"""
from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import asdict, dataclass

from pipelines.models import tracking

log = logging.getLogger(__name__)

RUNNING, COMPLETED, ROLLED_BACK, SUPERSEDED, KEPT = "running", "completed", "rolled_back", "superseded", "kept_champion"


STATE_TAG = "rollout.state"
CHAMPION_ARM, CANDIDATE_ARM = "champion", "candidate"


@dataclass(frozen=True)
class RolloutState:
    """Where one rollout stands. ``share`` is the candidate's share of served traffic (0: shadow)."""

    id: str
    strategy: str
    champion: str          # the version serving the rest of the traffic
    candidate: str
    step: int              # index into the steps (canary), 0 otherwise
    share: float
    phase: str             # running, completed, rolled_back, superseded, kept_champion
    started_at: str
    step_started_at: str
    revision: int = 0
    reason: str = ""
    ends_at: str | None = None   # ab: the end of the test period
    load_tested: bool = True     # False until the pre-deployment load test passed: no traffic moves

    @property
    def running(self) -> bool:
        return self.phase == RUNNING

    @property
    def live(self) -> bool:
        """Running and past its load test: the candidate takes (or shadows) traffic."""
        return self.running and self.load_tested

    @property
    def shadowed(self) -> bool:
        """Whether the other model scores the same records beside the one that answers
        (shadow and canary, for agreement; an A/B test compares arms, not records)."""
        return self.strategy != "ab"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "RolloutState | None":
        if not text:
            return None
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as exc:
            log.warning("unreadable %s tag, taken as no rollout: %s", STATE_TAG, exc)
            return None


# ---------------------------------------------------------------------------------- routing
def bucket(key: str, salt: str) -> float:
    """A stable number in [0, 1) for ``key``: the same entity always gets the same one."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def arm_of(key: str | None, state: RolloutState | None) -> str:
    """Which model answers the record of entity ``key`` under ``state``: the candidate when its
    bucket falls under the current share (a record without an entity id counts as its own entity)."""
    if state is None or not state.live or state.share <= 0:
        return CHAMPION_ARM
    if state.share >= 1:
        return CANDIDATE_ARM
    key = key if key is not None else uuid.uuid4().hex
    return CANDIDATE_ARM if bucket(str(key), state.id) < state.share else CHAMPION_ARM


# ---------------------------------------------------------------------------------- state in the registry
def read_state(spec) -> RolloutState | None:
    """The rollout state on the registered model (None: never rolled out, or no model yet)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = tracking.client().get_registered_model(spec.model.registered_name).tags or {}
    except MlflowException:
        return None
    return RolloutState.from_json(tags.get(STATE_TAG))
