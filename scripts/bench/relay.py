"""`linkledger bench relay`: the relay's catch-up throughput against the raw JetStream publish
ceiling (256 in flight), and append-to-JetStream-ack latency at a steady rate.

- ceiling: bare `js.publish` of prebuilt messages of the same size, 256 in flight, with
  `Nats-Msg-Id` headers, into a stream of its own;
- value: a relay started on a log holding `--events` events (over `--streams` account streams)
  publishes all of them: events per second from its start until the last ack is checkpointed;
- rounds alternate the two, so drift on a noisy machine hits both alike (medians reported);
- latency: appends at a steady `--rate` per second for `--seconds`, from the time each append is
  called until JetStream acknowledged its event (the relay in the same process, woken by the
  store); `p50_ms`, `p99_ms`.
"""

import argparse
import asyncio
import time
import uuid

import nats

from events.catalog.account import AccountConnecting, TokenRefreshed
from events.catalog.base import encode
from events.database import create_pool
from events.envelope import NewEvent, uuid7
from events.publish import ensure_stream
from events.relay import RELAY_ROLE, Relay, StreamContext, cloudevent
from events.store import PostgresEventStore
from scripts.bench.common import median, percentile_ms, result_line, scratch_database, servers

from datetime import datetime, timezone

AT = datetime(2026, 10, 15, 14, 30, tzinfo=timezone.utc)


def _connecting(account_id: uuid.UUID) -> NewEvent:
    return NewEvent("AccountConnecting", encode(AccountConnecting(
        at=AT, account_id=account_id, environment="prod", integration="salesforce", tenant_id=f"t-{account_id.hex[:8]}",
        authentication_method="oauth2", context={"instance_url": "https://acme.my.salesforce.com"}, source="import",
    )), actor="system:bench")


def _refreshed(n: int) -> NewEvent:
    return NewEvent("TokenRefreshed", encode(TokenRefreshed(
        at=AT, rotated=bool(n % 2), fingerprints={"access_token": f"fp_bench{n:08d}", "refresh_token": "fp_benchrefresh"},
        expires_at=AT,
    )), actor="system:bench")


