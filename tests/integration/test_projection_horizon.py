"""The projections' snapshot horizon counts only transactions that may write to this database:
another database's open transaction does not hold them back, and still no event is ever skipped."""

import asyncio
import random
from collections import defaultdict

import asyncpg

from events.envelope import LogPosition, NewEvent
from events.errors import ConcurrencyError
from projections.source import read_after


def refreshed(n: int = 0) -> NewEvent:
    return NewEvent("TokenRefreshed", {"at": "2026-01-01T00:00:00.000000Z", "n": n}, actor="system:test")


async def read_all(pool: asyncpg.Pool, after: LogPosition = LogPosition.start()) -> list:
    async with pool.acquire() as conn:
        return await read_after(conn, after, 500)


async def test_an_open_transaction_in_this_database_holds_the_reader_back(store, pool):
    async with pool.acquire() as slow:
        tx = slow.transaction()
        await tx.start()
        await store.append("account-slow", [refreshed()], 0, conn=slow)  # earlier position, not committed
        await store.append("account-fast", [refreshed()], 0)  # later position, committed
        assert await read_all(pool) == [], "handed out an event past an open transaction"
        await tx.commit()
    assert [e.stream_id for e in await read_all(pool)] == ["account-slow", "account-fast"]


async def test_an_open_transaction_in_another_database_does_not(store, pool, servers):
    elsewhere = await asyncpg.connect(servers.database_url)  # the server's maintenance database
    try:
        async with elsewhere.transaction():
            await elsewhere.fetchval("SELECT pg_current_xact_id()")  # holds an xid, like a long bulk load
            await store.append("account-a", [refreshed()], 0)
            assert [e.stream_id for e in await read_all(pool)] == ["account-a"]
    finally:
        await elsewhere.close()


async def test_concurrent_writers_and_a_projection_reader_see_every_event_once(store, pool, servers):
    writers, per_writer, streams = 12, 600, 200
    total = writers * per_writer
    versions: dict[str, int] = defaultdict(int)
    received: list = []
    writing = True
    # Transactions opening and closing in another database meanwhile: left out of the horizon.
    neighbour = await asyncpg.connect(servers.database_url)

    async def churn() -> None:
        while writing:
            async with neighbour.transaction():
                await neighbour.fetchval("SELECT pg_current_xact_id()")
                await asyncio.sleep(0.003)

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        written = 0
        while written < per_writer:
            stream = f"account-{rng.randrange(streams)}"
            batch = [refreshed(written + i) for i in range(rng.choice((1, 1, 2, 3)))][: per_writer - written]
            try:
                if rng.random() < 0.2:
                    # A slow committer: takes its positions now, commits later.
                    async with pool.acquire() as conn, conn.transaction():
                        await store.append(stream, batch, versions[stream], conn=conn)
                        await asyncio.sleep(rng.random() * 0.01)
                else:
                    await store.append(stream, batch, versions[stream])
            except ConcurrencyError as exc:
                versions[stream] = max(versions[stream], exc.actual_version)
                continue
            versions[stream] += len(batch)
            written += len(batch)

    async def follow() -> None:
        checkpoint = LogPosition.start()
        while writing or len(received) < total:
            batch = await read_all(pool, checkpoint)
            received.extend(batch)
            if batch:
                checkpoint = batch[-1].log_position
            else:
                await asyncio.sleep(0.002)
        await asyncio.sleep(0.2)
        received.extend(await read_all(pool, checkpoint))  # nothing more may come

    churning, reader = asyncio.create_task(churn()), asyncio.create_task(follow())
    try:
        await asyncio.gather(*(writer(seed) for seed in range(writers)))
    finally:
        writing = False
        await churning
        await neighbour.close()
    await asyncio.wait_for(reader, 60)

    ids = [event.event_id for event in received]
    assert len(ids) == total and len(set(ids)) == total, "the reader missed events or received some twice"
    seen: dict[str, list[int]] = defaultdict(list)
    for event in received:
        seen[event.stream_id].append(event.version)
    for stream, stream_versions in seen.items():
        assert stream_versions == list(range(1, len(stream_versions) + 1)), f"{stream} arrived out of order"
