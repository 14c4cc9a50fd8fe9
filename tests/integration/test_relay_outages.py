"""The relay through outages: NATS stopped in the middle of 10,000 appends, and the relay process
killed with SIGKILL mid-batch. Afterwards JetStream holds each event exactly once, each account's
events in order. A NATS server of the test's own is stopped; the machine's shared one never is."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid

import nats
import pytest

from events.database import create_pool
from events.relay import RELAY_ROLE, Relay
from tests.support.natsserver import NatsServer
from tests.support.relaying import connecting, read_stream, refreshed, stream_count, wait_for_count

ACCOUNTS = 400
EVENTS = 10_000


def _check_exactly_once_in_order(messages, expected_ids: set[str]) -> None:
    ids = [m.header["Nats-Msg-Id"] for m in messages]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert set(ids) == expected_ids
    last: dict[str, int] = {}
    for message in messages:
        body = json.loads(message.data)
        version = body["data"]["stream_version"]
        assert body["id"] == message.header["Nats-Msg-Id"]
        assert version == last.get(body["subject"], 0) + 1, f"account {body['subject']}: v{version} after v{last.get(body['subject'])}"
        last[body["subject"]] = version


async def test_nats_stopped_in_the_middle_of_10000_appends(store, database_url, tmp_path, nats_prefix):
    server = NatsServer(tmp_path / "nats").start()
    relay_pool = await create_pool(database_url, role=RELAY_ROLE, max_size=4)
    async def quiet(*_):
        pass

    nc = await nats.connect(server.url, allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.1,
                            error_cb=quiet, disconnected_cb=quiet)
    relay = Relay(relay_pool, lambda: _ready(nc), stream=nats_prefix, prefix=nats_prefix, poll_interval=0.1,
                  publish_timeout=1.0, batch_size=500)
    store.on_append(relay.wake)
    task = asyncio.create_task(relay.run())
    accounts = [uuid.uuid4() for _ in range(ACCOUNTS)]
    versions = {a: 0 for a in accounts}
    failures: list[BaseException] = []
    appended = 0
    stopped_at = started_at = None
    behind: list[int] = []
    try:
        async def writer(mine: list[uuid.UUID]) -> None:
            nonlocal appended
            per_writer = EVENTS // 16
            for n in range(per_writer):
                account = mine[n % len(mine)]
                event = connecting(account) if versions[account] == 0 else refreshed(versions[account])
                try:
                    await store.append(f"account-{account}", [event], versions[account])
                except BaseException as exc:  # noqa: BLE001 - counted: appends must never fail
                    failures.append(exc)
                    continue
                versions[account] += 1
                appended += 1
                if n % 50 == 0:
                    await asyncio.sleep(0)

        async def outage() -> None:
            nonlocal stopped_at, started_at
            while appended < EVENTS * 0.3:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(server.stop)
            stopped_at = appended
            while appended < EVENTS * 0.7:
                await asyncio.sleep(0.01)
            behind.append(relay.stats.published)
            await asyncio.to_thread(server.start)
            started_at = appended

        await asyncio.gather(outage(), *(writer(accounts[w::16]) for w in range(16)))
        assert not failures, failures[:3]
        assert appended == EVENTS
        assert stopped_at < started_at < EVENTS, (stopped_at, started_at)
        assert await wait_for_count(nc, nats_prefix, EVENTS, timeout=120) == EVENTS
        await asyncio.sleep(0.5)  # anything still in flight would land now
        messages = await read_stream(nc, nats_prefix)
        rows = await relay_pool.fetch("SELECT event_id FROM events")
        assert len(rows) == EVENTS
        _check_exactly_once_in_order(messages, {str(r["event_id"]) for r in rows})
        # While NATS was down the relay fell behind (appends did not), and caught up afterwards.
        assert behind[0] < started_at, (behind, started_at)
        assert relay.stats.published + relay.stats.duplicates >= EVENTS
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()
        await relay_pool.close()
        server.stop()


async def _ready(nc):
    return nc


def _relay_process(database_url: str, nats_url: str, prefix: str) -> subprocess.Popen:
    env = {**os.environ, "LINKLEDGER_DATABASE_URL": database_url, "LINKLEDGER_NATS_URL": nats_url,
           "LINKLEDGER_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "service.cli", "relay", "--stream", prefix, "--prefix", prefix],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_kill_9_the_relay_mid_batch_and_restart_it(store, database_url, servers, nats_prefix):
    accounts = [uuid.uuid4() for _ in range(1000)]
    streams = [(f"account-{a}", [connecting(a)] + [refreshed(n) for n in range(1, 10)], None) for a in accounts]
    for start in range(0, len(streams), 250):
        await store.create_streams(streams[start:start + 250])
    total = len(accounts) * 10
    nc = await nats.connect(servers.nats_url)
    relay = _relay_process(database_url, servers.nats_url, nats_prefix)
    try:
        # Kill it once it has published part of the log but not all of it.
        for _ in range(600):
            if await stream_count(nc, nats_prefix) >= total // 4:
                break
            await asyncio.sleep(0.02)
        relay.send_signal(signal.SIGKILL)
        relay.wait(timeout=10)
        published_before = await stream_count(nc, nats_prefix)
        checkpoint = await store._pool.fetchval("SELECT published FROM relay_checkpoints WHERE name = 'default'")
        assert 0 < published_before < total, published_before
        assert checkpoint is None or checkpoint < total
        relay = _relay_process(database_url, servers.nats_url, nats_prefix)
        assert await wait_for_count(nc, nats_prefix, total, timeout=120) == total
        # Caught up: its checkpoint reaches the end of the log and nothing more arrives.
        last = await store._pool.fetchval("SELECT max(position) FROM events")
        for _ in range(300):
            if await store._pool.fetchval("SELECT position FROM relay_checkpoints WHERE name = 'default'") == last:
                break
            await asyncio.sleep(0.05)
        assert await store._pool.fetchval("SELECT position FROM relay_checkpoints WHERE name = 'default'") == last
        assert await stream_count(nc, nats_prefix) == total
        messages = await read_stream(nc, nats_prefix)
        rows = await store._pool.fetch("SELECT event_id FROM events")
        _check_exactly_once_in_order(messages, {str(r["event_id"]) for r in rows})
    finally:
        if relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(timeout=10)
            except subprocess.TimeoutExpired:
                relay.kill()
        stderr = relay.stderr.read().decode() if relay.stderr else ""
        try:
            await nc.jetstream().delete_stream(nats_prefix)
        except Exception:  # noqa: BLE001
            pass
        await nc.close()
    assert "Traceback" not in stderr, stderr[-2000:]
