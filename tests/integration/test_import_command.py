"""The single-account import command: concurrent imports share statements, a new account's key,
stream and schedule are stored together, the integration state a process holds follows changes
made by any replica."""

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from events.database import create_pool
from service.bootstrap import bootstrap
from service.domain.commands import ConfigureIntegration, Credentials, ImportAccount
from service.domain.identity import account_id_for, account_stream
from service.handlers.accounts import current_credentials, import_account
from service.handlers.integrations import configure_integration
from tests.conftest import gateway_settings


@pytest.fixture
async def uows(database_url, servers):
    """Two replicas' units of work (each with its own process state) on one database."""
    settings = gateway_settings(database_url, servers.nats_url)
    pools = [await create_pool(database_url, max_size=20) for _ in range(2)]
    replicas = [bootstrap(settings, pool).acting_as("system:test") for pool in pools]
    await configure_integration(ConfigureIntegration(environment="prod", name="crm"), replicas[0])
    yield replicas
    for pool in pools:
        await pool.close()


EXPIRES_AT = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=1)


def command(tenant: str, token: str = "at-1") -> ImportAccount:
    return ImportAccount(
        environment="prod", integration="crm", tenant_id=tenant, external_ref=f"ref-{tenant}",
        credentials=Credentials(access_token=token, refresh_token=f"rt-{tenant}"), token_type="Bearer",
        expires_at=EXPIRES_AT,
        context={"instance_url": f"https://{tenant}.example.com"}, source="api",
    )


async def test_concurrent_new_accounts_each_get_their_key_stream_and_schedule(uows):
    uow = uows[0]
    outcomes = await asyncio.gather(*(import_account(command(f"t{i}"), uow) for i in range(40)))
    assert [o.outcome for o in outcomes] == ["imported"] * 40
    for i, outcome in enumerate(outcomes):
        stream = account_stream(outcome.account_id)
        assert outcome.state.version == 3
        assert (await current_credentials(uow, outcome.account_id))["access_token"] == "at-1"
        assert await uow.pool.fetchval("SELECT count(*) FROM events WHERE stream_id = $1", stream) == 3
        assert await uow.pool.fetchval("SELECT count(*) FROM data_keys WHERE owner = $1", stream) == 1
        assert await uow.pool.fetchval(
            "SELECT count(*) FROM refresh_schedule WHERE account_id = $1", outcome.account_id) == 1
    again = await asyncio.gather(*(import_account(command(f"t{i}"), uows[1]) for i in range(40)))
    assert {o.outcome for o in again} == {"unchanged"}


async def test_a_key_left_without_its_stream_is_used_not_replaced(uows):
    uow = uows[0]
    cmd = command("leftover")
    stream = account_stream(account_id_for(cmd))
    # An earlier attempt stored the key and crashed before its stream was written.
    kept = await uow.data_keys.get_or_create(stream)
    fresh = type(uow)(pool=uow.pool, store=uow.store, data_keys=type(uow.data_keys)(uow.pool, uow.data_keys.keyring),
                      fingerprinter=uow.fingerprinter, actor="system:test")
    outcome = await import_account(cmd, fresh)
    assert outcome.outcome == "imported"
    row = await uow.pool.fetchrow(
        "SELECT key_id, event_id FROM events WHERE stream_id = $1 AND secret IS NOT NULL", stream)
    assert row["key_id"] == kept.key_id
    assert await uow.pool.fetchval("SELECT count(*) FROM data_keys WHERE owner = $1", stream) == 1
    assert (await current_credentials(fresh, outcome.account_id))["access_token"] == "at-1"


async def test_a_new_account_imported_by_two_replicas_at_once_is_one_account(uows):
    outcomes = await asyncio.gather(*(import_account(command("twin"), uow) for uow in uows for _ in range(3)))
    assert sorted(o.outcome for o in outcomes).count("imported") == 1
    account_id = outcomes[0].account_id
    stream = account_stream(account_id)
    assert await uows[0].pool.fetchval("SELECT count(*) FROM events WHERE stream_id = $1", stream) == 3
    assert (await current_credentials(uows[1], account_id))["access_token"] == "at-1"


async def test_an_integration_changed_by_another_replica_is_seen_by_the_next_import(uows):
    here, there = uows
    assert (await import_account(command("before"), here)).state.status == "active"
    # The other replica gives the integration a health check: imported accounts must wait for it.
    await configure_integration(ConfigureIntegration(
        environment="prod", name="crm", health_check={"method": "GET", "url": "https://crm.example.com/me"}), there)
    assert (await import_account(command("after"), here)).state.status == "connecting"
    await configure_integration(ConfigureIntegration(
        environment="prod", name="crm", authentication_methods=("api_key",)), there)
    with pytest.raises(Exception, match="oauth2 is not enabled"):
        await import_account(command("refused"), here)
    assert await here.pool.fetchval(
        "SELECT count(*) FROM stream_heads WHERE stream_id = $1", account_stream(account_id_for(command("refused")))) == 0


async def test_heads_come_from_one_shared_read_and_omit_snapshots_the_caller_holds(uows):
    uow = uows[0]
    outcome = await import_account(command("heads"), uow)
    stream = account_stream(outcome.account_id)
    missing = f"account-{uuid.uuid4()}"
    found = await uow.store.heads([stream, missing])
    assert found[missing] is None
    assert found[stream].version == 3 and found[stream].snapshot["tenant_id"] == "heads"
    known = await uow.store.heads([stream], known={stream: 3})
    assert known[stream].version == 3 and known[stream].snapshot is None
    stale = await uow.store.heads([stream], known={stream: 2})
    assert stale[stream].snapshot is not None
    many = await asyncio.gather(*(uow.store.heads([stream], known={stream: 3 if i % 2 else 1}) for i in range(20)))
    assert all(m[stream].version == 3 for m in many)
    assert all(m[stream].snapshot is not None for i, m in enumerate(many) if i % 2 == 0)


