"""The OAuth 2.0 client: refresh (RFC 6749 §6), code exchange (§4.1.3), revocation (RFC 7009) and a
userinfo-style health check. A pure I/O adapter: no database, no retries, no scheduling; callers
get a `TokenSet` or a classified `OAuthError` (see service.oauth.errors).

Classification of a failed token-endpoint call, first match wins:

| what happened                                                    | class          |
|------------------------------------------------------------------|----------------|
| no HTTP answer: DNS, connect, TLS, reset, timeout                 | network        |
| 429, 408, any 5xx (whatever the body says)                       | transient (+ Retry-After) |
| error = invalid_grant, invalid_token (also GitHub/HubSpot        | invalid_grant  |
|   `bad_refresh_token`, GitHub `bad_verification_code`,           |                |
|   Slack `invalid_refresh_token`)                                 |                |
| error = invalid_client, unauthorized_client, invalid_request,    | invalid_client |
|   unsupported_grant_type, invalid_scope, insufficient_scope,     |                |
|   redirect_uri_mismatch, incorrect_client_credentials            |                |
| error = temporarily_unavailable, server_error, slow_down         | transient (+ Retry-After) |
| 401 with no (or an unknown) error                                | invalid_grant  |
| 2xx without an access_token (error absent or unknown)            | transient, error `invalid_response` |
| any other status (other 4xx, a 3xx: redirects are not followed)  | invalid_client |

A 5xx is transient even when its body names invalid_grant or invalid_client: an outage must not
end grants or flag integrations. Error codes are matched case-insensitively; when a JSON body has
no `error` but a string `status` (HubSpot: `BAD_REFRESH_TOKEN`), that is the code. A 2xx that
carries an error (GitHub and Slack answer failures with 200) is classified by that error.

Logging: one DEBUG line per request with operation, method, URL without query/credentials, status,
elapsed milliseconds and outcome. Never a body, a header value or a token.
"""

import asyncio
import base64
import functools
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterable, Literal, Mapping, get_args
from urllib.parse import parse_qsl, quote_plus, urlencode

import aiohttp
from yarl import URL

from service.oauth.errors import FailureClass, OAuthError

log = logging.getLogger(__name__)

ClientAuthentication = Literal["client_secret_basic", "client_secret_post"]
TokenTypeHint = Literal["refresh_token", "access_token"]

MAX_RESPONSE_BYTES = 1 << 20

_INVALID_GRANT = frozenset({
    "invalid_grant", "invalid_token", "bad_refresh_token", "bad_verification_code", "invalid_refresh_token",
})
_INVALID_CLIENT = frozenset({
    "invalid_client", "unauthorized_client", "invalid_request", "unsupported_grant_type", "invalid_scope",
    "insufficient_scope", "redirect_uri_mismatch", "incorrect_client_credentials",
})
_TRANSIENT = frozenset({"temporarily_unavailable", "server_error", "slow_down"})

_STANDARD_FIELDS = frozenset({"access_token", "refresh_token", "id_token", "token_type", "expires_in", "scope"})
_SECRET_KEY = re.compile(
    r"token|secret|password|passwd|signature|credential|verifier|assertion|api_?key|(^|_)code$", re.IGNORECASE
)
_SAFE_KEY_SUFFIXES = ("expires_in", "expires_at", "_type")
_DROP = object()


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class OAuthClientConfig:
    """A bring-your-own OAuth app. The client secret stays out of repr()."""

    client_id: str
    client_secret: str = field(repr=False)
    token_url: str
    revocation_url: str | None = None
    userinfo_url: str | None = None
    authorize_url: str | None = None
    client_authentication: ClientAuthentication = "client_secret_basic"
    scopes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.client_authentication not in get_args(ClientAuthentication):
            raise ValueError(
                f"client_authentication must be client_secret_basic or client_secret_post, "
                f"not {self.client_authentication!r}"
            )
        scopes = self.scopes.split() if isinstance(self.scopes, str) else tuple(self.scopes)
        object.__setattr__(self, "scopes", tuple(scopes))

    @classmethod
    def from_mapping(cls, oauth_client: Mapping[str, Any], client_secret: str) -> "OAuthClientConfig":
        """From an integration's `oauth_client` payload (OAuthClientConfigured minus the secret,
        which the caller decrypts); unknown keys such as `client_secret_fingerprint` are ignored."""
        return cls(
            client_id=oauth_client["client_id"],
            client_secret=client_secret,
            token_url=oauth_client["token_url"],
            revocation_url=oauth_client.get("revocation_url"),
            userinfo_url=oauth_client.get("userinfo_url"),
            authorize_url=oauth_client.get("authorize_url"),
            client_authentication=oauth_client.get("client_authentication") or "client_secret_basic",
            scopes=tuple(oauth_client.get("scopes") or ()),
        )


