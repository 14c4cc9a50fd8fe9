"""What every benchmark shares: a scratch database on a real server, timing, the result line."""

import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from typing import AsyncIterator, Awaitable, Callable

import asyncpg

from service.db import all_migrations
from events.database import database_url_for, migrate


@contextlib.contextmanager
def servers():
    """(database_url, nats_url) from the environment, else an embedded stack started for the run."""
    db = os.environ.get("LINKLEDGER_DATABASE_URL") or os.environ.get("LINKLEDGER_TEST_DATABASE_URL")
    nats = os.environ.get("LINKLEDGER_NATS_URL") or os.environ.get("LINKLEDGER_TEST_NATS_URL")
    if db and nats:
        yield db, nats
        return
    from scripts.devstack import EmbeddedStack

    with EmbeddedStack() as stack:
        yield db or stack.database_url, nats or stack.nats_url


@contextlib.asynccontextmanager
async def scratch_database(server_dsn: str) -> AsyncIterator[str]:
    """A fresh, migrated database that is dropped afterwards."""
    name = f"linkledger_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        dsn = database_url_for(server_dsn, name)
        await migrate(dsn, all_migrations())
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def run_for(seconds: float, workers: int, step: Callable[[int], Awaitable[None]]) -> tuple[int, float, list[float]]:
    """Run `step(worker)` in `workers` concurrent loops for `seconds`; returns (ops, elapsed, latencies)."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []

    async def loop(worker: int) -> None:
        while (now := time.perf_counter()) < deadline:
            await step(worker)
            latencies.append(time.perf_counter() - now)

    started = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(workers)))
    return len(latencies), time.perf_counter() - started, latencies


def percentile_ms(latencies: list[float], q: float) -> float:
    if not latencies:
        return 0.0
    ordered = sorted(latencies)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def median(values: list[float]) -> float:
    return statistics.median(values)


def result_line(bench: str, value: float, unit: str, ceiling: float, **extra) -> str:
    line = {"bench": bench, "value": round(value, 1), "unit": unit, "ceiling": round(ceiling, 1),
            "ratio": round(value / ceiling, 3) if ceiling else None}
    line.update(extra)
    return json.dumps(line)
