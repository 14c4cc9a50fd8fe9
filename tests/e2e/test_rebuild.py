"""Blue/green rebuild as an operator runs it: queries keep being answered in full while the swap
happens, and a rebuild killed midway leaves the live projection as it was and a rerun completes."""

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import asyncpg

from projections import PROJECTIONS
from projections.rebuild import rebuild
from scripts.bench.seed import seed_events
from tests.integration.test_projections import dumps

LINKLEDGER = Path(sys.executable).parent / "linkledger"


async def _seeded(database_url: str, events: int, accounts: int) -> dict[str, dict]:
    conn = await asyncpg.connect(database_url)
    try:
        return await seed_events(conn, events, accounts, chunk=10_000)
    finally:
        await conn.close()


async def test_queries_during_a_rebuild_never_fail_and_never_see_part_of_the_accounts(gateway):
    states = await _seeded(gateway.database_url, 20_000, 1_500)
    await rebuild(gateway.database_url, [PROJECTIONS["account_view"]])  # the live tables, complete
    by_env: dict[str, set[str]] = {}
    for state in states.values():
        by_env.setdefault(state["environment"], set()).add(state["account_id"])
    headers = await gateway.headers("auditor")
    client = gateway.client
    rebuilding = asyncio.Event()
    failures, answered = [], {"list": 0, "detail": 0}

    async def list_everything() -> None:
        while not rebuilding.is_set():
            await asyncio.sleep(0)
        while rebuilding.is_set():
            env = random.choice(sorted(by_env))
            seen, cursor = set(), None
            while True:
                response = await client.get(f"/v1/environments/{env}/accounts?limit=500"
                                            + (f"&cursor={cursor}" if cursor else ""), headers=headers)
                if response.status != 200:
                    failures.append(f"list {response.status}: {await response.text()}")
                    return
                body = await response.json()
                seen |= {a["id"] for a in body["data"]}
                cursor = body["next_cursor"]
                if not cursor:
                    break
            if seen != by_env[env]:
                failures.append(f"list of {env}: {len(seen)} accounts, expected {len(by_env[env])}")
            answered["list"] += 1

    async def details() -> None:
        ids = [s["account_id"] for s in states.values()]
        while not rebuilding.is_set():
            await asyncio.sleep(0)
        while rebuilding.is_set():
            account_id = random.choice(ids)
            response = await client.get(f"/v1/accounts/{account_id}", headers=headers)
            if response.status != 200 or (await response.json())["id"] != account_id:
                failures.append(f"detail {response.status}: {await response.text()}")
                return
            answered["detail"] += 1

    readers = [asyncio.create_task(list_everything()) for _ in range(2)] + [asyncio.create_task(details())
                                                                            for _ in range(4)]
    rebuilding.set()
    try:
        await rebuild(gateway.database_url, [PROJECTIONS["account_view"]], page=1_000)
        await asyncio.sleep(0.2)  # a few more queries against the swapped-in tables
    finally:
        rebuilding.clear()
        await asyncio.gather(*readers)
    assert not failures, failures[:5]
    assert answered["list"] >= 2 and answered["detail"] >= 20, answered


async def _rebuild_process(database_url: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "LINKLEDGER_DATABASE_URL": database_url}
    return await asyncio.create_subprocess_exec(str(LINKLEDGER), "rebuild", "--all", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_a_rebuild_killed_midway_leaves_the_live_tables_and_a_rerun_completes(database_url, owner):
    await _seeded(database_url, 60_000, 3_000)
    await rebuild(database_url, list(PROJECTIONS.values()))
    before = await dumps(owner)
    assert len(before["audit_trail"]) >= 60_000

    process = await _rebuild_process(database_url)
    # Kill it once the fresh tables are being filled, before any swap.
    for _ in range(600):
        if await owner.fetchval("SELECT count(*) FROM pg_class WHERE relname = 'audit_trail__next'") and \
                await owner.fetchval("SELECT reltuples > 0 OR pg_relation_size(oid) > 0 FROM pg_class"
                                     " WHERE relname = 'audit_trail__next'"):
            break
        assert process.returncode is None, (await process.stderr.read()).decode()[-2000:]
        await asyncio.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    await process.wait()
    assert process.returncode == -signal.SIGKILL
    assert await owner.fetchval("SELECT to_regclass('audit_trail__next') IS NOT NULL"), "killed too late to prove it"
    assert await dumps(owner) == before

    process = await _rebuild_process(database_url)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()[-2000:]
    assert "rebuilt account_view, audit_trail, migration_health" in out.decode()
    assert await dumps(owner) == before
    assert not await owner.fetchval("SELECT count(*) FROM pg_class WHERE relname LIKE '%\\_\\_next%'")
