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
    # Rebuilt alone, audit_trail is built inside PostgreSQL with no fold beside it: the same rows again.
    assert await rebuild(database_url, [PROJECTIONS["audit_trail"]]) == written
    for table in PROJECTIONS["audit_trail"].tables:
        assert await dump(owner, table) == live[table], f"{table}: live and rebuilt alone differ"
    # No leftovers of the build beside the live tables.
    for projection in PROJECTIONS.values():
        for base in all_tables(projection):
            assert await owner.fetchval("SELECT to_regclass($1)", f"{base}__next") is None


async def indexes_and_constraints(conn: asyncpg.Connection) -> set[tuple]:
    tables = [base for p in PROJECTIONS.values() for base in all_tables(p)]
    indexes = await conn.fetch("SELECT tablename, indexname, indexdef FROM pg_indexes"
                               " WHERE schemaname = current_schema() AND tablename = ANY($1::text[])", tables)
    constraints = await conn.fetch("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
                                   " WHERE conrelid::regclass::text = ANY($1::text[])", tables)
    return {tuple(row.values()) for row in [*indexes, *constraints]}


async def test_a_rebuild_leaves_the_indexes_and_constraints_the_migrations_made(owner, database_url):
    # The rebuild builds indexes its own way (several at once, a primary key attached to a unique
    # index built first); the result must be what the migrations made, name for name.
    made = await indexes_and_constraints(owner)
    assert ("audit_trail", "audit_trail_pkey", "PRIMARY KEY (tx, \"position\")") in made
    await rebuild(database_url, list(PROJECTIONS.values()))
    assert await indexes_and_constraints(owner) == made


async def open_accounts(store, accounts: int, seed: int) -> int:
    """New account streams, in small batches; returns how many events."""
    rng = random.Random(seed)
    tick = workload.clock()
    written = 0
    for _ in range(accounts // 20):
        batch = []
        for _ in range(20):
            account_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            opening = [_new_event(t, d, tick, "key:key_import") for t, d in workload.opening(rng, account_id, tick())]
            batch.append((f"account-{account_id}", opening, None))
        await store.create_streams(batch)
        written += sum(len(events) for _, events, _ in batch)
    return written


async def test_events_appended_during_a_rebuild_are_caught_up(store, pool, owner, database_url):
    # A rebuild builds up to an end fixed at its start; what is appended meanwhile (new streams too,
    # whose scopes the audit trail must find) is caught up before the swap or by the live runner after.
    before = await open_accounts(store, 2_000, seed=11)
    during = asyncio.create_task(open_accounts(store, 1_000, seed=12))
    assert await rebuild(database_url, list(PROJECTIONS.values())) >= before
    written = before + await during
    await ProjectionRunner(pool, list(PROJECTIONS.values())).catch_up()
    caught_up = await dumps(owner)
    assert len(caught_up["audit_trail"]) == written
    assert await rebuild(database_url, list(PROJECTIONS.values())) == written
    assert await dumps(owner) == caught_up
