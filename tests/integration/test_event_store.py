"""The event store's contract and DESIGN invariants 1-3, against a real PostgreSQL."""

import asyncio
import random
from collections import defaultdict

import asyncpg
import pytest

from events.envelope import LogPosition, NewEvent
from events.errors import AppendOrderError, ConcurrencyError, InvalidEventError
from events.store import PostgresEventStore


def refreshed(n: int = 0) -> NewEvent:
    return NewEvent("TokenRefreshed", {"attempt": n, "expires_at": "2026-10-15T14:30:00Z"})


async def count_events(pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM events")


async def follow(store: PostgresEventStore, expected_total: asyncio.Future, received: list) -> None:
    """A catch-up reader: polls read_all past its checkpoint until it has as many events as were written.

    The snapshot horizon is cluster-wide, so a transaction open anywhere on the server may hold the
    reader back for a moment; it never makes the reader skip.
    """
    checkpoint = LogPosition.start()
    while not (expected_total.done() and len(received) >= expected_total.result()):
        batch = await store.read_all(checkpoint, limit=500)
        received.extend(batch)
        if batch:
            checkpoint = batch[-1].log_position
        else:
            await asyncio.sleep(0.002)
    await asyncio.sleep(0.2)
    received.extend(await store.read_all(checkpoint, limit=500))  # nothing more may come


async def test_concurrent_writers_and_a_catch_up_reader_see_every_event_once_in_stream_order(store, pool):
    writers, per_writer, streams = 16, 1300, 300  # 20,800 events
    versions: dict[str, int] = defaultdict(int)
    total_written = asyncio.get_running_loop().create_future()
    received: list = []

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        written = 0
        while written < per_writer:
            stream = f"account-{rng.randrange(streams)}"
            batch = [refreshed(written + i) for i in range(rng.choice((1, 1, 1, 2, 3)))][: per_writer - written]
            try:
                if rng.random() < 0.2:
                    # A slow committer: takes its positions now, commits later, so later positions
                    # become visible first. A reader polling by position alone would skip these.
                    async with pool.acquire() as conn:
                        async with conn.transaction():
                            await store.append(stream, batch, versions[stream], conn=conn)
                            await asyncio.sleep(rng.random() * 0.01)
                else:
                    await store.append(stream, batch, versions[stream])
            except ConcurrencyError as exc:
                versions[stream] = max(versions[stream], exc.actual_version)
                continue
            versions[stream] += len(batch)
            written += len(batch)

    reader = asyncio.create_task(follow(store, total_written, received))
    await asyncio.gather(*(writer(seed) for seed in range(writers)))
    total = writers * per_writer
    assert await count_events(pool) == total
    total_written.set_result(total)
    await asyncio.wait_for(reader, 60)

    ids = [event.event_id for event in received]
    assert len(ids) == total, "the reader missed events or received some twice"
    assert len(set(ids)) == total
    seen: dict[str, list[int]] = defaultdict(list)
    for event in received:
        seen[event.stream_id].append(event.version)
    for stream, stream_versions in seen.items():
        assert stream_versions == list(range(1, len(stream_versions) + 1)), f"{stream} arrived out of order"
    positions = [event.log_position for event in received]
    assert positions == sorted(positions)


async def test_reader_waits_for_a_transaction_that_took_an_earlier_position(store, pool):
    async with pool.acquire() as slow:
        tx = slow.transaction()
        await tx.start()
        await store.append("account-slow", [refreshed()], 0, conn=slow)  # earlier position, not committed
        await store.append("account-fast", [refreshed()], 0)  # later position, committed
        assert await store.read_all(LogPosition.start()) == [], "handed out an event past an open transaction"
        await tx.commit()
    events = []
    for _ in range(500):  # another database's open transaction may hold the horizon briefly
        events = await store.read_all(LogPosition.start())
        if len(events) == 2:
            break
        await asyncio.sleep(0.01)
    assert [e.stream_id for e in events] == ["account-slow", "account-fast"]


async def test_an_append_must_be_the_first_write_of_its_transaction(store, pool):
    await store.append("account-a", [refreshed()], 0)
    async with pool.acquire() as conn:
        with pytest.raises(AppendOrderError):
            async with conn.transaction():
                await store.append("account-b", [refreshed()], 0, conn=conn)
                await store.append("account-a", [refreshed()], 1, conn=conn)
    assert await count_events(pool) == 1


async def test_appends_to_different_streams_do_not_wait_for_each_other(store, pool):
    await store.append("account-held", [refreshed()], 0)
    async with pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        await store.append("account-held", [refreshed()], 1, conn=holder)
        # Another stream proceeds while the first transaction is still open...
        await asyncio.wait_for(store.append("account-other", [refreshed()], 0), 2)
        # ...while the same stream waits for it.
        same = asyncio.create_task(store.append("account-held", [refreshed()], 2))
        await asyncio.sleep(0.3)
        assert not same.done()
        await tx.commit()
    assert (await asyncio.wait_for(same, 5))[0].version == 3


async def test_two_appends_at_the_same_expected_version_exactly_one_succeeds(store, pool):
    await store.append("account-race", [refreshed()], 0)
    results = await asyncio.gather(
        *(store.append("account-race", [refreshed(i)], 1) for i in range(8)), return_exceptions=True
    )
    successes = [r for r in results if not isinstance(r, Exception)]
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(successes) == 1
    assert all(isinstance(f, ConcurrencyError) and f.actual_version == 2 for f in failures)
    assert [e.version for e in await store.read_stream("account-race")] == [1, 2]


async def test_new_stream_race_exactly_one_creates_it(store):
    results = await asyncio.gather(
        *(store.append("account-new", [refreshed(i)], 0) for i in range(6)), return_exceptions=True
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert len(await store.read_stream("account-new")) == 1


async def test_reappending_a_stored_event_id_stores_nothing_and_returns_its_position(store, pool):
    event = refreshed()
    first = await store.append("account-dup", [event], 0)
    again = await store.append("account-dup", [event], 0)
    assert again == first
    batch = [refreshed(1), refreshed(2)]
    stored = await store.append("account-dup", batch, 1)
    assert await store.append("account-dup", batch, 1) == stored
    assert await count_events(pool) == 3
    with pytest.raises(InvalidEventError):
        await store.append("account-elsewhere", [event], 0)
    with pytest.raises(InvalidEventError):
        await store.append("account-dup", [refreshed(9), batch[0]], 3)  # half stored
    assert await count_events(pool) == 3


async def test_concurrent_retries_of_one_batch_store_it_once(store, pool):
    await store.append("account-retry", [refreshed()], 0)
    event = refreshed(1)
    results = await asyncio.gather(*(store.append("account-retry", [event], 1) for _ in range(5)))
    assert all(r == results[0] for r in results)
    assert await count_events(pool) == 2


@pytest.mark.parametrize("statement", ["UPDATE events SET actor = 'mallory'", "DELETE FROM events", "TRUNCATE events"])
async def test_the_application_role_cannot_change_events(store, pool, statement):
    await store.append("account-x", [refreshed()], 0)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pool.execute(statement)
    assert await count_events(pool) == 1


@pytest.mark.parametrize("statement", ["UPDATE events SET actor = 'mallory'", "DELETE FROM events", "TRUNCATE events"])
async def test_a_trigger_refuses_changes_even_from_the_owner(store, owner, statement):
    await store.append("account-x", [refreshed()], 0)
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await owner.execute(statement)
    assert await owner.fetchval("SELECT count(*) FROM events") == 1
    assert await owner.fetchval("SELECT actor FROM events") == "system"


async def test_wrong_expected_version_is_refused_and_stores_nothing(store, pool):
    await store.append("account-v", [refreshed()], 0)
    for wrong in (0, 2, 7):
        with pytest.raises(ConcurrencyError) as caught:
            await store.append("account-v", [refreshed()], wrong)
        assert caught.value.actual_version == 1
        assert "version 1" in str(caught.value)
    with pytest.raises(ConcurrencyError) as caught:
        await store.append("account-missing", [refreshed()], 3)
    assert caught.value.actual_version == 0
    assert await count_events(pool) == 1
    head = await store.head("account-v")
    assert head.version == 1


@pytest.mark.parametrize(
    "data, message",
    [
        ({"ratio": 0.5}, "floats"),
        ({"nested": {"list": [1, 2.0]}}, "floats"),
        ({"when": __import__("datetime").datetime(2026, 1, 1)}, "not a JSON value"),
        ({"tags": {"a", "b"}}, "not a JSON value"),
        ({"raw": b"bytes"}, "not a JSON value"),
        ({"blob": "x" * (1024 * 1024 + 1)}, "limit"),
    ],
)
async def test_bad_payloads_get_a_clear_error_and_store_nothing(store, pool, data, message):
    with pytest.raises(InvalidEventError, match=message):
        await store.append("account-bad", [refreshed(), NewEvent("Bad", data)], 0)
    with pytest.raises(InvalidEventError, match=message):
        await store.append("account-bad", [NewEvent("Bad", data)], 0)
    assert await count_events(pool) == 0
    assert await store.head("account-bad") is None


async def test_an_empty_batch_is_refused(store, pool):
    with pytest.raises(InvalidEventError, match="at least one event"):
        await store.append("account-empty", [], 0)
    assert await count_events(pool) == 0


async def test_the_head_row_and_snapshot_move_with_the_append(store):
    [first] = await store.append("account-h", [refreshed()], 0, snapshot={"status": "connecting"})
    head = await store.head("account-h")
    assert (head.version, head.last_hash, head.snapshot, head.snapshot_version) == (1, first.hash, {"status": "connecting"}, 1)
    results = await store.append("account-h", [refreshed(1), refreshed(2)], 1, snapshot={"status": "active"})
    head = await store.head("account-h")
    assert (head.version, head.last_hash, head.snapshot, head.snapshot_version) == (3, results[-1].hash, {"status": "active"}, 3)
    await store.append("account-h", [refreshed(3)], 3)  # no snapshot: the last one stays
    head = await store.head("account-h")
    assert (head.version, head.snapshot, head.snapshot_version) == (4, {"status": "active"}, 3)
    with pytest.raises(ConcurrencyError):
        await store.append("account-h", [refreshed(4)], 1, snapshot={"status": "broken"})
    assert (await store.head("account-h")).snapshot == {"status": "active"}


async def test_read_stream_returns_a_range_with_chained_hashes(store):
    await store.append("account-r", [refreshed(i) for i in range(5)], 0)
    await store.append("account-r", [refreshed(5)], 5)
    events = await store.read_stream("account-r", from_version=2, to_version=4)
    assert [e.version for e in events] == [2, 3, 4]
    everything = await store.read_stream("account-r")
    assert [e.data["attempt"] for e in everything] == [0, 1, 2, 3, 4, 5]
    for previous, current in zip(everything, everything[1:]):
        assert current.prev_hash == previous.hash
    assert everything[0].prev_hash == bytes(32)


async def test_a_bad_append_in_a_group_commit_does_not_take_the_others_down(store, pool):
    taken = refreshed()
    await store.append("account-owner", [taken], 0)
    for stream in ("account-a", "account-b", "account-c"):
        await store.append(stream, [refreshed()], 0)
    results = await asyncio.gather(
        store.append("account-a", [refreshed(1)], 1),
        store.append("account-thief", [taken], 0),  # an event id already used: refused
        store.append("account-b", [refreshed(1)], 5),  # stale version: refused
        store.append("account-c", [refreshed(1)], 1),
        store.append("account-d", [refreshed(1)], 0),
        return_exceptions=True,
    )
    assert isinstance(results[1], InvalidEventError)
    assert isinstance(results[2], ConcurrencyError) and results[2].actual_version == 1
    assert [r[0].version for r in (results[0], results[3], results[4])] == [2, 2, 1]
    assert await count_events(pool) == 4 + 3


async def test_create_streams_writes_new_streams_in_one_go_and_skips_existing_ones(store, pool, owner):
    await store.append("account-old", [refreshed()], 0)
    created = await store.create_streams([
        ("account-n1", [refreshed(1), refreshed(2)], {"status": "connecting"}),
        ("account-old", [refreshed(3)], {"status": "overwritten?"}),
        ("account-n2", [refreshed(4)], None),
    ])
    assert created["account-old"] is None
    assert [r.version for r in created["account-n1"]] == [1, 2]
    assert [r.version for r in created["account-n2"]] == [1]
    assert (await store.head("account-n1")).snapshot == {"status": "connecting"}
    assert (await store.head("account-n1")).last_hash == created["account-n1"][-1].hash
    assert (await store.head("account-old")).version == 1
    # chains written this way verify, and the streams go on with ordinary appends
    await store.append("account-n1", [refreshed(5)], 2)
    from events.integrity import verify_log

    report = await verify_log(owner)
    assert report.ok, report.problems
    assert report.events == 5


async def test_event_data_is_stored_byte_for_byte_whatever_its_strings_hold(store, owner):
    """Event data travels to PostgreSQL as a string inside a JSON document: every byte of the
    canonical text must come back, and the chain must verify, on both ways in (new streams and
    appends)."""
    from events.canonical import canonical_json
    from events.integrity import verify_log

    payloads = [
        {"text": 'quote " backslash \\ slash / tab \t newline \n', "n": 12345678901234567890123},
        {"text": "nul \x00 and bell \x07", "nested": [{"k": "\x00"}, None, True]},
        {"text": "emoji \U0001F600 accents éü line separator \u2028", "escaped": "\\u0000 as typed"},
        {"empty": {}, "list": [], "deep": {"a": {"b": {"c": ["x"]}}}},
    ]
    created = await store.create_streams([
        (f"bytes-new-{i}", [NewEvent("Noted", payload)], None) for i, payload in enumerate(payloads)])
    assert all(created.values())
    await asyncio.gather(*(store.append(f"bytes-new-{i}", [NewEvent("Noted", payload)], 1)
                           for i, payload in enumerate(payloads)))
    for i, payload in enumerate(payloads):
        stored = await owner.fetch("SELECT data FROM events WHERE stream_id = $1 ORDER BY version", f"bytes-new-{i}")
        assert [row["data"] for row in stored] == [str(canonical_json(payload))] * 2
        assert [event.data for event in await store.read_stream(f"bytes-new-{i}")] == [payload] * 2
    report = await verify_log(owner)
    assert report.ok, report.problems


async def test_a_batch_holding_the_text_forms_separators_goes_as_json_documents(store, owner):
    """New streams travel as text documents split on control characters; a batch in which any
    value holds one (a caller's stream id, type, actor, snapshot or companion value) or has no
    text form (a float) must go as JSON documents, whole and unchanged."""
    from events import store as store_module
    from events.integrity import verify_log
    from events.store import Companion, creation_batch, prepare_creation

    await owner.execute("CREATE TABLE notes (stream_id text PRIMARY KEY, note text, weight float8);"
                        "GRANT SELECT, INSERT ON notes TO linkledger_app")
    note = "INSERT INTO notes (stream_id, note, weight) SELECT stream_id, note, weight FROM {rows}"

    def stream(stream_id: str, text: str, weight, *, type_: str = "Noted", actor: str = "system") -> object:
        return prepare_creation(stream_id, [NewEvent(type_, {"text": text}, actor=actor)], {"text": text},
                                (Companion(note, (("note", "text"), ("weight", "float8")), (text, weight)),))

    plain = creation_batch([stream("sep-a", "plain", 1), stream("sep-b", "", None)])
    assert plain.form == store_module.TEXT_FORM
    batches = [creation_batch(case) for case in (
        [stream("sep-c\x1fodd", "a stream id with a field separator", 1), stream("sep-d", "beside it", 2)],
        [stream("sep-e", "row\x1eseparator", 1)],
        [stream("sep-f", "null\x1dmark", None)],
        [stream("sep-g", "a float", 0.5)],
        [stream("sep-h", "type", 1, type_="Odd\x1fType")],
        [stream("sep-i", "actor", 1, actor="key\x1e1")],
    )]
    assert [batch.form for batch in batches] == [store_module.JSON_FORM] * 6
    for batch in (plain, *batches):
        created = await store.create_batch(batch)
        assert all(created.values()), created
    notes = {r["stream_id"]: (r["note"], r["weight"]) for r in await owner.fetch("SELECT * FROM notes")}
    assert notes == {
        "sep-a": ("plain", 1), "sep-b": ("", None), "sep-c\x1fodd": ("a stream id with a field separator", 1),
        "sep-d": ("beside it", 2), "sep-e": ("row\x1eseparator", 1), "sep-f": ("null\x1dmark", None),
        "sep-g": ("a float", 0.5), "sep-h": ("type", 1), "sep-i": ("actor", 1)}
    assert (await store.head("sep-e")).snapshot == {"text": "row\x1eseparator"}
    assert (await store.head("sep-b")).snapshot == {"text": ""}
    assert [(e.type, e.data) for e in await store.read_stream("sep-h")] == [("Odd\x1fType", {"text": "type"})]
    assert [e.actor for e in await store.read_stream("sep-i")] == ["key\x1e1"]
    report = await verify_log(owner)
    assert report.ok, report.problems


async def test_a_batch_answering_streams_names_the_ones_it_created(store, owner):
    """create_batch_streams writes what create_batch writes, and answers only which streams are
    new: one that existed already keeps its events and is left out."""
    from events.integrity import verify_log
    from events.store import creation_batch, prepare_creation

    await store.create_stream("answer-old", [NewEvent("Noted", {"n": 0})])
    batch = creation_batch([
        prepare_creation("answer-new-1", [NewEvent("Noted", {"n": 1}), NewEvent("Noted", {"n": 2})], {"n": 2}),
        prepare_creation("answer-old", [NewEvent("Noted", {"n": 3})]),
        prepare_creation("answer-new-2", [NewEvent("Noted", {"n": 4})]),
    ])
    assert await store.create_batch_streams(batch) == {"answer-new-1", "answer-new-2"}
    assert [(e.version, e.data) for e in await store.read_stream("answer-new-1")] == [(1, {"n": 1}), (2, {"n": 2})]
    assert (await store.head("answer-new-1")).snapshot == {"n": 2}
    assert [e.data for e in await store.read_stream("answer-old")] == [{"n": 0}]
    assert await store.create_batch_streams(batch) == set()
    report = await verify_log(owner)
    assert report.ok, report.problems
