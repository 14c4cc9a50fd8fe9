"""Issue acceptance over HTTP: bulk import with bad records, idempotent re-run, export and re-import."""

import json
import uuid

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from events.database import database_url_for
from service.gateway.app import create_app

INTEGRATION = {
    "authentication_methods": ["oauth2", "api_key"],
    "oauth_client": {"client_id": "byo-client", "client_secret": "byo-secret",
                     "token_url": "https://login.example.com/oauth2/token"},
}


def truto_record(i: int, **token) -> dict:
    return {
        "integration_name": "salesforce",
        "tenant_id": f"customer_{i}",
        "authentication_method": "oauth2",
        "external_ref": f"merge-linked-account-{i}",
        "context": {
            "oauth": {"token": {"access_token": f"00Dxx{i}!AQEAQ-example", "refresh_token": f"5Aep861-{i}",
                                "expires_at": "2026-12-15T14:30:00Z", "token_type": "Bearer",
                                "scope": "api refresh_token", **token}},
            "instance_url": f"https://acme{i}.my.salesforce.com",
        },
    }


def bad_records() -> list[tuple[str, str]]:
    """Ten bad lines (two of each kind), with the field each must be rejected for."""
    no_refresh = truto_record(90001)
    del no_refresh["context"]["oauth"]["token"]["refresh_token"]
    no_refresh_2 = truto_record(90002)
    del no_refresh_2["context"]["oauth"]["token"]["refresh_token"]
    unknown = truto_record(90003) | {"integration_name": "netsuite"}
    unknown_2 = truto_record(90004) | {"integration_name": "workday"}
    return [
        (json.dumps(no_refresh), "context.oauth.token.refresh_token"),
        (json.dumps(no_refresh_2), "context.oauth.token.refresh_token"),
        (json.dumps(truto_record(90005, expires_at="next tuesday")), "context.oauth.token.expires_at"),
        (json.dumps(truto_record(90006, expires_at="2026-13-45T99:00:00Z")), "context.oauth.token.expires_at"),
        (json.dumps(unknown), "integration_name"),
        (json.dumps(unknown_2), "integration_name"),
        (json.dumps(truto_record(7)), "external_ref"),  # repeats a good line
        (json.dumps(truto_record(8)), "external_ref"),
        ("[1, 2, 3]", ""),
        ('"just a string"', ""),
    ]


