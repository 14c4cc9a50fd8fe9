"""Data keys against a real PostgreSQL: one key per owner under races, bulk creation, KEK rotation
that never touches events, and crypto-shredding that holds across processes."""

import asyncio
import os
import time
import uuid

import asyncpg
import pytest

from events.envelope import NewEvent, uuid7
from events.integrity import verify_log
from events.store import PostgresEventStore
from service.crypto.datakeys import DataKey, DataKeys, KeyShreddedError, MissingKeyError
from service.crypto.envelope import DecryptionError, decrypt, encrypt, event_aad
from service.crypto.keyring import Keyring, KeyringError, UnwrapError


def account() -> str:
    return f"account-{uuid.uuid4()}"


@pytest.fixture
def old_kek() -> bytes:
    return os.urandom(32)


@pytest.fixture
def keyring(old_kek) -> Keyring:
    return Keyring({"kek-2026-01": old_kek}, "kek-2026-01")


async def stored_row(conn, owner: str):
    return await conn.fetchrow("SELECT * FROM data_keys WHERE owner = $1", owner)


async def test_get_or_create_makes_one_key_per_owner_even_under_races(pool, owner, keyring):
    keys = DataKeys(pool, keyring)
    first_owner = account()
    first = await keys.get_or_create(first_owner)
    assert isinstance(first, DataKey) and len(first.key) == 32 and first.key_id.startswith("dk_")
    assert await keys.get_or_create(first_owner) == first
    assert await DataKeys(pool, keyring).get_or_create(first_owner) == first  # from the table, not the cache

    # 20 concurrent callers in one process, and 20 more spread over 5 "replicas" (separate caches).
    racy = account()
    same_process = await asyncio.gather(*(keys.get_or_create(racy) for _ in range(20)))
    other = account()
    replicas = [DataKeys(pool, keyring) for _ in range(5)]
    across = await asyncio.gather(*(replicas[i % 5].get_or_create(other) for i in range(20)))
    for results, name in ((same_process, racy), (across, other)):
        assert len({(k.key_id, k.key) for k in results}) == 1
        assert await owner.fetchval("SELECT count(*) FROM data_keys WHERE owner = $1", name) == 1
        assert await DataKeys(pool, keyring).get(name) == results[0]
    assert len({first.key, same_process[0].key, across[0].key}) == 3
    assert len({first.key_id, same_process[0].key_id, across[0].key_id}) == 3

    row = await stored_row(owner, racy)
    assert row["kek_id"] == "kek-2026-01" and row["shredded_at"] is None
    assert same_process[0].key not in bytes(row["wrapped"])  # stored wrapped, never in the clear
    assert "key=" not in repr(first) and first.key.hex() not in repr(first)


async def test_get_of_an_unknown_owner_is_missing(pool, keyring):
    with pytest.raises(MissingKeyError):
        await DataKeys(pool, keyring).get(account())


async def test_create_many_returns_every_owner_and_leaves_existing_keys_alone(pool, owner, keyring):
    keys = DataKeys(pool, keyring)
    owners = [account() for _ in range(2000)]
    existing = {o: await keys.get_or_create(o) for o in owners[::7]}
    rows_before = {o: dict(await stored_row(owner, o)) for o in existing}

    # A fresh instance, so the existing keys come from the table, not the cache; duplicates tolerated.
    created = await DataKeys(pool, keyring).create_many(owners + owners[:10])
    assert list(created) == owners
    assert all(created[o].owner == o and len(created[o].key) == 32 for o in owners)
    for o, key in existing.items():
        assert created[o] == key
        assert dict(await stored_row(owner, o)) == rows_before[o]
    assert len({k.key_id for k in created.values()}) == 2000
    assert len({k.key for k in created.values()}) == 2000
    assert await owner.fetchval("SELECT count(*) FROM data_keys") == 2000

    fresh = DataKeys(pool, keyring)
    for o in owners[::97]:
        assert await fresh.get(o) == created[o]
    assert await fresh.create_many(owners[:50]) == {o: created[o] for o in owners[:50]}


async def test_create_many_handles_ten_thousand_owners_quickly(pool, owner, keyring):
    owners = [account() for _ in range(10_000)]
    started = time.perf_counter()
    created = await DataKeys(pool, keyring).create_many(owners)
    elapsed = time.perf_counter() - started
    assert len(created) == 10_000 and await owner.fetchval("SELECT count(*) FROM data_keys") == 10_000
    assert elapsed < 10, f"create_many(10,000) took {elapsed:.1f}s"
    # Again, all existing now, from a cold cache.
    started = time.perf_counter()
    again = await DataKeys(pool, keyring).create_many(owners)
    assert time.perf_counter() - started < 10
    assert again == created


