"""An OAuth 2.0 provider simulator: a real aiohttp server for integration tests and benchmarks.

linkledger keeps OAuth tokens alive; to prove that it does so correctly (one refresh per grant,
rotation persisted before use, failure classes honoured) it needs a provider that behaves like the
real ones and counts what it saw. This is that provider. It is not a mock: clients talk HTTP to it.

In process::

    async with ProviderSimulator(clock=FakeClock(), seed=1) as sim:   # started on a free port
        sim.add_client("app", "s3cret", rotate_refresh_tokens=True, reuse_detection=True)
        grant = sim.issue_grant("app", scopes=("api",), subject="user-1")
        ...  # POST sim.token_url with grant_type=refresh_token ...
        assert sim.counter("max_concurrent_refreshes_per_grant") <= 1

As a process (steered through ``/_control/...``, see :class:`SimulatorProcess`)::

    python -m scripts.simulator --port 8765 --client app:s3cret [--seed 1]

prints one JSON line ``{"event": "ready", "url": "http://127.0.0.1:8765"}`` once it listens.

Endpoints
---------
``GET  /authorize``   response_type=code, client_id, redirect_uri, state, scope, login_hint (becomes
                      ``sub``), code_challenge (+ code_challenge_method S256 or plain). Consents at
                      once: 302 to ``redirect_uri?code=...&state=...``. Unknown client or a redirect
                      URI the client did not register: 400 JSON, no redirect (RFC 6749 §4.1.2.1).
``POST /token``       grant_type=authorization_code | refresh_token. Client authentication by HTTP
                      Basic (id and secret form-urlencoded, RFC 6749 §2.3.1), by form fields, or
                      ``none`` (client_id only) when the client allows it.
``POST /revoke``      RFC 7009. A refresh token revokes its whole grant, an access token only itself;
                      unknown tokens answer 200.
``GET  /userinfo``    Bearer access token: 200 {"sub", "grant_id", "client_id", "scope"} or 401.
``GET  /.well-known/oauth-authorization-server``  RFC 8414 metadata.
``/_control/...``     health, counters, failures, clients, grants, clock (see ``_control_routes``).

Semantics worth knowing
-----------------------
* Refresh with rotation on: a new ``sim_rt_`` token is returned and the presented one becomes
  rotated-out. Presenting a rotated-out token with reuse detection on revokes the whole grant and
  answers 400 ``invalid_grant`` / "refresh token reuse detected"; with reuse detection off it answers
  400 ``invalid_grant`` and the grant lives on. Rotation off: the same refresh token stays valid and
  the response has no ``refresh_token``.
* Issuing a new access token does not invalidate older ones (they expire by their TTL), except that
  each grant remembers at most ``token_history`` access tokens and rotated-out refresh tokens (memory
  stays bounded in long benchmarks; a forgotten token is simply unknown).
* An authorization code is single use and consumed by any exchange attempt, successful or not.
  Replaying a code that was exchanged successfully revokes the grant it produced (RFC 6749 §4.1.2).
* Failure injection applies to ``/token`` only (latency applies to every non-control endpoint).
  For a refresh, the request counts as in flight for its grant from the moment the refresh token
  is recognised — before latency, injected failures and client authentication — until the answer
  is ready. That is what ``max_concurrent_refreshes_per_grant`` measures.
* Requests are never logged above DEBUG; access logging is off.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus

from aiohttp import web
from yarl import URL

log = logging.getLogger("linkledger.simulator")

__all__ = [
    "COUNTER_NAMES",
    "FakeClock",
    "FailureConfig",
    "ProviderSimulator",
    "SimulatorProcess",
    "main",
]

#: Counters kept per client and in total. ``max_concurrent_refreshes_per_grant`` is a maximum, not a
#: sum: the largest number of refresh requests for one grant that were in flight at the same time.
COUNTER_NAMES: tuple[str, ...] = (
    "token_requests",  # every POST /token
    "refresh_requests",  # POST /token with grant_type=refresh_token (whatever the answer)
    "successful_refreshes",  # 200 answers to those
    "rotations",  # refreshes that issued a new refresh token
    "reuse_detected",  # rotated-out refresh token presented with reuse detection on
    "grants_revoked",  # grants revoked (reuse, /revoke, code replay, revoke_grant())
    "invalid_grant_responses",  # 400 invalid_grant answers from /token (injected ones included)
    "invalid_client_responses",  # 401 invalid_client answers from /token and /revoke (injected included)
    "injected_errors",  # answers caused by failure injection other than 429: 503s, invalid_client, invalid_grant
    "rate_limited",  # injected 429 answers
    "code_exchanges",  # successful authorization_code exchanges
    "authorizations",  # codes handed out by /authorize
    "revocation_requests",  # POST /revoke from an authenticated client
    "userinfo_requests",  # every /userinfo request
    "userinfo_unauthorized",  # 401 answers from /userinfo
    "overlapping_refreshes",  # refreshes that began while another for the same grant was in flight
    "max_concurrent_refreshes_per_grant",
)

_MAX_COUNTER = "max_concurrent_refreshes_per_grant"
_JSON = "application/json"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PKCE_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")


class FakeClock:
    """A clock for tests: ``ProviderSimulator(clock=FakeClock())``, then ``clock.advance(3601)``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass(frozen=True)
