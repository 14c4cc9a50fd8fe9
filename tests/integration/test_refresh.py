"""Keeping tokens alive against the provider simulator: one refresh per grant, failure classes."""

import asyncio
import json
from datetime import datetime, timedelta, timezone

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from events.database import create_pool
from scripts.simulator import ProviderSimulator
from service.bootstrap import bootstrap
from events.envelope import uuid7
from service.domain.commands import ConfigureIntegration, ConfigureOAuthClient, DeleteAccount, ImportAccount
from service.gateway.app import create_app
from service.handlers.accounts import current_credentials, delete_account, import_account
from service.handlers.integrations import configure_integration, configure_oauth_client
from service.handlers.leases import RefreshLeases
from service.handlers.token_reads import TokenReads
from service.handlers.tokens import LEASE_SECONDS, RefreshInProgress, Refresher
from service.oauth.client import OAuthClient
from tests.conftest import Gateway, gateway_settings


class Clock:
    """The domain's injected clock, movable by tests."""

    def __init__(self):
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def simulator():
    sim = ProviderSimulator(seed=7)
    url = await sim.start()
    sim.add_client("ll-client", "ll-secret", access_token_ttl=3600, rotate_refresh_tokens=True, reuse_detection=True)
    yield sim
    await sim.stop()


@pytest.fixture
async def world(database_url, servers, simulator):
    """A unit of work with a movable clock, an integration whose client is the simulator's, and a Refresher."""
    clock = Clock()
    settings = gateway_settings(database_url, servers.nats_url)
    pool = await create_pool(database_url, max_size=20)
    uow = bootstrap(settings, pool, clock=clock).acting_as("system:test")
    await configure_integration(ConfigureIntegration(environment="prod", name="crm"), uow)
    await configure_oauth_client(ConfigureOAuthClient(
        environment="prod", integration="crm", client_id="ll-client", client_secret="ll-secret",
        token_url=simulator.token_url, client_authentication="client_secret_basic"), uow)
    session = aiohttp.ClientSession()
    refresher = Refresher(uow, OAuthClient(session, timeout=5, clock=clock))

    async def account(tenant: str, *, expires_in: int = 3600):
        grant = simulator.issue_grant("ll-client", expires_in=expires_in)
        outcome = await import_account(ImportAccount(
            environment="prod", integration="crm", tenant_id=tenant, external_ref=f"ref-{tenant}",
            credentials={"access_token": grant["access_token"], "refresh_token": grant["refresh_token"]},
            expires_at=clock() + timedelta(seconds=expires_in), token_type="Bearer"), uow)
        return outcome.account_id, grant

    yield type("World", (), {"uow": uow, "refresher": refresher, "clock": clock, "account": staticmethod(account),
                              "settings": settings, "pool": pool, "sim": simulator})
    await session.close()
    await pool.close()


async def event_types(pool, account_id) -> list[str]:
    return [r["type"] for r in await pool.fetch(
        "SELECT type FROM events WHERE stream_id = $1 ORDER BY version", f"account-{account_id}")]


async def test_100_concurrent_reads_over_3_instances_refresh_once(world, database_url, servers):
    account_id, grant = await world.account("t-hot", expires_in=10)
    world.sim.set_failures(latency_ms=200)  # a slow provider widens the window for a second refresh
    apps = []
    for _ in range(3):  # three gateways, each its own pool and single-flight table, one database
        settings = gateway_settings(database_url, servers.nats_url, keyring=world.settings.keyring,
                                    audit_key=world.settings.audit_key, pool_size=8)
        client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        apps.append(client)
    try:
        key = await Gateway(apps[0], world.settings, database_url).headers("service", "prod")
        responses = await asyncio.gather(*(
            apps[i % 3].get(f"/v1/accounts/{account_id}/token", headers=key) for i in range(100)))
        bodies = [await r.json() for r in responses]
    finally:
        for client in apps:
            await client.close()
    assert [r.status for r in responses] == [200] * 100, {r.status for r in responses}
    tokens = {b["access_token"] for b in bodies}
    assert len(tokens) == 1 and grant["access_token"] not in tokens, "callers got different or stale tokens"
    assert world.sim.counter("successful_refreshes") == 1
    assert world.sim.counter("refresh_requests") == 1
    assert world.sim.counter("invalid_grant_responses") == 0
    assert world.sim.counter("max_concurrent_refreshes_per_grant") == 1
    types = await event_types(world.pool, account_id)
    assert types.count("TokenRefreshed") == 1


async def test_a_rotated_refresh_token_is_persisted_and_used_next_time(world):
    account_id, grant = await world.account("t-rotate")
    for _ in range(3):
        await world.refresher.refresh(account_id)
    secrets = await current_credentials(world.uow, account_id)
    assert secrets["refresh_token"] != grant["refresh_token"]
    assert world.sim.counter("successful_refreshes") == 3
    assert world.sim.counter("reuse_detected") == 0


async def test_invalid_grant_makes_one_transition_to_needs_reauth_even_after_five_more_failures(world):
    account_id, grant = await world.account("t-dead")
    world.sim.set_failures(invalid_grant_for={grant["grant_id"]})
    for _ in range(6):
        state = await world.refresher.refresh(account_id)
    assert state.status == "needs_reauth" and state.status_reason == "invalid_grant", (
        await event_types(world.pool, account_id), world.sim.counters(include_grants=False))
    types = await event_types(world.pool, account_id)
    assert types.count("TokenRefreshFailed") == 6
    assert types.count("AccountNeedsReauth") == 1
    assert await world.pool.fetchval("SELECT count(*) FROM refresh_schedule WHERE account_id = $1", account_id) == 0


