"""Migrations: safe when several replicas start at once, applied once, and never silently re-edited."""

import asyncio
import uuid

import asyncpg
import pytest

from events.database import database_url_for, migrate
from events.migrate import Migration, MigrationError
from service.db import all_migrations


@pytest.fixture
async def empty_database_url(servers):
    """A brand-new database with no schema at all (not cloned from the migrated template)."""
    name = f"ll_migrations_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield database_url_for(servers.database_url, name)
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _recorded(url: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT name, checksum FROM schema_migrations ORDER BY applied_at, name")
        return [(r["name"], r["checksum"]) for r in rows]
    finally:
        await conn.close()


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        return {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    finally:
        await conn.close()


def test_the_service_ships_its_migrations_in_order():
    names = [m.name for m in all_migrations()]
    assert names[:2] == ["events/0001_event_log.sql", "events/0002_ledger_digests.sql"]
    assert len(names) == len(set(names))


async def test_concurrent_first_runs_both_succeed_and_apply_each_migration_once(empty_database_url):
    migrations = all_migrations()
    names = [m.name for m in migrations]

    first, second = await asyncio.wait_for(
        asyncio.gather(migrate(empty_database_url, migrations), migrate(empty_database_url, migrations)),
        timeout=60,
    )

    # One replica applied everything, the other found it done.
    assert sorted([first, second], key=len) == [[], names]
    recorded = await _recorded(empty_database_url)
    assert sorted(name for name, _ in recorded) == sorted(names)
    assert dict(recorded) == {m.name: m.checksum for m in migrations}
    assert {"events", "stream_heads", "ledger_digests", "schema_migrations"} <= await _tables(empty_database_url)

    # A third start applies nothing and records nothing new.
    assert await migrate(empty_database_url, migrations) == []
    assert await _recorded(empty_database_url) == recorded


async def test_many_concurrent_runs_apply_each_migration_exactly_once(empty_database_url):
    migrations = all_migrations()
    results = await asyncio.wait_for(
        asyncio.gather(*(migrate(empty_database_url, migrations) for _ in range(5))), timeout=60
    )
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(m.name for m in migrations)
    assert len(await _recorded(empty_database_url)) == len(migrations)


async def test_a_migration_changed_after_it_was_applied_is_refused(empty_database_url):
    migrations = all_migrations()
    await migrate(empty_database_url, migrations)
    before = await _recorded(empty_database_url)

    edited = list(migrations)
    edited[0] = Migration(edited[0].name, edited[0].sql + "\n-- a harmless-looking edit\n")
    later = Migration("events/9999_added_later.sql", "CREATE TABLE added_later (id int);")
    with pytest.raises(MigrationError) as caught:
        await asyncio.wait_for(migrate(empty_database_url, [*edited, later]), timeout=30)

    message = str(caught.value)
    assert migrations[0].name in message
    assert "changed" in message
    # Refused before anything else ran: the later migration was not applied, nothing recorded.
    assert "added_later" not in await _tables(empty_database_url)
    assert await _recorded(empty_database_url) == before

    # The lock was released: the unedited list still runs (and finds nothing to do) promptly.
    assert await asyncio.wait_for(migrate(empty_database_url, migrations), timeout=30) == []


async def test_a_failing_migration_leaves_no_trace_and_can_be_fixed(empty_database_url):
    base = all_migrations()
    broken = Migration("events/9999_broken.sql", "CREATE TABLE half_done (id int); SELECT no_such_function();")
    with pytest.raises(asyncpg.PostgresError):
        await migrate(empty_database_url, [*base, broken])

    assert "half_done" not in await _tables(empty_database_url)
    assert [name for name, _ in await _recorded(empty_database_url)] == [m.name for m in base]

    fixed = Migration("events/9999_broken.sql", "CREATE TABLE half_done (id int);")
    assert await migrate(empty_database_url, [*base, fixed]) == ["events/9999_broken.sql"]
    assert "half_done" in await _tables(empty_database_url)


async def test_a_second_database_on_the_same_server_migrates_too(empty_database_url, database_url):
    """Roles are cluster-wide: creating the application role again in another database must not fail."""
    assert await migrate(empty_database_url, all_migrations()) != []
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = 'linkledger_app'") == 1
    finally:
        await conn.close()
