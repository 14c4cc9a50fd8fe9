"""Real PostgreSQL and NATS for every test: from LINKLEDGER_TEST_DATABASE_URL / LINKLEDGER_TEST_NATS_URL
when set, else embedded servers started once per run. Each test gets its own database (cloned from
a migrated template) and its own NATS stream and subject prefix."""

import os
import uuid
from dataclasses import dataclass

import asyncpg
import pytest

from events.database import create_pool, database_url_for, migrate
from events.store import PostgresEventStore
from service.db import all_migrations


@dataclass(frozen=True)
class Servers:
    database_url: str  # the server's maintenance database, as a superuser
    nats_url: str


@pytest.fixture(scope="session")
def servers():
    database_url = os.environ.get("LINKLEDGER_TEST_DATABASE_URL")
    nats_url = os.environ.get("LINKLEDGER_TEST_NATS_URL")
    if database_url and nats_url:
        yield Servers(database_url, nats_url)
        return
    from scripts.devstack import EmbeddedStack

    stack = EmbeddedStack().start()
    try:
        yield Servers(database_url or stack.database_url, nats_url or stack.nats_url)
    finally:
        stack.stop()


async def _admin(servers: Servers) -> asyncpg.Connection:
    return await asyncpg.connect(servers.database_url)


@pytest.fixture(scope="session")
def template_database(servers):
    """One migrated database per run; each test clones it, which is faster than migrating."""
    import asyncio

    name = f"ll_template_{uuid.uuid4().hex[:8]}"

    async def create():
        admin = await _admin(servers)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        await migrate(database_url_for(servers.database_url, name), all_migrations())

    async def drop():
        admin = await _admin(servers)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(create())
    yield name
    asyncio.run(drop())


@pytest.fixture
async def database_url(servers, template_database):
    """A fresh migrated database for this test, as the superuser that owns it."""
    name = f"ll_test_{uuid.uuid4().hex[:12]}"
    admin = await _admin(servers)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await admin.close()
    yield database_url_for(servers.database_url, name)
    admin = await _admin(servers)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pool(database_url):
    """Connections as the application role, exactly as the service makes them."""
    pool = await create_pool(database_url, max_size=24)
    yield pool
    await pool.close()


@pytest.fixture
async def owner(database_url):
    """A connection as the database owner (superuser): what an attacker with full access has."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
def store(pool) -> PostgresEventStore:
    return PostgresEventStore(pool)


@pytest.fixture
def nats_prefix() -> str:
    """A subject prefix and stream name no other test uses."""
    return f"lltest{uuid.uuid4().hex[:10]}"


@dataclass
class Gateway:
    """A running linkledger app on this test's database, and a way to mint API keys for it."""

    client: object  # aiohttp.test_utils.TestClient
    settings: object
    database_url: str

    async def key(self, role: str, *environments: str) -> str:
        from service.apikeys import create_key

        conn = await asyncpg.connect(self.database_url)
        try:
            issued = await create_key(conn, role=role, environments=environments or ("*",), name=f"test {role}",
                                      created_by="tests")
        finally:
            await conn.close()
        return issued.secret

    async def headers(self, role: str = "admin", *environments: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.key(role, *environments)}"}


def gateway_settings(database_url: str, nats_url: str, **overrides):
    from service.crypto.fingerprint import generate_audit_key
    from service.crypto.keyring import Keyring
    from service.settings import load_settings

    values = dict(database_url=database_url, nats_url=nats_url, keyring=Keyring.generate("kek-test-1"),
                  audit_key=generate_audit_key(), digest_interval_seconds=0, log_level="DEBUG",
                  refresh_worker=False,  # tests that want proactive refresh turn it on
                  relay=False, webhook_dispatcher=False,  # tests that publish to NATS turn these on, with their own stream
                  import_workers=0)  # tests of the import workers start their own
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
async def gateway(database_url, servers):
    from aiohttp.test_utils import TestClient, TestServer

    from service.gateway.app import create_app

    settings = gateway_settings(database_url, servers.nats_url)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    yield Gateway(client, settings, database_url)
    await client.close()
