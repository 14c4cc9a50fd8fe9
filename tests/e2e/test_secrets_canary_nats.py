"""The canary scenario of test_secrets_canary.py, with the gateway's own relay and webhook
dispatcher running: no canary (token, refresh token, client secret, API key, password, ...) in
any NATS message, and none in any webhook a receiver got."""

import asyncio
import json

import asyncpg
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1.http import from_json
import nats
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.gateway.app import create_app
from tests.conftest import Gateway, gateway_settings
from tests.e2e.test_secrets_canary import find_leaks, run_scenario
from tests.support.relaying import delete_stream, read_stream, stream_count


@pytest.fixture
async def publishing_gateway(database_url, servers, nats_prefix):
    settings = gateway_settings(database_url, servers.nats_url, relay=True, webhook_dispatcher=True,
                                nats_stream=nats_prefix, nats_subject_prefix=nats_prefix)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    yield Gateway(client, settings, database_url)
    await client.close()
    nc = await nats.connect(servers.nats_url)
    await delete_stream(nc, nats_prefix)
    await nc.close()


@pytest.fixture
async def receiver():
    got: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(json.dumps(dict(request.headers)).encode() + b"\n" + await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", got
    await runner.cleanup()


async def test_no_nats_message_and_no_webhook_carries_a_secret(publishing_gateway, receiver, servers, nats_prefix):
    url, got = receiver
    admin = await publishing_gateway.headers("admin")
    for env in ("prod", "staging"):
        response = await publishing_gateway.client.post(f"/v1/environments/{env}/webhooks", headers=admin,
                                                        json={"url": url})
        assert response.status == 201
    s = await run_scenario(publishing_gateway)
    conn = await asyncpg.connect(publishing_gateway.database_url)
    try:
        total = await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()
    nc = await nats.connect(servers.nats_url)
    try:
        for _ in range(1000):
            if await stream_count(nc, nats_prefix) >= total:
                break
            await asyncio.sleep(0.02)
        messages = await read_stream(nc, nats_prefix)
    finally:
        await nc.close()
    assert len(messages) == total > 30
    created = sum(1 for m in messages if m.subject.endswith(".AccountConnecting"))
    for _ in range(1000):  # the dispatcher polls its consumer: wait for the created webhooks at least
        if sum(b'"integrated_account:created"' in g for g in got) >= created:
            break
        await asyncio.sleep(0.02)
    assert sum(b'"integrated_account:created"' in g for g in got) == created > 5
    for message in messages:  # every message is a CloudEvent the SDK reads
        event = from_json(message.data)
        assert event["id"] == message.header["Nats-Msg-Id"] and event["specversion"] == "1.0"
        assert JSONFormat().read(None, message.data).get_type() == event["type"]
    leaks = []
    for message in messages:
        blob = message.subject.encode() + json.dumps(message.header).encode() + message.data
        found = find_leaks(blob, s.c, extra=tuple(s.api_keys))
        if found:
            leaks.append(f"NATS {message.subject}: {found}")
    for body in got:
        found = find_leaks(body, s.c, extra=tuple(s.api_keys))
        if found:
            leaks.append(f"webhook: {found} {body[:200]!r}")
    assert not leaks, "\n".join(leaks)
    metrics = await (await publishing_gateway.client.get("/metrics")).text()
    published = [line for line in metrics.splitlines() if line.startswith("linkledger_relay_published_total ")]
    assert published and float(published[0].split()[1]) >= total
    assert "linkledger_relay_lag_events " in metrics and "linkledger_relay_duplicates_total " in metrics
