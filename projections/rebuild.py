"""Blue/green rebuild: fresh tables are built beside the live ones, caught up, and swapped in.

1. Drop what a crashed rebuild left behind and create the fresh ("__next") tables.
2. Scan the log once in (tx, position) order: fold in memory and write with COPY (or, for a
   projection that can, have PostgreSQL build each scanned range beside the fold, on `builders`
   connections at once), then index.
3. Catch up on what was appended meanwhile, outside any lock.
4. In one transaction: lock the live tables (the live runner and readers wait a moment), apply the
   last few events, drop the live tables and rename the fresh ones (indexes too). Readers are
   served from the old tables until that commit and from the new ones after it, never from both
   or from a half-built one. A crash anywhere before the commit leaves the live tables as they were.
"""

import asyncio
import gc
from typing import Callable, Sequence

import asyncpg

from events.envelope import LogPosition
from projections.framework import GREEN, Projection, Tables, apply_batch, read_checkpoint, write_checkpoint
from projections.source import READ_AFTER, count_after, decode_rows, read_after

LIVE, FRESH = Tables(), Tables(GREEN)
Progress = Callable[[int, int], None]  # (events done, events in total so far)


def all_tables(projection: Projection) -> list[str]:
    return [*projection.tables, f"{projection.name}_checkpoint"]


async def _create_fresh(conn: asyncpg.Connection, projection: Projection) -> None:
    async with conn.transaction():
        for base in all_tables(projection):
            await conn.execute(f"DROP TABLE IF EXISTS {FRESH(base)}")
        await conn.execute("SELECT ll_projection_tables($1, $2)", projection.name, GREEN)


async def _scan(reader: asyncpg.Connection, builders: Sequence[asyncpg.Connection], projections: Sequence[Projection],
                page: int, progress: Progress | None) -> tuple[LogPosition, int]:
    """Fold the whole log into the fresh tables. Three things overlap: `reader` fetches the next page,
    this loop folds the current one in Python, and PostgreSQL builds the pages scanned so far for the
    projections that build inside it (`build_range`), several pages at once, one per builder
    connection (the per-row work there is most of a rebuild: more than one core helps)."""
    in_database = [p for p in projections if hasattr(p, "build_range")]
    folded = [p for p in projections if not hasattr(p, "build_range")]
    sessions = [p.session() for p in folded]
    # A projection folded alone in Python may bring a narrower scan of its own (`scan`: query and extra
    # arguments, rows starting with tx and position, for its session's `apply_scanned`).
    narrow = folded[0].scan if len(folded) == 1 and hasattr(folded[0], "scan") else None
    query, extra = narrow or (READ_AFTER, ())
    after, done = LogPosition.start(), 0
    total = await count_after(reader, after)

    def fetch(position: LogPosition) -> asyncio.Task:
        return asyncio.ensure_future(reader.fetch(query, position.tx, position.position, page, *extra))

    async def build(conn: asyncpg.Connection, start: LogPosition, end: LogPosition,
                    previous: asyncio.Future, ordered: asyncio.Future) -> None:
        # A range's `build_ordered` part (e.g. what later ranges look up) runs after the previous
        # range's, in log order; its `build_range` part runs beside other ranges'.
        try:
            await previous
            for projection in in_database:
                if hasattr(projection, "build_ordered"):
                    await projection.build_ordered(conn, FRESH, start, end)
        except asyncio.CancelledError:
            ordered.cancel()
            raise
        except Exception as exc:
            ordered.set_exception(exc)
            raise
        ordered.set_result(None)
        for projection in in_database:
            await projection.build_range(conn, FRESH, start, end)

    ordered: asyncio.Future = asyncio.get_running_loop().create_future()
    ordered.set_result(None)
    building: list[asyncio.Task | None] = [None] * len(builders)
    pending, ranges = fetch(after), 0
    try:
        while True:
            rows = await pending
            start = after
            if rows:
                after = LogPosition(rows[-1][0], rows[-1][1])
            last_page = len(rows) < page
            if not last_page:
                pending = fetch(after)
            slot = ranges % len(builders)
            if building[slot] is not None:
                await building[slot]
            previous, ordered = ordered, asyncio.get_running_loop().create_future()
            building[slot] = asyncio.ensure_future(build(builders[slot], start, after, previous, ordered))
            ranges += 1
            if narrow:
                sessions[0].apply_scanned(rows)
            elif sessions:
                events = decode_rows(rows)
                for session in sessions:
                    apply = session.apply
                    for event in events:
                        apply(event)
            done += len(rows)
            if progress:
                progress(done, max(total, done))
            if last_page:
                break
    finally:
        # Whatever happens, no builder is left mid-statement (its connection is closed next).
        await asyncio.gather(*(task for task in building if task is not None), return_exceptions=True)
    for task in building:
        if task is not None:
            task.result()
    for session in sessions:
        await session.save(builders[0], FRESH, bulk=True)
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


# Queries and the live runner take the live tables' locks in their own orders, so the swap's
# exclusive locks can deadlock with them or queue up behind a slow one (every query then waits
# behind the swap). The swap gives up quickly instead and is tried again: its transaction holds all
# of it, so a failed attempt leaves both the live and the fresh tables as they were.
_SWAP_LOCK_TIMEOUT = "2s"
_SWAP_ATTEMPTS = 20


async def _swap_retrying(conn: asyncpg.Connection, projection: Projection, page: int) -> int:
    for attempt in range(1, _SWAP_ATTEMPTS):
        try:
            return await _swap(conn, projection, page)
        except (asyncpg.DeadlockDetectedError, asyncpg.LockNotAvailableError):
            await asyncio.sleep(0.05 * attempt)
    return await _swap(conn, projection, page)


async def _swap(conn: asyncpg.Connection, projection: Projection, page: int) -> int:
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{_SWAP_LOCK_TIMEOUT}'")
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


async def rebuild(dsn: str, projections: Sequence[Projection], *, page: int = 20_000,
                  progress: Progress | None = None, builders: int = 2) -> int:
    """Rebuild `projections` from the whole log and swap them in. `dsn` must connect as a role that
    owns the tables. Returns how many events the scan folded."""
    # Index builds after the load sort in memory when they may.
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "linkledger-rebuild",
                                                       "maintenance_work_mem": "256MB"})
    reader = await asyncpg.connect(dsn, server_settings={"application_name": "linkledger-rebuild-scan"})
    extra_builders = [await asyncpg.connect(dsn, server_settings={"application_name": "linkledger-rebuild-build"})
                      for _ in range(builders - 1)]
    try:
        for projection in projections:
            await _create_fresh(conn, projection)
        # The fold allocates millions of acyclic objects; the cyclic collector walking them over and
        # over costs more than the fold itself, and there is nothing for it to find.
        gc.disable()
        try:
            after, done = await _scan(reader, [conn, *extra_builders], projections, page, progress)
        finally:
            gc.enable()
        for projection in projections:
            async with conn.transaction():
                await write_checkpoint(conn, projection, FRESH, after, done)
            await conn.execute("SELECT ll_projection_indexes($1, $2)", projection.name, GREEN)
            for base in projection.tables:
                await conn.execute(f"ANALYZE {FRESH(base)}")
        for projection in projections:
            await _catch_up(conn, projection, page)
            await _swap_retrying(conn, projection, page)
        return done
    finally:
        for builder in extra_builders:
            await builder.close()
        await reader.close()
        await conn.close()
