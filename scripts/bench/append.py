"""`linkledger bench append`: single-event appends with expected-version checks from concurrent
tasks over many streams, against the raw asyncpg INSERT of the same rows into a plain table.

The ceiling is the bare INSERT through the same kind of pool the store uses (same connections,
same concurrency), so the ratio is the cost of the store's own work: version checks, hash chain,
head row, group commit. The bare INSERT on 16 dedicated connections, no pool at all, is reported
beside it (`ceiling_dedicated`, `ratio_dedicated`), the strictest figure the driver reaches here.
"""

import asyncio
import json
import os
import random

import asyncpg

from events.database import create_pool
from events.envelope import NewEvent, utcnow, uuid7
from events.store import PostgresEventStore
from scripts.bench.common import median, percentile_ms, result_line, run_for, scratch_database, servers

PAYLOAD = {"integration": "salesforce", "expires_at": "2026-10-15T14:30:00Z", "fingerprint": "a1b2c3d4e5f60718", "rotated": True}

# The ceiling: the same rows, sent by the bare driver into a plain table with only a key.
RAW_TABLE = """CREATE TABLE raw_events (
  position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id uuid NOT NULL, stream_id text NOT NULL,
  version integer NOT NULL, type text NOT NULL, schema_version smallint NOT NULL, data text NOT NULL,
  secret bytea, key_id text, occurred_at timestamptz NOT NULL, actor text NOT NULL, correlation_id uuid,
  causation_id uuid, prev_hash bytea NOT NULL, hash bytea NOT NULL)"""


async def _raw_round(connections, seconds: float, workers: int, streams: int):
    """`connections[worker]` is a dedicated connection, or the same pool for every worker."""
    data = json.dumps(PAYLOAD, sort_keys=True, separators=(",", ":"))
    prev_hash, hash_ = os.urandom(32), os.urandom(32)
    versions = {}

    async def step(worker: int) -> None:
        stream = f"account-{worker}-{random.randrange(streams // workers)}"
        version = versions.get(stream, 0) + 1
        versions[stream] = version
        await connections[worker].execute(
            "INSERT INTO raw_events (event_id, stream_id, version, type, schema_version, data, secret, key_id,"
            " occurred_at, actor, correlation_id, causation_id, prev_hash, hash)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            uuid7(), stream, version, "TokenRefreshed", 1, data, None, None, utcnow(), "system:bench",
            None, None, prev_hash, hash_,
        )

    return await run_for(seconds, workers, step)


async def _store_round(store: PostgresEventStore, seconds: float, workers: int, streams: int, round_no: int):
    versions = {}

    async def step(worker: int) -> None:
        # Each task owns its streams, so the expected version is always right: this measures
        # the append path, not conflict retries.
        stream = f"account-r{round_no}-{worker}-{random.randrange(streams // workers)}"
        expected = versions.get(stream, 0)
        await store.append(stream, [NewEvent("TokenRefreshed", PAYLOAD, actor="system:bench")], expected)
        versions[stream] = expected + 1

    return await run_for(seconds, workers, step)


async def run(seconds: float = 5.0, workers: int = 16, streams: int = 4000, rounds: int = 4) -> str:
    with servers() as (server_dsn, _nats):
        async with scratch_database(server_dsn) as dsn:
            pool = await create_pool(dsn, min_size=workers, max_size=workers)
            raw_pool = await create_pool(dsn, role=None, min_size=workers, max_size=workers)
            connections = [await asyncpg.connect(dsn) for _ in range(workers)]
            try:
                await connections[0].execute(RAW_TABLE)
                store = PostgresEventStore(pool)
                raw_rates, dedicated_rates, store_rates, store_latencies = [], [], [], []
                pooled = [raw_pool] * workers
                # Alternate them so drift on a noisy machine hits all alike.
                for round_no in range(rounds):
                    ops, elapsed, _ = await _raw_round(pooled, seconds, workers, streams)
                    raw_rates.append(ops / elapsed)
                    print(f"raw insert (pool)      round {round_no + 1}: {ops / elapsed:,.0f} txn/s", flush=True)
                    ops, elapsed, _ = await _raw_round(connections, seconds, workers, streams)
                    dedicated_rates.append(ops / elapsed)
                    print(f"raw insert (dedicated) round {round_no + 1}: {ops / elapsed:,.0f} txn/s", flush=True)
                    ops, elapsed, lat = await _store_round(store, seconds, workers, streams, round_no)
                    store_rates.append(ops / elapsed)
                    store_latencies.extend(lat)
                    print(f"store append           round {round_no + 1}: {ops / elapsed:,.0f} appends/s", flush=True)
                stored = await connections[0].fetchval("SELECT count(*) FROM events")
            finally:
                await pool.close()
                await raw_pool.close()
                for conn in connections:
                    await conn.close()
    value, dedicated = median(store_rates), median(dedicated_rates)
    return result_line(
        "append", value, "appends/s", median(raw_rates),
        ceiling_dedicated=round(dedicated, 1), ratio_dedicated=round(value / dedicated, 3),
        p50_ms=percentile_ms(store_latencies, 0.5), p99_ms=percentile_ms(store_latencies, 0.99),
        workers=workers, streams=streams, events_stored=stored,
    )


def main(argv: list[str]) -> None:
    print(asyncio.run(run()))