@dataclass(frozen=True)
class TokenSet:
    """A token response. Secrets stay out of repr(); `raw_extra` holds only non-secret fields."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    token_type: str
    expires_at: datetime | None  # aware UTC; None when the response had no usable expires_in
    scopes: tuple[str, ...] | None  # None when the response did not say
    rotated: bool = False  # a new refresh token, different from the one presented
    id_token: str | None = field(default=None, repr=False)
    raw_extra: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    content_type: str
    body: bytes
    too_large: bool = False


# -- pure helpers ---------------------------------------------------------------------------------


def classify_failure(status: int, error: str | None, *, bearer: bool = False) -> FailureClass:
    """The failure class of an HTTP answer (see the module docstring). `bearer`: the request was a
    resource request with an access token, where any 401 means the token is not accepted."""
    if status in (408, 429) or status >= 500:
        return "transient"
    if bearer and status == 401:
        return "invalid_grant"
    code = error.strip().lower() if error else None
    if code in _INVALID_GRANT:
        return "invalid_grant"
    if code in _INVALID_CLIENT:
        return "invalid_client"
    if code in _TRANSIENT:
        return "transient"
    if status == 401:
        return "invalid_grant"
    if 200 <= status < 300:
        return "transient"
    return "invalid_client"


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from `now`: delta-seconds or an HTTP-date; None if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())


@functools.lru_cache(maxsize=256)  # a handful of clients, used on every request
def _basic_credentials(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: each part form-urlencoded, then joined with ':' and base64-encoded."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return base64.b64encode(pair.encode()).decode("ascii")


def _loggable_url(url: str) -> str:
    try:
        return str(URL(url).with_user(None).with_query(None).with_fragment(None))
    except (TypeError, ValueError):
        return "<invalid url>"


def _parse_body(reply: _Reply) -> tuple[dict[str, Any] | None, bool]:
    """(the body as an object, whether it was form-encoded); (None, False) if it is neither."""
    if reply.too_large or not reply.body:
        return None, False
    text = reply.body.decode("utf-8", errors="replace")
    if reply.content_type == "application/x-www-form-urlencoded":
        return dict(parse_qsl(text, keep_blank_values=True)), True
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value, False
    if value is None and reply.content_type == "text/plain" and "=" in text:
        try:
            form = dict(parse_qsl(text.strip(), keep_blank_values=True, strict_parsing=True))
        except ValueError:
            return None, False
        if "access_token" in form or "error" in form:
            return form, True
    return None, False


def _error_fields(payload: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(error code, description) from an error body, tolerating common non-standard shapes."""
    if not payload:
        return None, None
    error = payload.get("error")
    description = payload.get("error_description")
    if isinstance(error, Mapping):  # {"error": {"code": 401, "status": "UNAUTHENTICATED", "message": ...}}
        description = description or error.get("error_description") or error.get("message")
        error = error.get("error") or error.get("status") or error.get("code")
    if error is None and isinstance(payload.get("status"), str):  # HubSpot: {"status": "BAD_REFRESH_TOKEN"}
        error = payload["status"]
    if description is None:
        description = payload.get("message")
    if isinstance(error, (dict, list)) or error == "" or isinstance(error, bool):
        error = None
    if isinstance(description, (dict, list)):
        description = None
    return (None if error is None else str(error)), (None if description is None else str(description))


