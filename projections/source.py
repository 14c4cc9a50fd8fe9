"""Reading the log for projections: secret-free columns only, in (tx, position) order, below the
snapshot horizon (an event whose transaction may still be joined by an earlier one is not handed out)."""

import json
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from events.envelope import LogPosition
from events.horizon import HORIZON


class LoggedEvent(NamedTuple):
    tx: int
    position: int
    event_id: UUID
    stream_id: str
    version: int
    type: str
    data: dict[str, Any]
    occurred_at: datetime
    actor: str
    correlation_id: UUID | None
    causation_id: UUID | None
    data_json: str  # the payload exactly as stored (canonical JSON, secret-free)

    @property
    def log_position(self) -> LogPosition:
        return LogPosition(self.tx, self.position)


READ_AFTER = (
    "SELECT tx, position, event_id, stream_id, version, type, data, occurred_at, actor, correlation_id, causation_id"
    f" FROM events WHERE (tx, position) > ($1::xid8, $2::bigint) AND tx < {HORIZON}"
    " ORDER BY tx, position LIMIT $3"
)


# A rebuild reads the log up to an end fixed at its start (see `log_end`), so needs no horizon.
READ_BETWEEN = (
    "SELECT tx, position, event_id, stream_id, version, type, data, occurred_at, actor, correlation_id, causation_id"
    " FROM events WHERE (tx, position) > ($1::xid8, $2::bigint) AND (tx, position) <= ($4::xid8, $5::bigint)"
    " ORDER BY tx, position LIMIT $3"
)
LAST_BELOW_HORIZON = f"SELECT tx, position FROM events WHERE tx < {HORIZON} ORDER BY tx DESC, position DESC LIMIT 1"


def decode_rows(rows: list[asyncpg.Record]) -> list[LoggedEvent]:
    loads = json.loads
    return [LoggedEvent(r[0], r[1], r[2], r[3], r[4], r[5], loads(r[6]), r[7], r[8], r[9], r[10], r[6]) for r in rows]


async def read_after(conn: asyncpg.Connection, after: LogPosition, limit: int) -> list[LoggedEvent]:
    return decode_rows(await conn.fetch(READ_AFTER, after.tx, after.position, limit))


async def log_end(conn: asyncpg.Connection) -> LogPosition:
    """The last event below the snapshot horizon now: every event up to it has committed, so any later
    statement sees the same log up to there, however it reads it."""
    row = await conn.fetchrow(LAST_BELOW_HORIZON)
    return LogPosition(int(row[0]), row[1]) if row else LogPosition.start()


async def count_upto(conn: asyncpg.Connection, end: LogPosition) -> int:
    return await conn.fetchval("SELECT count(*) FROM events WHERE (tx, position) <= ($1::xid8, $2::bigint)",
                               end.tx, end.position)
