"""Token reads are audited in batches: one CredentialsAccessed per key, account and minute."""

import json

import asyncpg

from service.gateway.keys import ACCESS_RECORDER
from tests.e2e.test_import_export import INTEGRATION, truto_record


async def test_token_reads_are_recorded_as_batched_credentials_accessed_events(gateway):
    admin = await gateway.headers("admin")
    reader_a = await gateway.headers("service", "prod")
    reader_b = await gateway.headers("service", "prod")
    await gateway.client.put("/v1/environments/prod/integrations/salesforce", json=INTEGRATION, headers=admin)
    account = (await (await gateway.client.post("/v1/environments/prod/accounts", json=truto_record(1),
                                                headers=admin)).json())["account"]["id"]
    for headers, reads in ((reader_a, 7), (reader_b, 3)):
        for _ in range(reads):
            assert (await gateway.client.get(f"/v1/accounts/{account}/token", headers=headers)).status == 200
    conn = await asyncpg.connect(gateway.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE type = 'CredentialsAccessed'") == 0, \
            "a token read appended on the hot path"
        written = await gateway.client.app[ACCESS_RECORDER].flush(everything=True)
        rows = await conn.fetch("SELECT data, actor FROM events WHERE type = 'CredentialsAccessed'")
    finally:
        await conn.close()
    assert written == len(rows)
    counts = sorted(json.loads(r["data"])["count"] for r in rows)
    assert sum(counts) == 10 and len(rows) in (2, 3, 4)  # one per key and minute (a minute may turn over)
    assert {json.loads(r["data"])["accessor"] for r in rows} == {
        k["Authorization"].split("_")[2] + "_" + k["Authorization"].split("_")[3] for k in (reader_a, reader_b)}
    assert all(r["actor"] == "system:access-log" for r in rows)


async def test_an_open_minute_is_not_written_until_it_closes(gateway):
    from datetime import timedelta

    from service.workers.access_log import AccessRecorder

    recorder = AccessRecorder(gateway.client.app[__import__("service.gateway.keys", fromlist=["UOW"]).UOW])
    import uuid

    now = recorder._uow.clock()
    recorder.record("key_x", uuid.uuid4(), now)
    assert await recorder.flush() == 0 and recorder.pending == 1  # the current bucket stays open
    recorder.record("key_x", uuid.uuid4(), now - timedelta(minutes=2))
    assert recorder.pending == 2
    await recorder.flush()  # the closed bucket leaves (its account does not exist: nothing is written)
    assert recorder.pending == 1


async def test_a_paced_flush_writes_the_oldest_closed_tallies_first_and_a_share_of_them(gateway):
    import uuid
    from datetime import timedelta

    from service.gateway.keys import UOW
    from service.workers.access_log import PACED_MINIMUM, AccessRecorder

    recorder = AccessRecorder(gateway.client.app[UOW])
    now = recorder._uow.clock()
    older = [uuid.uuid4() for _ in range(PACED_MINIMUM)]
    for account_id in older:
        recorder.record("key_x", account_id, now - timedelta(minutes=3))
    for _ in range(PACED_MINIMUM * 2):
        recorder.record("key_x", uuid.uuid4(), now - timedelta(minutes=2))
    recorder.record("key_x", uuid.uuid4(), now)  # the open bucket
    await recorder.flush(paced_over=5.0)  # a twelfth of 192 is below the minimum: 64, the oldest
    assert recorder.pending == PACED_MINIMUM * 2 + 1
    assert not any(key[1] in older for key in recorder._tallies)
    await recorder.flush()  # unpaced: every closed tally
    assert recorder.pending == 1


async def test_reads_whose_append_the_database_refused_are_kept_for_the_next_flush(gateway, monkeypatch):
    admin = await gateway.headers("admin")
    reader = await gateway.headers("service", "prod")
    await gateway.client.put("/v1/environments/prod/integrations/salesforce", json=INTEGRATION, headers=admin)
    account = (await (await gateway.client.post("/v1/environments/prod/accounts", json=truto_record(2),
                                                headers=admin)).json())["account"]["id"]
    for _ in range(4):
        assert (await gateway.client.get(f"/v1/accounts/{account}/token", headers=reader)).status == 200
    recorder = gateway.client.app[ACCESS_RECORDER]
    append = recorder._append

    async def refused(*args):
        raise asyncpg.TooManyConnectionsError("sorry, too many clients already")

    groups = recorder.pending  # one, or two if a minute turned over between the reads
    monkeypatch.setattr(recorder, "_append", refused)
    assert await recorder.flush(everything=True) == 0 and recorder.pending == groups  # kept, not dropped
    monkeypatch.setattr(recorder, "_append", append)
    assert await recorder.flush(everything=True) == groups and recorder.pending == 0
    conn = await asyncpg.connect(gateway.database_url)
    try:
        rows = await conn.fetch("SELECT data FROM events WHERE type = 'CredentialsAccessed'")
    finally:
        await conn.close()
    assert sum(json.loads(r["data"])["count"] for r in rows) == 4 and len(rows) == groups