async def test_concurrent_bulk_creators_with_overlapping_owners_agree(pool, keyring):
    owners = [account() for _ in range(600)]
    batches = [owners[:400], list(reversed(owners[200:])), owners[100:500]]
    results = await asyncio.gather(*(DataKeys(pool, keyring).create_many(b) for b in batches))
    merged: dict[str, DataKey] = {}
    for result in results:
        for o, key in result.items():
            assert merged.setdefault(o, key) == key
    assert len(merged) == 600


async def test_rotation_rewraps_data_keys_only_and_the_old_kek_can_go(pool, owner, keyring, old_kek):
    store = PostgresEventStore(pool)
    keys = DataKeys(pool, keyring)
    owners = [account() for _ in range(1100)]
    created = await keys.create_many(owners)
    shredded_owner = owners[-1]
    await keys.shred(shredded_owner)

    # Some events whose secrets are sealed under their stream's data key.
    secrets = {}
    for o in owners[:6]:
        event_id = uuid7()
        secrets[event_id] = (o, {"access_token": f"tok-{uuid.uuid4()}", "refresh_token": f"rt-{uuid.uuid4()}"})
        blob = encrypt(created[o].key, secrets[event_id][1], event_aad(o, event_id))
        await store.append(o, [NewEvent("TokensImported", {"source": "test"}, event_id=event_id, secret=blob, key_id=created[o].key_id)], 0)
    events_before = [dict(r) for r in await owner.fetch("SELECT * FROM events ORDER BY position")]
    heads_before = [dict(r) for r in await owner.fetch("SELECT * FROM stream_heads ORDER BY stream_id")]
    assert len(events_before) == 6

    # Without the old KEK loaded, rotation refuses up front, naming it.
    new_only = Keyring({"kek-2026-11": os.urandom(32)}, "kek-2026-11")
    with pytest.raises(KeyringError, match='kek-2026-01.*not loaded'):
        await DataKeys(pool, new_only).rotate()
    assert await owner.fetchval("SELECT count(*) FROM data_keys WHERE kek_id = 'kek-2026-11'") == 0

    both = Keyring({"kek-2026-01": old_kek, "kek-2026-11": new_only.keys["kek-2026-11"]}, "kek-2026-11")
    calls: list[tuple[int, int]] = []
    rotated = await DataKeys(pool, both).rotate(progress=lambda done, total: calls.append((done, total)), batch=300)
    assert rotated == 1099  # the shredded key has nothing to rewrap
    assert calls[0] == (0, 1099) and calls[-1] == (1099, 1099)
    assert len(calls) >= 1 + 1099 // 300
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert await DataKeys(pool, both).rotate() == 0  # nothing left

    rows = await owner.fetch("SELECT kek_id, rotated_at, shredded_at FROM data_keys")
    assert {r["kek_id"] for r in rows if r["shredded_at"] is None} == {"kek-2026-11"}
    assert all(r["rotated_at"] is not None for r in rows if r["shredded_at"] is None)

    # The log is untouched, byte for byte.
    assert [dict(r) for r in await owner.fetch("SELECT * FROM events ORDER BY position")] == events_before
    assert [dict(r) for r in await owner.fetch("SELECT * FROM stream_heads ORDER BY stream_id")] == heads_before

    # The old KEK is gone; a fresh process (empty cache) still has every key and reads every secret.
    fresh = DataKeys(pool, new_only)
    for o in owners[:-1]:
        assert await fresh.get(o) == created[o]
    with pytest.raises(KeyShreddedError):
        await fresh.get(shredded_owner)
    for event in await store.read_stream(owners[0]) + await store.read_stream(owners[5]):
        o, plaintext = secrets[event.event_id]
        key = await fresh.get(event.stream_id)
        assert key.key_id == event.key_id
        assert decrypt(key.key, event.secret, event_aad(event.stream_id, event.event_id)) == plaintext
        with pytest.raises(DecryptionError):  # bound to its own stream
            decrypt((await fresh.get(owners[1])).key, event.secret, event_aad(owners[1], event.event_id))
    # And the old keyring alone can no longer unwrap anything.
    with pytest.raises(KeyringError, match='"kek-2026-11" is not loaded'):
        await DataKeys(pool, keyring).get(owners[0])


async def test_rotation_progress_reaches_total_with_one_partial_batch(pool, keyring):
    keys = DataKeys(pool, keyring)
    await keys.create_many([account() for _ in range(7)])
    calls = []
    new = keyring.with_new_key("kek-b")
    assert await DataKeys(pool, new).rotate(progress=lambda d, t: calls.append((d, t)), batch=5) == 7
    assert calls == [(0, 7), (5, 7), (7, 7)]
    calls.clear()
    assert await DataKeys(pool, new).rotate(progress=lambda d, t: calls.append((d, t))) == 0
    assert calls == [(0, 0)]


