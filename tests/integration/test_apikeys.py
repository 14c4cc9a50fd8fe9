"""API key authentication: cached briefly, so a revocation made by another process is honoured
within CACHE_SECONDS (at once in the process that revokes)."""

import asyncpg

from events.database import create_pool
from service import apikeys
from service.apikeys import CACHE_SECONDS, authenticate, create_key, revoke_key


async def test_a_revocation_elsewhere_is_honoured_within_the_cache_time(database_url, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(apikeys, "clock", lambda: now[0])
    pool = await create_pool(database_url, max_size=2)
    owner = await asyncpg.connect(database_url)
    try:
        issued = await create_key(owner, role="service", environments=("prod",), name="svc", created_by="tests")
        assert await authenticate(pool, issued.secret) == issued.key
        # Another replica revokes it: this process's cache does not know.
        await owner.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1", issued.key.key_id)
        now[0] += CACHE_SECONDS - 1
        assert await authenticate(pool, issued.secret) == issued.key
        now[0] += 1.5
        assert await authenticate(pool, issued.secret) is None
    finally:
        await owner.close()
        await pool.close()


async def test_a_revocation_in_this_process_is_honoured_at_once(database_url):
    pool = await create_pool(database_url, max_size=2)
    try:
        issued = await create_key(pool, role="service", environments=("prod",), name="svc", created_by="tests")
        assert await authenticate(pool, issued.secret) == issued.key
        assert await revoke_key(pool, issued.key.key_id)
        assert await authenticate(pool, issued.secret) is None
    finally:
        await pool.close()