_AUTH_PARAM = re.compile(r'(error|error_description)\s*=\s*"([^"]*)"', re.IGNORECASE)


def _bearer_challenge(header: str | None) -> tuple[str | None, str | None]:
    """RFC 6750 §3: error and error_description from a WWW-Authenticate: Bearer challenge."""
    if not header:
        return None, None
    params = {name.lower(): value for name, value in _AUTH_PARAM.findall(header)}
    return params.get("error") or None, params.get("error_description") or None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _scopes(value: Any, form: bool) -> tuple[str, ...] | None:
    """Space-separated (RFC 6749 §3.3); commas too in form-encoded (GitHub) answers; a list is
    accepted. None when the response did not say."""
    if value is None:
        return None
    separators = r"[\s,]+" if form else r"\s+"
    if isinstance(value, str):
        parts = re.split(separators, value)
    elif isinstance(value, (list, tuple)):
        parts = [part for item in value if isinstance(item, str) for part in re.split(separators, item)]
    else:
        return None
    return tuple(dict.fromkeys(part for part in parts if part))


def _is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key)) and not key.lower().endswith(_SAFE_KEY_SUFFIXES)


def _clean(value: Any, secrets: tuple[str, ...]) -> Any:
    """`value` without secret-looking keys or any string holding a secret; _DROP if nothing is left."""
    if isinstance(value, Mapping):
        cleaned = {}
        for key, item in value.items():
            if not isinstance(key, str) or _is_secret_key(key):
                continue
            item = _clean(item, secrets)
            if item is not _DROP:
                cleaned[key] = item
        return cleaned
    if isinstance(value, list):
        return [item for item in (_clean(item, secrets) for item in value) if item is not _DROP]
    if isinstance(value, str) and any(secret in value for secret in secrets):
        return _DROP
    return value


def _raw_extra(payload: Mapping[str, Any], secrets: tuple[str, ...]) -> dict[str, Any]:
    extra = {key: value for key, value in payload.items() if key not in _STANDARD_FIELDS}
    return _clean(extra, secrets)