async def test_shredding_destroys_the_key_for_every_process_and_for_good(pool, owner, keyring):
    store = PostgresEventStore(pool)
    keys = DataKeys(pool, keyring)
    victim, bystander = account(), account()
    key = await keys.get_or_create(victim)
    other = await keys.get_or_create(bystander)
    event_id = uuid7()
    blob = encrypt(key.key, {"access_token": "tok-secret"}, event_aad(victim, event_id))
    await store.append(victim, [NewEvent("TokensImported", {}, event_id=event_id, secret=blob, key_id=key.key_id)], 0)

    assert await keys.shred(victim) == key.key_id
    row = await stored_row(owner, victim)
    assert row["wrapped"] is None and row["kek_id"] is None and row["shredded_at"] is not None
    assert row["key_id"] == key.key_id
    with pytest.raises(KeyShreddedError) as caught:
        await keys.get(victim)
    assert caught.value.owner == victim and caught.value.key_id == key.key_id
    with pytest.raises(KeyShreddedError):
        await keys.get_or_create(victim)
    fresh = DataKeys(pool, keyring)
    with pytest.raises(KeyShreddedError):
        await fresh.get(victim)
    with pytest.raises(KeyShreddedError):
        await fresh.get_or_create(victim)
    with pytest.raises(KeyShreddedError) as caught:
        await fresh.create_many([bystander, victim, account()])
    assert caught.value.owners == [victim]
    assert await owner.fetchval("SELECT count(*) FROM data_keys WHERE owner = $1", victim) == 1
    assert await keys.shred(victim) == key.key_id  # idempotent
    assert await fresh.get(bystander) == other

    # History stays and still verifies; the secret is just unreadable now.
    assert (await verify_log(owner)).ok
    assert (await store.read_stream(victim))[0].secret == blob

    # An owner that never had a key is shredded too: no key is ever made for it later.
    never = account()
    assert await keys.shred(never) is None
    with pytest.raises(KeyShreddedError):
        await DataKeys(pool, keyring).get_or_create(never)


async def test_a_shredded_key_cannot_be_restored_or_deleted_by_the_application_role(pool, keyring):
    keys = DataKeys(pool, keyring)
    victim = account()
    await keys.get_or_create(victim)
    await keys.shred(victim)
    kek_id, wrapped = keyring.wrap(os.urandom(32))
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.PostgresError, match="shredded"):
            await conn.execute(
                "UPDATE data_keys SET kek_id = $2, wrapped = $3, shredded_at = NULL WHERE owner = $1", victim, kek_id, wrapped
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM data_keys WHERE owner = $1", victim)
        with pytest.raises(asyncpg.PostgresError, match="never change"):
            await conn.execute("UPDATE data_keys SET key_id = 'dk_other' WHERE owner = $1", victim)
    with pytest.raises(KeyShreddedError):
        await DataKeys(pool, keyring).get_or_create(victim)


async def test_cache_serves_hot_keys_is_bounded_and_expires(pool, owner, keyring):
    keys = DataKeys(pool, keyring, cache_size=10)
    owners = [account() for _ in range(50)]
    created = await keys.create_many(owners)
    assert keys.cached_count == 10

    # A cached key is served without unwrapping: spoil the stored copy and the cache still answers,
    # while a process without it in cache finds the damage.
    hot = owners[-1]
    assert await keys.get(hot) == created[hot]
    await owner.execute("UPDATE data_keys SET wrapped = $2 WHERE owner = $1", hot, keyring.wrap(os.urandom(32))[1])
    assert await keys.get(hot) == created[hot]
    assert (await DataKeys(pool, keyring).get(hot)).key != created[hot].key  # the spoiled value, unwrapped
    await owner.execute("UPDATE data_keys SET wrapped = $2 WHERE owner = $1", hot, b"\x00" * 60)
    with pytest.raises(UnwrapError, match=hot):
        await DataKeys(pool, keyring).get(hot)

    # Another process shreds: a short-lived cache stops serving the key once its entry expires.
    replica = DataKeys(pool, keyring, cache_ttl=0.2)
    target = owners[0]
    assert await replica.get(target) == created[target]
    await DataKeys(pool, keyring).shred(target)
    await asyncio.sleep(0.3)
    with pytest.raises(KeyShreddedError):
        await replica.get(target)
    # And forget() drops an entry at once (for a KeyShredded notification).
    slow = DataKeys(pool, keyring, cache_ttl=None)
    second = owners[1]
    await slow.get(second)
    await DataKeys(pool, keyring).shred(second)
    assert await slow.get(second) == created[second]
    slow.forget(second)
    with pytest.raises(KeyShreddedError):
        await slow.get(second)
