"""What goes into the log (NewEvent) and what comes out of it (RecordedEvent)."""

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 v7): event ids sort roughly by creation time."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | ((rand >> 68) & 0xFFF) << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    # What UUID(int=value) makes, without its checks of arguments this function makes right
    # (a third of the cost; every event takes one).
    made = _new_object(uuid.UUID)
    _set_attribute(made, "int", value)
    _set_attribute(made, "is_safe", _UNKNOWN_SAFETY)
    return made


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
