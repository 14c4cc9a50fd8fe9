"""What goes into the log (NewEvent) and what comes out of it (RecordedEvent)."""

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import orjson


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 v7): event ids sort roughly by creation time."""
    # 48 bits of Unix milliseconds, then 80 random bits of which the version and variant bits are
    # overwritten: few operations on the 128-bit integer (each makes a new one).
    value = int.from_bytes((time.time_ns() // 1_000_000 & _MS_MASK).to_bytes(6, "big") + os.urandom(10), "big")
    # What UUID(int=value) makes, without its checks of arguments this function makes right
    # (a third of the cost; every event takes one).
    made = _new_object(uuid.UUID)
    _set_attribute(made, "int", value & _KEEP | _VERSION_AND_VARIANT)
    _set_attribute(made, "is_safe", _UNKNOWN_SAFETY)
    return made


def uuid5(namespace: uuid.UUID, name: str) -> uuid.UUID:
    """uuid.uuid5(namespace, name), made as uuid7() is: without UUID.__init__'s checks of
    arguments (every imported account's id is one)."""
    value = int.from_bytes(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16], "big")
    made = _new_object(uuid.UUID)
    _set_attribute(made, "int", value & _KEEP | _VERSION_5_AND_VARIANT)
    _set_attribute(made, "is_safe", _UNKNOWN_SAFETY)
    return made


def uuid_text(value: uuid.UUID) -> str:
    """str(value), written by orjson in C: UUID.__str__ is Python, a few microseconds, and a new
    account's import spells several ids (stream id, associated data, schedule row)."""
    if type(value) is uuid.UUID:
        return orjson.dumps(value).decode()[1:-1]
    return str(value)


_MS_MASK = (1 << 48) - 1
_KEEP = ~(0xF << 76 | 0b11 << 62) & ((1 << 128) - 1)
_VERSION_AND_VARIANT = 0x7 << 76 | 0b10 << 62
_VERSION_5_AND_VARIANT = 0x5 << 76 | 0b10 << 62
_new_object = object.__new__
_set_attribute = object.__setattr__
_UNKNOWN_SAFETY = uuid.SafeUUID.unknown  # an enum member looked up once: each lookup is a descriptor call


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class NewEvent:
    """An event about to be appended. `data` is secret-free (a JSON object, or its canonical text);
    `secret` is already ciphertext."""

    type: str
    data: dict[str, Any] | str
    schema_version: int = 1
    event_id: uuid.UUID = field(default_factory=uuid7)
    occurred_at: datetime = field(default_factory=utcnow)
    actor: str = "system"
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    secret: bytes | None = None
    key_id: str | None = None

    @classmethod
    def from_values(
        cls, type: str, data: dict[str, Any] | str, schema_version: int, event_id: uuid.UUID, occurred_at: datetime,
        actor: str, correlation_id: uuid.UUID | None, causation_id: uuid.UUID | None, secret: bytes | None,
        key_id: str | None,
    ) -> "NewEvent":
        """NewEvent(...) of every field, made without the frozen dataclass's __init__, which sets
        each field through object.__setattr__ (ten calls, most of the cost of each of the three
        events a new account's import makes). The store validates what it is given either way."""
        made = _new_object(cls)
        _set_attribute(made, "__dict__", {
            "type": type, "data": data, "schema_version": schema_version, "event_id": event_id,
            "occurred_at": occurred_at, "actor": actor, "correlation_id": correlation_id,
            "causation_id": causation_id, "secret": secret, "key_id": key_id,
        })
        return made


@dataclass(frozen=True, order=True)
class LogPosition:
    """A reader's checkpoint: the (transaction id, position) of the last event it handled."""

    tx: int = 0
    position: int = 0

    @classmethod
    def start(cls) -> "LogPosition":
        return cls(0, 0)


@dataclass(frozen=True)
class RecordedEvent:
    position: int
    tx: int
    event_id: uuid.UUID
    stream_id: str
    version: int
    type: str
    schema_version: int
    data_json: str
    occurred_at: datetime
    actor: str
    correlation_id: uuid.UUID | None
    causation_id: uuid.UUID | None
    secret: bytes | None
    key_id: str | None
    prev_hash: bytes
    hash: bytes

    @cached_property
    def data(self) -> dict[str, Any]:
        return json.loads(self.data_json)

    @property
    def log_position(self) -> LogPosition:
        return LogPosition(self.tx, self.position)