async def test_companion_rows_are_stored_with_their_stream_or_not_at_all(store, owner):
    from events.envelope import NewEvent
    from events.store import Companion

    await owner.execute("CREATE TABLE gate_rows (stream_id text PRIMARY KEY, note text);"
                        "CREATE TABLE after_rows (stream_id text PRIMARY KEY, n int);"
                        "GRANT SELECT, INSERT ON gate_rows, after_rows TO linkledger_app;"
                        "INSERT INTO gate_rows VALUES ('s-taken', 'there before')")
    gate_sql = ("INSERT INTO gate_rows (stream_id, note) SELECT stream_id, note FROM {rows}"
                " ON CONFLICT DO NOTHING RETURNING stream_id")
    after_sql = "INSERT INTO after_rows (stream_id, n) SELECT stream_id, n FROM {rows}"

    async def create(stream_id: str, n: int):
        return await store.create_stream(stream_id, [NewEvent("Created", {"n": n}), NewEvent("Touched", {"n": n})], companions=(
            Companion(gate_sql, (("note", "text"),), (f"note {n}",), gate=True),
            Companion(after_sql, (("n", "int"),), (n,)),
        ))

    results = await asyncio.gather(*(create(f"s-{i}", i) for i in range(10)), create("s-taken", 99))
    assert all(len(r) == 2 for r in results[:10]) and results[10] is None
    assert await owner.fetchval("SELECT count(*) FROM events WHERE stream_id = 's-taken'") == 0
    assert await owner.fetchval("SELECT count(*) FROM stream_heads WHERE stream_id = 's-taken'") == 0
    assert await owner.fetchval("SELECT note FROM gate_rows WHERE stream_id = 's-taken'") == "there before"
    assert await owner.fetchval("SELECT count(*) FROM after_rows") == 10
    assert await create("s-3", 3) is None  # exists: nothing more is written
    assert await owner.fetchval("SELECT count(*) FROM after_rows") == 10
    assert await owner.fetchval("SELECT count(*) FROM events WHERE stream_id = 's-3'") == 2


async def test_a_gate_writes_nothing_for_a_stream_an_earlier_gate_refused(store, owner):
    from events.envelope import NewEvent
    from events.store import Companion

    await owner.execute("CREATE TABLE allowed (name text PRIMARY KEY); CREATE TABLE keys_written (stream_id text PRIMARY KEY);"
                        "GRANT SELECT, INSERT ON allowed, keys_written TO linkledger_app;"
                        "INSERT INTO allowed VALUES ('yes')")
    check = Companion("SELECT rows.stream_id FROM {rows} JOIN allowed a ON a.name = rows.name", (("name", "text"),), ("",), gate=True)
    write_sql = "INSERT INTO keys_written (stream_id) SELECT stream_id FROM {rows} ON CONFLICT DO NOTHING RETURNING stream_id"

    async def create(stream_id: str, name: str):
        return await store.create_stream(stream_id, [NewEvent("Created", {"name": name})], companions=(
            Companion(check.insert, check.columns, (name,), gate=True), Companion(write_sql, (), (), gate=True)))

    admitted, refused = await asyncio.gather(create("g-admitted", "yes"), create("g-refused", "no"))
    assert admitted is not None and refused is None
    assert [r["stream_id"] for r in await owner.fetch("SELECT stream_id FROM keys_written")] == ["g-admitted"]
    assert await owner.fetchval("SELECT count(*) FROM stream_heads WHERE stream_id = 'g-refused'") == 0


async def test_an_account_created_elsewhere_is_imported_here_as_an_update(uows):
    here, there = uows
    await import_account(command("elsewhere"), here)  # `here` now holds the integration's state
    created = await import_account(command("moved", token="at-first"), there)
    assert created.outcome == "imported"
    updated = await import_account(command("moved", token="at-newer"), here)
    assert updated.outcome == "updated" and updated.state.version == created.state.version + 1
    assert (await current_credentials(here, updated.account_id))["access_token"] == "at-newer"


async def test_concurrent_commands_sharing_a_statement_keep_their_own_actor_and_errors(uows):
    uow = uows[0]
    await import_account(command("first"), uow)  # the process holds the integration's state from now on
    actors = [uow.acting_as(f"key:caller-{i}", correlation_id=uuid.uuid4()) for i in range(12)]
    refused = command("t-basic").model_copy(update={"authentication_method": "basic"})  # not enabled for crm
    results = await asyncio.gather(
        *(import_account(command(f"c{i}", token=f"at-{i}"), acting) for i, acting in enumerate(actors)),
        import_account(refused, actors[0]), return_exceptions=True)
    *imported, error = results
    assert [r.outcome for r in imported] == ["imported"] * 12
    assert type(error).__name__ == "MethodNotAllowed" and error.field == "authentication_method"
    for i, (outcome, acting) in enumerate(zip(imported, actors)):
        rows = await uow.pool.fetch("SELECT DISTINCT actor, correlation_id FROM events WHERE stream_id = $1",
                                    account_stream(outcome.account_id))
        assert [(r["actor"], r["correlation_id"]) for r in rows] == [(acting.actor, acting.correlation_id)]
        assert (await current_credentials(uow, outcome.account_id))["access_token"] == f"at-{i}"
    assert await uow.pool.fetchval(
        "SELECT count(*) FROM stream_heads WHERE stream_id = $1", account_stream(account_id_for(refused))) == 0
