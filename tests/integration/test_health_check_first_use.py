"""The health check "at first use": an integration may defer imported accounts' health check to
their first token read, leaving their tokens untouched until then. Against the provider simulator."""

import asyncio
from datetime import timedelta

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from events.database import create_pool
from scripts.simulator import ProviderSimulator
from service.bootstrap import bootstrap
from service.domain.commands import ConfigureIntegration, ConfigureOAuthClient, ImportAccount
from service.domain.errors import InvalidConfiguration
from service.gateway.app import create_app
from service.handlers.accounts import import_account, load_existing_account
from service.handlers.integrations import configure_integration, configure_oauth_client
from service.handlers.tokens import Refresher
from service.oauth.client import OAuthClient
from service.workers.refresher import FIRST_USE_RECHECK_SECONDS, refresh_due_once
from tests.conftest import Gateway, gateway_settings

CLIENT, SECRET = "ll-client", "ll-secret"


@pytest.fixture
async def world(database_url, servers):
    sim = ProviderSimulator(seed=3)
    await sim.start()
    sim.add_client(CLIENT, SECRET, access_token_ttl=3600, rotate_refresh_tokens=True, reuse_detection=True)
    settings = gateway_settings(database_url, servers.nats_url)
    pool = await create_pool(database_url, max_size=10)
    uow = bootstrap(settings, pool).acting_as("system:test")
    for name, when in (("crm", "first_use"), ("erp", "import")):
        await configure_integration(ConfigureIntegration(
            environment="prod", name=name, health_check={"url": sim.userinfo_url, "when": when}), uow)
        await configure_oauth_client(ConfigureOAuthClient(
            environment="prod", integration=name, client_id=CLIENT, client_secret=SECRET, token_url=sim.token_url), uow)
    session = aiohttp.ClientSession()
    refresher = Refresher(uow, OAuthClient(session, timeout=5))
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    key = await Gateway(client, settings, database_url).headers("service", "prod")

    async def account(tenant: str, integration: str = "crm", *, expires_in: int = 3600):
        grant = sim.issue_grant(CLIENT, expires_in=expires_in)
        outcome = await import_account(ImportAccount(
            environment="prod", integration=integration, tenant_id=tenant, external_ref=f"ref-{tenant}",
            credentials={"access_token": grant["access_token"], "refresh_token": grant["refresh_token"]},
            expires_at=uow.clock() + timedelta(seconds=expires_in), token_type="Bearer"), uow)
        assert outcome.state.status == "connecting"
        return outcome.account_id, grant

    async def read(account_id):
        response = await client.get(f"/v1/accounts/{account_id}/token", headers=key)
        return response.status, await response.json()

    yield type("World", (), {"uow": uow, "sim": sim, "pool": pool, "refresher": refresher, "read": staticmethod(read),
                              "account": staticmethod(account)})
    await client.close()
    await session.close()
    await pool.close()
    await sim.stop()


async def validations(pool, account_id) -> list[str]:
    return [r["how"] for r in await pool.fetch(
        "SELECT data::jsonb->>'how' AS how FROM events WHERE stream_id = $1 AND type = 'AccountValidated'"
        " ORDER BY version", f"account-{account_id}")]


async def test_the_worker_leaves_first_use_accounts_untouched_and_validates_import_ones(world):
    deferred, _ = await world.account("t-deferred")
    checked, _ = await world.account("t-checked", "erp")
    assert await refresh_due_once(world.refresher) == 2
    assert (await load_existing_account(world.uow, deferred)).status == "connecting"
    assert (await load_existing_account(world.uow, checked)).status == "active"
    assert world.sim.counter("userinfo_requests") == 1 and world.sim.counter("refresh_requests") == 0
    due = await world.pool.fetchval("SELECT due_at FROM refresh_schedule WHERE account_id = $1", deferred)
    assert due >= world.uow.clock() + timedelta(seconds=FIRST_USE_RECHECK_SECONDS - 60)  # looked at again later


async def test_the_first_read_runs_the_health_check_once_and_answers_the_token(world):
    account_id, grant = await world.account("t-first")
    answers = await asyncio.gather(*(world.read(account_id) for _ in range(10)))
    assert {status for status, _ in answers} == {200}
    assert {body["access_token"] for _, body in answers} == {grant["access_token"]}
    assert {body["status"] for _, body in answers} == {"active"}
    assert world.sim.counter("userinfo_requests") == 1, "concurrent first reads share one health check"
    assert world.sim.counter("refresh_requests") == 0, "a valid token is not refreshed by its health check"
    assert await validations(world.pool, account_id) == ["health_check"]
    await world.read(account_id)
    assert world.sim.counter("userinfo_requests") == 1


async def test_a_dead_token_fails_its_first_read_with_validation_error(world):
    account_id, grant = await world.account("t-dead")
    world.sim.revoke_grant(grant["grant_id"])
    status, body = await world.read(account_id)
    assert status == 409 and body["type"].endswith("validation-error"), body
    assert body["status_of_account"] == "validation_error" and grant["access_token"] not in str(body)
    state = await load_existing_account(world.uow, account_id)
    assert state.status == "validation_error" and "invalid_grant" in state.status_reason
    status, body = await world.read(account_id)  # later reads say so too, without checking again
    assert status == 409 and body["type"].endswith("validation-error")
    assert world.sim.counter("userinfo_requests") == 1


async def test_an_expired_token_is_refreshed_by_its_first_read(world):
    account_id, grant = await world.account("t-expired", expires_in=0)
    status, body = await world.read(account_id)
    assert status == 200 and body["status"] == "active" and body["access_token"] != grant["access_token"]
    assert world.sim.counter("successful_refreshes") == 1
    assert await validations(world.pool, account_id) == ["refresh"]  # the refresh proved the grant alive


async def test_an_unknown_setting_is_refused(world):
    with pytest.raises(InvalidConfiguration, match="first_use"):
        await configure_integration(ConfigureIntegration(
            environment="prod", name="hr", health_check={"url": world.sim.userinfo_url, "when": "later"}), world.uow)