async def count_events(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()


async def test_bulk_import_of_1000_with_10_bad_records_then_again_then_export_and_reimport(gateway, servers):
    admin = await gateway.headers("admin")
    client = gateway.client
    response = await client.put("/v1/environments/prod/integrations/salesforce", json=INTEGRATION, headers=admin)
    assert response.status == 200

    lines, expected_bad = [], {}
    bad = bad_records()
    for i in range(990):
        lines.append(json.dumps(truto_record(i)))
        if i % 99 == 50 and bad:
            line, field = bad.pop()
            lines.append(line)
            expected_bad[len(lines)] = field
    assert not bad and len(lines) == 1000
    body = ("\n".join(lines) + "\n").encode()

    response = await client.post("/v1/environments/prod/accounts:import?profile=truto", data=body,
                                 headers=admin | {"Content-Type": "application/x-ndjson"})
    assert response.status == 200
    result = await response.json()
    assert result["summary"] == {"imported": 990, "updated": 0, "unchanged": 0, "rejected": 10}
    rejected = {r["line"]: r for r in result["results"] if r["outcome"] == "rejected"}
    assert {line: r["field"] for line, r in rejected.items()} == expected_bad
    assert all(r["reason"] for r in rejected.values())
    assert [r["line"] for r in result["results"]] == list(range(1, 1001))

    events_after_first = await count_events(gateway.database_url)
    response = await client.post("/v1/environments/prod/accounts:import?profile=truto", data=body,
                                 headers=admin | {"Content-Type": "application/x-ndjson"})
    again = await response.json()
    assert again["summary"] == {"imported": 0, "updated": 0, "unchanged": 990, "rejected": 10}
    assert await count_events(gateway.database_url) == events_after_first, "a repeated import wrote events"

    response = await client.post("/v1/environments/prod/accounts:export", json={"purpose": "move to staging"}, headers=admin)
    assert response.status == 200
    exported = [json.loads(line) for line in (await response.read()).splitlines()]
    assert len(exported) == 990
    # every export is in each account's history, naming who and why
    conn = await asyncpg.connect(gateway.database_url)
    try:
        rows = await conn.fetch("SELECT data, actor FROM events WHERE type = 'TokensExported'")
    finally:
        await conn.close()
    assert len(rows) == 990
    assert all(json.loads(r["data"])["purpose"] == "move to staging" and r["actor"].startswith("key:") for r in rows)

    # Into a brand-new linkledger: its own database, its own keyring.
    fresh_name = f"ll_fresh_{uuid.uuid4().hex[:10]}"
    admin_conn = await asyncpg.connect(servers.database_url)
    await admin_conn.execute(f'CREATE DATABASE "{fresh_name}"')
    await admin_conn.close()
    fresh_url = database_url_for(servers.database_url, fresh_name)
    try:
        from events.database import migrate
        from service.db import all_migrations
        from tests.conftest import Gateway, gateway_settings

        await migrate(fresh_url, all_migrations())
        settings = gateway_settings(fresh_url, servers.nats_url)
        fresh_client = TestClient(TestServer(create_app(settings)))
        await fresh_client.start_server()
        try:
            fresh = Gateway(fresh_client, settings, fresh_url)
            fresh_admin = await fresh.headers("admin")
            assert (await fresh_client.put("/v1/environments/staging/integrations/salesforce", json=INTEGRATION,
                                           headers=fresh_admin)).status == 200
            response = await fresh_client.post(
                "/v1/environments/staging/accounts:import?profile=canonical",
                data="\n".join(json.dumps(r) for r in exported).encode(),
                headers=fresh_admin | {"Content-Type": "application/x-ndjson"},
            )
            moved = await response.json()
            assert moved["summary"] == {"imported": 990, "updated": 0, "unchanged": 0, "rejected": 0}
            service = await fresh.headers("service", "staging")
            originals = {f"merge-linked-account-{i}": truto_record(i) for i in range(990)}
            for result in moved["results"][:: 45]:  # every 45th account, decrypted through the token endpoint
                token = await (await fresh_client.get(f"/v1/accounts/{result['account_id']}/token", headers=service)).json()
                detail = await (await fresh_client.get(f"/v1/accounts/{result['account_id']}", headers=fresh_admin)).json()
                original = originals[detail["external_ref"]]
                assert token["access_token"] == original["context"]["oauth"]["token"]["access_token"]
                assert token["context"] == {"instance_url": original["context"]["instance_url"]}
                assert detail["tenant_id"] == original["tenant_id"]
            # and a full second export from the new home matches the first, token for token
            response = await fresh_client.post("/v1/environments/staging/accounts:export", json={"purpose": "check"},
                                               headers=fresh_admin)
            second = [json.loads(line) for line in (await response.read()).splitlines()]
            key = lambda r: r["external_ref"]  # noqa: E731
            assert sorted(second, key=key) == sorted(exported, key=key)
        finally:
            await fresh_client.close()
    finally:
        admin_conn = await asyncpg.connect(servers.database_url)
        await admin_conn.execute(f'DROP DATABASE IF EXISTS "{fresh_name}" WITH (FORCE)')
        await admin_conn.close()


async def test_single_import_honours_idempotency_key_and_names_bad_fields(gateway):
    admin = await gateway.headers("admin")
    client = gateway.client
    await client.put("/v1/environments/prod/integrations/salesforce", json=INTEGRATION, headers=admin)
    record = truto_record(1)
    first = await client.post("/v1/environments/prod/accounts", json=record, headers=admin | {"Idempotency-Key": "k-1"})
    assert first.status == 201
    replay = await client.post("/v1/environments/prod/accounts", json=record, headers=admin | {"Idempotency-Key": "k-1"})
    assert replay.status == 201 and replay.headers.get("Idempotent-Replayed") == "true"
    assert await replay.json() == await first.json()
    other = await client.post("/v1/environments/prod/accounts", json=truto_record(2), headers=admin | {"Idempotency-Key": "k-1"})
    assert other.status == 422
    # without a key, the same account is recognised by its external reference
    same = await client.post("/v1/environments/prod/accounts", json=record, headers=admin)
    assert same.status == 200 and (await same.json())["outcome"] == "unchanged"
    newer = await client.post("/v1/environments/prod/accounts", json=truto_record(1, access_token="rotated-token"),
                              headers=admin)
    assert (await newer.json())["outcome"] == "updated"
    bad = await client.post("/v1/environments/prod/accounts", json=truto_record(3, expires_at="soon"), headers=admin)
    assert bad.status == 422
    problem = await bad.json()
    assert bad.headers["Content-Type"].startswith("application/problem+json")
    assert problem["errors"][0]["field"] == "context.oauth.token.expires_at"
