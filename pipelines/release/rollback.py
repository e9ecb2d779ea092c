"""Rollback: move ``@champion`` back to an earlier champion, with the reason and who asked.

    mlops rollback <use case> --reason TEXT [--to VERSION] [--by NAME]

Without ``--to`` the target is the champion before the current one (the newest version that
was champion before it); with it, any version that was champion once. The target must still
load: a version whose artifacts are gone is refused before the alias moves. The move is a
compare-and-set like a promotion (if the champion changed meanwhile, nothing moves), and the
registry records it: on the target ``champion.since``, ``rollback.from``, ``rollback.reason``,
``rollback.requested_by``, ``rollback.at``; on the version rolled back ``champion.until`` and
``champion.rolled_back``. The next scoring run resolves the alias and scores with the target.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from pipelines.core.errors import FinalRefusal
from pipelines.models import tracking

log = logging.getLogger(__name__)


class RollbackRefused(FinalRefusal, ValueError):
    """The rollback cannot happen as asked; the alias did not move."""


@dataclass(frozen=True)
class Rollback:
    use_case: str
    model: str
    from_version: str
    to_version: str
    reason: str
    requested_by: str
    at: str


def rollback_target(current: str | None, former: list[str], to: str | None = None) -> str:
    """Which version to roll back to. ``former``: every version that was champion once, oldest
    first (the current one included). Pure: :class:`RollbackRefused` says why not."""
    if current is None:
        raise RollbackRefused("there is no champion to roll back")
    if to is not None:
        to = str(to).strip().lstrip("v")
        if to == current:
            raise RollbackRefused(f"v{to} is the champion already")
        if to not in former:
            raise RollbackRefused(f"v{to} was never champion (former champions: "
                                  f"{', '.join('v' + v for v in former) or 'none'}); only a version that "
                                  "served before can be rolled back to")
        return to
    earlier = former[:former.index(current)] if current in former else former
    earlier = [v for v in earlier if v != current]
    if not earlier:
        raise RollbackRefused(f"v{current} is the first champion: there is no earlier one to roll back to")
    return earlier[-1]


def former_champions(name: str) -> list[str]:
    """Every version of ``name`` that was champion once, by when it (last) became champion."""
    versions = tracking.client().search_model_versions(f"name = '{name}'")
    since = tracking.CHAMPION_SINCE_TAG
    served = [(mv.tags[since], int(mv.version)) for mv in versions if (mv.tags or {}).get(since)]
    return [str(version) for _, version in sorted(served)]


def roll_back(spec, reason: str, requested_by: str, to: str | None = None) -> Rollback:
    """Move ``@champion`` of the use case back (see the module doc); returns what was done."""
    reason = (reason or "").strip()
    if not reason:
        raise RollbackRefused("say why: a rollback needs a reason (--reason)")
    name = spec.model.registered_name
    try:
        current = tracking.resolve_champion(name)
    except tracking.ChampionLost as lost:
        if to is None:
            raise RollbackRefused(f"{lost}; name the version to restore with --to") from None
        return _restore_lost_champion(spec, name, reason, requested_by, str(to).strip().lstrip("v"))
    target = rollback_target(current.version if current else None, former_champions(name), to)
    ref = tracking.model_version(name, target)
    try:
        tracking.load_model(ref)   # it must be able to serve before it is asked to
    except tracking.ModelArtifactsMissing as exc:
        raise RollbackRefused(f"cannot roll back to v{target}: {exc}") from None
    now = tracking.resolve_alias(name, tracking.CHAMPION)
    if now is None or now.version != current.version:
        raise RollbackRefused(f"the champion moved to v{now.version if now else None} while the rollback "
                              f"from v{current.version} was prepared; nothing changed, run it again")
    at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    tracking.move_champion(name, target, current.version, at)
    tracking.tag_version(name, target, {"rollback.from": current.version, "rollback.reason": reason,
                                        "rollback.requested_by": requested_by, "rollback.at": at})
    tracking.tag_version(name, current.version, {"champion.rolled_back": f"{at} by {requested_by}: {reason}"})
    done = Rollback(spec.name, name, current.version, target, reason, requested_by, at)
    log.info("%s: ROLLBACK champion v%s -> v%s by %s: %s", spec.name, current.version, target, requested_by, reason)
    return done


def _restore_lost_champion(spec, name: str, reason: str, requested_by: str, target: str) -> Rollback:
    """``@champion`` points nowhere (its version was deleted or the alias removed): point it at
    ``target``, a former champion that still loads. Compare-and-set: nothing moves if an alias
    appeared meanwhile."""
    lost = tracking.recorded_champion(name) or "?"
    if target not in former_champions(name):
        raise RollbackRefused(f"v{target} was never champion (former champions: "
                              f"{', '.join('v' + v for v in former_champions(name)) or 'none'})")
    try:
        tracking.load_model(tracking.model_version(name, target))
    except Exception as exc:   # noqa: BLE001 - gone files or a deleted version: either way it cannot serve
        raise RollbackRefused(f"cannot restore v{target}: {exc}") from None
    if tracking.resolve_alias(name, tracking.CHAMPION) is not None:
        raise RollbackRefused("an alias was set while the restore was prepared; nothing changed, run it again")
    at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    tracking.move_champion(name, target, None, at)
    tracking.tag_version(name, target, {"rollback.from": f"lost v{lost}", "rollback.reason": reason,
                                        "rollback.requested_by": requested_by, "rollback.at": at})
    log.warning("%s: @champion was lost (v%s); restored to v%s by %s: %s", spec.name, lost, target, requested_by,
                reason)
    return Rollback(spec.name, name, f"lost v{lost}", target, reason, requested_by, at)
