"""Blue/green rebuild: fresh tables are built beside the live ones, caught up, and swapped in.

1. Drop what a crashed rebuild left behind and create the fresh ("__next") tables.
2. Fix the rebuild's end: the last event below the snapshot horizon. Every event up to it has
   committed, so every statement after sees the same log up to there, however it reads it.
3. Build up to that end in two lanes at once. Fold: one ordered scan folded in memory for the
   projections folded in Python, written with COPY, then indexed. Build: the projections that can
   (`build_chunk`) are built inside PostgreSQL chunk by chunk of the events' heap, on `builders`
   connections at once, then indexed there, several indexes at once (the per-row work there is most
   of a rebuild: it goes on while Python folds, and more than one core helps).
4. Catch up on what was appended past the end meanwhile, outside any lock.
5. In one transaction: lock the live tables (the live runner and readers wait a moment), apply the
   last few events, drop the live tables and rename the fresh ones (indexes too). Readers are
   served from the old tables until that commit and from the new ones after it, never from both
   or from a half-built one. A crash anywhere before the commit leaves the live tables as they were.
"""

import asyncio
import gc
from typing import Awaitable, Callable, Sequence, TypeVar

import asyncpg

from events.envelope import LogPosition
from projections.framework import (GREEN, HeapChunk, Projection, Tables, apply_batch, read_checkpoint,
                                   write_checkpoint)
from projections.source import READ_BETWEEN, count_upto, decode_rows, log_end, read_after

LIVE, FRESH = Tables(), Tables(GREEN)
Progress = Callable[[int, int], None]  # (events done, events in total so far)
T = TypeVar("T")

# About 32 chunks of the heap whatever the log's size (progress moves in small steps and connections
# finish together), but none so small that per-statement work dominates.
_CHUNKS = 32
_MIN_CHUNK_BLOCKS = 128
_PAST_LAST_BLOCK = 0xFFFFFFFF  # no heap block has this number: the last chunk reaches the heap's end

# Every rebuild connection: no JIT (it compiles each chunk's statement for longer than it saves), hash
# joins and sorts in memory, index builds sorting in memory, and commits that do not wait for their WAL
# to reach disk (only the swap's commit must be durable, and it sets so: a commit flushes all WAL
# before it, so every fresh row is durable once the swap is).
_SESSION = {"jit": "off", "work_mem": "64MB", "maintenance_work_mem": "256MB", "synchronous_commit": "off"}


def all_tables(projection: Projection) -> list[str]:
    return [*projection.tables, f"{projection.name}_checkpoint"]


def live_name(base: str, fresh_name: str) -> str:
    """The name a fresh table's index or constraint takes once the table is live."""
    fresh = FRESH.name(base)
    return f"{base}{fresh_name[len(fresh):]}" if fresh_name.startswith(fresh) else fresh_name


async def _create_fresh(conn: asyncpg.Connection, projection: Projection) -> None:
    async with conn.transaction():
        for base in all_tables(projection):
            await conn.execute(f"DROP TABLE IF EXISTS {FRESH(base)}")
        await conn.execute("SELECT ll_projection_tables($1, $2)", projection.name, GREEN)
        # Constraints named after their table (CHECK, NOT NULL) take their live names now: such a name
        # is the table's own, and the swap renames only tables and indexes (with the constraints an
        # index backs).
        for base in all_tables(projection):
            for (name,) in await conn.fetch("SELECT conname FROM pg_constraint WHERE conrelid = to_regclass($1)"
                                            " AND contype NOT IN ('p', 'u', 'x')", FRESH(base)):
                if live_name(base, name) != name:
                    await conn.execute(f'ALTER TABLE {FRESH(base)} RENAME CONSTRAINT "{name}"'
                                       f' TO "{live_name(base, name)}"')


def builds_inside(projection: Projection) -> bool:
    return hasattr(projection, "build_chunk")