async def test_invalid_client_flags_the_integration_and_leaves_accounts_alone(world):
    accounts = [await world.account(f"t-app-{i}") for i in range(3)]
    world.sim.set_failures(invalid_client=True)
    for account_id, _ in accounts:
        state = await world.refresher.refresh(account_id)
        assert state.status == "active"
        assert "AccountNeedsReauth" not in await event_types(world.pool, account_id)
    flagged = await world.pool.fetch(
        "SELECT type FROM events WHERE stream_id = 'integration-prod-crm' AND type = 'IntegrationFlagged'")
    assert len(flagged) == 1


async def test_three_503s_then_success_stay_active_with_increasing_retry_times(world):
    account_id, _ = await world.account("t-flaky")
    world.sim.set_failures(outage=True)
    retry_times = []
    for _ in range(3):
        state = await world.refresher.refresh(account_id)
        assert state.status == "active"
        retry_times.append(await world.pool.fetchval(
            "SELECT due_at FROM refresh_schedule WHERE account_id = $1", account_id) - world.clock())
    assert retry_times[0] < retry_times[1] < retry_times[2], retry_times
    world.sim.reset_failures()
    state = await world.refresher.refresh(account_id)
    assert state.status == "active" and state.consecutive_refresh_failures == 0
    failed = [json.loads(r["data"]) for r in await world.pool.fetch(
        "SELECT data FROM events WHERE stream_id = $1 AND type = 'TokenRefreshFailed' ORDER BY version",
        f"account-{account_id}")]
    assert [f["failure_class"] for f in failed] == ["transient"] * 3
    assert [f["attempt"] for f in failed] == [1, 2, 3]


async def test_an_outage_outlasting_the_token_needs_reauth_then_heals(world):
    account_id, _ = await world.account("t-outage", expires_in=120)
    world.sim.set_failures(outage=True)
    for _ in range(2):
        state = await world.refresher.refresh(account_id)
        assert state.status == "active"  # the token is still valid: not the account's problem yet
    world.clock.now += timedelta(seconds=300)  # the access token has expired meanwhile
    state = await world.refresher.refresh(account_id)
    assert state.status == "needs_reauth" and state.status_reason == "refresh_unavailable"
    assert await world.pool.fetchval("SELECT due_at FROM refresh_schedule WHERE account_id = $1", account_id) \
        > world.clock() + timedelta(minutes=10), "an unavailable account is still retried, slowly"
    world.sim.reset_failures()
    state = await world.refresher.refresh(account_id)
    assert state.status == "active"
    types = await event_types(world.pool, account_id)
    assert types.count("AccountNeedsReauth") == 1 and types[-1] == "AccountReactivated"


async def test_429_with_retry_after_schedules_no_attempt_before_it(world):
    account_id, _ = await world.account("t-limited")
    world.sim.set_failures(rate_limit_rate=1.0, retry_after=120)
    await world.refresher.refresh(account_id)
    due = await world.pool.fetchval("SELECT due_at FROM refresh_schedule WHERE account_id = $1", account_id)
    assert due >= world.clock() + timedelta(seconds=120)
    failed = json.loads(await world.pool.fetchval(
        "SELECT data FROM events WHERE stream_id = $1 AND type = 'TokenRefreshFailed'", f"account-{account_id}"))
    assert failed["http_status"] == 429 and failed["failure_class"] == "transient"


async def test_a_lease_is_released_by_the_append_of_its_outcome(world):
    account_id, _ = await world.account("t-lease")
    other = RefreshLeases(world.pool, "proc-other", LEASE_SECONDS)  # another process's leases
    lease = await other.take(account_id, uuid7())
    assert lease is not None
    before = lease.head["version"]
    with pytest.raises(RefreshInProgress):
        await world.refresher.refresh(account_id)
    assert await world.pool.fetchval("SELECT count(*) FROM refresh_leases_held") == 1
    await other.release(lease)  # nothing appended: released by deleting it
    state = await world.refresher.refresh(account_id)
    # Held by the refresher meanwhile; its TokenRefreshed event (whose id the lease named) released it.
    assert await world.pool.fetchval("SELECT count(*) FROM refresh_leases") == 1
    assert await world.pool.fetchval("SELECT count(*) FROM refresh_leases_held") == 0
    lease = await other.take(account_id, uuid7())
    assert lease is not None and lease.head["version"] == state.version > before  # read under the new lease


async def test_token_reads_follow_changes_made_by_other_processes(world):
    account_id, grant = await world.account("t-reads")
    reads = TokenReads(world.uow)
    state, secrets, fields = await reads.read(account_id)
    assert secrets["access_token"] == grant["access_token"] and fields["status"] == state.status
    again = await reads.read(account_id)
    assert again[0] is state and again[1] == secrets  # unchanged stream: the parsed state is reused
    elsewhere = Refresher(world.uow, world.refresher.oauth)  # another process refreshes it
    refreshed = await elsewhere.refresh(account_id)
    state, secrets, fields = await reads.read(account_id)
    assert state.version == refreshed.version and secrets["access_token"] != grant["access_token"]
    assert secrets == await current_credentials(world.uow, account_id)
    await delete_account(DeleteAccount(account_id=account_id), world.uow)
    state, secrets, _ = await reads.read(account_id)
    assert state.status == "deleted" and secrets is None
