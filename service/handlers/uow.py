"""The unit of work a command handler is given: the log, the data keys, fingerprints, the clock,
and who is acting. `bootstrap()` builds the real one; tests may pass their own parts."""

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable

import asyncpg
import orjson
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from events.batching import Coalescer
from events.catalog.base import Event, encode_json, instant_text
from events.envelope import NewEvent, uuid7
from events.store import PostgresEventStore
from service.crypto.datakeys import DataKeys
from service.crypto.fingerprint import Fingerprinter
from service.handlers.repositories import IntegrationStates


def system_clock() -> datetime:
    return datetime.now(timezone.utc)


class RecentSet:
    """A bounded set: emptied when full (a hint's worth of memory, not a cache to be exact about)."""

    def __init__(self, size: int):
        self._size = size
        self._items: set = set()

    def add(self, item) -> None:
        if len(self._items) >= self._size:
            self._items.clear()
        self._items.add(item)

    def __contains__(self, item) -> bool:
        return item in self._items


class Shared:
    """What every copy of a unit of work in a process shares (`acting_as` makes one per request):
    the integration states it has loaded, and the batchers that send concurrent commands' small
    writes together."""

    def __init__(self) -> None:
        self.integrations = IntegrationStates()
        # Streams known to exist (a hint, never trusted for a decision): an import of an account
        # seen before goes the ordinary way at once instead of first trying to create it.
        self.existing_streams = RecentSet(8192)
        self.import_workers = None  # service.handlers.import_workers.ImportWorkers, when started
        self._batchers: dict[str, Coalescer] = {}

    def batcher(self, name: str, make: Callable[[], Coalescer]) -> Coalescer:
        batcher = self._batchers.get(name)
        if batcher is None:
            batcher = self._batchers[name] = make()
        return batcher


@dataclass(frozen=True)
class UnitOfWork:
    pool: asyncpg.Pool
    store: PostgresEventStore
    data_keys: DataKeys
    fingerprinter: Fingerprinter
    clock: Callable[[], datetime] = system_clock
    actor: str = "system"
    correlation_id: uuid.UUID | None = field(default=None)
    shared: Shared = field(default_factory=Shared, repr=False, compare=False)

    def acting_as(self, actor: str, correlation_id: uuid.UUID | None = None) -> "UnitOfWork":
        return replace(self, actor=actor, correlation_id=correlation_id or uuid7())

    def new_event(
        self, event: Event, now: datetime, *, event_id: uuid.UUID | None = None,
        secret: bytes | None = None, key_id: str | None = None,
    ) -> NewEvent:
        return NewEvent.from_values(
            event.type, encode_json(event), event.schema_version, event_id or uuid7(), now, self.actor,
            self.correlation_id, None, secret, key_id,
        )


def snapshot_json(state: BaseModel) -> str:
    """The snapshot as JSON text, the form the store writes: what model_dump_json(exclude_defaults=
    True) writes, instants as format_instant writes them, encoded by orjson from the fields as
    they are (every append and every new account writes one; a quarter quicker than pydantic's
    serializer). Anything orjson does not take that way goes through pydantic.

    Fields at their defaults are left out (about a third of an account's keys: the nulls, zeros
    and empty objects), which PostgreSQL would otherwise parse into jsonb on every append;
    model_validate puts them back, and `snapshot->>'field'` reads a missing key as null."""
    defaults = _DEFAULTS.get(type(state))
    if defaults is None:
        defaults = _DEFAULTS[type(state)] = {
            name: field.default for name, field in type(state).model_fields.items()
            if field.default is not PydanticUndefined}
    fields = {name: value for name, value in state.__dict__.items()
              if name not in defaults or value != defaults[name]}
    try:
        return orjson.dumps(fields, default=instant_text, option=orjson.OPT_PASSTHROUGH_DATETIME).decode()
    except (TypeError, orjson.JSONEncodeError):
        return state.model_dump_json(exclude_defaults=True)


_DEFAULTS: dict[type, dict[str, Any]] = {}  # each state model's fields with a plain default