class FailureConfig:
    """What ``/token`` does wrong on purpose. See :meth:`ProviderSimulator.set_failures`."""

    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after: int = 1
    latency_ms: float | tuple[float, float] = 0
    outage: bool = False
    invalid_grant_for: frozenset[str] = frozenset()
    invalid_client: bool = False

    def __post_init__(self) -> None:
        for name in ("error_rate", "rate_limit_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a fraction between 0 and 1, not {value!r}")
        if self.error_rate + self.rate_limit_rate > 1.0 + 1e-9:
            raise ValueError("error_rate + rate_limit_rate must not exceed 1")
        if not (isinstance(self.retry_after, int) and self.retry_after >= 0):
            raise ValueError(f"retry_after must be a non-negative integer, not {self.retry_after!r}")
        latency = self.latency_ms
        if isinstance(latency, (list, tuple)):
            if len(latency) != 2 or not 0 <= latency[0] <= latency[1]:
                raise ValueError(f"latency_ms range must be (min, max) with 0 <= min <= max, not {latency!r}")
            object.__setattr__(self, "latency_ms", (float(latency[0]), float(latency[1])))
        elif not (isinstance(latency, (int, float)) and latency >= 0):
            raise ValueError(f"latency_ms must be >= 0 or a (min, max) pair, not {latency!r}")
        if isinstance(self.invalid_grant_for, str):
            raise ValueError("invalid_grant_for must be a collection of grant ids, not one string")
        object.__setattr__(self, "invalid_grant_for", frozenset(self.invalid_grant_for))

    @property
    def active(self) -> bool:
        latency = self.latency_ms
        has_latency = latency[1] > 0 if isinstance(latency, tuple) else latency > 0
        return bool(self.error_rate or self.rate_limit_rate or has_latency or self.outage
                    or self.invalid_grant_for or self.invalid_client)

    def delay(self, rng: random.Random) -> float:
        """Seconds to wait before answering."""
        latency = self.latency_ms
        if isinstance(latency, tuple):
            return rng.uniform(latency[0], latency[1]) / 1000.0
        return latency / 1000.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "error_rate": self.error_rate,
            "rate_limit_rate": self.rate_limit_rate,
            "retry_after": self.retry_after,
            "latency_ms": list(self.latency_ms) if isinstance(self.latency_ms, tuple) else self.latency_ms,
            "outage": self.outage,
            "invalid_grant_for": sorted(self.invalid_grant_for),
            "invalid_client": self.invalid_client,
        }


# ----------------------------------------------------------------------------------------- state


@dataclass(eq=False)
class _Client:
    client_id: str
    secret: str
    access_token_ttl: int
    rotate_refresh_tokens: bool
    reuse_detection: bool
    auth_methods: frozenset[str]
    redirect_uris: frozenset[str] | None
    counters: dict[str, int]


@dataclass(eq=False, slots=True)
class _Grant:
    grant_id: str
    client: _Client
    subject: str
    scopes: tuple[str, ...]
    created_at: float
    revoked: bool = False
    refresh_token: _RefreshToken | None = None
    in_flight: int = 0
    access_history: deque = field(default_factory=deque)
    rotated_history: deque = field(default_factory=deque)


@dataclass(eq=False, slots=True)
class _RefreshToken:
    value: str
    grant: _Grant
    rotated: bool = False


@dataclass(eq=False, slots=True)
class _AccessToken:
    value: str
    grant: _Grant
    expires_at: float
    scope: str
    revoked: bool = False


@dataclass(eq=False, slots=True)
class _Code:
    value: str
    client: _Client
    redirect_uri: str
    scopes: tuple[str, ...]
    subject: str
    challenge: str | None
    challenge_method: str
    expires_at: float


@dataclass(slots=True)
class _Credentials:
    """Client credentials as presented, before they are checked."""

    client_id: str | None
    secret: str | None
    method: str | None  # client_secret_basic | client_secret_post | none
    error: str | None  # why they are unusable as presented (invalid_request / invalid_client)
    basic: bool


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=_JSON, headers=headers)