async def _read_limited(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    length = response.content_length
    if length is not None and length <= MAX_RESPONSE_BYTES:
        return await response.read(), False  # the common case: one read, no chunk loop
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            return b"", True
        chunks.append(chunk)
    return b"".join(chunks), False


# -- the client ------------------------------------------------------------------------------------


class OAuthClient:
    """OAuth 2.0 calls over a caller-owned aiohttp session; every call is bounded by `timeout` seconds
    (connect, send and reading the answer). `clock` gives the aware "now" for expires_at and
    HTTP-date Retry-After values."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 10.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._session = session
        self._timeout = float(timeout)
        self._client_timeout = aiohttp.ClientTimeout(total=self._timeout)
        self._clock = clock

    # -- public operations --

    async def refresh(self, config: OAuthClientConfig, refresh_token: str, *, send_scope: bool = False) -> TokenSet:
        """RFC 6749 §6. `scope` is sent only with `send_scope=True` and configured scopes. Without a
        refresh_token in the answer the presented one is kept (rotated=False)."""
        if not refresh_token:
            raise ValueError("refresh_token is required")
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if send_scope and config.scopes:
            form["scope"] = " ".join(config.scopes)
        return await self._token_request("refresh", config, form, (refresh_token,), presented=refresh_token)

    async def exchange_code(
        self, config: OAuthClientConfig, code: str, redirect_uri: str, code_verifier: str | None = None
    ) -> TokenSet:
        """RFC 6749 §4.1.3 (+ RFC 7636 code_verifier)."""
        if not code:
            raise ValueError("code is required")
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if code_verifier:
            form["code_verifier"] = code_verifier
        return await self._token_request("exchange_code", config, form, (code, code_verifier), presented=None)

    async def revoke(
        self, config: OAuthClientConfig, token: str, token_type_hint: TokenTypeHint = "refresh_token"
    ) -> bool:
        """RFC 7009. True when the provider answered 2xx; False without a revocation_url or on a
        4xx/3xx (an invalid token, an unsupported token type, a refusal: nothing more to do).
        Raises OAuthError (network, or transient for 5xx/429/408) when it is worth trying again."""
        if token_type_hint not in get_args(TokenTypeHint):
            raise ValueError("token_type_hint must be refresh_token or access_token")
        if not config.revocation_url:
            return False
        secrets = self._secrets(config, (token,))
        headers, form = self._client_auth(config, {"token": token, "token_type_hint": token_type_hint})
        started = time.perf_counter()
        reply = await self._send("revoke", "POST", config.revocation_url, started, secrets,
                                 headers=headers, data=form, allow_redirects=False)
        if 200 <= reply.status < 300:
            self._log("revoke", "POST", config.revocation_url, reply.status, started, "ok")
            return True
        if classify_failure(reply.status, _error_fields(_parse_body(reply)[0])[0]) == "transient":
            raise self._failure("revoke", "POST", config.revocation_url, reply, started, secrets)
        self._log("revoke", "POST", config.revocation_url, reply.status, started, "not_revoked")
        return False

    async def userinfo(self, config: OAuthClientConfig, access_token: str, url: str | None = None) -> dict[str, Any]:
        """GET `url` (default config.userinfo_url) with the bearer token: the post-import health
        check. A 401 is invalid_grant (the access token is not accepted)."""
        target = url or config.userinfo_url
        if not target:
            raise ValueError("no userinfo URL: pass one or configure userinfo_url")
        if not access_token:
            raise ValueError("access_token is required")
        secrets = self._secrets(config, (access_token,))
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        started = time.perf_counter()
        reply = await self._send("userinfo", "GET", target, started, secrets, headers=headers, allow_redirects=True)
        if 200 <= reply.status < 300:
            payload, was_form = _parse_body(reply)
            if payload is not None and not was_form:
                self._log("userinfo", "GET", target, reply.status, started, "ok")
                return payload
            raise self._failure("userinfo", "GET", target, reply, started, secrets, bearer=True,
                                description="the userinfo endpoint did not answer a JSON object")
        raise self._failure("userinfo", "GET", target, reply, started, secrets, bearer=True)

    # -- internals --

    def _now(self) -> datetime:
        now = self._clock()
        return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)

    @staticmethod
    def _secrets(config: OAuthClientConfig, values: Iterable[str | None]) -> tuple[str, ...]:
        candidates = (*values, config.client_secret, _basic_credentials(config.client_id, config.client_secret))
        return tuple(value for value in candidates if value)

    @staticmethod
    def _client_auth(config: OAuthClientConfig, form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        headers = {"Accept": "application/json"}
        if config.client_authentication == "client_secret_post":
            form = {**form, "client_id": config.client_id, "client_secret": config.client_secret}
        else:
            headers["Authorization"] = f"Basic {_basic_credentials(config.client_id, config.client_secret)}"
        return headers, form

    async def _token_request(
        self,
        operation: str,
        config: OAuthClientConfig,
        form: dict[str, str],
        request_secrets: tuple[str | None, ...],
        *,
        presented: str | None,
    ) -> TokenSet:
        secrets = self._secrets(config, request_secrets)
        headers, form = self._client_auth(config, form)
        url = config.token_url
        started = time.perf_counter()
        reply = await self._send(operation, "POST", url, started, secrets,
                                 headers=headers, data=form, allow_redirects=False)
        payload, was_form = _parse_body(reply)
        if not 200 <= reply.status < 300:
            raise self._failure(operation, "POST", url, reply, started, secrets, payload=payload)
        access_token = payload.get("access_token") if payload else None
        if not isinstance(access_token, str) or not access_token:
            description = None
            if reply.too_large:
                description = f"the token endpoint answered more than {MAX_RESPONSE_BYTES} bytes"
            elif payload is None:
                description = "the token endpoint answered without a readable JSON or form body"
            elif _error_fields(payload)[0] is None:
                description = "the token endpoint answered without an access_token"
            raise self._failure(operation, "POST", url, reply, started, secrets, payload=payload,
                                description=description)
        token_set = self._token_set(payload, was_form, presented, secrets)
        self._log(operation, "POST", url, reply.status, started, "ok")
        return token_set

    def _token_set(
        self, payload: Mapping[str, Any], form: bool, presented: str | None, secrets: tuple[str, ...]
    ) -> TokenSet:
        new_refresh = payload.get("refresh_token")
        if isinstance(new_refresh, str) and new_refresh:
            refresh_token, rotated = new_refresh, presented is not None and new_refresh != presented
        else:
            refresh_token, rotated = presented, False
        id_token = payload.get("id_token") if isinstance(payload.get("id_token"), str) else None
        seconds = _seconds(payload.get("expires_in"))
        token_type = payload.get("token_type")
        all_secrets = tuple(
            value for value in (*secrets, payload["access_token"], refresh_token, id_token) if value
        )
        return TokenSet(
            access_token=payload["access_token"],
            refresh_token=refresh_token,
            token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
            expires_at=None if seconds is None else self._now() + timedelta(seconds=seconds),
            scopes=_scopes(payload.get("scope"), form),
            rotated=rotated,
            id_token=id_token or None,
            raw_extra=_raw_extra(payload, all_secrets),
        )

    async def _send(
        self,
        operation: str,
        method: str,
        url: str,
        started: float,
        secrets: tuple[str, ...],
        *,
        headers: dict[str, str],
        data: dict[str, str] | None = None,
        allow_redirects: bool,
    ) -> _Reply:
        body_bytes = None
        if data is not None:  # encoded here: aiohttp's FormData costs several times more per request
            body_bytes = urlencode(data).encode()
            headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session.request(
                    method,
                    url,
                    data=body_bytes,
                    headers=headers,
                    timeout=self._client_timeout,
                    allow_redirects=allow_redirects,
                    raise_for_status=False,
                ) as response:
                    body, too_large = await _read_limited(response)
                    return _Reply(response.status, response.headers, response.content_type, body, too_large)
        except aiohttp.InvalidURL:
            self._log(operation, method, url, None, started, "invalid_client")
            raise OAuthError("invalid_client", provider_error="invalid_url",
                             description=f"the {operation} URL is not a valid http(s) URL") from None
        except aiohttp.TooManyRedirects:
            self._log(operation, method, url, None, started, "invalid_client")
            raise OAuthError("invalid_client", provider_error="too_many_redirects",
                             description=f"the {operation} URL redirects too often") from None
        except TimeoutError:  # asyncio.TimeoutError and aiohttp.ServerTimeoutError included
            self._log(operation, method, url, None, started, "network")
            raise OAuthError("network", description=f"timed out after {self._timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as error:
            self._log(operation, method, url, None, started, "network")
            detail = str(error)
            description = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
            raise OAuthError("network", description=description, secrets=secrets) from None

    def _failure(
        self,
        operation: str,
        method: str,
        url: str,
        reply: _Reply,
        started: float,
        secrets: tuple[str, ...],
        *,
        payload: Mapping[str, Any] | None = None,
        bearer: bool = False,
        description: str | None = None,
    ) -> OAuthError:
        if payload is None:
            payload, _ = _parse_body(reply)
        error, provider_description = _error_fields(payload)
        if bearer:
            challenge_error, challenge_description = _bearer_challenge(reply.headers.get("WWW-Authenticate"))
            error = challenge_error or error
            provider_description = challenge_description or provider_description
        failure_class = classify_failure(reply.status, error, bearer=bearer)
        if error is None and 200 <= reply.status < 300:
            error = "invalid_response"
        retry_after = None
        if failure_class == "transient":
            retry_after = parse_retry_after(reply.headers.get("Retry-After"), self._now())
        self._log(operation, method, url, reply.status, started, failure_class)
        return OAuthError(
            failure_class,
            http_status=reply.status,
            provider_error=error,
            description=description or provider_description,
            retry_after=retry_after,
            secrets=secrets,
        )

    @staticmethod
    def _log(operation: str, method: str, url: str, status: int | None, started: float, outcome: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            elapsed_ms = (time.perf_counter() - started) * 1000
            log.debug("oauth %s: %s %s -> %s in %.0f ms (%s)", operation, method, _loggable_url(url),
                      "-" if status is None else status, elapsed_ms, outcome)
