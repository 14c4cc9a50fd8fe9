"""An environment's own aggregate: its override (stream `environment-<env>`). Pure decide/evolve."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from events.catalog.base import Event
from events.catalog.environment import EnvironmentOverrideChanged
from service.domain.overrides import compose_patches, overridden


class EnvironmentState(BaseModel):
    """An environment as folded from its stream; also the stream-head snapshot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    environment: str
    version: int = 0
    override: dict[str, Any] = {}
    override_hash: str | None = None

    @classmethod
    def blank(cls, environment: str) -> "EnvironmentState":
        return cls(environment=environment)


def change_override(
    state: EnvironmentState, patch: dict[str, Any], resulting_hash: str, now: datetime, *,
    restored_version: int | None = None, document: dict[str, Any] | None = None,
) -> list[Event]:
    """Record an environment override change (validated by the caller): `patch` composed onto the
    override, or for a roll-back the whole `document`; [] if the result is unchanged."""
    if (document if document is not None else compose_patches(state.override, patch)) == state.override:
        return []
    return [EnvironmentOverrideChanged(environment=state.environment, merge_patch=patch, resulting_hash=resulting_hash,
                                       restored_version=restored_version, document=document)]


def evolve(state: EnvironmentState, event: Event) -> EnvironmentState:
    if not isinstance(event, EnvironmentOverrideChanged) or event.environment != state.environment:
        raise ValueError(f"{event.type} is not an event of environment {state.environment}")
    return state.model_copy(update={
        "version": state.version + 1,
        "override": overridden(state.override, event),
        "override_hash": event.resulting_hash,
    })
