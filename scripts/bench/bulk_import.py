"""`linkledger bench import`: 10,000 accounts bulk-imported through the import handler (parsing,
fingerprints, one data key and one encryption per account, the events), against the raw COPY of
the same rows (events and head rows) into plain tables: the ceiling."""

import asyncio
import time
import uuid

import asyncpg

from scripts.bench.accounts import account_uow, truto_line
from scripts.bench.common import result_line, scratch_database, servers
from service.handlers.accounts import import_accounts
from service.handlers.import_profiles import iter_parse_import

PLAIN_TABLES = """
CREATE TABLE copy_events (LIKE events INCLUDING DEFAULTS);
CREATE TABLE copy_heads (LIKE stream_heads INCLUDING DEFAULTS);
CREATE TABLE copy_keys (LIKE data_keys INCLUDING DEFAULTS);
"""


async def _copy_ceiling(dsn: str) -> float:
    """Accounts/s when the rows an import writes are COPYed raw: the fastest PostgreSQL takes them."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(PLAIN_TABLES)
        events = await conn.fetch("SELECT * FROM events")
        heads = await conn.fetch("SELECT * FROM stream_heads")
        keys = await conn.fetch("SELECT * FROM data_keys")
        columns = list(events[0].keys())
        started = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table("copy_events", records=[tuple(r[c] for c in columns) for r in events],
                                             columns=columns)
            await conn.copy_records_to_table("copy_heads", records=[tuple(r) for r in heads], columns=list(heads[0].keys()))
            await conn.copy_records_to_table("copy_keys", records=[tuple(r) for r in keys], columns=list(keys[0].keys()))
        elapsed = time.perf_counter() - started
        return (len(heads) - 1) / elapsed  # one head row is the integration's
    finally:
        await conn.close()


async def run(accounts: int = 10_000) -> str:
    run_id = uuid.uuid4().hex[:6]
    body = b"\n".join(truto_line(i, run_id) for i in range(accounts))
    with servers() as (server_dsn, _nats):
        async with scratch_database(server_dsn) as dsn:
            async with account_uow(dsn) as uow:
                started = time.perf_counter()
                records = iter_parse_import(body, "application/x-ndjson", environment="bench", profile="truto", now=uow.clock())
                results = await import_accounts(records, uow, profile="truto")
                elapsed = time.perf_counter() - started
            imported = sum(r.outcome == "imported" for r in results)
            print(f"imported {imported} of {accounts} accounts in {elapsed:.2f} s", flush=True)
            ceiling = await _copy_ceiling(dsn)
            print(f"raw COPY of the same rows: {ceiling:,.0f} accounts/s", flush=True)
    return result_line("import", imported / elapsed, "accounts/s", ceiling, accounts=accounts, seconds=round(elapsed, 2))


def main(argv: list[str]) -> None:
    print(asyncio.run(run()))
