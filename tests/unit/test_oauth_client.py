"""The OAuth client against mocked providers (aioresponses): no network, no database."""

import asyncio
import base64
import inspect
import json
import logging
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from urllib.parse import parse_qsl, quote_plus, unquote_plus

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from service.oauth import OAuthClient, OAuthClientConfig, OAuthError, TokenSet, classify_failure, parse_retry_after

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
TOKEN_URL = "https://idp.example.com/oauth/token"
REVOKE_URL = "https://idp.example.com/oauth/revoke"
USERINFO_URL = "https://api.example.com/userinfo"

CLIENT_ID = "client id:1+2@x"
CLIENT_SECRET = "cs-S3cr3t:with+plus/slash %percent&amp=eq-0123456789"
REFRESH = "rt-1//0g-presented-refresh-token-abcdefghijkl"
NEW_REFRESH = "rt-2//rotated-refresh-token-zyxwvutsrqponm"
ACCESS = "ya29.a0-secret-access-token-0123456789abcdef"
ID_TOKEN = "eyJhbGciOiJSUzI1NiJ9.secret-id-token-payload.signature-part"
CODE = "authcode-4/0AX4XfWh-secret-authorization-code"
VERIFIER = "pkce-verifier-secret-0123456789-abcdefghijklmnop"
SECRETS = (CLIENT_SECRET, REFRESH, NEW_REFRESH, ACCESS, ID_TOKEN, CODE, VERIFIER)


def config(**overrides) -> OAuthClientConfig:
    values = dict(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token_url=TOKEN_URL, revocation_url=REVOKE_URL,
                  userinfo_url=USERINFO_URL, scopes=("crm.read", "offline_access"))
    values.update(overrides)
    return OAuthClientConfig(**values)


def token_body(**extra) -> dict:
    return {"access_token": ACCESS, "token_type": "Bearer", "expires_in": 3600, **extra}


