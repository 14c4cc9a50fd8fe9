"""Blue/green rebuild: fresh tables are built beside the live ones, caught up, and swapped in.

1. Drop what a crashed rebuild left behind and create the fresh ("__next") tables.
2. Scan the log once in (tx, position) order, fold everything in memory, write with COPY, index.
3. Catch up on what was appended meanwhile, outside any lock.
4. In one transaction: lock the live tables (the live runner and readers wait a moment), apply the
   last few events, drop the live tables and rename the fresh ones (indexes too). Readers are
   served from the old tables until that commit and from the new ones after it, never from both
   or from a half-built one. A crash anywhere before the commit leaves the live tables as they were.
"""

from typing import Callable, Sequence

import asyncpg

from events.envelope import LogPosition
from projections.framework import GREEN, Projection, Tables, apply_batch, read_checkpoint, write_checkpoint
from projections.source import count_after, read_after

LIVE, FRESH = Tables(), Tables(GREEN)
Progress = Callable[[int, int], None]  # (events done, events in total so far)


def all_tables(projection: Projection) -> list[str]:
    return [*projection.tables, f"{projection.name}_checkpoint"]


async def _create_fresh(conn: asyncpg.Connection, projection: Projection) -> None:
    async with conn.transaction():
        for base in all_tables(projection):
            await conn.execute(f"DROP TABLE IF EXISTS {FRESH(base)}")
        await conn.execute("SELECT ll_projection_tables($1, $2)", projection.name, GREEN)


async def _scan(conn: asyncpg.Connection, projections: Sequence[Projection], page: int,
                progress: Progress | None) -> tuple[LogPosition, int]:
    sessions = [p.session() for p in projections]
    # Sessions whose rows only ever get appended may write as they go; the others hold their state.
    streaming = [s for s in sessions if getattr(s, "append_only", False)]
    after, done = LogPosition.start(), 0
    total = await count_after(conn, after)
    while True:
        events = await read_after(conn, after, page)
        for session in sessions:
            apply = session.apply
            for event in events:
                apply(event)
        if events:
            after = events[-1].log_position
            done += len(events)
        for session in streaming:
            await session.save(conn, FRESH, bulk=True)
        if progress:
            progress(done, max(total, done))
        if len(events) < page:
            break
    for session in sessions:
        await session.save(conn, FRESH, bulk=True)
    return after, done


async def _catch_up(conn: asyncpg.Connection, projection: Projection, page: int) -> int:
    """Apply what lies past the fresh tables' checkpoint, in batches; returns how many."""
    total = 0
    while True:
        after = await read_checkpoint(conn, projection, FRESH)
        events = await read_after(conn, after, page)
        if not events:
            return total
        async with conn.transaction():
            await apply_batch(conn, projection, FRESH, events)
        total += len(events)


async def _swap(conn: asyncpg.Connection, projection: Projection, page: int) -> int:
    async with conn.transaction():
        live = ", ".join(LIVE(base) for base in all_tables(projection))
        await conn.execute(f"LOCK TABLE {live} IN ACCESS EXCLUSIVE MODE")
        caught = await _catch_up(conn, projection, page)
        for base in all_tables(projection):
            await conn.execute(f"DROP TABLE {LIVE(base)}")
            fresh = f"{base}{GREEN}"
            for index in await conn.fetch(
                    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                    " WHERE i.indrelid = to_regclass($1)", FRESH(base)):
                name = index["relname"]
                if name.startswith(fresh):
                    await conn.execute(f'ALTER INDEX "{name}" RENAME TO "{base}{name[len(fresh):]}"')
            await conn.execute(f"ALTER TABLE {FRESH(base)} RENAME TO {LIVE(base)}")
    return caught


async def rebuild(conn: asyncpg.Connection, projections: Sequence[Projection], *, page: int = 20_000,
                  progress: Progress | None = None) -> int:
    """Rebuild `projections` from the whole log and swap them in. `conn` must own the tables.
    Returns how many events the scan folded."""
    for projection in projections:
        await _create_fresh(conn, projection)
    after, done = await _scan(conn, projections, page, progress)
    for projection in projections:
        async with conn.transaction():
            await write_checkpoint(conn, projection, FRESH, after, done)
        await conn.execute("SELECT ll_projection_indexes($1, $2)", projection.name, GREEN)
        for base in projection.tables:
            await conn.execute(f"ANALYZE {FRESH(base)}")
    for projection in projections:
        await _catch_up(conn, projection, page)
        await _swap(conn, projection, page)
    return done
