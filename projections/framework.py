"""What a projection is: a name, the tables it owns, and a session that applies events to them.

A session holds the rows it touches in memory. Live (`bulk=False`), it loads the existing rows a batch
touches and upserts them; in a rebuild (`bulk=True`) its tables start empty, so it holds everything
and writes with COPY. Both run the same pure per-event code, which is why live and rebuilt tables
are equal row for row.
"""

from dataclasses import dataclass
from typing import Protocol, Sequence

import asyncpg

from events.envelope import LogPosition
from projections.source import LoggedEvent

GREEN = "__next"  # suffix of the tables a rebuild builds beside the live ones


def by_stream(table: str, columns: str) -> str:
    """`columns` of the rows of `table` whose stream_id is in the text array $1: a probe per stream
    (an index lookup however few rows the table held when the statement's plan was cached, which
    `stream_id = ANY($1)` is not: see the note on lookups in events.store)."""
    return (f"SELECT t.* FROM unnest($1::text[]) AS k(stream_id)"
            f" CROSS JOIN LATERAL (SELECT {columns} FROM {table} WHERE stream_id = k.stream_id LIMIT 1) AS t")


@dataclass(frozen=True)
class Tables:
    """The names of one generation of a projection's tables: live (suffix "") or being built."""

    suffix: str = ""

    def __call__(self, base: str) -> str:
        """The quoted name, for SQL text."""
        return f'"{self.name(base)}"'

    def name(self, base: str) -> str:
        """The bare name, for COPY and catalog lookups."""
        return f"{base}{self.suffix}"


@dataclass(frozen=True)
class HeapChunk:
    """Blocks [first, stop) of the events table's heap. A rebuild builds inside PostgreSQL chunk by chunk:
    chunks of the heap split the log into disjoint parts that each read cheaply (a TID range scan),
    with no walk of an index and no order between them. Events never move between blocks: the log
    is append-only (its triggers refuse UPDATE and DELETE)."""

    first: int
    stop: int

    def tids(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(from, below): the bounds of `ctid` in the chunk, for SQL."""
        return (self.first, 0), (self.stop, 0)


class Session(Protocol):
    async def load(self, conn: asyncpg.Connection, tables: Tables, events: Sequence[LoggedEvent]) -> None: ...

    def apply(self, event: LoggedEvent) -> None: ...

    async def save(self, conn: asyncpg.Connection, tables: Tables, *, bulk: bool) -> None: ...


class Projection(Protocol):
    name: str
    tables: tuple[str, ...]  # base names of its tables, checkpoint not included

    def session(self) -> Session: ...

    # Optional, for a projection a rebuild builds inside PostgreSQL instead of folding it in a session:
    # `async def build_lookups(conn, tables, upto, chunk)` fills what the rows of any chunk look up
    # (from the events up to `upto` in one HeapChunk; every chunk's before any chunk's rows), and
    # `async def build_chunk(conn, tables, upto, chunk) -> int` the rows of the events up to `upto` in
    # that chunk, returning how many events it covered.


def checkpoint_table(projection: Projection, tables: Tables) -> str:
    return tables(f"{projection.name}_checkpoint")


async def read_checkpoint(conn: asyncpg.Connection, projection: Projection, tables: Tables, *,
                          lock: bool = False) -> LogPosition:
    row = await conn.fetchrow(f"SELECT tx, position FROM {checkpoint_table(projection, tables)}"
                              + (" FOR UPDATE" if lock else ""))
    return LogPosition(int(row["tx"]), row["position"])


async def write_checkpoint(conn: asyncpg.Connection, projection: Projection, tables: Tables,
                           at: LogPosition, applied: int) -> None:
    await conn.execute(f"UPDATE {checkpoint_table(projection, tables)} SET tx = $1::xid8, position = $2,"
                       " events = events + $3, updated_at = now()", at.tx, at.position, applied)


async def apply_batch(conn: asyncpg.Connection, projection: Projection, tables: Tables,
                      events: Sequence[LoggedEvent]) -> None:
    """Apply one batch incrementally and move the checkpoint, inside the caller's transaction."""
    session = projection.session()
    await session.load(conn, tables, events)
    for event in events:
        session.apply(event)
    await session.save(conn, tables, bulk=False)
    await write_checkpoint(conn, projection, tables, events[-1].log_position, len(events))
