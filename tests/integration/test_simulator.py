"""The OAuth provider simulator (scripts/simulator.py), over real HTTP on loopback.

No database or NATS: these tests request none of the conftest fixtures.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from urllib.parse import quote_plus

import aiohttp
import pytest
from yarl import URL

from scripts.simulator import FakeClock, ProviderSimulator, SimulatorProcess

CLIENT, SECRET = "app", "s3cret"
REDIRECT = "https://app.example/callback"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock):
    simulator = ProviderSimulator(clock=clock, seed=1234)
    simulator.add_client(CLIENT, SECRET)
    async with simulator:
        yield simulator


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def basic(client_id: str = CLIENT, secret: str = SECRET) -> dict[str, str]:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def refresh(http, sim, refresh_token, *, auth="basic", client_id=CLIENT, secret=SECRET, **extra):
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra}
    headers = {}
    if auth == "basic":
        headers = basic(client_id, secret)
    elif auth == "post":
        form.update(client_id=client_id, client_secret=secret)
    async with http.post(sim.token_url, data=form, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def userinfo(http, sim, access_token):
    async with http.get(sim.userinfo_url, headers={"Authorization": f"Bearer {access_token}"}) as response:
        return response.status, await response.json(), response.headers


# ------------------------------------------------------------------------------------- refresh


async def test_issue_grant_then_refresh_with_basic_auth(sim, http):
    grant = sim.issue_grant(CLIENT, scopes=("api", "offline_access"), subject="alice")
    assert grant["access_token"].startswith("sim_at_") and grant["refresh_token"].startswith("sim_rt_")
    assert grant["expires_in"] == 3600 and grant["grant_id"]

    status, body, headers = await refresh(http, sim, grant["refresh_token"], auth="basic")
    assert status == 200, body
    assert body["access_token"].startswith("sim_at_") and body["access_token"] != grant["access_token"]
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["scope"] == "api offline_access"
    assert body["refresh_token"].startswith("sim_rt_") and body["refresh_token"] != grant["refresh_token"]
    assert headers["Cache-Control"] == "no-store"

    status, info, _ = await userinfo(http, sim, body["access_token"])
    assert status == 200 and info["sub"] == "alice" and info["grant_id"] == grant["grant_id"]

    total = sim.counters()["total"]
    assert total["token_requests"] == 1 and total["refresh_requests"] == 1
    assert total["successful_refreshes"] == 1 and total["rotations"] == 1
    assert sim.counter("successful_refreshes", CLIENT) == 1
    assert sim.grant_counters(grant["grant_id"])["refresh_requests"] == 1


async def test_refresh_with_post_auth_and_narrowed_scope(sim, http):
    grant = sim.issue_grant(CLIENT, scopes=("api", "read"))
    status, body, _ = await refresh(http, sim, grant["refresh_token"], auth="post", scope="read")
    assert status == 200, body
    assert body["scope"] == "read"

    status, body, _ = await refresh(http, sim, body["refresh_token"], auth="post", scope="admin")
    assert status == 400 and body["error"] == "invalid_scope"


async def test_basic_credentials_are_form_urlencoded(sim, http):
    sim.add_client("odd id:1", "p@ss:wörd+%/")
    grant = sim.issue_grant("odd id:1")
    status, body, _ = await refresh(http, sim, grant["refresh_token"], client_id="odd id:1", secret="p@ss:wörd+%/")
    assert status == 200, body


async def test_auth_method_not_allowed_for_client(sim, http):
    sim.add_client("post-only", "pw", auth_methods=("client_secret_post",))
    grant = sim.issue_grant("post-only")
    status, body, _ = await refresh(http, sim, grant["refresh_token"], auth="basic", client_id="post-only", secret="pw")
    assert status == 401 and body["error"] == "invalid_client"
    status, body, _ = await refresh(http, sim, grant["refresh_token"], auth="post", client_id="post-only", secret="pw")
    assert status == 200, body


async def test_rotation_then_reuse_of_old_token_revokes_whole_grant(sim, http):
    grant = sim.issue_grant(CLIENT)
    old = grant["refresh_token"]
    status, first, _ = await refresh(http, sim, old)
    assert status == 200 and first["refresh_token"] != old

    status, body, _ = await refresh(http, sim, old)
    assert status == 400
    assert body == {"error": "invalid_grant", "error_description": "refresh token reuse detected"}

    # every token of the grant is dead now: the new refresh token, the new and the first access token
    status, body, _ = await refresh(http, sim, first["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"
    assert (await userinfo(http, sim, first["access_token"]))[0] == 401
    assert (await userinfo(http, sim, grant["access_token"]))[0] == 401

    total = sim.counters()["total"]
    assert total["rotations"] == 1 and total["reuse_detected"] == 1 and total["grants_revoked"] == 1
    assert total["invalid_grant_responses"] == 2 and total["successful_refreshes"] == 1
    assert sim.grant_info(grant["grant_id"])["revoked"] is True


async def test_reuse_detection_off_rejects_old_token_but_keeps_grant(sim, http):
    sim.add_client("lenient", "pw", reuse_detection=False)
    grant = sim.issue_grant("lenient")
    status, first, _ = await refresh(http, sim, grant["refresh_token"], client_id="lenient", secret="pw")
    assert status == 200
    status, body, _ = await refresh(http, sim, grant["refresh_token"], client_id="lenient", secret="pw")
    assert status == 400 and body["error"] == "invalid_grant"
    status, body, _ = await refresh(http, sim, first["refresh_token"], client_id="lenient", secret="pw")
    assert status == 200, body
    assert sim.counter("reuse_detected") == 0 and sim.counter("grants_revoked") == 0


async def test_rotation_off_keeps_refresh_token_and_omits_it(sim, http):
    sim.add_client("static", "pw", rotate_refresh_tokens=False, access_token_ttl=900)
    grant = sim.issue_grant("static")
    for _ in range(3):
        status, body, _ = await refresh(http, sim, grant["refresh_token"], client_id="static", secret="pw")
        assert status == 200, body
        assert "refresh_token" not in body
        assert body["expires_in"] == 900
    assert sim.counter("rotations") == 0 and sim.counter("successful_refreshes", "static") == 3
    assert sim.grant_counters(grant["grant_id"])["successful_refreshes"] == 3


async def test_wrong_client_credentials_answer_invalid_client(sim, http):
    grant = sim.issue_grant(CLIENT)
    status, body, headers = await refresh(http, sim, grant["refresh_token"], auth="basic", secret="wrong")
    assert status == 401 and body["error"] == "invalid_client"
    assert headers["WWW-Authenticate"].startswith("Basic")
    status, body, _ = await refresh(http, sim, grant["refresh_token"], auth="post", secret="wrong")
    assert status == 401 and body["error"] == "invalid_client"
    status, body, _ = await refresh(http, sim, grant["refresh_token"], auth="post", client_id="nobody")
    assert status == 401 and body["error"] == "invalid_client"
    status, body, _ = await refresh(http, sim, grant["refresh_token"], auth=None)
    assert status == 401 and body["error"] == "invalid_client"
    assert sim.counter("invalid_client_responses") == 4
    # the grant is untouched by failed client authentication
    status, body, _ = await refresh(http, sim, grant["refresh_token"])
    assert status == 200, body


async def test_refresh_token_of_another_client_and_unknown_token(sim, http):
    sim.add_client("other", "pw")
    grant = sim.issue_grant(CLIENT)
    status, body, _ = await refresh(http, sim, grant["refresh_token"], client_id="other", secret="pw")
    assert status == 400 and body["error"] == "invalid_grant"
    status, body, _ = await refresh(http, sim, "sim_rt_made_up")
    assert status == 400 and body["error"] == "invalid_grant"
    async with http.post(sim.token_url, data={"grant_type": "password"}, headers=basic()) as response:
        assert response.status == 400 and (await response.json())["error"] == "unsupported_grant_type"


async def test_revoked_grant_answers_invalid_grant(sim, http):
    grant = sim.issue_grant(CLIENT)
    assert sim.revoke_grant(grant["grant_id"]) is True
    status, body, _ = await refresh(http, sim, grant["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"
    assert sim.counter("reuse_detected") == 0


# ------------------------------------------------------------------------------------- authorization code


def pkce_pair(seed: str = "x") -> tuple[str, str]:
    verifier = (seed * 64)[:64]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def authorize(http, sim, **params) -> URL:
    query = {"response_type": "code", "client_id": CLIENT, "redirect_uri": REDIRECT, "state": "st-1", **params}
    async with http.get(sim.authorize_url, params=query, allow_redirects=False) as response:
        assert response.status == 302, await response.text()
        return URL(response.headers["Location"])


async def exchange(http, sim, code, **extra):
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, **extra}
    async with http.post(sim.token_url, data=form, headers=basic()) as response:
        return response.status, await response.json()


async def test_authorization_code_with_pkce(sim, http):
    verifier, challenge = pkce_pair("a")
    location = await authorize(http, sim, code_challenge=challenge, code_challenge_method="S256",
                               scope="api read", login_hint="bob")
    assert str(location.with_query(None)) == REDIRECT
    assert location.query["state"] == "st-1"
    code = location.query["code"]

    status, body = await exchange(http, sim, code, code_verifier=verifier)
    assert status == 200, body
    assert body["access_token"].startswith("sim_at_") and body["refresh_token"].startswith("sim_rt_")
    assert body["scope"] == "api read"
    status, info, _ = await userinfo(http, sim, body["access_token"])
    assert status == 200 and info["sub"] == "bob"

    status, refreshed, _ = await refresh(http, sim, body["refresh_token"])
    assert status == 200, refreshed

    # replaying the code fails and revokes what it produced
    status, replay = await exchange(http, sim, code, code_verifier=verifier)
    assert status == 400 and replay["error"] == "invalid_grant"
    status, dead, _ = await refresh(http, sim, refreshed["refresh_token"])
    assert status == 400 and dead["error"] == "invalid_grant"
    assert sim.counter("code_exchanges") == 1 and sim.counter("authorizations") == 1


async def test_authorization_code_pkce_bad_or_missing_verifier(sim, http):
    verifier, challenge = pkce_pair("b")
    code = (await authorize(http, sim, code_challenge=challenge, code_challenge_method="S256")).query["code"]
    status, body = await exchange(http, sim, code, code_verifier=pkce_pair("c")[0])
    assert status == 400 and body["error"] == "invalid_grant"
    # the code was consumed by the failed attempt
    status, body = await exchange(http, sim, code, code_verifier=verifier)
    assert status == 400 and body["error"] == "invalid_grant"

    code = (await authorize(http, sim, code_challenge=challenge, code_challenge_method="S256")).query["code"]
    status, body = await exchange(http, sim, code)
    assert status == 400 and body["error"] == "invalid_grant"
    assert sim.counter("code_exchanges") == 0


async def test_authorization_code_without_pkce_checks_redirect_uri(sim, http):
    code = (await authorize(http, sim)).query["code"]
    status, body = await exchange(http, sim, code, redirect_uri="https://evil.example/cb")
    assert status == 400 and body["error"] == "invalid_grant"
    code = (await authorize(http, sim)).query["code"]
    status, body = await exchange(http, sim, code)
    assert status == 200, body


async def test_authorize_errors(sim, http):
    location = await authorize(http, sim, response_type="token")
    assert location.query["error"] == "unsupported_response_type" and location.query["state"] == "st-1"
    async with http.get(sim.authorize_url, params={"response_type": "code", "client_id": "nobody",
                                                   "redirect_uri": REDIRECT}, allow_redirects=False) as response:
        assert response.status == 400
    sim.add_client("strict", "pw", redirect_uris=[REDIRECT])
    async with http.get(sim.authorize_url, params={"response_type": "code", "client_id": "strict",
                                                   "redirect_uri": "https://evil.example/cb"},
                        allow_redirects=False) as response:
        assert response.status == 400


async def test_authorization_code_expires(sim, http, clock):
    code = (await authorize(http, sim)).query["code"]
    clock.advance(601)
    status, body = await exchange(http, sim, code)
    assert status == 400 and body["error"] == "invalid_grant"


# ------------------------------------------------------------------------------------- revoke and userinfo


async def revoke(http, sim, token, hint=None, headers=None):
    form = {"token": token}
    if hint:
        form["token_type_hint"] = hint
    async with http.post(sim.revoke_url, data=form, headers=headers if headers is not None else basic()) as response:
        return response.status


async def test_revoke_refresh_token_revokes_grant(sim, http):
    grant = sim.issue_grant(CLIENT)
    assert await revoke(http, sim, grant["refresh_token"], "refresh_token") == 200
    assert (await userinfo(http, sim, grant["access_token"]))[0] == 401
    status, body, _ = await refresh(http, sim, grant["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"
    assert sim.counter("grants_revoked") == 1 and sim.counter("revocation_requests") == 1


async def test_revoke_access_token_only_revokes_that_token(sim, http):
    grant = sim.issue_grant(CLIENT)
    assert await revoke(http, sim, grant["access_token"], "access_token") == 200
    assert (await userinfo(http, sim, grant["access_token"]))[0] == 401
    status, body, _ = await refresh(http, sim, grant["refresh_token"])
    assert status == 200, body
    assert (await userinfo(http, sim, body["access_token"]))[0] == 200
    assert sim.counter("grants_revoked") == 0


async def test_revoke_unknown_token_is_200_and_needs_client_auth(sim, http):
    assert await revoke(http, sim, "sim_rt_unknown") == 200
    grant = sim.issue_grant(CLIENT)
    assert await revoke(http, sim, grant["refresh_token"], headers=basic(secret="wrong")) == 401
    assert sim.grant_info(grant["grant_id"])["revoked"] is False


async def test_userinfo_valid_expired_revoked_missing(sim, http, clock):
    grant = sim.issue_grant(CLIENT, subject="carol")
    status, body, _ = await userinfo(http, sim, grant["access_token"])
    assert status == 200 and body["sub"] == "carol" and body["grant_id"] == grant["grant_id"]

    clock.advance(3599)
    assert (await userinfo(http, sim, grant["access_token"]))[0] == 200
    clock.advance(2)
    status, body, headers = await userinfo(http, sim, grant["access_token"])
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]

    status, fresh, _ = await refresh(http, sim, grant["refresh_token"])
    assert status == 200
    assert (await userinfo(http, sim, fresh["access_token"]))[0] == 200
    sim.revoke_grant(grant["grant_id"])
    status, _, headers = await userinfo(http, sim, fresh["access_token"])
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]

    async with http.get(sim.userinfo_url) as response:
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert sim.counter("userinfo_requests") == 6 and sim.counter("userinfo_unauthorized") == 3


async def test_issue_grant_with_already_expired_access_token(sim, http):
    grant = sim.issue_grant(CLIENT, expires_in=0)
    assert (await userinfo(http, sim, grant["access_token"]))[0] == 401


# ------------------------------------------------------------------------------------- failure injection


async def test_error_rate_one_and_partial(sim, http):
    grant = sim.issue_grant(CLIENT)
    sim.set_failures(error_rate=1.0)
    for _ in range(3):
        status, body, _ = await refresh(http, sim, grant["refresh_token"])
        assert status == 503 and body["error"] == "temporarily_unavailable"
    assert sim.counter("injected_errors") == 3 and sim.counter("successful_refreshes") == 0
    # an injected error happens before anything else: the refresh token was not rotated
    sim.set_failures(error_rate=0.5)
    sim.reset_counters()
    sim.add_client("static", "pw", rotate_refresh_tokens=False)
    static = sim.issue_grant("static")
    statuses = [(await refresh(http, sim, static["refresh_token"], client_id="static", secret="pw"))[0]
                for _ in range(200)]
    failed = statuses.count(503)
    assert set(statuses) == {200, 503}
    assert 60 <= failed <= 140
    assert sim.counter("injected_errors") == failed and sim.counter("successful_refreshes") == 200 - failed


async def test_rate_limit_with_retry_after(sim, http):
    grant = sim.issue_grant(CLIENT)
    sim.set_failures(rate_limit_rate=1.0, retry_after=7)
    status, body, headers = await refresh(http, sim, grant["refresh_token"])
    assert status == 429 and headers["Retry-After"] == "7"
    assert sim.counter("rate_limited") == 1 and sim.counter("injected_errors") == 0
    sim.reset_failures()
    status, body, _ = await refresh(http, sim, grant["refresh_token"])
    assert status == 200, body


async def test_latency_fixed_and_range(sim, http):
    grant = sim.issue_grant(CLIENT)
    sim.set_failures(latency_ms=150)
    started = time.monotonic()
    status, body, _ = await refresh(http, sim, grant["refresh_token"])
    assert status == 200 and time.monotonic() - started >= 0.15
    started = time.monotonic()
    assert (await userinfo(http, sim, body["access_token"]))[0] == 200
    assert time.monotonic() - started >= 0.15

    sim.set_failures(latency_ms=(60, 80))
    started = time.monotonic()
    status, body, _ = await refresh(http, sim, body["refresh_token"])
    elapsed = time.monotonic() - started
    assert status == 200 and 0.06 <= elapsed < 1.0

    sim.reset_failures()
    started = time.monotonic()
    await refresh(http, sim, body["refresh_token"])
    assert time.monotonic() - started < 0.06


async def test_outage_until_turned_off(sim, http):
    grant = sim.issue_grant(CLIENT)
    sim.set_failures(outage=True)
    for _ in range(3):
        status, body, _ = await refresh(http, sim, grant["refresh_token"])
        assert status == 503
    # during an outage even bad credentials get a 503
    assert (await refresh(http, sim, grant["refresh_token"], secret="wrong"))[0] == 503
    sim.set_failures(outage=False)
    status, body, _ = await refresh(http, sim, grant["refresh_token"])
    assert status == 200, body
    assert sim.counter("injected_errors") == 4


async def test_invalid_grant_for_selected_grants(sim, http):
    doomed, fine = sim.issue_grant(CLIENT), sim.issue_grant(CLIENT)
    sim.set_failures(invalid_grant_for={doomed["grant_id"]})
    status, body, _ = await refresh(http, sim, doomed["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"
    status, body, _ = await refresh(http, sim, fine["refresh_token"])
    assert status == 200, body
    # client authentication still comes first
    status, body, _ = await refresh(http, sim, doomed["refresh_token"], secret="wrong")
    assert status == 401
    assert sim.counter("invalid_grant_responses") == 1 and sim.counter("injected_errors") == 1
    sim.reset_failures()
    status, body, _ = await refresh(http, sim, doomed["refresh_token"])
    assert status == 200, body


async def test_invalid_client_switch(sim, http):
    grant = sim.issue_grant(CLIENT)
    sim.set_failures(invalid_client=True)
    status, body, _ = await refresh(http, sim, grant["refresh_token"])
    assert status == 401 and body["error"] == "invalid_client"
    assert sim.counter("invalid_client_responses") == 1 and sim.counter("injected_errors") == 1
    sim.reset_failures()
    assert (await refresh(http, sim, grant["refresh_token"]))[0] == 200


async def test_per_client_failures_override_default(sim, http):
    sim.add_client("healthy", "pw", rotate_refresh_tokens=False)
    broken, healthy = sim.issue_grant(CLIENT), sim.issue_grant("healthy")

    async def healthy_refresh():
        return (await refresh(http, sim, healthy["refresh_token"], client_id="healthy", secret="pw"))[0]

    sim.set_failures(CLIENT, outage=True)
    assert (await refresh(http, sim, broken["refresh_token"]))[0] == 503
    assert await healthy_refresh() == 200
    assert sim.counter("injected_errors", CLIENT) == 1 and sim.counter("injected_errors", "healthy") == 0

    sim.set_failures(outage=True)  # the default now fails everyone without their own configuration
    assert await healthy_refresh() == 503
    sim.set_failures("healthy")  # an empty configuration of its own shields a client from the default
    assert await healthy_refresh() == 200
    sim.reset_failures("healthy")
    assert await healthy_refresh() == 503
    sim.reset_failures()
    assert await healthy_refresh() == 200
    assert (await refresh(http, sim, broken["refresh_token"]))[0] == 200


async def test_failure_config_validation(sim):
    with pytest.raises(ValueError):
        sim.set_failures(error_rate=1.5)
    with pytest.raises(ValueError):
        sim.set_failures(error_rate=0.6, rate_limit_rate=0.6)
    with pytest.raises(ValueError):
        sim.set_failures(latency_ms=(50, 10))
    with pytest.raises(ValueError):
        sim.set_failures("no-such-client", outage=True)


async def test_control_api_steers_and_reports(sim, http):
    base = sim.url

    async def control(method, path, body=None):
        async with http.request(method, base + path, json=body) as response:
            return response.status, await response.json()

    assert (await control("GET", "/_control/health"))[1]["ok"] is True
    assert (await control("POST", "/_control/clients", {"client_id": "remote", "client_secret": "pw",
                                                        "rotate_refresh_tokens": False}))[0] == 200
    status, grant = await control("POST", "/_control/grants", {"client_id": "remote", "subject": "dave"})
    assert status == 200 and grant["refresh_token"].startswith("sim_rt_")
    status, many = await control("POST", "/_control/grants", {"client_id": "remote", "count": 3})
    assert status == 200 and len({g["grant_id"] for g in many["grants"]}) == 3

    def go():
        return refresh(http, sim, grant["refresh_token"], client_id="remote", secret="pw")

    assert (await control("POST", "/_control/failures", {"outage": True}))[0] == 200
    assert (await go())[0] == 503
    assert (await control("POST", "/_control/failures", {"client_id": "remote", "rate_limit_rate": 1.0,
                                                         "retry_after": 3}))[0] == 200
    status, _, headers = await go()
    assert status == 429 and headers["Retry-After"] == "3"
    assert (await control("POST", "/_control/failures", {"client_id": "remote", "latency_ms": [20, 30],
                                                         "invalid_grant_for": [grant["grant_id"]]}))[0] == 200
    status, body, _ = await go()
    assert status == 400 and body["error"] == "invalid_grant"
    assert (await control("POST", "/_control/failures", {"client_id": "remote", "invalid_client": True}))[0] == 200
    assert (await go())[0] == 401
    assert (await control("POST", "/_control/failures", {"client_id": "remote", "error_rate": 1.0}))[0] == 200
    assert (await go())[0] == 503
    status, failures = await control("GET", "/_control/failures")
    assert failures["default"]["outage"] is True and failures["clients"]["remote"]["error_rate"] == 1.0
    assert (await control("POST", "/_control/failures/reset"))[0] == 200
    assert (await go())[0] == 200

    status, counters = await control("GET", "/_control/counters")
    remote = counters["clients"]["remote"]
    assert remote["token_requests"] == 6 and remote["refresh_requests"] == 6
    assert remote["injected_errors"] == 4 and remote["rate_limited"] == 1
    assert remote["invalid_grant_responses"] == 1 and remote["invalid_client_responses"] == 1
    assert remote["successful_refreshes"] == 1
    assert counters["grants"][grant["grant_id"]]["refresh_requests"] == 6
    assert counters["total"]["injected_errors"] == 4

    status, info = await control("GET", f"/_control/grants/{grant['grant_id']}")
    assert info["subject"] == "dave" and info["counters"]["successful_refreshes"] == 1

    # the clock moves for a simulator in another process too
    assert (await userinfo(http, sim, grant["access_token"]))[0] == 200
    assert (await control("POST", "/_control/clock", {"advance": 7200}))[0] == 200
    assert (await userinfo(http, sim, grant["access_token"]))[0] == 401

    assert (await control("POST", f"/_control/grants/{grant['grant_id']}/revoke"))[1] == {"revoked": True}
    assert (await go())[0] == 400

    assert (await control("POST", "/_control/counters/reset"))[0] == 200
    status, counters = await control("GET", "/_control/counters?grants=0")
    assert counters["total"]["token_requests"] == 0 and "grants" not in counters

    assert (await control("POST", "/_control/failures", {"error_rate": 2}))[0] == 400
    assert (await control("POST", "/_control/failures", {"bogus": 1}))[0] == 400
    assert (await control("GET", "/_control/grants/nope"))[0] == 404


# ------------------------------------------------------------------------------------- concurrency


async def test_concurrent_refreshes_of_one_grant_are_counted(sim, http):
    grant = sim.issue_grant(CLIENT)
    sim.set_failures(latency_ms=100)
    results = await asyncio.gather(*(refresh(http, sim, grant["refresh_token"]) for _ in range(5)))
    assert sim.counter("max_concurrent_refreshes_per_grant") == 5
    assert sim.counter("max_concurrent_refreshes_per_grant", CLIENT) == 5
    assert sim.grant_counters(grant["grant_id"])["max_concurrent_refreshes"] == 5
    assert sim.counter("overlapping_refreshes") == 4
    # and this is why it matters: with rotation, the losers reuse a rotated-out token and kill the grant
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 400, 400, 400, 400]
    assert sim.counter("reuse_detected") == 1 and sim.grant_info(grant["grant_id"])["revoked"] is True


async def test_sequential_and_cross_grant_refreshes_stay_at_one(sim, http):
    sim.add_client("static", "pw", rotate_refresh_tokens=False)
    grants = [sim.issue_grant("static") for _ in range(5)]
    sim.set_failures(latency_ms=50)
    for _ in range(3):
        assert (await refresh(http, sim, grants[0]["refresh_token"], client_id="static", secret="pw"))[0] == 200
    # five different grants at once: concurrency across grants is fine and not counted
    results = await asyncio.gather(*(refresh(http, sim, g["refresh_token"], client_id="static", secret="pw")
                                     for g in grants))
    assert [status for status, _, _ in results] == [200] * 5
    assert sim.counter("max_concurrent_refreshes_per_grant") == 1
    assert sim.counter("overlapping_refreshes") == 0
    counters = sim.counters()
    assert counters["grants"][grants[0]["grant_id"]]["refresh_requests"] == 4
    assert all(counters["grants"][g["grant_id"]]["max_concurrent_refreshes"] == 1 for g in grants)

    sim.reset_counters()
    assert sim.counters()["grants"] == {} and sim.counter("refresh_requests") == 0


# ------------------------------------------------------------------------------------- process mode


async def test_runs_as_a_separate_process(http):
    process = SimulatorProcess(seed=7, clients=[("proc", "pw")])
    await asyncio.to_thread(process.start)
    try:
        assert process.url.startswith("http://127.0.0.1:")
        grant = await asyncio.to_thread(process.issue_grant, "proc", scopes=("api", "read"))
        form = {"grant_type": "refresh_token", "refresh_token": grant["refresh_token"]}
        async with http.post(process.url + "/token", data=form, headers=basic("proc", "pw")) as response:
            assert response.status == 200
            body = await response.json()
        assert body["scope"] == "api read"
        await asyncio.to_thread(process.set_failures, "proc", outage=True)
        async with http.post(process.url + "/token", data={**form, "refresh_token": body["refresh_token"]},
                             headers=basic("proc", "pw")) as response:
            assert response.status == 503
        counters = await asyncio.to_thread(process.counters)
        assert counters["clients"]["proc"]["successful_refreshes"] == 1
        assert counters["clients"]["proc"]["injected_errors"] == 1
        assert await asyncio.to_thread(process.counter, "injected_errors", "proc") == 1
    finally:
        await asyncio.to_thread(process.stop)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(process.url + "/_control/health") as response:
            await response.read()


async def test_metadata_document(sim, http):
    async with http.get(sim.url + "/.well-known/oauth-authorization-server") as response:
        assert response.status == 200
        metadata = await response.json()
    assert metadata["token_endpoint"] == sim.token_url and metadata["revocation_endpoint"] == sim.revoke_url
    assert "S256" in metadata["code_challenge_methods_supported"]
