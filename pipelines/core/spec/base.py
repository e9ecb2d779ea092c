"""What every section of a spec shares: unknown keys refused, values frozen, rules reported as one line each."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


def broken(*problems: tuple[str, str]) -> PydanticCustomError:
    """A section's own rules, broken: each ``(at, message)`` is reported at the section's key
    followed by ``at`` (empty: the section itself), one line each, with the spec's other problems."""
    return PydanticCustomError("spec_rules", "{message}", {"message": "; ".join(m for _, m in problems),
                                                           "problems": list(problems)})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)
