"""The relay publishes the log to JetStream: CloudEvents bodies, subjects, exactly once, in order."""

import asyncio
import json
import uuid

import asyncpg
import nats
import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1.http import from_json

from events.database import create_pool
from events.relay import RELAY_ROLE, Relay
from tests.support.relaying import (
    connecting, delete_stream, imported, read_stream, refreshed, validated, wait_for_count,
)


@pytest.fixture
async def nc(servers):
    client = await nats.connect(servers.nats_url)
    yield client
    await client.close()


@pytest.fixture
async def relay_pool(database_url):
    pool = await create_pool(database_url, role=RELAY_ROLE, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def js_stream(nc, nats_prefix):
    yield nats_prefix
    await delete_stream(nc, nats_prefix)


async def _run(relay: Relay):
    return asyncio.create_task(relay.run())


async def _stop(task):
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_each_event_is_a_cloudevent_on_its_subject(store, relay_pool, nc, js_stream):
    accounts = [uuid.uuid4() for _ in range(3)]
    for i, account in enumerate(accounts):
        await store.append(f"account-{account}", [connecting(account, integration=f"crm{i}", tenant=f"t{i}")], 0)
    for account in accounts:
        await store.append(f"account-{account}", [imported(b"\x01" * 40)], 1)
        await store.append(f"account-{account}", [validated()], 2)
    await store.append("environment-prod", [__import__("events.envelope", fromlist=["NewEvent"]).NewEvent(
        "EnvironmentOverrideChanged", {"environment": "prod", "merge_patch": {}, "resulting_hash": "x"})], 0)
    relay = Relay(relay_pool, lambda: _ready(nc), stream=js_stream, prefix=js_stream, poll_interval=0.1)
    store.on_append(relay.wake)
    task = await _run(relay)
    try:
        assert await wait_for_count(nc, js_stream, 10) == 10
        messages = await read_stream(nc, js_stream)
    finally:
        await _stop(task)
    rows = await relay_pool.fetch("SELECT event_id, stream_id, version, position, type FROM events ORDER BY tx, position")
    by_id = {str(r["event_id"]): r for r in rows}
    assert len(messages) == len(rows) == 10
    for message in messages:
        event = from_json(message.data)
        strict = JSONFormat().read(None, message.data)
        assert strict.get_id() == event["id"]
        row = by_id[event["id"]]
        assert message.header["Nats-Msg-Id"] == event["id"]
        assert event["specversion"] == "1.0"
        assert event["type"] == f"io.linkledger.{row['type']}.v1"
        assert event["datacontenttype"] == "application/json"
        assert event["time"].endswith("Z")
        assert event.data["stream_version"] == row["version"] and event.data["log_position"] == row["position"]
        if row["stream_id"].startswith("account-"):
            i = [f"account-{a}" for a in accounts].index(row["stream_id"])
            assert message.subject == f"{js_stream}.prod.crm{i}.{row['type']}"
            assert event["source"] == "/environments/prod"
            assert event["subject"] == row["stream_id"].removeprefix("account-")
            assert event["integration"] == f"crm{i}" and event["tenantid"] == f"t{i}"
        else:
            assert message.subject == f"{js_stream}.prod._environment.EnvironmentOverrideChanged"
    # The ciphertext stays home: nothing of it, in any encoding, went out.
    for message in messages:
        assert b"\x01" * 8 not in message.data and "AQEB" not in message.data.decode() and "0101010101" not in message.data.decode()
    assert relay.stats.published == 10 and relay.stats.duplicates == 0
    checkpoint = await relay_pool.fetchrow("SELECT tx, position FROM relay_checkpoints WHERE name = 'default'")
    assert checkpoint["position"] == rows[-1]["position"]


async def _ready(nc):
    return nc


async def test_the_relay_role_cannot_read_the_secret_column(relay_pool):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await relay_pool.fetch("SELECT secret FROM events")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await relay_pool.fetch("SELECT * FROM events")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await relay_pool.execute("INSERT INTO events (event_id) VALUES (gen_random_uuid())")


async def test_a_restart_publishes_nothing_twice_and_one_relay_is_active(store, relay_pool, nc, js_stream):
    account = uuid.uuid4()
    await store.append(f"account-{account}", [connecting(account)], 0)
    first = Relay(relay_pool, lambda: _ready(nc), stream=js_stream, prefix=js_stream, poll_interval=0.05, lock_retry=0.1)
    second = Relay(relay_pool, lambda: _ready(nc), stream=js_stream, prefix=js_stream, poll_interval=0.05, lock_retry=0.1)
    tasks = [await _run(first), await _run(second)]
    try:
        for version in range(1, 21):
            await store.append(f"account-{account}", [refreshed(version)], version)
        assert await wait_for_count(nc, js_stream, 21) == 21
        await asyncio.sleep(0.3)
        assert [first.stats.active, second.stats.active].count(True) == 1
        active, standby = (first, second) if first.stats.active else (second, first)
        assert standby.stats.published == 0
        # The active one goes away: the other takes over from the checkpoint.
        await _stop(tasks[0 if active is first else 1])
        for version in range(21, 31):
            await store.append(f"account-{account}", [refreshed(version)], version)
        assert await wait_for_count(nc, js_stream, 31) == 31
        await asyncio.sleep(0.3)
    finally:
        for task in tasks:
            await _stop(task)
    messages = await read_stream(nc, js_stream)
    assert [json.loads(m.data)["data"]["stream_version"] for m in messages] == list(range(1, 32))


async def test_no_event_is_skipped_behind_an_open_writer_of_this_database(store, pool, relay_pool, nc, js_stream):
    """Invariant 1 for the relay: an append whose transaction is still open holds back everything
    committed after it, and is published once it commits, not skipped."""
    early, late = uuid.uuid4(), uuid.uuid4()
    relay = Relay(relay_pool, lambda: _ready(nc), stream=js_stream, prefix=js_stream, poll_interval=0.05)
    store.on_append(relay.wake)
    task = await _run(relay)
    try:
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await store.append(f"account-{early}", [connecting(early)], 0, conn=conn)  # position p1, tx a
            await store.append(f"account-{late}", [connecting(late)], 0)  # committed: position p2 > p1, tx b > a
            await asyncio.sleep(0.5)
            assert relay.stats.published == 0, "published past a writer that had not committed"
            await transaction.commit()
        assert await wait_for_count(nc, js_stream, 2) == 2
    finally:
        await _stop(task)
    subjects = {json.loads(m.data)["subject"] for m in await read_stream(nc, js_stream)}
    assert subjects == {str(early), str(late)}


async def test_a_transaction_of_another_database_does_not_hold_the_relay_back(servers, store, relay_pool, nc, js_stream):
    other = await asyncpg.connect(servers.database_url)  # the server's maintenance database
    try:
        await other.execute("BEGIN")
        await other.fetchval("SELECT pg_current_xact_id()")  # holds back the cluster-wide xmin
        relay = Relay(relay_pool, lambda: _ready(nc), stream=js_stream, prefix=js_stream, poll_interval=0.05)
        store.on_append(relay.wake)
        task = await _run(relay)
        try:
            account = uuid.uuid4()
            await store.append(f"account-{account}", [connecting(account)], 0)
            assert await wait_for_count(nc, js_stream, 1, timeout=30) == 1
        finally:
            await _stop(task)
        await other.execute("ROLLBACK")
    finally:
        await other.close()


async def test_concurrent_writers_and_a_following_relay_publish_everything(store, relay_pool, nc, js_stream):
    relay = Relay(relay_pool, lambda: _ready(nc), stream=js_stream, prefix=js_stream, poll_interval=0.02,
                  batch_size=50)
    task = await _run(relay)  # not woken by the store: it finds the events by polling
    try:
        async def writer(w: int) -> None:
            for i in range(25):
                account = uuid.uuid4()
                await store.append(f"account-{account}", [connecting(account), imported(b"\x02" * 40)], 0)

        await asyncio.gather(*(writer(w) for w in range(16)))
        assert await wait_for_count(nc, js_stream, 800) == 800
    finally:
        await _stop(task)
    messages = await read_stream(nc, js_stream)
    ids = [m.header["Nats-Msg-Id"] for m in messages]
    assert len(ids) == len(set(ids)) == 800
    rows = await relay_pool.fetch("SELECT event_id FROM events")
    assert {str(r["event_id"]) for r in rows} == set(ids)


async def test_appends_of_another_process_wake_the_relay_through_notify(database_url, relay_pool, nc, js_stream):
    """The relay polls rarely here (once a minute): what it publishes at once, NOTIFY woke it for.
    The appends come through a store of their own, as in another linkledger process."""
    from events.relay import AppendNotifier
    from events.store import PostgresEventStore

    other_pool = await create_pool(database_url, max_size=4)
    other_store = PostgresEventStore(other_pool)
    notifier = AppendNotifier(other_pool)
    other_store.on_append(notifier.appended)
    notifying = asyncio.create_task(notifier.run())
    relay = Relay(relay_pool, lambda: _ready(nc), stream=js_stream, prefix=js_stream, poll_interval=60)
    task = await _run(relay)
    try:
        for _ in range(200):
            if relay.stats.active:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # its first read found nothing: it now waits for a wake-up
        account = uuid.uuid4()
        await other_store.append(f"account-{account}", [connecting(account)], 0)
        assert await wait_for_count(nc, js_stream, 1, timeout=20) == 1
    finally:
        await _stop(task)
        notifying.cancel()
        await asyncio.gather(notifying, return_exceptions=True)
        await other_pool.close()