def _oauth_error(status: int, error: str, description: str | None = None,
                 headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": error}
    if description:
        body["error_description"] = description
    merged = dict(_NO_STORE)
    if headers:
        merged.update(headers)
    return _json_response(status, body, merged)


def _parse_form(raw: bytes) -> dict[str, str] | None:
    """application/x-www-form-urlencoded body -> dict; None if malformed or a parameter repeats."""
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            return None  # RFC 6749 §3.2: parameters MUST NOT be included more than once
        form[key] = value
    return form


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class ProviderSimulator:
    """An OAuth 2.0 authorization server with per-client behaviour, failure injection and counters.

    ``clock`` returns the current time in seconds (default :func:`time.time`); ``seed`` seeds the
    :class:`random.Random` behind failure injection and latency ranges (tokens themselves come from
    :mod:`secrets`). ``token_history`` bounds the access tokens and rotated-out refresh tokens
    remembered per grant. All state lives in this object and is touched only from the event loop
    the server runs on.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None, seed: int | None = None,
                 token_history: int = 1000, code_ttl: int = 600) -> None:
        self._clock = clock or time.time
        self._clock_offset = 0.0
        self.random = random.Random(seed)
        self._token_history = max(1, int(token_history))
        self._code_ttl = code_ttl

        self._clients: dict[str, _Client] = {}
        self._grants: dict[str, _Grant] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._codes: dict[str, _Code] = {}
        self._used_codes: dict[str, str] = {}  # code -> grant id it produced

        self._total: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._grant_stats: dict[str, dict[str, Any]] = {}

        self._default_failures: FailureConfig | None = None
        self._client_failures: dict[str, FailureConfig] = {}

        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    # ------------------------------------------------------------------------------ lifecycle

    def create_app(self) -> web.Application:
        """An aiohttp application serving this simulator (to embed, or to run with a TestServer)."""
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/authorize", self._handle_authorize)
        app.router.add_post("/token", self._handle_token)
        app.router.add_post("/revoke", self._handle_revoke)
        app.router.add_get("/userinfo", self._handle_userinfo)
        app.router.add_post("/userinfo", self._handle_userinfo)
        app.router.add_get("/.well-known/oauth-authorization-server", self._handle_metadata)
        self._control_routes(app)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); returns the base URL, e.g. ``http://127.0.0.1:41234``."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        runner = web.AppRunner(self.create_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"
        log.info("OAuth provider simulator listening on %s", self.url)
        return self.url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> ProviderSimulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _endpoint(self, path: str) -> str:
        if self.url is None:
            raise RuntimeError("simulator not started")
        return self.url + path

    @property
    def token_url(self) -> str:
        return self._endpoint("/token")

    @property
    def authorize_url(self) -> str:
        return self._endpoint("/authorize")

    @property
    def revoke_url(self) -> str:
        return self._endpoint("/revoke")

    @property
    def userinfo_url(self) -> str:
        return self._endpoint("/userinfo")

    # ------------------------------------------------------------------------------ time

    def now(self) -> float:
        return self._clock() + self._clock_offset

    def advance_clock(self, seconds: float) -> float:
        """Move simulated time forward (on top of whatever clock was injected); returns the new now."""
        self._clock_offset += float(seconds)
        return self.now()

    # ------------------------------------------------------------------------------ clients and grants

    def add_client(self, client_id: str, client_secret: str, *, access_token_ttl: int = 3600,
                   rotate_refresh_tokens: bool = True, reuse_detection: bool = True,
                   auth_methods: Iterable[str] = ("client_secret_basic", "client_secret_post"),
                   redirect_uris: Iterable[str] | None = None) -> None:
        """Register (or reconfigure in place) an OAuth client.

        ``auth_methods`` may contain ``client_secret_basic``, ``client_secret_post`` and ``none``
        (a public client that sends only its client_id). ``redirect_uris`` None accepts any.
        """
        methods = frozenset(auth_methods)
        unknown = methods - {"client_secret_basic", "client_secret_post", "none"}
        if unknown or not methods:
            raise ValueError(f"unsupported auth methods: {sorted(unknown) or 'none given'}")
        if not client_id:
            raise ValueError("client_id must not be empty")
        if int(access_token_ttl) <= 0:
            raise ValueError("access_token_ttl must be positive")
        uris = frozenset(redirect_uris) if redirect_uris is not None else None
        existing = self._clients.get(client_id)
        if existing is not None:
            existing.secret = client_secret
            existing.access_token_ttl = int(access_token_ttl)
            existing.rotate_refresh_tokens = bool(rotate_refresh_tokens)
            existing.reuse_detection = bool(reuse_detection)
            existing.auth_methods = methods
            existing.redirect_uris = uris
            return
        self._clients[client_id] = _Client(client_id, client_secret, int(access_token_ttl),
                                           bool(rotate_refresh_tokens), bool(reuse_detection), methods, uris,
                                           dict.fromkeys(COUNTER_NAMES, 0))

    @property
    def client_ids(self) -> list[str]:
        return list(self._clients)

    def issue_grant(self, client_id: str, *, scopes: Iterable[str] = ("api",), subject: str = "user-1",
                    expires_in: int | None = None) -> dict[str, Any]:
        """Create a grant as if the user had consented; returns its tokens.

        ``{"access_token", "refresh_token", "expires_in", "grant_id", "token_type", "scope",
        "expires_at"}`` — ``expires_at`` is ISO-8601 UTC on the simulator's clock. ``expires_in``
        overrides the client's access-token TTL for this first access token only (0 or negative
        gives one that is already expired).
        """
        client = self._clients.get(client_id)
        if client is None:
            raise KeyError(f"unknown client {client_id!r}")
        grant = self._new_grant(client, tuple(scopes), subject)
        ttl = client.access_token_ttl if expires_in is None else int(expires_in)
        access = self._issue_access_token(grant, " ".join(grant.scopes), ttl)
        return {
            "access_token": access.value,
            "refresh_token": grant.refresh_token.value,
            "expires_in": ttl,
            "grant_id": grant.grant_id,
            "token_type": "Bearer",
            "scope": access.scope,
            "expires_at": datetime.fromtimestamp(access.expires_at, UTC).isoformat().replace("+00:00", "Z"),
        }

    def revoke_grant(self, grant_id: str) -> bool:
        """Revoke a grant and every token of it (as the user would in the provider's UI)."""
        grant = self._grants.get(grant_id)
        if grant is None:
            raise KeyError(f"unknown grant {grant_id!r}")
        return self._revoke_grant(grant)

    def grant_info(self, grant_id: str) -> dict[str, Any]:
        grant = self._grants.get(grant_id)
        if grant is None:
            raise KeyError(f"unknown grant {grant_id!r}")
        return {
            "grant_id": grant.grant_id,
            "client_id": grant.client.client_id,
            "subject": grant.subject,
            "scope": " ".join(grant.scopes),
            "revoked": grant.revoked,
            "in_flight_refreshes": grant.in_flight,
        }

    def grant_of(self, token: str) -> str | None:
        """The grant id an access or refresh token (or a used authorization code) belongs to."""
        record = self._refresh_tokens.get(token) or self._access_tokens.get(token)
        if record is not None:
            return record.grant.grant_id
        return self._used_codes.get(token)

    def _new_grant(self, client: _Client, scopes: tuple[str, ...], subject: str) -> _Grant:
        grant = _Grant("sim_grant_" + secrets.token_hex(8), client, subject, scopes, self.now())
        self._grants[grant.grant_id] = grant
        refresh = _RefreshToken("sim_rt_" + secrets.token_urlsafe(32), grant)
        self._refresh_tokens[refresh.value] = refresh
        grant.refresh_token = refresh
        return grant

    def _issue_access_token(self, grant: _Grant, scope: str, ttl: int) -> _AccessToken:
        access = _AccessToken("sim_at_" + secrets.token_urlsafe(24), grant, self.now() + ttl, scope)
        self._access_tokens[access.value] = access
        history = grant.access_history
        history.append(access.value)
        if len(history) > self._token_history:
            self._access_tokens.pop(history.popleft(), None)
        return access

    def _rotate(self, grant: _Grant, old: _RefreshToken) -> _RefreshToken:
        old.rotated = True
        history = grant.rotated_history
        history.append(old.value)
        if len(history) > self._token_history:
            self._refresh_tokens.pop(history.popleft(), None)
        new = _RefreshToken("sim_rt_" + secrets.token_urlsafe(32), grant)
        self._refresh_tokens[new.value] = new
        grant.refresh_token = new
        return new

    def _revoke_grant(self, grant: _Grant) -> bool:
        if grant.revoked:
            return False
        grant.revoked = True
        self._inc(grant.client.counters, "grants_revoked")
        return True

    # ------------------------------------------------------------------------------ failures

    def set_failures(self, client_id: str | None = None, *, error_rate: float = 0.0, rate_limit_rate: float = 0.0,
                     retry_after: int = 1, latency_ms: float | tuple[float, float] = 0, outage: bool = False,
                     invalid_grant_for: Iterable[str] = (), invalid_client: bool = False) -> FailureConfig:
        """Replace the failure configuration of one client (or the default for all clients).

        A client-specific configuration wins over the default entirely (no field-by-field merge).
        Every argument left out returns to "no failure". ``error_rate``: fraction of /token requests
        answered 503; ``rate_limit_rate``: fraction answered 429 with ``Retry-After: retry_after``
        (the two are drawn from one random number, so both fractions hold exactly); ``latency_ms``:
        added to every response, a number or a ``(min, max)`` range; ``outage``: every /token answers
        503; ``invalid_grant_for``: refreshes of these grant ids answer invalid_grant (after client
        authentication); ``invalid_client``: every /token answers 401 invalid_client.
        """
        if client_id is not None and client_id not in self._clients:
            raise ValueError(f"unknown client {client_id!r}")
        config = FailureConfig(error_rate=error_rate, rate_limit_rate=rate_limit_rate, retry_after=retry_after,
                               latency_ms=latency_ms, outage=outage, invalid_grant_for=invalid_grant_for,
                               invalid_client=invalid_client)
        if client_id is None:
            self._default_failures = config if config.active else None
        else:
            self._client_failures[client_id] = config  # kept even if inactive: it shields from the default
        return config

    def reset_failures(self, client_id: str | None = None) -> None:
        """No failures any more (for everyone, or just drop one client's own configuration)."""
        if client_id is None:
            self._default_failures = None
            self._client_failures.clear()
        else:
            self._client_failures.pop(client_id, None)

    def failures(self) -> dict[str, Any]:
        return {
            "default": (self._default_failures or FailureConfig()).as_dict(),
            "clients": {cid: cfg.as_dict() for cid, cfg in self._client_failures.items()},
        }

    def _failures_for(self, client_id: str | None) -> FailureConfig | None:
        if client_id is not None and self._client_failures:
            config = self._client_failures.get(client_id)
            if config is not None:
                return config if config.active else None
        return self._default_failures

    async def _delay(self, failures: FailureConfig | None) -> None:
        if failures is not None and failures.latency_ms:
            await asyncio.sleep(failures.delay(self.random))

    # ------------------------------------------------------------------------------ counters

    def _inc(self, client_counters: dict[str, int] | None, name: str) -> None:
        self._total[name] += 1
        if client_counters is not None:
            client_counters[name] += 1

    def counters(self, *, client_id: str | None = None, include_grants: bool = True) -> dict[str, Any]:
        """A snapshot: ``{"total": {...}, "clients": {id: {...}}, "grants": {grant_id: {...}}}``.

        Per-grant entries (only grants refreshed since the last reset) hold ``client_id``,
        ``refresh_requests``, ``successful_refreshes`` and ``max_concurrent_refreshes``.
        ``client_id`` narrows clients and grants to one client.
        """
        clients = {cid: dict(c.counters) for cid, c in self._clients.items()
                   if client_id is None or cid == client_id}
        snapshot: dict[str, Any] = {"total": dict(self._total), "clients": clients}
        if include_grants:
            snapshot["grants"] = {gid: dict(stats) for gid, stats in self._grant_stats.items()
                                  if client_id is None or stats["client_id"] == client_id}
        return snapshot

    def counter(self, name: str, client_id: str | None = None) -> int:
        """One counter, in total or for one client."""
        if name not in self._total:
            raise KeyError(f"unknown counter {name!r}; known: {', '.join(COUNTER_NAMES)}")
        if client_id is None:
            return self._total[name]
        return self._clients[client_id].counters[name]

    def grant_counters(self, grant_id: str) -> dict[str, Any]:
        """Refresh figures for one grant since the last reset (zeros if it was not refreshed)."""
        stats = self._grant_stats.get(grant_id)
        if stats is None:
            grant = self._grants.get(grant_id)
            if grant is None:
                raise KeyError(f"unknown grant {grant_id!r}")
            return {"client_id": grant.client.client_id, "refresh_requests": 0, "successful_refreshes": 0,
                    "max_concurrent_refreshes": 0}
        return dict(stats)

    def reset_counters(self) -> None:
        for name in self._total:
            self._total[name] = 0
        for client in self._clients.values():
            for name in client.counters:
                client.counters[name] = 0
        self._grant_stats.clear()

    def _refresh_started(self, grant: _Grant) -> None:
        grant.in_flight += 1
        n = grant.in_flight
        stats = self._grant_stats.get(grant.grant_id)
        if stats is None:
            stats = self._grant_stats[grant.grant_id] = {
                "client_id": grant.client.client_id, "refresh_requests": 0, "successful_refreshes": 0,
                "max_concurrent_refreshes": 0}
        stats["refresh_requests"] += 1
        if n > stats["max_concurrent_refreshes"]:
            stats["max_concurrent_refreshes"] = n
        client_counters = grant.client.counters
        if n > 1:
            self._inc(client_counters, "overlapping_refreshes")
            if log.isEnabledFor(logging.DEBUG):
                log.debug("grant %s: %d refreshes in flight at once", grant.grant_id, n)
        if n > client_counters[_MAX_COUNTER]:
            client_counters[_MAX_COUNTER] = n
        if n > self._total[_MAX_COUNTER]:
            self._total[_MAX_COUNTER] = n

    # ------------------------------------------------------------------------------ client authentication

    @staticmethod
    def _credentials(authorization: str | None, form: dict[str, str]) -> _Credentials:
        form_id = form.get("client_id")
        form_secret = form.get("client_secret")
        if authorization:
            scheme, _, encoded = authorization.partition(" ")
            if scheme.lower() != "basic":
                return _Credentials(form_id, None, None, "invalid_client", False)
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return _Credentials(form_id, None, None, "invalid_client", True)
            raw_id, colon, raw_secret = decoded.partition(":")
            if not colon:
                return _Credentials(form_id, None, None, "invalid_client", True)
            # RFC 6749 §2.3.1: id and secret are form-urlencoded before being joined by ":"
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            if form_secret is not None:
                return _Credentials(client_id, None, None, "invalid_request", True)  # two methods at once
            if form_id is not None and form_id != client_id:
                return _Credentials(client_id, None, None, "invalid_client", True)
            return _Credentials(client_id, secret, "client_secret_basic", None, True)
        if form_secret is not None:
            return _Credentials(form_id, form_secret, "client_secret_post", None, False)
        if form_id is not None:
            return _Credentials(form_id, None, "none", None, False)
        return _Credentials(None, None, None, "invalid_client", False)

    def _authenticate(self, creds: _Credentials) -> tuple[_Client | None, web.Response | None]:
        client = self._clients.get(creds.client_id) if creds.client_id is not None else None
        if creds.error == "invalid_request":
            return None, _oauth_error(400, "invalid_request", "more than one client authentication method used")
        ok = (creds.error is None and client is not None and creds.method in client.auth_methods
              and (creds.method == "none"
                   or hmac.compare_digest(creds.secret.encode("utf-8"), client.secret.encode("utf-8"))))
        if ok:
            return client, None
        self._inc(client.counters if client is not None else None, "invalid_client_responses")
        return None, self._invalid_client(creds.basic)

    @staticmethod
    def _invalid_client(basic: bool, description: str = "client authentication failed") -> web.Response:
        headers = {"WWW-Authenticate": 'Basic realm="simulator"'} if basic else None
        return _oauth_error(401, "invalid_client", description, headers)

    def _invalid_grant(self, client_counters: dict[str, int] | None, description: str) -> web.Response:
        self._inc(client_counters, "invalid_grant_responses")
        return _oauth_error(400, "invalid_grant", description)

    # ------------------------------------------------------------------------------ /token

    async def _handle_token(self, request: web.Request) -> web.Response:
        form = _parse_form(await request.read())
        if form is None:
            self._total["token_requests"] += 1
            return _oauth_error(400, "invalid_request", "malformed or repeated form parameters")
        creds = self._credentials(request.headers.get("Authorization"), form)
        claimed = self._clients.get(creds.client_id) if creds.client_id is not None else None
        claimed_counters = claimed.counters if claimed is not None else None
        self._inc(claimed_counters, "token_requests")

        grant_type = form.get("grant_type")
        grant: _Grant | None = None
        if grant_type == "refresh_token":
            self._inc(claimed_counters, "refresh_requests")
            presented = self._refresh_tokens.get(form.get("refresh_token") or "")
            if presented is not None:
                grant = presented.grant
                self._refresh_started(grant)
        try:
            failures = self._failures_for(creds.client_id)
            if failures is not None:
                injected = await self._inject(failures, claimed_counters)
                if injected is not None:
                    return injected
            client, error = self._authenticate(creds)
            if error is not None:
                return error
            if grant_type == "refresh_token":
                return self._refresh(client, form, failures)
            if grant_type == "authorization_code":
                return self._exchange_code(client, form)
            if not grant_type:
                return _oauth_error(400, "invalid_request", "grant_type is required")
            return _oauth_error(400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
        finally:
            if grant is not None:
                grant.in_flight -= 1

    async def _inject(self, failures: FailureConfig, counters: dict[str, int] | None) -> web.Response | None:
        if failures.latency_ms:
            await asyncio.sleep(failures.delay(self.random))
        if failures.outage:
            self._inc(counters, "injected_errors")
            return _oauth_error(503, "temporarily_unavailable", "injected outage")
        if failures.invalid_client:
            self._inc(counters, "injected_errors")
            self._inc(counters, "invalid_client_responses")
            return self._invalid_client(False, "injected invalid_client")
        if failures.rate_limit_rate or failures.error_rate:
            draw = self.random.random()
            if draw < failures.rate_limit_rate:
                self._inc(counters, "rate_limited")
                return _oauth_error(429, "rate_limit_exceeded", "injected rate limit",
                                    {"Retry-After": str(failures.retry_after)})
            if draw < failures.rate_limit_rate + failures.error_rate:
                self._inc(counters, "injected_errors")
                return _oauth_error(503, "temporarily_unavailable", "injected error")
        return None

    def _token_response(self, access: _AccessToken, refresh: str | None) -> web.Response:
        body = {"access_token": access.value, "token_type": "Bearer",
                "expires_in": max(0, int(round(access.expires_at - self.now()))), "scope": access.scope}
        if refresh is not None:
            body["refresh_token"] = refresh
        return _json_response(200, body, _NO_STORE)

    def _requested_scope(self, form: dict[str, str], allowed: tuple[str, ...]) -> str | None:
        """The scope string for a new access token, or None if more was asked than was granted."""
        requested = form.get("scope")
        if not requested:
            return " ".join(allowed)
        wanted = requested.split()
        if not set(wanted) <= set(allowed):
            return None
        return " ".join(dict.fromkeys(wanted))

    def _refresh(self, client: _Client, form: dict[str, str], failures: FailureConfig | None) -> web.Response:
        counters = client.counters
        value = form.get("refresh_token")
        if not value:
            return _oauth_error(400, "invalid_request", "refresh_token is required")
        presented = self._refresh_tokens.get(value)
        if presented is None:
            return self._invalid_grant(counters, "unknown refresh token")
        grant = presented.grant
        if grant.client is not client:
            return self._invalid_grant(counters, "refresh token was issued to another client")
        if grant.revoked:
            return self._invalid_grant(counters, "grant has been revoked")
        if presented.rotated:
            if client.reuse_detection:
                self._inc(counters, "reuse_detected")
                self._revoke_grant(grant)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("grant %s: rotated-out refresh token reused; grant revoked", grant.grant_id)
                return self._invalid_grant(counters, "refresh token reuse detected")
            return self._invalid_grant(counters, "refresh token has been rotated")
        if failures is not None and grant.grant_id in failures.invalid_grant_for:
            self._inc(counters, "injected_errors")
            return self._invalid_grant(counters, "injected invalid_grant")
        scope = self._requested_scope(form, grant.scopes)
        if scope is None:
            return _oauth_error(400, "invalid_scope", "requested scope exceeds the granted scope")

        access = self._issue_access_token(grant, scope, client.access_token_ttl)
        new_refresh = None
        if client.rotate_refresh_tokens:
            new_refresh = self._rotate(grant, presented).value
            self._inc(counters, "rotations")
        self._inc(counters, "successful_refreshes")
        stats = self._grant_stats.get(grant.grant_id)
        if stats is not None:  # absent only if counters were reset while this request was in flight
            stats["successful_refreshes"] += 1
        return self._token_response(access, new_refresh)

    def _exchange_code(self, client: _Client, form: dict[str, str]) -> web.Response:
        counters = client.counters
        value = form.get("code")
        if not value:
            return _oauth_error(400, "invalid_request", "code is required")
        code = self._codes.pop(value, None)  # single use: consumed by any attempt
        if code is None:
            produced = self._used_codes.get(value)
            if produced is not None and produced in self._grants:
                grant = self._grants[produced]
                if grant.client is client:
                    self._revoke_grant(grant)  # RFC 6749 §4.1.2: replay revokes what the code produced
                return self._invalid_grant(counters, "authorization code already used")
            return self._invalid_grant(counters, "unknown authorization code")
        if code.client is not client:
            return self._invalid_grant(counters, "authorization code was issued to another client")
        if code.expires_at <= self.now():
            return self._invalid_grant(counters, "authorization code expired")
        if form.get("redirect_uri") != code.redirect_uri:
            return self._invalid_grant(counters, "redirect_uri does not match the authorization request")
        if code.challenge is not None:
            verifier = form.get("code_verifier")
            if not verifier:
                return self._invalid_grant(counters, "code_verifier required")
            if not _PKCE_VERIFIER.match(verifier):
                return self._invalid_grant(counters, "malformed code_verifier")
            computed = _s256(verifier) if code.challenge_method == "S256" else verifier
            if not hmac.compare_digest(computed, code.challenge):
                return self._invalid_grant(counters, "PKCE verification failed")
        grant = self._new_grant(client, code.scopes, code.subject)
        self._used_codes[value] = grant.grant_id
        access = self._issue_access_token(grant, " ".join(grant.scopes), client.access_token_ttl)
        self._inc(counters, "code_exchanges")
        return self._token_response(access, grant.refresh_token.value)

    # ------------------------------------------------------------------------------ /authorize

    async def _handle_authorize(self, request: web.Request) -> web.Response:
        query = request.query
        client_id = query.get("client_id")
        client = self._clients.get(client_id) if client_id else None
        await self._delay(self._failures_for(client_id))
        if client is None:
            return _oauth_error(400, "invalid_request", "unknown client_id")
        redirect_uri = query.get("redirect_uri")
        if not redirect_uri:
            return _oauth_error(400, "invalid_request", "redirect_uri is required")
        try:
            target = URL(redirect_uri)
        except ValueError:
            return _oauth_error(400, "invalid_request", "malformed redirect_uri")
        if not target.is_absolute() or (client.redirect_uris is not None and redirect_uri not in client.redirect_uris):
            return _oauth_error(400, "invalid_request", "redirect_uri is not registered for this client")

        state = query.get("state")

        def back(**params: str) -> web.Response:
            if state is not None:
                params["state"] = state
            return web.Response(status=302, headers={"Location": str(target.update_query(params)),
                                                     "Cache-Control": "no-store"})

        if query.get("response_type") != "code":
            return back(error="unsupported_response_type")
        challenge = query.get("code_challenge")
        method = query.get("code_challenge_method") or ("plain" if challenge else "S256")
        if challenge is not None:
            if method not in ("S256", "plain"):
                return back(error="invalid_request", error_description="unsupported code_challenge_method")
            if not _PKCE_VERIFIER.match(challenge):
                return back(error="invalid_request", error_description="malformed code_challenge")
        elif query.get("code_challenge_method"):
            return back(error="invalid_request", error_description="code_challenge_method without code_challenge")
        scopes = tuple(dict.fromkeys((query.get("scope") or "api").split())) or ("api",)
        code = _Code("sim_code_" + secrets.token_urlsafe(24), client, redirect_uri, scopes,
                     query.get("login_hint") or "user-1", challenge, method, self.now() + self._code_ttl)
        self._codes[code.value] = code
        self._inc(client.counters, "authorizations")
        return back(code=code.value)

    # ------------------------------------------------------------------------------ /revoke

    async def _handle_revoke(self, request: web.Request) -> web.Response:
        form = _parse_form(await request.read())
        if form is None:
            return _oauth_error(400, "invalid_request", "malformed or repeated form parameters")
        creds = self._credentials(request.headers.get("Authorization"), form)
        await self._delay(self._failures_for(creds.client_id))
        client, error = self._authenticate(creds)
        if error is not None:
            return error
        self._inc(client.counters, "revocation_requests")
        value = form.get("token")
        if not value:
            return _oauth_error(400, "invalid_request", "token is required")
        # token_type_hint is only a hint (RFC 7009 §2.1): both kinds are looked up either way
        refresh = self._refresh_tokens.get(value)
        if refresh is not None:
            if refresh.grant.client is not client:
                return _oauth_error(400, "unauthorized_client", "token was issued to another client")
            self._revoke_grant(refresh.grant)
        else:
            access = self._access_tokens.get(value)
            if access is not None:
                if access.grant.client is not client:
                    return _oauth_error(400, "unauthorized_client", "token was issued to another client")
                access.revoked = True
        return web.Response(status=200, headers=_NO_STORE)

    # ------------------------------------------------------------------------------ /userinfo

    async def _handle_userinfo(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization", "")
        scheme, _, value = authorization.partition(" ")
        access = self._access_tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        counters = access.grant.client.counters if access is not None else None
        self._inc(counters, "userinfo_requests")
        await self._delay(self._failures_for(access.grant.client.client_id if access is not None else None))
        if access is None or access.revoked or access.grant.revoked or access.expires_at <= self.now():
            self._inc(counters, "userinfo_unauthorized")
            # RFC 6750 §3.1: no error code when the request carried no token at all
            challenge = 'Bearer realm="simulator", error="invalid_token"' if authorization else 'Bearer realm="simulator"'
            return _json_response(401, {"error": "invalid_token"}, {"WWW-Authenticate": challenge})
        grant = access.grant
        return _json_response(200, {"sub": grant.subject, "grant_id": grant.grant_id,
                                    "client_id": grant.client.client_id, "scope": access.scope})

    async def _handle_metadata(self, request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        return _json_response(200, {
            "issuer": base,
            "authorization_endpoint": base + "/authorize",
            "token_endpoint": base + "/token",
            "revocation_endpoint": base + "/revoke",
            "userinfo_endpoint": base + "/userinfo",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256", "plain"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        })

    # ------------------------------------------------------------------------------ /_control

    def _control_routes(self, app: web.Application) -> None:
        """The HTTP twin of the Python methods, so a simulator in another process can be steered.

        GET  /_control/health                      {"ok": true, "now": <simulated time>}
        GET  /_control/counters[?client_id=&grants=0]   counters() snapshot
        POST /_control/counters/reset              reset_counters()
        GET  /_control/failures                    {"default": {...}, "clients": {...}}
        POST /_control/failures                    JSON set_failures() arguments (client_id optional)
        POST /_control/failures/reset              optional JSON {"client_id": ...}; reset_failures()
        POST /_control/clients                     JSON add_client() arguments
        POST /_control/grants                      JSON issue_grant() arguments; with "count": N answers
                                                   {"grants": [N grants]}
        GET  /_control/grants/{grant_id}           grant_info() plus its counters
        POST /_control/grants/{grant_id}/revoke    revoke_grant()
        POST /_control/clock                       JSON {"advance": seconds}; answers {"now": ...}
        Bad arguments answer 400 {"error": "..."}; unknown clients or grants 404.
        """
        add = app.router
        add.add_get("/_control/health", self._control_health)
        add.add_get("/_control/counters", self._control_counters)
        add.add_post("/_control/counters/reset", self._control_reset_counters)
        add.add_get("/_control/failures", self._control_get_failures)
        add.add_post("/_control/failures", self._control_set_failures)
        add.add_post("/_control/failures/reset", self._control_reset_failures)
        add.add_post("/_control/clients", self._control_add_client)
        add.add_post("/_control/grants", self._control_issue_grant)
        add.add_get("/_control/grants/{grant_id}", self._control_grant)
        add.add_post("/_control/grants/{grant_id}/revoke", self._control_revoke_grant)
        add.add_post("/_control/clock", self._control_clock)

    @staticmethod
    async def _control_body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"malformed JSON: {exc}"}), content_type=_JSON)
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text=json.dumps({"error": "body must be a JSON object"}), content_type=_JSON)
        return body

    @staticmethod
    def _control_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyError as exc:
            raise web.HTTPNotFound(text=json.dumps({"error": str(exc.args[0] if exc.args else exc)}),
                                   content_type=_JSON)
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": str(exc)}), content_type=_JSON)

    async def _control_health(self, request: web.Request) -> web.Response:
        return _json_response(200, {"ok": True, "now": self.now()})

    async def _control_counters(self, request: web.Request) -> web.Response:
        include_grants = request.query.get("grants", "1").lower() not in ("0", "false", "no")
        client_id = request.query.get("client_id") or None
        return _json_response(200, self.counters(client_id=client_id, include_grants=include_grants))

    async def _control_reset_counters(self, request: web.Request) -> web.Response:
        self.reset_counters()
        return _json_response(200, {"ok": True})

    async def _control_get_failures(self, request: web.Request) -> web.Response:
        return _json_response(200, self.failures())

    async def _control_set_failures(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        client_id = body.pop("client_id", None)
        if isinstance(body.get("latency_ms"), list):
            body["latency_ms"] = tuple(body["latency_ms"])
        config = self._control_call(self.set_failures, client_id, **body)
        return _json_response(200, {"client_id": client_id, **config.as_dict()})

    async def _control_reset_failures(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        self.reset_failures(body.get("client_id"))
        return _json_response(200, self.failures())

    async def _control_add_client(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        self._control_call(self.add_client, **body)
        return _json_response(200, {"ok": True, "client_id": body.get("client_id")})

    async def _control_issue_grant(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        count = body.pop("count", None)
        if count is None:
            return _json_response(200, self._control_call(self.issue_grant, **body))
        if not isinstance(count, int) or not 0 <= count <= 100_000:
            raise web.HTTPBadRequest(text=json.dumps({"error": "count must be an integer 0..100000"}),
                                     content_type=_JSON)
        grants = [self._control_call(self.issue_grant, **body) for _ in range(count)]
        return _json_response(200, {"grants": grants})

    async def _control_grant(self, request: web.Request) -> web.Response:
        grant_id = request.match_info["grant_id"]
        info = self._control_call(self.grant_info, grant_id)
        info["counters"] = self.grant_counters(grant_id)
        return _json_response(200, info)

    async def _control_revoke_grant(self, request: web.Request) -> web.Response:
        revoked = self._control_call(self.revoke_grant, request.match_info["grant_id"])
        return _json_response(200, {"revoked": revoked})

    async def _control_clock(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        advance = body.get("advance", 0)
        if not isinstance(advance, (int, float)) or isinstance(advance, bool) or not math.isfinite(advance):
            raise web.HTTPBadRequest(text=json.dumps({"error": "advance must be a number of seconds"}),
                                     content_type=_JSON)
        return _json_response(200, {"now": self.advance_clock(advance)})


# ----------------------------------------------------------------------------------------- process mode


class SimulatorProcess:
    """The simulator in a child process (``python -m scripts.simulator``), steered over ``/_control``.

    Synchronous on purpose: set-up code in a benchmark driver or a test can call it without an
    event loop. Method names match :class:`ProviderSimulator`'s::

        with SimulatorProcess(seed=1) as sim:
            sim.add_client("app", "secret")
            grant = sim.issue_grant("app")
            ... # refresh against sim.url + "/token" from any number of processes
            print(sim.counters()["total"]["successful_refreshes"])
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, seed: int | None = None,
                 clients: Iterable[tuple[str, str]] = (), startup_timeout: float = 20.0,
                 python: str = sys.executable) -> None:
        self._argv = [python, "-m", "scripts.simulator", "--host", host, "--port", str(port)]
        if seed is not None:
            self._argv += ["--seed", str(seed)]
        for client_id, secret in clients:
            self._argv += ["--client", f"{client_id}:{secret}"]
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[str] | None = None
        self.url: str | None = None

    def start(self) -> str:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(self._argv, stdout=subprocess.PIPE, stderr=None, text=True, cwd=root, env=env)
        deadline = time.monotonic() + self._startup_timeout
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                line = self._proc.stdout.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if message.get("event") == "ready":
                    self.url = message["url"]
                    return self.url
        code = self._proc.poll()
        self.stop()
        raise RuntimeError(f"simulator process did not become ready (exit code {code})")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> SimulatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One call to the control API; raises RuntimeError with the answer on a non-2xx status."""
        if self.url is None:
            raise RuntimeError("simulator process not started")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": _JSON} if data is not None else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read().decode(errors='replace')}") from None

    def add_client(self, client_id: str, client_secret: str, **options: Any) -> None:
        if "auth_methods" in options:
            options["auth_methods"] = list(options["auth_methods"])
        self.control("POST", "/_control/clients", {"client_id": client_id, "client_secret": client_secret, **options})

    def issue_grant(self, client_id: str, **options: Any) -> dict[str, Any]:
        if "scopes" in options:
            options["scopes"] = list(options["scopes"])
        return self.control("POST", "/_control/grants", {"client_id": client_id, **options})

    def issue_grants(self, client_id: str, count: int, **options: Any) -> list[dict[str, Any]]:
        if "scopes" in options:
            options["scopes"] = list(options["scopes"])
        return self.control("POST", "/_control/grants", {"client_id": client_id, "count": count, **options})["grants"]

    def revoke_grant(self, grant_id: str) -> bool:
        return self.control("POST", f"/_control/grants/{grant_id}/revoke")["revoked"]

    def set_failures(self, client_id: str | None = None, **options: Any) -> dict[str, Any]:
        if "invalid_grant_for" in options:
            options["invalid_grant_for"] = list(options["invalid_grant_for"])
        if isinstance(options.get("latency_ms"), tuple):
            options["latency_ms"] = list(options["latency_ms"])
        return self.control("POST", "/_control/failures", {"client_id": client_id, **options})

    def reset_failures(self, client_id: str | None = None) -> None:
        self.control("POST", "/_control/failures/reset", {"client_id": client_id})

    def counters(self, *, client_id: str | None = None, include_grants: bool = True) -> dict[str, Any]:
        query = f"?grants={'1' if include_grants else '0'}" + (f"&client_id={quote(client_id, safe='')}"
                                                              if client_id else "")
        return self.control("GET", "/_control/counters" + query)

    def counter(self, name: str, client_id: str | None = None) -> int:
        snapshot = self.counters(client_id=client_id, include_grants=False)
        return (snapshot["total"] if client_id is None else snapshot["clients"][client_id])[name]

    def reset_counters(self) -> None:
        self.control("POST", "/_control/counters/reset")

    def advance_clock(self, seconds: float) -> float:
        return self.control("POST", "/_control/clock", {"advance": seconds})["now"]


# ----------------------------------------------------------------------------------------- CLI


async def _serve(args: argparse.Namespace) -> None:
    sim = ProviderSimulator(seed=args.seed)
    for spec in args.client:
        client_id, colon, secret = spec.partition(":")
        if not colon:
            raise SystemExit(f"--client expects ID:SECRET, got {spec!r}")
        sim.add_client(client_id, secret)
    url = await sim.start(args.host, args.port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    print(json.dumps({"event": "ready", "url": url}), flush=True)
    try:
        await stopping.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.simulator",
                                     description="OAuth 2.0 provider simulator (steer it through /_control/...)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see the ready line)")
    parser.add_argument("--seed", type=int, default=None, help="seed for failure injection randomness")
    parser.add_argument("--client", action="append", default=[], metavar="ID:SECRET",
                        help="register a client with default behaviour (repeatable)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
