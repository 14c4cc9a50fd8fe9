"""The event store: a small interface and its one PostgreSQL implementation."""

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import asyncpg

from events.canonical import MAX_PAYLOAD_BYTES, canonical_json
from events.envelope import LogPosition, NewEvent, RecordedEvent
from events.errors import (
    AppendOrderError,
    ConcurrencyError,
    EventStoreError,
    InvalidEventError,
    RetryableAppendError,
)
from events.hashing import GENESIS_HASH, body_hash, header_bytes

# A stream's transaction ids must grow with its versions; in the rare race where this
# transaction got its id before the previous writer, a fresh transaction fixes it.
_ORDER_RETRIES = 5


@dataclass(frozen=True)
class AppendResult:
    position: int
    version: int
    hash: bytes


@dataclass(frozen=True)
class StreamHead:
    stream_id: str
    version: int
    last_hash: bytes
    snapshot: dict[str, Any] | None
    snapshot_version: int | None


class EventStore(Protocol):
    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        snapshot: dict[str, Any] | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> list[AppendResult]: ...

    async def read_stream(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[RecordedEvent]: ...

    async def read_all(self, after: LogPosition, limit: int = 1000) -> list[RecordedEvent]: ...


_COLUMNS = (
    "position, tx, event_id, stream_id, version, type, schema_version, data, occurred_at, actor,"
    " correlation_id, causation_id, secret, key_id, prev_hash, hash"
)


def record_from_row(row: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        position=row["position"],
        tx=row["tx"],
        event_id=row["event_id"],
        stream_id=row["stream_id"],
        version=row["version"],
        type=row["type"],
        schema_version=row["schema_version"],
        data_json=row["data"],
        occurred_at=row["occurred_at"],
        actor=row["actor"],
        correlation_id=row["correlation_id"],
        causation_id=row["causation_id"],
        secret=row["secret"],
        key_id=row["key_id"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


# Single-event appends in their own transaction (the hot path: refreshes, status changes) run as
# one statement: the head row is moved first (its old last_hash kept as prev_hash, since SET reads
# the old row), then the event inserted, with the same checks as ll_append: the expected version
# and the fence on the previous writer's transaction id. When they return no row, ll_append is
# asked instead, and it says why (or finds the batch stored).
_APPEND_NEXT = """
WITH moved AS (
  UPDATE stream_heads
     SET version = version + 1, prev_hash = last_hash, last_hash = sha256(last_hash || $13::bytea),
         last_tx = pg_current_xact_id(), snapshot = coalesce($14::jsonb, snapshot),
         snapshot_version = CASE WHEN $14::jsonb IS NULL THEN snapshot_version ELSE version + 1 END,
         updated_at = now()
   WHERE stream_id = $1 AND version = $2 AND last_tx < pg_current_xact_id()
  RETURNING prev_hash, last_hash AS hash, version
)
INSERT INTO events (event_id, stream_id, version, type, schema_version, data, secret, key_id,
                    occurred_at, actor, correlation_id, causation_id, prev_hash, hash)
SELECT $3, $1, moved.version, $4, $5, $6, $7, $8, $9, $10, $11, $12, moved.prev_hash, moved.hash FROM moved
RETURNING position, version, hash
"""

_APPEND_FIRST = """
WITH head AS (
  INSERT INTO stream_heads (stream_id, version, prev_hash, last_hash, last_tx, snapshot, snapshot_version)
  VALUES ($1, $2 + 1, $15::bytea, sha256($15::bytea || $13::bytea), pg_current_xact_id(), $14::jsonb,
          CASE WHEN $14::jsonb IS NULL THEN NULL ELSE 1 END)
  ON CONFLICT (stream_id) DO NOTHING
  RETURNING last_hash AS hash
)
INSERT INTO events (event_id, stream_id, version, type, schema_version, data, secret, key_id,
                    occurred_at, actor, correlation_id, causation_id, prev_hash, hash)
SELECT $3, $1, 1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $15::bytea, head.hash FROM head
RETURNING position, version, hash
"""


def _validate_stream_id(stream_id: str) -> None:
    if not isinstance(stream_id, str) or not 1 <= len(stream_id) <= 200:
        raise InvalidEventError("stream_id must be a string of 1 to 200 characters")


class PostgresEventStore:
    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        snapshot: dict[str, Any] | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> list[AppendResult]:
        """Append `events` to `stream_id` if it is at `expected_version` (0: a new stream).

        With `conn` the append joins the caller's transaction and must be its first write.
        """
        rows = self._prepare(stream_id, events, expected_version)
        snapshot_json = json.dumps(snapshot, separators=(",", ":")) if snapshot is not None else None
        if conn is None and len(rows) == 1:
            stored = await self._append_one(stream_id, expected_version, rows[0], snapshot_json)
            if stored:
                return stored
        args = (stream_id, expected_version, *(list(column) for column in zip(*rows)), snapshot_json)
        if conn is not None:
            return await self._call_append(conn, stream_id, expected_version, args)
        for attempt in range(_ORDER_RETRIES):
            try:
                async with self._pool.acquire() as own:
                    return await self._call_append(own, stream_id, expected_version, args)
            except RetryableAppendError:
                await asyncio.sleep(0.001 * (attempt + 1))
        raise EventStoreError(f"could not order the append to {stream_id!r} after {_ORDER_RETRIES} attempts")

    @staticmethod
    def _prepare(stream_id: str, events: Sequence[NewEvent], expected_version: int) -> list[tuple]:
        """Validate and encode each event as the row ll_append takes, body hash included."""
        _validate_stream_id(stream_id)
        if not events:
            raise InvalidEventError("an append needs at least one event")
        if not isinstance(expected_version, int) or isinstance(expected_version, bool) or expected_version < 0:
            raise InvalidEventError("expected_version must be an integer >= 0")
        rows = []
        for version, event in enumerate(events, start=expected_version + 1):
            if not event.type or len(event.type) > 200:
                raise InvalidEventError("event type must be a string of 1 to 200 characters")
            if event.occurred_at.tzinfo is None:
                raise InvalidEventError(f"{event.type}: occurred_at must be timezone-aware")
            if event.secret is not None and len(event.secret) > MAX_PAYLOAD_BYTES:
                raise InvalidEventError(f"{event.type}: secret is larger than {MAX_PAYLOAD_BYTES} bytes")
            data = canonical_json(event.data, what=f"{event.type}.data")
            header = header_bytes(
                event_id=event.event_id,
                stream_id=stream_id,
                version=version,
                type=event.type,
                schema_version=event.schema_version,
                occurred_at=event.occurred_at,
                actor=event.actor,
                correlation_id=event.correlation_id,
                causation_id=event.causation_id,
                key_id=event.key_id,
            )
            rows.append((
                event.event_id, event.type, event.schema_version, data, event.secret, event.key_id,
                event.occurred_at, event.actor, event.correlation_id, event.causation_id,
                body_hash(header, data, event.secret),
            ))
        if len(rows) > 1 and len({row[0] for row in rows}) != len(rows):
            raise InvalidEventError("event ids within one append must be distinct")
        return rows

    async def _append_one(
        self, stream_id: str, expected_version: int, row: tuple, snapshot_json: str | None
    ) -> list[AppendResult]:
        statement = _APPEND_FIRST if expected_version == 0 else _APPEND_NEXT
        extra = (GENESIS_HASH,) if expected_version == 0 else ()
        try:
            rows = await self._pool.fetch(statement, stream_id, expected_version, *row, snapshot_json, *extra)
        except asyncpg.UniqueViolationError:
            return []  # ll_append will tell which id clashes
        except asyncpg.CheckViolationError as exc:
            raise InvalidEventError(f"event refused by the log: {exc.constraint_name or exc}") from None
        return [AppendResult(r["position"], r["version"], bytes(r["hash"])) for r in rows]

    @staticmethod
    async def _call_append(
        conn: asyncpg.Connection, stream_id: str, expected_version: int, args: tuple
    ) -> list[AppendResult]:
        try:
            rows = await conn.fetch(
                "SELECT out_position, out_version, out_hash FROM ll_append("
                "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb)",
                *args,
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "events_pkey":
                raise InvalidEventError("an event id in this batch is already used by another event") from None
            raise ConcurrencyError(stream_id, expected_version, -1) from exc
        except asyncpg.PostgresError as exc:
            code = getattr(exc, "sqlstate", None)
            if code == "LL001":
                raise ConcurrencyError(stream_id, expected_version, int(exc.detail)) from None
            if code == "LL002":
                raise AppendOrderError(str(exc)) from None
            if code == "LL003":
                raise RetryableAppendError(str(exc)) from None
            if code in ("LL005", "LL006"):
                raise InvalidEventError(str(exc)) from None
            if code == "23514":  # check constraint: size or shape limits
                raise InvalidEventError(f"event refused by the log: {exc.constraint_name or exc}") from None
            raise
        return [AppendResult(r["out_position"], r["out_version"], bytes(r["out_hash"])) for r in rows]

    async def read_stream(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[RecordedEvent]:
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 AND version >= $2"
            " AND ($3::int IS NULL OR version <= $3) ORDER BY version",
            stream_id,
            from_version,
            to_version,
        )
        return [record_from_row(r) for r in rows]

    async def read_all(self, after: LogPosition, limit: int = 1000) -> list[RecordedEvent]:
        """Events after `after` in log order, only below the snapshot horizon (invariant 1):

        a transaction that took its position earlier may still commit, so nothing at or above the
        oldest transaction still running is handed out yet.
        """
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM events"
            " WHERE (tx, position) > ($1::xid8, $2::bigint)"
            " AND tx < pg_snapshot_xmin(pg_current_snapshot())"
            " ORDER BY tx, position LIMIT $3",
            after.tx,
            after.position,
            limit,
        )
        return [record_from_row(r) for r in rows]

    async def head(self, stream_id: str) -> StreamHead | None:
        row = await self._pool.fetchrow(
            "SELECT stream_id, version, last_hash, snapshot, snapshot_version FROM stream_heads WHERE stream_id = $1",
            stream_id,
        )
        if row is None:
            return None
        snapshot = json.loads(row["snapshot"]) if row["snapshot"] is not None else None
        return StreamHead(row["stream_id"], row["version"], bytes(row["last_hash"]), snapshot, row["snapshot_version"])
