"""Key rotation keeps every token readable without touching an event; deletion shreds one account."""

import json
import os
import sys
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from events.integrity import verify_log
from service.crypto.keyring import Keyring
from service.gateway.app import create_app
from tests.conftest import Gateway, gateway_settings
from tests.e2e.test_import_export import INTEGRATION, truto_record

LINKLEDGER = Path(sys.executable).parent / "linkledger"


async def all_event_rows(database_url: str) -> list:
    conn = await asyncpg.connect(database_url)
    try:
        return [tuple(r) for r in await conn.fetch("SELECT * FROM events ORDER BY position")]
    finally:
        await conn.close()


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    import asyncio

    process = await asyncio.create_subprocess_exec(
        str(LINKLEDGER), *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


async def test_rotate_then_drop_the_old_key_and_every_token_still_decrypts(gateway, servers):
    admin = await gateway.headers("admin")
    await gateway.client.put("/v1/environments/prod/integrations/salesforce", json=INTEGRATION, headers=admin)
    body = "\n".join(json.dumps(truto_record(i)) for i in range(40)).encode()
    result = await (await gateway.client.post("/v1/environments/prod/accounts:import?profile=truto", data=body,
                                              headers=admin | {"Content-Type": "application/x-ndjson"})).json()
    account_ids = [r["account_id"] for r in result["results"]]
    before = await all_event_rows(gateway.database_url)

    old = Keyring.from_json(gateway.settings.keyring)
    rotated = old.with_new_key("kek-test-2")  # the new one is primary
    code, out, err = await run_cli("keys", "rotate", env={"LINKLEDGER_DATABASE_URL": gateway.database_url,
                                                          "LINKLEDGER_KEYRING": rotated.to_json()})
    assert code == 0, err
    assert "rewrapped 41 data key(s)" in out  # 40 accounts and the integration's client secret

    conn = await asyncpg.connect(gateway.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM data_keys WHERE kek_id <> 'kek-test-2'") == 0
    finally:
        await conn.close()
    assert await all_event_rows(gateway.database_url) == before, "rotation changed an event"

    # A linkledger that no longer holds the old key-encryption key at all.
    settings = gateway_settings(gateway.database_url, servers.nats_url, keyring=rotated.without("kek-test-1").to_json(),
                                audit_key=gateway.settings.audit_key)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        service = await Gateway(client, settings, gateway.database_url).headers("service", "prod")
        for i, account_id in enumerate(account_ids):
            token = await (await client.get(f"/v1/accounts/{account_id}/token", headers=service)).json()
            assert token["access_token"] == truto_record(i)["context"]["oauth"]["token"]["access_token"]
    finally:
        await client.close()


async def test_deleting_an_account_shreds_its_secrets_but_keeps_its_history(gateway):
    admin = await gateway.headers("admin")
    await gateway.client.put("/v1/environments/prod/integrations/salesforce", json=INTEGRATION, headers=admin)
    gone = (await (await gateway.client.post("/v1/environments/prod/accounts", json=truto_record(1), headers=admin)).json())["account"]["id"]
    kept = (await (await gateway.client.post("/v1/environments/prod/accounts", json=truto_record(2), headers=admin)).json())["account"]["id"]
    history_before = [r for r in await all_event_rows(gateway.database_url)]

    response = await gateway.client.delete(f"/v1/accounts/{gone}?reason=customer%20left", headers=admin)
    assert response.status == 200
    assert (await response.json())["status"] == "deleted"

    rows = await all_event_rows(gateway.database_url)
    assert rows[: len(history_before)] == history_before, "deleting rewrote history"
    conn = await asyncpg.connect(gateway.database_url)
    try:
        types = [r["type"] for r in await conn.fetch(
            "SELECT type FROM events WHERE stream_id = $1 ORDER BY version", f"account-{gone}")]
        assert types[-2:] == ["AccountDeleted", "KeyShredded"]
        assert await conn.fetchval("SELECT wrapped FROM data_keys WHERE owner = $1", f"account-{gone}") is None
        report = await verify_log(conn)
        assert report.ok, report.problems
    finally:
        await conn.close()

    token = await gateway.client.get(f"/v1/accounts/{gone}/token", headers=admin)
    assert token.status == 404
    # the secret is gone even for a direct read of the log
    from service.handlers.accounts import current_credentials
    from service.crypto.datakeys import KeyShreddedError
    import uuid

    uow = gateway.client.app[__import__("service.gateway.keys", fromlist=["UOW"]).UOW]
    uow.data_keys.clear_cache()
    try:
        await current_credentials(uow, uuid.UUID(gone))
        raise AssertionError("a shredded account's secrets were readable")
    except KeyShreddedError:
        pass
    detail = await gateway.client.get(f"/v1/accounts/{gone}", headers=admin)
    assert (await detail.json())["status"] == "deleted"  # history and state stay visible
    still = await (await gateway.client.get(f"/v1/accounts/{kept}/token", headers=admin)).json()
    assert still["access_token"] == truto_record(2)["context"]["oauth"]["token"]["access_token"]
    # a deleted account is not brought back by importing it again
    again = await gateway.client.post("/v1/environments/prod/accounts", json=truto_record(1), headers=admin)
    assert again.status == 409
