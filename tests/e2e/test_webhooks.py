"""Webhooks end to end: the log, the relay to JetStream, the dispatcher (a durable consumer), real
receivers (aiohttp servers). Signatures are checked with the `standardwebhooks` reference library;
the dispatcher's clock and retry schedule are injected, so nothing waits for real time."""

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone

import aiohttp
import nats
import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from events.database import create_pool
from events.relay import RELAY_ROLE, Relay
from scripts.simulator import ProviderSimulator
from service.bootstrap import bootstrap, load_keyring
from service.domain.commands import ConfigureIntegration, ConfigureOAuthClient, DeleteAccount, ImportAccount
from service.handlers import webhooks as repo
from service.handlers.accounts import delete_account, import_account
from service.handlers.integrations import configure_integration, configure_oauth_client
from service.handlers.tokens import Refresher
from service.oauth.client import OAuthClient
from service.workers.webhooks import WebhookDispatcher
from tests.conftest import gateway_settings
from tests.e2e.test_secrets_canary import Canaries, find_leaks
from tests.support.relaying import delete_stream, read_stream, stream_count


class Clock:
    def __init__(self):
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


class Receiver:
    """A real HTTP endpoint that records every request and answers with the statuses it is given
    (the last one repeats)."""

    def __init__(self, statuses=(200,)):
        self.statuses = list(statuses)
        self.requests: list[tuple[dict, bytes]] = []
        self._runner = None
        self.url = ""

    async def start(self) -> "Receiver":
        app = web.Application()

        async def hook(request: web.Request) -> web.Response:
            self.requests.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return web.Response(status=status, text="ok" if status < 300 else "nope")

        app.router.add_post("/hook", hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()

    def names(self) -> list[str]:
        return [json.loads(body)["type"] for _, body in self.requests]


@pytest.fixture
async def simulator():
    sim = ProviderSimulator(seed=11)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def world(database_url, servers, simulator, nats_prefix):
    clock = Clock()
    settings = gateway_settings(database_url, servers.nats_url)
    pool = await create_pool(database_url, max_size=20)
    relay_pool = await create_pool(database_url, role=RELAY_ROLE, max_size=4)
    uow = bootstrap(settings, pool, clock=clock).acting_as("system:test")
    nc = await nats.connect(servers.nats_url)

    async def client():
        return nc

    relay = Relay(relay_pool, client, stream=nats_prefix, prefix=nats_prefix, poll_interval=0.05)
    uow.store.on_append(relay.wake)
    relay_task = asyncio.create_task(relay.run())
    dispatcher = WebhookDispatcher(pool, load_keyring(settings), client, stream=nats_prefix, prefix=nats_prefix,
                                   store=uow.store, clock=clock, schedule=(0, 5, 60, 3600), durable=f"wh{nats_prefix}")
    await dispatcher.start()
    session = aiohttp.ClientSession()
    refresher = Refresher(uow, OAuthClient(session, timeout=5, clock=clock))
    receivers: list[Receiver] = []

    class World:
        pass

    w = World()
    w.uow, w.pool, w.clock, w.nc, w.relay, w.dispatcher, w.refresher, w.sim = (
        uow, pool, clock, nc, relay, dispatcher, refresher, simulator)
    w.keyring = load_keyring(settings)
    w.stream = nats_prefix

    async def receiver(statuses=(200,)) -> Receiver:
        r = await Receiver(statuses).start()
        receivers.append(r)
        return r

    async def endpoint(env: str, url: str, events=()) -> tuple[uuid.UUID, str]:
        row, secret = await repo.create_endpoint(pool, w.keyring, environment=env, url=url, events=list(events),
                                                 description=None, actor="tests", now=clock() - timedelta(seconds=1))
        return row["id"], secret

    async def pump() -> None:
        """Everything appended so far: published, consumed, and its due deliveries attempted."""
        total = await pool.fetchval("SELECT count(*) FROM events")
        for _ in range(600):
            if await stream_count(nc, nats_prefix) >= total:
                break
            await asyncio.sleep(0.02)
        assert await stream_count(nc, nats_prefix) == total
        while await dispatcher.consume_once(timeout=0.5):
            pass
        while await dispatcher.deliver_due():
            pass

    async def setup_integration(env: str = "prod") -> None:
        await configure_integration(ConfigureIntegration(environment=env, name="crm"), uow)
        await configure_oauth_client(ConfigureOAuthClient(
            environment=env, integration="crm", client_id="wh-client", client_secret=w.canaries["CLIENT-SECRET"],
            token_url=simulator.token_url, client_authentication="client_secret_basic"), uow)

    async def account(tenant: str, env: str = "prod"):
        grant = simulator.issue_grant("wh-client", expires_in=3600)
        outcome = await import_account(ImportAccount(
            environment=env, integration="crm", tenant_id=tenant, external_ref=f"ref-{tenant}",
            credentials={"access_token": grant["access_token"], "refresh_token": grant["refresh_token"]},
            expires_at=clock() + timedelta(seconds=3600), token_type="Bearer"), uow)
        return outcome.account_id, grant

    w.canaries = Canaries()
    simulator.add_client("wh-client", w.canaries["CLIENT-SECRET"], access_token_ttl=3600, rotate_refresh_tokens=True)
    w.receiver, w.endpoint, w.pump, w.setup_integration, w.account = receiver, endpoint, pump, setup_integration, account
    yield w
    relay_task.cancel()
    await asyncio.gather(relay_task, return_exceptions=True)
    await dispatcher.close()
    for r in receivers:
        await r.stop()
    await session.close()
    await delete_stream(nc, nats_prefix)
    await nc.close()
    await relay_pool.close()
    await pool.close()


def _verify(secret: str, headers: dict, body: bytes) -> dict:
    return Webhook(secret).verify(body, {k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")})


def _signed_by(secret: str, headers: dict, body: bytes) -> bool:
    """The reference library's signature for this id, timestamp and body is among the header's."""
    ts = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=timezone.utc)
    expected = Webhook(secret).sign(headers["webhook-id"], ts, body.decode())
    return expected in headers["webhook-signature"].split(" ")


async def test_lifecycle_webhooks_are_signed_filtered_once_per_transition_and_secret_free(world):
    await world.setup_integration("prod")
    everything = await world.receiver()
    auth_only = await world.receiver()
    staging = await world.receiver()
    all_id, all_secret = await world.endpoint("prod", everything.url)
    _, auth_secret = await world.endpoint("prod", auth_only.url, ["integrated_account:authentication_error"])
    await world.endpoint("staging", staging.url)

    account_id, grant = await world.account("cust-1")
    world.sim.set_failures(invalid_grant_for={grant["grant_id"]})
    for _ in range(6):  # six failed refreshes, one transition
        await world.refresher.refresh(account_id)
    world.sim.reset_failures()
    fresh = world.sim.issue_grant("wh-client", expires_in=3600)
    await import_account(ImportAccount(  # newer tokens: an update, which reactivates the account
        environment="prod", integration="crm", tenant_id="cust-1", external_ref="ref-cust-1",
        credentials={"access_token": fresh["access_token"], "refresh_token": fresh["refresh_token"]},
        expires_at=world.clock() + timedelta(seconds=3600), token_type="Bearer"), world.uow)
    await delete_account(DeleteAccount(account_id=account_id, reason="offboarded"), world.uow)
    await world.pump()

    names = everything.names()
    assert names.count("integrated_account:created") == 1
    assert names.count("integrated_account:authentication_error") == 1
    assert names.count("integrated_account:reactivated") == 1
    assert names.count("integrated_account:updated") == 1
    assert names.count("integrated_account:deleted") == 1
    assert auth_only.names() == ["integrated_account:authentication_error"]
    assert staging.requests == []

    for headers, body in everything.requests:
        payload = _verify(all_secret, headers, body)
        data = payload["data"]
        assert data["id"] == str(account_id) and data["environment"] == "prod" and data["integration"] == "crm"
        assert data["tenant_id"] == "cust-1"
        if payload["type"] == "integrated_account:authentication_error":
            assert data["status"] == "needs_reauth" and data["reason"] == "invalid_grant"
        if payload["type"] == "integrated_account:reactivated":
            assert data["status"] == "active"
        with pytest.raises(WebhookVerificationError):
            _verify(auth_secret, headers, body)  # another endpoint's secret
    headers, body = auth_only.requests[0]
    _verify(auth_secret, headers, body)
    # A tampered body, a stale timestamp: refused.
    with pytest.raises(WebhookVerificationError):
        _verify(auth_secret, headers, body.replace(b"needs_reauth", b"active"))
    stale = str(int(headers["webhook-timestamp"]) - 600)
    with pytest.raises(WebhookVerificationError):
        _verify(auth_secret, {**headers, "webhook-timestamp": stale}, body)
    stale_signature = Webhook(auth_secret).sign(headers["webhook-id"], datetime.fromtimestamp(int(stale), timezone.utc),
                                                body.decode())
    with pytest.raises(WebhookVerificationError, match="too old"):
        _verify(auth_secret, {**headers, "webhook-timestamp": stale, "webhook-signature": stale_signature}, body)

    # Attempts are recorded and queryable.
    attempts = await repo.list_attempts(world.pool, all_id)
    assert len(attempts) == len(everything.requests) and all(a["succeeded"] for a in attempts)

    # No token, refresh token or client secret went to NATS or to a receiver.
    secrets = (grant["access_token"], grant["refresh_token"], fresh["access_token"], fresh["refresh_token"])
    messages = await read_stream(world.nc, world.stream)
    assert len(messages) == await world.pool.fetchval("SELECT count(*) FROM events")
    blobs = [m.data + json.dumps(m.header).encode() for m in messages]
    blobs += [json.dumps(h).encode() + b + b"" for h, b in everything.requests + auth_only.requests]
    for blob in blobs:
        assert not find_leaks(blob, world.canaries), blob[:300]
        # The simulator's tokens are not canary-shaped (find_leaks' end-of-token needles would be
        # a letter or two): search for them, and for their middle part, verbatim.
        for token in secrets:
            assert token.encode() not in blob and token[8:24].encode() not in blob, blob[:300]
    ciphertexts = [bytes(r["secret"]) for r in await world.pool.fetch("SELECT secret FROM events WHERE secret IS NOT NULL")]
    assert ciphertexts
    for blob in blobs:
        for ciphertext in ciphertexts:
            assert ciphertext[:16].hex().encode() not in blob


async def test_retries_back_off_every_attempt_is_recorded_and_a_day_of_failures_disables(world):
    await world.setup_integration("prod")
    failing = await world.receiver(statuses=(500,))
    endpoint_id, secret = await world.endpoint("prod", failing.url, ["integrated_account:created"])
    await world.account("cust-retry")
    await world.pump()
    assert len(failing.requests) == 1
    assert await world.dispatcher.deliver_due() == 0  # not due again yet
    for step, expected in ((5, 2), (30, 2), (25, 3), (3600, 4), (7200, 4)):
        world.clock.now += timedelta(seconds=step)
        while await world.dispatcher.deliver_due():
            pass
        assert len(failing.requests) == expected, (step, len(failing.requests))
    ids = {h["webhook-id"] for h, _ in failing.requests}
    assert len(ids) == 1, "every attempt carries the same webhook-id"
    assert all(_signed_by(secret, h, b) for h, b in failing.requests)
    attempts = await repo.list_attempts(world.pool, endpoint_id)
    assert [a["attempt"] for a in attempts] == [4, 3, 2, 1]
    assert all(a["status_code"] == 500 and not a["succeeded"] for a in attempts)
    assert attempts[0]["delivery_state"] == "failed"
    assert (await repo.get_endpoint(world.pool, endpoint_id))["enabled"]

    # Still failing a day after the first failure: the endpoint is disabled, with an event.
    world.clock.now += timedelta(hours=23)
    await world.account("cust-retry-2")
    await world.pump()
    row = await repo.get_endpoint(world.pool, endpoint_id)
    assert not row["enabled"] and "24 hours" in row["disabled_reason"]
    disabled = await world.pool.fetch("SELECT data FROM events WHERE stream_id = 'environment-prod'"
                                      " AND type = 'WebhookEndpointDisabled'")
    assert len(disabled) == 1 and json.loads(disabled[0]["data"])["endpoint_id"] == str(endpoint_id)
    await world.pump()  # published like any event
    subjects = [m.subject for m in await read_stream(world.nc, world.stream)]
    assert f"{world.stream}.prod._environment.WebhookEndpointDisabled" in subjects
    before = len(failing.requests)
    await world.account("cust-retry-3")
    world.clock.now += timedelta(hours=1)
    await world.pump()
    assert len(failing.requests) == before, "a disabled endpoint gets nothing"


async def test_a_flaky_endpoint_succeeds_on_a_retry_and_recovers(world):
    await world.setup_integration("prod")
    flaky = await world.receiver(statuses=(503, 502, 200))
    endpoint_id, secret = await world.endpoint("prod", flaky.url, ["integrated_account:created"])
    await world.account("cust-flaky")
    await world.pump()
    for step in (5, 60):
        world.clock.now += timedelta(seconds=step)
        await world.dispatcher.deliver_due()
    assert [a["succeeded"] for a in await repo.list_attempts(world.pool, endpoint_id)] == [True, False, False]
    assert await world.pool.fetchval("SELECT failing_since FROM webhook_endpoints WHERE id = $1", endpoint_id) is None


async def test_after_a_rotation_both_secrets_sign_until_the_overlap_ends(world):
    await world.setup_integration("prod")
    receiver = await world.receiver()
    endpoint_id, old = await world.endpoint("prod", receiver.url, ["integrated_account:created"])
    new, until = await repo.rotate_secret(world.pool, world.keyring, endpoint_id, world.clock(), timedelta(hours=1))
    assert new != old and new.startswith("whsec_")
    await world.account("cust-rotate-1")
    await world.pump()
    headers, body = receiver.requests[-1]
    _verify(old, headers, body)
    _verify(new, headers, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    world.clock.now = until + timedelta(seconds=1)
    await world.account("cust-rotate-2")
    await world.pump()
    headers, body = receiver.requests[-1]
    assert _signed_by(new, headers, body) and not _signed_by(old, headers, body)
    assert len(headers["webhook-signature"].split(" ")) == 1


async def test_the_webhook_api_shows_a_secret_once_and_never_stores_it_in_clear(gateway):
    admin = await gateway.headers("admin")
    operator = await gateway.headers("operator")
    client = gateway.client
    response = await client.post("/v1/environments/prod/webhooks", headers=admin, json={
        "url": "https://hooks.example.com/linkledger", "events": ["integrated_account:authentication_error"],
        "description": "billing"})
    assert response.status == 201, await response.text()
    created = await response.json()
    secret = created["secret"]
    assert secret.startswith("whsec_") and created["events"] == ["integrated_account:authentication_error"]
    Webhook(secret)  # the reference library accepts it
    listed = await (await client.get("/v1/environments/prod/webhooks", headers=operator)).json()
    detail = await (await client.get(f"/v1/webhooks/{created['id']}", headers=operator)).json()
    assert [w["id"] for w in listed["data"]] == [created["id"]]
    for shown in (listed, detail):
        assert secret not in json.dumps(shown) and "secret" not in json.dumps(shown)
    bad = await client.post("/v1/environments/prod/webhooks", headers=admin,
                            json={"url": "ftp://x", "events": ["integrated_account:exploded"]})
    assert bad.status == 422
    assert {e["field"] for e in (await bad.json())["errors"]} == {"url", "events.0"}
    patched = await client.patch(f"/v1/webhooks/{created['id']}", headers=admin, json={"enabled": False})
    assert (await patched.json())["enabled"] is False
    rotated = await (await client.post(f"/v1/webhooks/{created['id']}/secret:rotate", headers=admin,
                                       json={"overlap_seconds": 3600})).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != secret
    assert (await (await client.get(f"/v1/webhooks/{created['id']}/attempts", headers=operator)).json()) == {"data": []}
    import asyncpg

    conn = await asyncpg.connect(gateway.database_url)
    try:
        rows = [str(tuple(r)) for r in await conn.fetch("SELECT * FROM webhook_secrets")]
    finally:
        await conn.close()
    assert len(rows) == 2
    for key in (secret, rotated["secret"]):
        raw = __import__("base64").b64decode(key.removeprefix("whsec_"))
        assert key not in "".join(rows) and raw.hex() not in "".join(rows)
    deleted = await client.delete(f"/v1/webhooks/{created['id']}", headers=admin)
    assert deleted.status == 200
    assert (await client.get(f"/v1/webhooks/{created['id']}", headers=admin)).status == 404
