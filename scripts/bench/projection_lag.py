"""`linkledger bench projection-lag`: how far behind the log the live projections run under a steady
append rate (default 1,000 events/s for 20 s, after a seeded log of 100,000 events).

Lag of an event = when its projection transaction committed minus when it was appended (its
occurred_at, taken just before the append). One runner applies all projections, as in `linkledger serve`: woken by this
process's appends, polling otherwise. The ceiling is the appends' own commit latency (p99) in the
same run: no reader can see an event before it commits. value and ceiling are p99s in ms.

Options: --rate N (1000), --seconds N (20), --events N (100000), --accounts N (5000).
"""

import argparse
import asyncio
import random
import time
import uuid

import asyncpg

from events.database import create_pool
from events.envelope import NewEvent, utcnow
from events.store import PostgresEventStore
from projections import PROJECTIONS
from projections.rebuild import rebuild
from projections.runner import ProjectionRunner
from scripts import workload
from scripts.bench.common import percentile_ms, result_line, scratch_database, servers
from scripts.bench.seed import seed_events

TICK = 0.01


async def steady_appends(store: PostgresEventStore, states: dict[str, dict], rate: int, seconds: float,
                         latencies: list[float]) -> int:
    rng = random.Random(3)
    streams = list(states)
    per_tick = max(1, round(rate * TICK))
    appended = 0
    busy: set[str] = set()

    async def append(stream: str) -> int:
        state = states[stream]
        group = workload.next_events(rng, state, utcnow())[:1] or [("CredentialsAccessed", {
            "accessor": "key_svc", "at": "2026-01-01T00:00:00.000000Z", "count": 1,
            "first_at": "2026-01-01T00:00:00.000000Z", "last_at": "2026-01-01T00:00:00.000000Z"})]
        started = time.perf_counter()
        await store.append(stream, [NewEvent(t, d, occurred_at=utcnow(), actor="system:bench",
                                             correlation_id=uuid.uuid4()) for t, d in group], state["version"])
        latencies.append(time.perf_counter() - started)
        states[stream] = workload.evolve_all(state, group)
        busy.discard(stream)
        return len(group)

    tasks = []
    start = time.perf_counter()
    ticks = int(seconds / TICK)
    for tick in range(ticks):
        for _ in range(per_tick):
            stream = rng.choice(streams)
            while stream in busy or states[stream]["status"] == "deleted":
                stream = rng.choice(streams)
            busy.add(stream)
            tasks.append(asyncio.create_task(append(stream)))
        await asyncio.sleep(max(0.0, start + (tick + 1) * TICK - time.perf_counter()))
    for done in await asyncio.gather(*tasks):
        appended += done
    return appended


async def run(rate: int, seconds: float, events: int, accounts: int) -> str:
    with servers() as (server_dsn, _nats):
        async with scratch_database(server_dsn) as dsn:
            owner = await asyncpg.connect(dsn)
            try:
                states = await seed_events(owner, events, accounts)
            finally:
                await owner.close()
            await rebuild(dsn, list(PROJECTIONS.values()))
            pool = await create_pool(dsn, max_size=20)
            try:
                store = PostgresEventStore(pool)
                runners = [ProjectionRunner(pool, list(PROJECTIONS.values()))]  # as `serve` runs them
                for runner in runners:
                    store.on_append(runner.wake)
                tasks = [asyncio.create_task(r.run()) for r in runners]
                warmup: list[float] = []
                await steady_appends(store, states, rate, 2.0, warmup)
                for runner in runners:
                    runner.recent_lags.clear()
                append_latencies: list[float] = []
                started = time.perf_counter()
                appended = await steady_appends(store, states, rate, seconds, append_latencies)
                achieved = appended / (time.perf_counter() - started)
                await asyncio.sleep(1.0)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                await pool.close()
    lags = [lag for runner in runners for lag in runner.recent_lags]
    p99 = percentile_ms(lags, 0.99)
    return result_line("projection-lag", p99, "ms (p99 lag)", percentile_ms(append_latencies, 0.99),
                       p50_ms=percentile_ms(lags, 0.5), p99_ms=p99, target_ms=500, rate=round(achieved),
                       events_measured=len(lags),
                       append_p99_ms=percentile_ms(append_latencies, 0.99))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="linkledger bench projection-lag")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=5000)
    args = parser.parse_args(argv)
    print(asyncio.run(run(args.rate, args.seconds, args.events, args.accounts)))