def heap_chunks(blocks: int) -> list[HeapChunk]:
    """Chunks covering a heap of `blocks` blocks and anything past them."""
    size = max(_MIN_CHUNK_BLOCKS, -(-blocks // _CHUNKS))
    starts = list(range(0, blocks, size)) or [0]
    return [HeapChunk(first, stop) for first, stop in zip(starts, [*starts[1:], _PAST_LAST_BLOCK])]


async def _all_or_none(jobs: Sequence[Awaitable[T]]) -> list[T]:
    """Await `jobs` together; when one fails, cancel the others and wait for them before raising (so no
    connection is left mid-statement when it is closed)."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _on_connections(conns: Sequence[asyncpg.Connection],
                          jobs: Sequence[Callable[[asyncpg.Connection], Awaitable[T]]]) -> list[T]:
    """Run `jobs` in order on `conns`, each connection taking the next job as soon as it is free."""
    results: list[T] = [None] * len(jobs)  # type: ignore[list-item]
    queue = iter(enumerate(jobs))

    async def work(conn: asyncpg.Connection) -> None:
        for index, job in queue:
            results[index] = await job(conn)

    await _all_or_none([work(conn) for conn in conns])
    return results


class _Lanes:
    """Events done in each lane of a rebuild; the rebuild is as far as its slowest lane."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done: list[int] = []
        self.total = total
        self.progress = progress

    def lane(self) -> Callable[[int], None]:
        """A new lane's counter: call it with how many more events that lane is done with."""
        index = len(self.done)
        self.done.append(0)

        def advance(events: int) -> None:
            self.done[index] += events
            if self.progress:
                self.progress(min(self.done), self.total)
        return advance


async def _index(conns: Sequence[asyncpg.Connection], projection: Projection) -> None:
    """Build the fresh tables' indexes (several at once where `conns` allow) and their statistics."""
    steps: dict[int, list[str]] = {}
    for step, statement in await conns[0].fetch("SELECT step, statement FROM ll_projection_index_steps($1, $2)",
                                                projection.name, GREEN):
        steps.setdefault(step, []).append(statement)
    for step in sorted(steps):
        await _on_connections(conns, [lambda conn, ddl=ddl: conn.execute(ddl) for ddl in steps[step]])
    await _on_connections(conns, [lambda conn, base=base: conn.execute(f"ANALYZE {FRESH(base)}")
                                  for base in projection.tables])


async def _fold(reader: asyncpg.Connection, projections: Sequence[Projection], end: LogPosition, page: int,
                advance: Callable[[int], None]) -> None:
    """The fold lane: scan the log up to `end` once, in (tx, position) order, fold it into the sessions of
    `projections` in memory, write them with COPY and index them. `reader` fetches the next page while
    this folds the current one."""
    sessions = [p.session() for p in projections]
    # A projection folded alone may bring a narrower scan of its own (`scan`: query and extra arguments,
    # rows starting with tx and position, for its session's `apply_scanned`).
    narrow = projections[0].scan if len(projections) == 1 and hasattr(projections[0], "scan") else None
    query, extra = narrow or (READ_BETWEEN, ())

    def fetch(after: LogPosition) -> asyncio.Future:
        return asyncio.ensure_future(reader.fetch(query, after.tx, after.position, page, end.tx, end.position, *extra))

    pending: asyncio.Future | None = fetch(LogPosition.start())
    try:
        while pending is not None:
            rows = await pending
            pending = fetch(LogPosition(rows[-1][0], rows[-1][1])) if len(rows) == page else None
            if narrow:
                sessions[0].apply_scanned(rows)
            else:
                events = decode_rows(rows)
                for session in sessions:
                    apply = session.apply
                    for event in events:
                        apply(event)
            advance(len(rows))
    finally:
        if pending is not None:  # failed midway: the next page's fetch is still out
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
    for session in sessions:
        await session.save(reader, FRESH, bulk=True)
    for projection in projections:
        await _index([reader], projection)


async def _build(builders: Sequence[asyncpg.Connection], projections: Sequence[Projection], end: LogPosition,
                 chunks: Sequence[HeapChunk], advance: Callable[[int], None]) -> None:
    """The build lane: the projections built inside PostgreSQL, up to `end`, chunk by chunk on `builders`
    at once, then their indexes."""
    await _on_connections(builders, [lambda conn, p=p, chunk=chunk: p.build_lookups(conn, FRESH, end, chunk)
                                     for p in projections if hasattr(p, "build_lookups") for chunk in chunks])

    async def build(conn: asyncpg.Connection, chunk: HeapChunk) -> None:
        covered = [await projection.build_chunk(conn, FRESH, end, chunk) for projection in projections]
        advance(max(covered))  # each covers the same events of the chunk

    await _on_connections(builders, [lambda conn, chunk=chunk: build(conn, chunk) for chunk in chunks])
    for projection in projections:
        await _index(builders, projection)


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
        await conn.execute("SET LOCAL synchronous_commit = on")  # the swap, and all built before it, durable
        live = ", ".join(LIVE(base) for base in all_tables(projection))
        await conn.execute(f"LOCK TABLE {live} IN ACCESS EXCLUSIVE MODE")
        caught = await _catch_up(conn, projection, page)
        for base in all_tables(projection):
            await conn.execute(f"DROP TABLE {LIVE(base)}")
            for (name,) in await conn.fetch(
                    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                    " WHERE i.indrelid = to_regclass($1)", FRESH(base)):
                if live_name(base, name) != name:
                    await conn.execute(f'ALTER INDEX "{name}" RENAME TO "{live_name(base, name)}"')
            await conn.execute(f"ALTER TABLE {FRESH(base)} RENAME TO {LIVE(base)}")
    return caught


async def rebuild(dsn: str, projections: Sequence[Projection], *, page: int = 20_000,
                  progress: Progress | None = None, builders: int = 2) -> int:
    """Rebuild `projections` from the whole log and swap them in. `dsn` must connect as a role that
    owns the tables. Returns how many events the rebuild built from (those up to its end)."""
    async def connect(role: str) -> asyncpg.Connection:
        return await asyncpg.connect(dsn, server_settings={"application_name": f"linkledger-rebuild{role}", **_SESSION})

    in_database = [p for p in projections if builds_inside(p)]
    folded = [p for p in projections if not builds_inside(p)]
    conn = await connect("")
    reader = await connect("-scan")
    extra_builders = [await connect("-build") for _ in range(builders - 1)]
    try:
        for projection in projections:
            await _create_fresh(conn, projection)
        end = await log_end(conn)
        total = await count_upto(conn, end)
        blocks = await conn.fetchval("SELECT pg_relation_size('events') / current_setting('block_size')::int")
        lanes = _Lanes(total, progress)
        jobs = []
        if folded:
            jobs.append(_fold(reader, folded, end, page, lanes.lane()))
        if in_database:
            jobs.append(_build([conn, *extra_builders], in_database, end, heap_chunks(blocks), lanes.lane()))
        # The fold allocates millions of acyclic objects; the cyclic collector walking them over and
        # over costs more than the fold itself, and there is nothing for it to find.
        gc.disable()
        try:
            await _all_or_none(jobs)
        finally:
            gc.enable()
        for projection in projections:
            async with conn.transaction():
                await write_checkpoint(conn, projection, FRESH, end, total)
        for projection in projections:
            await _catch_up(conn, projection, page)
            await _swap_retrying(conn, projection, page)
        return total
    finally:
        for builder in extra_builders:
            await builder.close()
        await reader.close()
        await conn.close()
