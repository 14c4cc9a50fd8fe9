"""Projections against a real log: live upkeep equals a full rebuild, row for row."""

import asyncio
import random
import uuid

import asyncpg

from events.envelope import NewEvent
from projections import PROJECTIONS
from projections.rebuild import all_tables, rebuild
from projections.runner import ProjectionRunner
from scripts import workload

ACCOUNTS = 5_000
EVENTS = 100_000
WRITERS = 32


async def dump(conn: asyncpg.Connection, table: str) -> list[tuple]:
    rows = await conn.fetch(f'SELECT * FROM "{table}"')
    return sorted(tuple(str(value) for value in row.values()) for row in rows)


async def dumps(conn: asyncpg.Connection) -> dict[str, list[tuple]]:
    return {table: await dump(conn, table) for p in PROJECTIONS.values() for table in p.tables}


async def checkpoints(conn: asyncpg.Connection) -> dict[str, tuple]:
    return {name: tuple((await conn.fetchrow(f"SELECT tx::text, position FROM {name}_checkpoint")).values())
            for name in PROJECTIONS}


def _new_event(type_: str, data: dict, tick, actor: str) -> NewEvent:
    return NewEvent(type_, data, occurred_at=tick(), actor=actor, correlation_id=uuid.uuid4())


async def write_workload(store, *, accounts: int, events: int, writers: int, seed: int = 7) -> int:
    """Imports in bulk, then `writers` concurrent tasks appending command-sized groups of events."""
    rng = random.Random(seed)
    tick = workload.clock()
    states: dict[str, dict] = {}
    written = 0
    for start in range(0, accounts, 1000):
        batch = []
        for _ in range(min(1000, accounts - start)):
            account_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            opening = workload.opening(rng, account_id, tick())
            stream = f"account-{account_id}"
            states[stream] = workload.evolve_all(workload.account_fold.blank(str(account_id)), opening)
            batch.append((stream, [_new_event(t, d, tick, "key:key_import") for t, d in opening], None))
        await store.create_streams(batch)
        written += sum(len(b[1]) for b in batch)
    await store.append("environment-prod", [_new_event(
        "EnvironmentOverrideChanged", {"environment": "prod", "merge_patch": {"a": 1}, "resulting_hash": "h1"},
        tick, "key:key_admin")], 0)
    written += 1
    streams = sorted(states)
    share = -(-(events - written) // writers)

    async def writer(index: int) -> int:
        own = streams[index::writers]  # each writer owns its streams, so its expected versions hold
        local = random.Random(seed * 100 + index)
        done = 0
        while done < share:
            # Several commands' worth of events per append (a busy account): the log gets the same
            # mix as one append per command would give, in far fewer round trips.
            stream = local.choice(own)
            state = start = states[stream]
            group = []
            for _ in range(local.randint(1, 12)):
                step = workload.next_events(local, state, tick())
                state = workload.evolve_all(state, step)
                group += step
            if not group:
                continue
            await store.append(stream, [_new_event(t, d, tick, local.choice(workload.ACTORS)) for t, d in group],
                               start["version"])
            states[stream] = state
            done += len(group)
        return done

    return written + sum(await asyncio.gather(*(writer(i) for i in range(writers))))


async def test_live_projections_equal_a_full_rebuild_row_for_row(store, pool, owner, database_url):
    # As `serve` runs them: one runner reading the log once for all projections, plus a runner of a
    # single projection beside it (they share its advisory lock, so either may apply a batch).
    runners = [ProjectionRunner(pool, list(PROJECTIONS.values()), batch_size=2000, poll_interval=0.05),
               ProjectionRunner(pool, PROJECTIONS["account_view"], batch_size=700, poll_interval=0.05)]
    tasks = [asyncio.create_task(runner.run()) for runner in runners]
    try:
        written = await write_workload(store, accounts=ACCOUNTS, events=EVENTS, writers=WRITERS)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert written >= EVENTS
    assert await owner.fetchval("SELECT count(DISTINCT stream_id) FROM events WHERE stream_id LIKE 'account-%'") >= ACCOUNTS
    for runner in runners:
        await runner.catch_up()
    live, live_checkpoints = await dumps(owner), await checkpoints(owner)
    assert len(live["audit_trail"]) == written
    assert len(live["account_view"]) == ACCOUNTS
    types = {row[10] for row in live["audit_trail"]}
    assert {"TokenRefreshed", "TokenRefreshFailed", "AccountNeedsReauth", "AccountReactivated",
            "AccountOverrideChanged", "AccountDeleted"} <= types

    assert await rebuild(database_url, list(PROJECTIONS.values())) == written
    rebuilt = await dumps(owner)
    for table, rows in live.items():
        assert rows == rebuilt[table], f"{table}: live and rebuilt differ"
    assert await checkpoints(owner) == live_checkpoints
    # Rebuilt alone, account_view folds from the rebuild's narrow scan: the same rows again.
    assert await rebuild(database_url, [PROJECTIONS["account_view"]]) == written
    assert await dump(owner, "account_view") == live["account_view"]
    # No leftovers of the build beside the live tables.
    for projection in PROJECTIONS.values():
        for base in all_tables(projection):
            assert await owner.fetchval("SELECT to_regclass($1)", f"{base}__next") is None
