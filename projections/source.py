"""Reading the log for projections: secret-free columns only, in (tx, position) order, below the
snapshot horizon (an event whose transaction may still be joined by an earlier one is not handed out)."""

import json
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from events.envelope import LogPosition


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


# The snapshot horizon, counting only transactions that may write to this database: the oldest
# transaction id in progress in the statement's snapshot (or its xmax when none is), leaving out
# only those positively seen as another database's backend's (a transaction cannot write to a
# database it is not connected to). A busy neighbour database on the same server no longer holds
# projections back. Anything not identified — finished by the time pg_stat_activity is read, a
# prepared transaction, a backend whose details the role may not see — still counts, so no event
# below the horizon can commit later. pg_stat_activity shows 32-bit xids; concurrent xids are
# always within 2^31 of each other, so comparing the low 32 bits is exact.
HORIZON = (
    "(SELECT coalesce(min(running.xid), pg_snapshot_xmax(pg_current_snapshot()))"
    " FROM pg_snapshot_xip(pg_current_snapshot()) AS running(xid)"
    " WHERE (running.xid::text::bigint % 4294967296) NOT IN ("
    "SELECT backend_xid::text::bigint FROM pg_stat_activity"
    " WHERE backend_xid IS NOT NULL AND datid IS NOT NULL"
    " AND datid <> (SELECT oid FROM pg_database WHERE datname = current_database())))"
)

READ_AFTER = (
    "SELECT tx, position, event_id, stream_id, version, type, data, occurred_at, actor, correlation_id, causation_id"
    f" FROM events WHERE (tx, position) > ($1::xid8, $2::bigint) AND tx < {HORIZON}"
    " ORDER BY tx, position LIMIT $3"
)


def decode_rows(rows: list[asyncpg.Record]) -> list[LoggedEvent]:
    loads = json.loads
    return [LoggedEvent(r[0], r[1], r[2], r[3], r[4], r[5], loads(r[6]), r[7], r[8], r[9], r[10], r[6]) for r in rows]


async def read_after(conn: asyncpg.Connection, after: LogPosition, limit: int) -> list[LoggedEvent]:
    return decode_rows(await conn.fetch(READ_AFTER, after.tx, after.position, limit))


async def count_after(conn: asyncpg.Connection, after: LogPosition) -> int:
    """How many events lie past `after` (committed now); what a rebuild's progress counts towards."""
    return await conn.fetchval("SELECT count(*) FROM events WHERE (tx, position) > ($1::xid8, $2::bigint)",
                               after.tx, after.position)