def sent(mocked: aioresponses, method: str = "POST", url: str = TOKEN_URL):
    """The last request's keyword arguments; a form body (sent pre-encoded) as the dict it encodes."""
    calls = mocked.requests.get((method, URL(url)))
    assert calls, f"no {method} {url} was made"
    kwargs = dict(calls[-1].kwargs)
    if isinstance(kwargs.get("data"), bytes):
        assert kwargs["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
        kwargs["data"] = dict(parse_qsl(kwargs["data"].decode(), keep_blank_values=True, strict_parsing=True))
    return kwargs


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
        assert quote_plus(secret) not in text


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without the `stream_writer` that aiohttp >= 3.12 requires."""

    def __init__(self, method, url, **kwargs):
        kwargs.setdefault("stream_writer", _NoWriter())
        super().__init__(method, url, **kwargs)


class _NoWriter:
    output_size = 0


class mock_provider(aioresponses):
    def add(self, url, method="GET", *args, **kwargs):
        if "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters:
            kwargs.setdefault("response_class", _CompatResponse)
        return super().add(url, method, *args, **kwargs)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def mocked():
    with mock_provider() as mock:
        yield mock


@pytest.fixture
def client(session) -> OAuthClient:
    return OAuthClient(session, timeout=5.0, clock=lambda: NOW)


# -- client authentication and the request ---------------------------------------------------------


async def test_client_secret_basic_sends_urlencoded_credentials_in_the_header(client, mocked):
    mocked.post(TOKEN_URL, payload=token_body())
    await client.refresh(config(client_authentication="client_secret_basic"), REFRESH)

    request = sent(mocked)
    scheme, encoded = request["headers"]["Authorization"].split(" ")
    assert scheme == "Basic"
    user_pass = base64.b64decode(encoded).decode()
    encoded_id, encoded_secret = user_pass.split(":")  # exactly one ':' because both parts are encoded
    assert encoded_id == "client+id%3A1%2B2%40x"
    assert encoded_secret == quote_plus(CLIENT_SECRET)
    assert (unquote_plus(encoded_id), unquote_plus(encoded_secret)) == (CLIENT_ID, CLIENT_SECRET)
    assert request["data"] == {"grant_type": "refresh_token", "refresh_token": REFRESH}
    assert request["headers"]["Accept"] == "application/json"
    assert request["allow_redirects"] is False
    assert request["timeout"].total == 5.0


async def test_client_secret_post_sends_credentials_in_the_form(client, mocked):
    mocked.post(TOKEN_URL, payload=token_body())
    await client.refresh(config(client_authentication="client_secret_post"), REFRESH)

    request = sent(mocked)
    assert "Authorization" not in request["headers"]
    assert request["data"] == {"grant_type": "refresh_token", "refresh_token": REFRESH,
                               "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}


async def test_scope_is_sent_only_when_asked(client, mocked):
    mocked.post(TOKEN_URL, payload=token_body(), repeat=True)
    await client.refresh(config(), REFRESH)
    assert "scope" not in sent(mocked)["data"]
    await client.refresh(config(), REFRESH, send_scope=True)
    assert sent(mocked)["data"]["scope"] == "crm.read offline_access"
    await client.refresh(config(scopes=()), REFRESH, send_scope=True)
    assert "scope" not in sent(mocked)["data"]


# -- token responses ---------------------------------------------------------------------------------


async def test_rotated_refresh_token_is_returned_and_flagged(client, mocked):
    mocked.post(TOKEN_URL, payload=token_body(refresh_token=NEW_REFRESH))
    tokens = await client.refresh(config(), REFRESH)
    assert (tokens.access_token, tokens.refresh_token, tokens.rotated) == (ACCESS, NEW_REFRESH, True)


@pytest.mark.parametrize("body", [token_body(), token_body(refresh_token=""), token_body(refresh_token=None),
                                  token_body(refresh_token=REFRESH)], ids=["absent", "empty", "null", "same"])
async def test_without_a_new_refresh_token_the_presented_one_is_kept(client, mocked, body):
    mocked.post(TOKEN_URL, payload=body)
    tokens = await client.refresh(config(), REFRESH)
    assert (tokens.refresh_token, tokens.rotated) == (REFRESH, False)


@pytest.mark.parametrize("expires_in, expected", [
    (3600, NOW + timedelta(seconds=3600)),
    ("1799", NOW + timedelta(seconds=1799)),
    (0, NOW),
    (None, None),
    ("soon", None),
    (-5, None),
    (True, None),
])
async def test_expires_at_is_computed_from_expires_in_with_the_injected_clock(client, mocked, expires_in, expected):
    body = token_body(expires_in=expires_in)
    if expires_in is None:
        del body["expires_in"]
    mocked.post(TOKEN_URL, payload=body)
    tokens = await client.refresh(config(), REFRESH)
    assert tokens.expires_at == expected
    if expected is not None:
        assert tokens.expires_at.utcoffset() == timedelta(0)


async def test_expires_at_is_utc_even_when_the_clock_is_not(session, mocked):
    berlin = timezone(timedelta(hours=2))
    client = OAuthClient(session, clock=lambda: datetime(2024, 5, 1, 14, 0, tzinfo=berlin))
    mocked.post(TOKEN_URL, payload=token_body(expires_in=60))
    tokens = await client.refresh(config(), REFRESH)
    assert tokens.expires_at == NOW + timedelta(seconds=60)
    assert tokens.expires_at.tzinfo == timezone.utc


@pytest.mark.parametrize("scope, expected", [
    ("crm.read  crm.write offline_access", ("crm.read", "crm.write", "offline_access")),
    ("a b a", ("a", "b")),
    ("", ()),
    (["a", "b"], ("a", "b")),
    ("https://www.googleapis.com/auth/gmail.readonly openid",
     ("https://www.googleapis.com/auth/gmail.readonly", "openid")),
])
async def test_scopes_are_parsed_from_the_space_separated_string(client, mocked, scope, expected):
    mocked.post(TOKEN_URL, payload=token_body(scope=scope))
    assert (await client.refresh(config(), REFRESH)).scopes == expected


async def test_scopes_are_none_when_the_response_does_not_say(client, mocked):
    mocked.post(TOKEN_URL, payload=token_body())
    tokens = await client.refresh(config(), REFRESH)
    assert tokens.scopes is None
    assert tokens.token_type == "Bearer"


async def test_form_urlencoded_response_is_accepted(client, mocked):
    mocked.post(TOKEN_URL, body=f"access_token={ACCESS}&scope=repo%2Cgist&token_type=bearer&expires_in=28800"
                                f"&refresh_token={quote_plus(NEW_REFRESH)}&refresh_token_expires_in=15897600",
                content_type="application/x-www-form-urlencoded")
    tokens = await client.refresh(config(), REFRESH)
    assert tokens.access_token == ACCESS
    assert tokens.refresh_token == NEW_REFRESH and tokens.rotated
    assert tokens.token_type == "bearer"
    assert tokens.scopes == ("repo", "gist")
    assert tokens.expires_at == NOW + timedelta(seconds=28800)
    assert tokens.raw_extra == {"refresh_token_expires_in": "15897600"}


async def test_extra_fields_are_kept_without_secrets(client, mocked):
    mocked.post(TOKEN_URL, payload=token_body(
        refresh_token=NEW_REFRESH,
        id_token=ID_TOKEN,
        instance_url="https://acme.my.salesforce.com",
        id="https://login.salesforce.com/id/00D/005",
        issued_at="1714564800000",
        signature="hmac-signature-of-id-and-issued-at",
        authed_user={"id": "U123", "access_token": "xoxp-nested-user-token", "token_type": "user"},
        echo=f"your token is {ACCESS}",
    ))
    tokens = await client.refresh(config(), REFRESH)
    assert tokens.id_token == ID_TOKEN
    assert tokens.raw_extra == {
        "instance_url": "https://acme.my.salesforce.com",
        "id": "https://login.salesforce.com/id/00D/005",
        "issued_at": "1714564800000",
        "authed_user": {"id": "U123", "token_type": "user"},
    }


@pytest.mark.parametrize("reply", [
    dict(payload={"token_type": "Bearer", "expires_in": 3600}),
    dict(payload={"access_token": "", "token_type": "Bearer"}),
    dict(payload={"access_token": 12345}),
    dict(body="<html>maintenance</html>", content_type="text/html"),
    dict(body=""),
    dict(body=json.dumps(["not", "an", "object"])),
], ids=["no-access-token", "empty", "not-a-string", "html", "empty-body", "array"])
async def test_a_success_without_an_access_token_is_a_transient_invalid_response(client, mocked, reply):
    mocked.post(TOKEN_URL, status=200, **reply)
    with pytest.raises(OAuthError) as caught:
        await client.refresh(config(), REFRESH)
    assert caught.value.failure_class == "transient"
    assert caught.value.provider_error == "invalid_response"
    assert caught.value.http_status == 200


async def test_an_oversized_answer_is_not_read_into_memory(client, mocked, monkeypatch):
    monkeypatch.setattr("service.oauth.client.MAX_RESPONSE_BYTES", 4096)  # aioresponses can't feed megabytes
    mocked.post(TOKEN_URL, body=b'{"access_token": "' + b"x" * 8192 + b'"}')
    with pytest.raises(OAuthError) as caught:
        await client.refresh(config(), REFRESH)
    assert (caught.value.failure_class, caught.value.provider_error) == ("transient", "invalid_response")


async def test_exchange_code_sends_the_authorization_code_grant(client, mocked):
    mocked.post(TOKEN_URL, payload=token_body(refresh_token=NEW_REFRESH, scope="openid email"))
    tokens = await client.exchange_code(config(client_authentication="client_secret_post"), CODE,
                                        "https://app.example.com/callback", code_verifier=VERIFIER)
    assert sent(mocked)["data"] == {
        "grant_type": "authorization_code", "code": CODE, "redirect_uri": "https://app.example.com/callback",
        "code_verifier": VERIFIER, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
    }
    assert (tokens.refresh_token, tokens.rotated, tokens.scopes) == (NEW_REFRESH, False, ("openid", "email"))


async def test_exchange_code_without_verifier_or_refresh_token(client, mocked):
    mocked.post(TOKEN_URL, payload=token_body())
    tokens = await client.exchange_code(config(), CODE, "https://app.example.com/callback")
    request = sent(mocked)
    assert "code_verifier" not in request["data"]
    assert request["headers"]["Authorization"].startswith("Basic ")
    assert tokens.refresh_token is None and tokens.rotated is False


async def test_exchange_code_failures_are_classified(client, mocked):
    mocked.post(TOKEN_URL, status=400, payload={"error": "invalid_grant",
                                                "error_description": f"code {CODE} was already used"})
    with pytest.raises(OAuthError) as caught:
        await client.exchange_code(config(), CODE, "https://app.example.com/callback", VERIFIER)
    assert caught.value.failure_class == "invalid_grant"
    assert CODE not in str(caught.value) and "[REDACTED]" in caught.value.description


# -- classification ----------------------------------------------------------------------------------

JSON = "application/json"
CLASSIFICATION = [
    # status, body, content type, headers -> class, provider_error, retry_after
    (400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, JSON, {},
     "invalid_grant", "invalid_grant", None),
    (401, {"error": "invalid_grant"}, JSON, {}, "invalid_grant", "invalid_grant", None),
    (400, {"error": "INVALID_GRANT"}, JSON, {}, "invalid_grant", "INVALID_GRANT", None),
    (400, {"error": "invalid_grant"}, JSON, {"Retry-After": "30"}, "invalid_grant", "invalid_grant", None),
    (401, "", "text/plain", {}, "invalid_grant", None, None),
    (401, "<html><body>Unauthorized</body></html>", "text/html", {}, "invalid_grant", None, None),
    (401, {"message": "nope"}, JSON, {}, "invalid_grant", None, None),
    (401, {"error": "something_else"}, JSON, {}, "invalid_grant", "something_else", None),
    (400, {"error": "invalid_token"}, JSON, {}, "invalid_grant", "invalid_token", None),
    (401, {"error": "invalid_token"}, JSON, {}, "invalid_grant", "invalid_token", None),
    (400, {"status": "BAD_REFRESH_TOKEN", "message": "missing or invalid refresh token"}, JSON, {},
     "invalid_grant", "BAD_REFRESH_TOKEN", None),
    (401, {"error": "invalid_client"}, JSON, {}, "invalid_client", "invalid_client", None),
    (400, {"error": "invalid_client"}, JSON, {}, "invalid_client", "invalid_client", None),
    (400, {"error": "unauthorized_client"}, JSON, {}, "invalid_client", "unauthorized_client", None),
    (401, {"error": "unauthorized_client"}, JSON, {}, "invalid_client", "unauthorized_client", None),
    (400, {"error": "invalid_request"}, JSON, {}, "invalid_client", "invalid_request", None),
    (401, {"error": "invalid_request"}, JSON, {}, "invalid_client", "invalid_request", None),
    (400, {"error": "unsupported_grant_type"}, JSON, {}, "invalid_client", "unsupported_grant_type", None),
    (400, {"error": "invalid_scope"}, JSON, {}, "invalid_client", "invalid_scope", None),
    (400, {"error": "made_up_error"}, JSON, {}, "invalid_client", "made_up_error", None),
    (400, "", "text/plain", {}, "invalid_client", None, None),
    (403, "Forbidden", "text/plain", {}, "invalid_client", None, None),
    (404, "<html>Not Found</html>", "text/html", {}, "invalid_client", None, None),
    (405, "", "text/plain", {}, "invalid_client", None, None),
    (302, "", "text/plain", {"Location": "https://elsewhere.example.com/token"}, "invalid_client", None, None),
    (408, "", "text/plain", {}, "transient", None, None),
    (429, {"error": "rate_limited"}, JSON, {"Retry-After": "30"}, "transient", "rate_limited", 30.0),
    (429, "", "text/plain", {}, "transient", None, None),
    (429, "", "text/plain", {"Retry-After": "soon"}, "transient", None, None),
    (500, "", "text/plain", {}, "transient", None, None),
    (502, "<html>Bad Gateway</html>", "text/html", {}, "transient", None, None),
    (503, {"error": "temporarily_unavailable"}, JSON, {"Retry-After": "120"}, "transient",
     "temporarily_unavailable", 120.0),
    (503, {"error": "invalid_grant"}, JSON, {}, "transient", "invalid_grant", None),
    (500, {"error": "invalid_client"}, JSON, {}, "transient", "invalid_client", None),
    (400, {"error": "temporarily_unavailable"}, JSON, {"Retry-After": "5"}, "transient",
     "temporarily_unavailable", 5.0),
    (400, {"error": "server_error"}, JSON, {}, "transient", "server_error", None),
    (200, "error=bad_refresh_token&error_description=The+refresh+token+passed+is+incorrect+or+expired.",
     "application/x-www-form-urlencoded", {}, "invalid_grant", "bad_refresh_token", None),
    (200, {"error": "incorrect_client_credentials"}, JSON, {}, "invalid_client", "incorrect_client_credentials", None),
    (200, {"ok": False, "error": "invalid_refresh_token"}, JSON, {}, "invalid_grant", "invalid_refresh_token", None),
    (200, {"ok": False, "error": "ratelimited"}, JSON, {}, "transient", "ratelimited", None),
]


@pytest.mark.parametrize("status, body, content_type, headers, failure_class, provider_error, retry_after",
                         CLASSIFICATION, ids=[f"{row[0]}-{row[5] or 'no-error'}-{row[4]}-{i}"
                                              for i, row in enumerate(CLASSIFICATION)])
async def test_failures_are_classified(client, mocked, status, body, content_type, headers, failure_class,
                                       provider_error, retry_after):
    reply = dict(payload=body) if isinstance(body, dict) else dict(body=body)
    mocked.post(TOKEN_URL, status=status, content_type=content_type, headers=headers, **reply)
    with pytest.raises(OAuthError) as caught:
        await client.refresh(config(), REFRESH)
    error = caught.value
    assert (error.failure_class, error.http_status, error.provider_error, error.retry_after) == (
        failure_class, status, provider_error, retry_after)
    assert error.retryable == (failure_class in ("transient", "network"))


async def test_the_provider_description_is_kept_and_truncated(client, mocked):
    mocked.post(TOKEN_URL, status=400, payload={"error": "invalid_grant",
                                                "error_description": "expired\r\naccess/refresh token " + "x" * 500})
    with pytest.raises(OAuthError) as caught:
        await client.refresh(config(), REFRESH)
    description = caught.value.description
    assert description.startswith("expired access/refresh token xxx")
    assert len(description) == 300
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("invalid_grant (HTTP 400, error=invalid_grant): expired")


def test_classify_failure_for_bearer_requests():
    assert classify_failure(401, "invalid_client", bearer=True) == "invalid_grant"
    assert classify_failure(401, "invalid_client") == "invalid_client"
    assert classify_failure(403, "insufficient_scope", bearer=True) == "invalid_client"
    assert classify_failure(503, None, bearer=True) == "transient"


# -- Retry-After -------------------------------------------------------------------------------------


async def test_retry_after_as_an_http_date_is_relative_to_the_injected_clock(client, mocked):
    mocked.post(TOKEN_URL, status=503, headers={"Retry-After": format_datetime(NOW + timedelta(seconds=90),
                                                                                 usegmt=True)})
    with pytest.raises(OAuthError) as caught:
        await client.refresh(config(), REFRESH)
    assert (caught.value.failure_class, caught.value.retry_after) == ("transient", 90.0)
    assert "retry after 90s" in str(caught.value)


@pytest.mark.parametrize("value, expected", [
    ("0", 0.0),
    ("120", 120.0),
    (" 7 ", 7.0),
    ("1.5", 1.5),
    ("Wed, 01 May 2024 12:02:00 GMT", 120.0),
    ("Wednesday, 01-May-24 12:00:30 GMT", 30.0),  # RFC 850, obsolete but allowed
    ("Wed, 01 May 2024 11:00:00 GMT", 0.0),  # in the past: retry now
    ("-5", None),
    ("soon", None),
    ("", None),
    (None, None),
])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, NOW) == expected


# -- network -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("exception", [
    asyncio.TimeoutError(),
    aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
    aiohttp.ClientConnectionError("Connection reset by peer"),
    aiohttp.ServerDisconnectedError(),
    ConnectionResetError(104, "Connection reset by peer"),
    OSError(-2, "Name or service not known"),
], ids=["asyncio-timeout", "server-timeout", "connection", "disconnected", "reset", "dns"])
async def test_no_http_answer_is_a_network_failure(client, mocked, exception):
    mocked.post(TOKEN_URL, exception=exception)
    with pytest.raises(OAuthError) as caught:
        await client.refresh(config(), REFRESH)
    assert caught.value.failure_class == "network"
    assert caught.value.http_status is None and caught.value.retryable


async def test_a_slow_provider_is_cut_off_by_the_timeout(session, mocked):
    async def slow(url, **kwargs):
        await asyncio.sleep(5)

    mocked.post(TOKEN_URL, callback=slow, payload=token_body())
    client = OAuthClient(session, timeout=0.05, clock=lambda: NOW)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(OAuthError) as caught:
        await client.refresh(config(), REFRESH)
    assert caught.value.failure_class == "network"
    assert "timed out" in caught.value.description
    assert loop.time() - started < 1.0


async def test_an_unmatched_host_is_a_network_failure(client, mocked):
    with pytest.raises(OAuthError) as caught:
        await client.refresh(config(token_url="https://unreachable.example.net/token"), REFRESH)
    assert caught.value.failure_class == "network"


async def test_an_invalid_token_url_is_a_configuration_failure(client):
    # no mock: aiohttp refuses the URL before any connection is attempted
    with pytest.raises(OAuthError) as caught:
        await client.refresh(config(token_url="idp.example.com/token"), REFRESH)
    assert (caught.value.failure_class, caught.value.provider_error) == ("invalid_client", "invalid_url")


# -- revocation --------------------------------------------------------------------------------------


async def test_revoke_without_a_revocation_url_makes_no_request(client, mocked):
    assert await client.revoke(config(revocation_url=None), REFRESH) is False
    assert mocked.requests == {}


async def test_revoke_posts_the_token_with_client_authentication(client, mocked):
    mocked.post(REVOKE_URL, status=200)
    assert await client.revoke(config(), REFRESH) is True
    request = sent(mocked, url=REVOKE_URL)
    assert request["data"] == {"token": REFRESH, "token_type_hint": "refresh_token"}
    assert request["headers"]["Authorization"].startswith("Basic ")


async def test_revoke_an_access_token_with_post_authentication(client, mocked):
    mocked.post(REVOKE_URL, status=200)
    assert await client.revoke(config(client_authentication="client_secret_post"), ACCESS, "access_token") is True
    assert sent(mocked, url=REVOKE_URL)["data"] == {"token": ACCESS, "token_type_hint": "access_token",
                                                    "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}


@pytest.mark.parametrize("status, body", [
    (400, {"error": "unsupported_token_type"}),
    (400, {"error": "invalid_grant"}),
    (401, {"error": "invalid_client"}),
    (404, {}),
])
async def test_revoke_answers_false_on_a_client_error(client, mocked, status, body):
    mocked.post(REVOKE_URL, status=status, payload=body)
    assert await client.revoke(config(), REFRESH) is False


@pytest.mark.parametrize("status, headers, retry_after", [
    (503, {"Retry-After": "60"}, 60.0),
    (500, {}, None),
    (429, {"Retry-After": "2"}, 2.0),
])
async def test_revoke_raises_transient_on_server_errors(client, mocked, status, headers, retry_after):
    mocked.post(REVOKE_URL, status=status, headers=headers)
    with pytest.raises(OAuthError) as caught:
        await client.revoke(config(), REFRESH)
    assert (caught.value.failure_class, caught.value.http_status, caught.value.retry_after) == (
        "transient", status, retry_after)


async def test_revoke_raises_network_when_there_is_no_answer(client, mocked):
    mocked.post(REVOKE_URL, exception=aiohttp.ClientConnectionError("reset"))
    with pytest.raises(OAuthError) as caught:
        await client.revoke(config(), REFRESH)
    assert caught.value.failure_class == "network"


# -- userinfo ----------------------------------------------------------------------------------------


async def test_userinfo_sends_the_bearer_token_and_returns_the_object(client, mocked):
    mocked.get(USERINFO_URL, payload={"sub": "005xx", "email": "ada@example.com"})
    assert await client.userinfo(config(), ACCESS) == {"sub": "005xx", "email": "ada@example.com"}
    request = sent(mocked, "GET", USERINFO_URL)
    assert request["headers"]["Authorization"] == f"Bearer {ACCESS}"
    assert request["timeout"].total == 5.0


async def test_userinfo_url_can_be_given_per_call(client, mocked):
    mocked.get("https://acme.my.salesforce.com/services/oauth2/userinfo", payload={"user_id": "005"})
    assert await client.userinfo(config(userinfo_url=None), ACCESS,
                                 url="https://acme.my.salesforce.com/services/oauth2/userinfo") == {"user_id": "005"}
    with pytest.raises(ValueError):
        await client.userinfo(config(userinfo_url=None), ACCESS)


@pytest.mark.parametrize("status, body, headers, failure_class, provider_error", [
    (401, "", {}, "invalid_grant", None),
    (401, {"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "Request had invalid credentials."}},
     {}, "invalid_grant", "UNAUTHENTICATED"),
    (401, "", {"WWW-Authenticate": 'Bearer realm="example", error="invalid_token", '
                                   'error_description="The access token expired"'}, "invalid_grant", "invalid_token"),
    (403, "", {"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="openid"'},
     "invalid_client", "insufficient_scope"),
    (500, "", {}, "transient", None),
    (200, "<html>welcome</html>", {}, "transient", "invalid_response"),
])
async def test_userinfo_failures(client, mocked, status, body, headers, failure_class, provider_error):
    reply = dict(payload=body) if isinstance(body, dict) else dict(body=body, content_type="text/html")
    mocked.get(USERINFO_URL, status=status, headers=headers, **reply)
    with pytest.raises(OAuthError) as caught:
        await client.userinfo(config(), ACCESS)
    assert (caught.value.failure_class, caught.value.http_status, caught.value.provider_error) == (
        failure_class, status, provider_error)


# -- configuration -----------------------------------------------------------------------------------


def test_config_validates_client_authentication_and_reads_an_integration_payload():
    with pytest.raises(ValueError):
        config(client_authentication="private_key_jwt")
    loaded = OAuthClientConfig.from_mapping({
        "client_id": "abc", "client_secret_fingerprint": "fp_x", "token_url": TOKEN_URL, "revocation_url": None,
        "userinfo_url": USERINFO_URL, "authorize_url": None, "client_authentication": "client_secret_post",
        "scopes": ["a", "b"],
    }, CLIENT_SECRET)
    assert loaded == OAuthClientConfig("abc", CLIENT_SECRET, TOKEN_URL, None, USERINFO_URL, None,
                                       "client_secret_post", ("a", "b"))


# -- canary: secrets never leak ----------------------------------------------------------------------


def test_token_set_and_config_reprs_hold_no_secret():
    tokens = TokenSet(access_token=ACCESS, refresh_token=NEW_REFRESH, token_type="Bearer", expires_at=NOW,
                      scopes=("a",), rotated=True, id_token=ID_TOKEN, raw_extra={"instance_url": "https://x"})
    for text in (str(tokens), repr(tokens), str(config()), repr(config())):
        assert_no_secret(text)
    assert "instance_url" in repr(tokens) and CLIENT_ID in repr(config())


@pytest.mark.parametrize("description", [
    f"refresh token {REFRESH} is expired",
    f"client_secret={CLIENT_SECRET} does not match",
    f"client_secret={quote_plus(CLIENT_SECRET)} does not match",
    f"bad token {REFRESH[:-6]}",  # the provider cut the echo short
    "Authorization: Basic " + base64.b64encode(f"{quote_plus(CLIENT_ID)}:{quote_plus(CLIENT_SECRET)}".encode())
    .decode(),
    "x" * 280 + REFRESH,  # the echo straddles the 300-character limit
], ids=["refresh-token", "client-secret", "urlencoded-secret", "truncated-echo", "basic-header", "at-the-limit"])
async def test_errors_never_hold_a_secret_the_provider_echoes(client, mocked, description):
    mocked.post(TOKEN_URL, status=400, payload={"error": "invalid_grant", "error_description": description})
    with pytest.raises(OAuthError) as caught:
        await client.refresh(config(), REFRESH)
    error = caught.value
    for text in (str(error), repr(error), error.description, *map(str, error.args)):
        assert_no_secret(text)
        assert REFRESH[:20] not in text and CLIENT_SECRET[:20] not in text
    assert "[REDACTED]" in error.description


def test_oauth_error_sanitizes_whatever_builds_it():
    error = OAuthError("transient", http_status=503, provider_error="server_error",
                       description=f"upstream said\n{REFRESH}", retry_after=-3, secrets=(REFRESH, "ab"))
    assert error.description == "upstream said [REDACTED]"
    assert error.retry_after == 0.0
    assert str(error) == "transient (HTTP 503, error=server_error, retry after 0s): upstream said [REDACTED]"
    # values under 4 characters are not secrets: redacting them would garble every message
    assert OAuthError("network", description="a b c", secrets=("b",)).description == "a b c"
    with pytest.raises(ValueError):
        OAuthError("fatal")


async def test_errors_never_hold_a_secret_echoed_as_the_error_code(client, mocked):
    mocked.post(TOKEN_URL, status=401, payload={"error": f"bad {CLIENT_SECRET}", "message": REFRESH})
    with pytest.raises(OAuthError) as caught:
        await client.refresh(config(), REFRESH)
    assert_no_secret(str(caught.value))
    assert_no_secret(repr(caught.value))


async def test_userinfo_errors_never_hold_the_access_token(client, mocked):
    mocked.get(USERINFO_URL, status=401, payload={"error": "invalid_token",
                                                  "error_description": f"token {ACCESS} expired"})
    with pytest.raises(OAuthError) as caught:
        await client.userinfo(config(), ACCESS)
    assert caught.value.failure_class == "invalid_grant"
    assert ACCESS not in str(caught.value) and ACCESS not in repr(caught.value)


async def test_debug_logs_hold_request_facts_but_no_secret(client, mocked, caplog):
    caplog.set_level(logging.DEBUG)
    url = TOKEN_URL + "?tenant=acme-tenant-query"
    mocked.post(url, payload=token_body(refresh_token=NEW_REFRESH, id_token=ID_TOKEN))
    mocked.post(url, status=400, payload={"error": "invalid_grant", "error_description": f"{REFRESH} expired"})
    mocked.post(url, exception=aiohttp.ClientConnectionError(f"reset while sending {REFRESH}"))
    mocked.post(REVOKE_URL, status=200)
    mocked.get(USERINFO_URL, status=401)
    cfg = config(token_url=url)

    await client.refresh(cfg, REFRESH)
    for _ in range(2):
        with pytest.raises(OAuthError):
            await client.refresh(cfg, REFRESH)
    await client.revoke(cfg, REFRESH)
    with pytest.raises(OAuthError):
        await client.userinfo(cfg, ACCESS)

    lines = [record.getMessage() for record in caplog.records if record.name == "service.oauth.client"]
    assert len(lines) == 5
    assert lines[0].startswith(f"oauth refresh: POST {TOKEN_URL} -> 200 in ") and lines[0].endswith("ms (ok)")
    assert lines[1].endswith("(invalid_grant)") and "-> 400" in lines[1]
    assert lines[2].endswith("(network)") and "-> -" in lines[2]
    assert lines[3].endswith("(ok)") and f"POST {REVOKE_URL} -> 200" in lines[3]
    assert lines[4].endswith("(invalid_grant)") and f"GET {USERINFO_URL} -> 401" in lines[4]
    assert "acme-tenant-query" not in caplog.text
    assert_no_secret(caplog.text)
    for record in caplog.records:
        assert_no_secret(repr(record.args))