async def _raw_ceiling(nc, stream: str, count: int, in_flight: int = 256) -> float:
    """Bare JetStream publishes of relay-sized messages, `in_flight` at a time."""
    await ensure_stream(nc, stream, stream)
    js = nc.jetstream()
    context = StreamContext("prod.salesforce", "prod", str(uuid.uuid4()), "salesforce", "t-00000000")
    sample = _refreshed(1)
    import json

    data = json.dumps(sample.data, sort_keys=True, separators=(",", ":"))
    messages = []
    for n in range(count):
        event_id = str(uuid7())
        messages.append((f"{stream}.prod.salesforce.TokenRefreshed", event_id, cloudevent(
            event_id=event_id, type_="TokenRefreshed", schema_version=1, stream_version=n + 2, position=n + 1,
            data_json=data, occurred_at=AT, context=context)))
    gate = asyncio.Semaphore(in_flight)

    async def one(subject, event_id, body):
        async with gate:
            await js.publish(subject, body, timeout=10, headers={"Nats-Msg-Id": event_id})

    started = time.perf_counter()
    tasks = []
    for subject, event_id, body in messages:
        await gate.acquire()
        gate.release()
        tasks.append(asyncio.create_task(one(subject, event_id, body)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    await js.delete_stream(stream)
    return count / elapsed


async def _fill(store: PostgresEventStore, streams: int, per_stream: int) -> int:
    accounts = [uuid.uuid4() for _ in range(streams)]
    batch = [(f"account-{a}", [_connecting(a)] + [_refreshed(n) for n in range(1, per_stream)], None) for a in accounts]
    for start in range(0, len(batch), 500):
        await store.create_streams(batch[start:start + 500])
    return streams * per_stream


async def _catch_up(dsn: str, nc, stream: str, last_position: int) -> float:
    """Seconds from the relay's start until its checkpoint holds the log's last event."""
    pool = await create_pool(dsn, role=RELAY_ROLE, min_size=2, max_size=4)

    async def ready():
        return nc

    relay = Relay(pool, ready, stream=stream, prefix=stream)
    started = time.perf_counter()
    task = asyncio.create_task(relay.run())
    try:
        while relay.stats.checkpoint.position < last_position:
            await asyncio.sleep(0.001)
            if task.done():
                task.result()
        return time.perf_counter() - started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()
        await nc.jetstream().delete_stream(stream)


async def _latency(dsn: str, nc, stream: str, rate: int, seconds: float, streams: int) -> tuple[list[float], int]:
    pool = await create_pool(dsn, min_size=8, max_size=16)
    relay_pool = await create_pool(dsn, role=RELAY_ROLE, min_size=2, max_size=4)
    store = PostgresEventStore(pool)
    started_at: dict[str, float] = {}
    committed_at: dict[str, float] = {}
    latencies: list[float] = []
    append_latencies: list[float] = []
    relay_latencies: list[float] = []  # from the append's return (committed) to the ack
    read_latencies: list[float] = []  # from the append's return to the relay reading the event

    def published(message, duplicate):
        now = time.perf_counter()
        t0 = started_at.pop(message.event_id, None)
        if t0 is not None:
            latencies.append(now - t0)
        t1 = committed_at.pop(message.event_id, None)
        if t1 is not None:
            relay_latencies.append(now - t1)
            read_latencies.append(max(0.0, message.read_at - t1))

    async def ready():
        return nc

    relay = Relay(pool=relay_pool, nats_client=ready, name="bench-latency", stream=stream, prefix=stream,
                  on_published=published)
    store.on_append(relay.wake)
    accounts = [uuid.uuid4() for _ in range(streams)]
    versions = {a: 0 for a in accounts}
    task = asyncio.create_task(relay.run())
    total = int(rate * seconds)
    errors = 0

    async def append(account):
        nonlocal errors
        event = _connecting(account) if versions[account] == 0 else _refreshed(versions[account])
        versions[account] += 1  # reserved before awaiting: the next event of this stream follows it
        started_at[str(event.event_id)] = time.perf_counter()
        try:
            t0 = time.perf_counter()
            await store.append(f"account-{account}", [event], versions[account] - 1)
            append_latencies.append(time.perf_counter() - t0)
            if str(event.event_id) in started_at:  # not acked yet (it almost never is)
                committed_at[str(event.event_id)] = time.perf_counter()
        except Exception:  # noqa: BLE001
            errors += 1
            started_at.pop(str(event.event_id), None)

    try:
        await asyncio.sleep(0.5)  # the relay takes its lock and creates the stream
        begin = time.perf_counter()
        pending = []
        for n in range(total):
            delay = begin + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(append(accounts[n % streams])))
        await asyncio.gather(*pending)
        deadline = time.perf_counter() + 30
        while started_at and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await relay_pool.close()
        await pool.close()
        await nc.jetstream().delete_stream(stream)
    return latencies, append_latencies, relay_latencies, read_latencies, errors + len(started_at)


async def run(events: int, streams: int, rounds: int, rate: int, seconds: float) -> str:
    with servers() as (server_dsn, nats_url):
        nc = await nats.connect(nats_url)
        try:
            ceilings, values = [], []
            for round_no in range(rounds):
                tag = uuid.uuid4().hex[:8]
                ceiling = await _raw_ceiling(nc, f"benchraw{tag}", events)
                ceilings.append(ceiling)
                print(f"raw JetStream publish, 256 in flight  round {round_no + 1}: {ceiling:,.0f} msgs/s", flush=True)
                async with scratch_database(server_dsn) as dsn:
                    pool = await create_pool(dsn, min_size=4, max_size=8)
                    try:
                        stored = await _fill(PostgresEventStore(pool), streams, events // streams)
                        last = await pool.fetchval("SELECT max(position) FROM events")
                    finally:
                        await pool.close()
                    elapsed = await _catch_up(dsn, nc, f"benchrelay{tag}", last)
                values.append(stored / elapsed)
                print(f"relay catch-up                        round {round_no + 1}: {stored / elapsed:,.0f} events/s",
                      flush=True)
            async with scratch_database(server_dsn) as dsn:
                latencies, append_latencies, relay_latencies, read_latencies, lost = await _latency(dsn, nc, f"benchlat{uuid.uuid4().hex[:8]}", rate, seconds, 2000)
            print(f"steady {rate}/s for {seconds:.0f}s: p50 {percentile_ms(latencies, 0.5)} ms, "
                  f"p99 {percentile_ms(latencies, 0.99)} ms, {len(latencies)} acked, {lost} lost; the appends alone: "
                  f"p50 {percentile_ms(append_latencies, 0.5)} ms, p99 {percentile_ms(append_latencies, 0.99)} ms; "
                  f"commit to ack: p50 {percentile_ms(relay_latencies, 0.5)} ms, p99 {percentile_ms(relay_latencies, 0.99)} ms "
                  f"(of which commit to read: p50 {percentile_ms(read_latencies, 0.5)} ms, "
                  f"p99 {percentile_ms(read_latencies, 0.99)} ms)",
                  flush=True)
        finally:
            await nc.close()
    return result_line(
        "relay", median(values), "events/s", median(ceilings),
        p50_ms=percentile_ms(latencies, 0.5), p99_ms=percentile_ms(latencies, 0.99), max_ms=percentile_ms(latencies, 1.0),
        append_p50_ms=percentile_ms(append_latencies, 0.5), append_p99_ms=percentile_ms(append_latencies, 0.99),
        commit_to_ack_p50_ms=percentile_ms(relay_latencies, 0.5), commit_to_ack_p99_ms=percentile_ms(relay_latencies, 0.99),
        commit_to_read_p99_ms=percentile_ms(read_latencies, 0.99),
        steady_rate=rate, steady_seconds=seconds, steady_acked=len(latencies), steady_lost=lost,
        events=events, streams=streams, rounds=rounds, in_flight=256,
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="linkledger bench relay")
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--streams", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    print(asyncio.run(run(args.events, args.streams, args.rounds, args.rate, args.seconds)))
