"""Keeping tokens alive: refresh with one refresh per grant, on demand and on schedule.

One refresh per grant, ever: a rotating provider revokes the whole grant when a rotated-out
refresh token is presented again, so two concurrent refreshes kill the connection. Inside a
process, concurrent callers share one in-flight refresh (single-flight); across processes, a lease
row is taken before the provider is called; the outcome is appended fenced by the stream version
read under the lease, and a rotated refresh token is appended (persisted) before the new access
token is handed to anyone.
"""

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from events.catalog.account import TokenRefreshed
from events.envelope import uuid7
from service.crypto.envelope import decrypt, encrypt, event_aad
from service.domain import account as account_domain
from service.domain import integration as integration_domain
from service.domain.account import AccountState
from service.domain.commands import Credentials, RecordRefreshFailure, RecordTokenRefresh, RecordValidation
from service.domain.identity import account_stream, integration_stream
from service.handlers.accounts import AccountNotFound, current_credentials, load_existing_account, schedule_accounts
from service.handlers.leases import Lease, RefreshLeases
from service.handlers.token_reads import TokenReads
from service.handlers.repositories import load_integration
from service.handlers.commit import decide_and_append
from service.handlers.uow import UnitOfWork
from service.oauth.client import OAuthClient, OAuthClientConfig
from service.oauth.errors import OAuthError

log = logging.getLogger("linkledger.refresh")

ON_DEMAND_MARGIN = timedelta(seconds=30)
PROACTIVE_MARGIN = timedelta(seconds=180 + 60)  # the latest a token is due (180 s), plus slack for a late worker
LEASE_SECONDS = 30  # real seconds: longer than a provider call (its timeout) plus the append
BACKOFF_BASE, BACKOFF_CAP = 5.0, 15 * 60.0
CONFIG_SECONDS = 30.0  # how long a process reuses an integration's decrypted OAuth client
SLOW_RETRY = 30 * 60.0  # accounts in needs_reauth (refresh_unavailable) keep being tried, slowly


@dataclass
class _Outcome:
    """The event id a refresh's outcome gets, and whether it was appended (releasing the lease)."""

    event_id: uuid.UUID
    appended: bool = False


class RefreshInProgress(Exception):
    """Another process holds the lease; its outcome appears in the stream shortly."""


class NotRefreshable(Exception):
    """The account has no refresh token or is not an oauth2 account."""


@dataclass
class Refresher:
    """Refreshes accounts; one instance per process (it holds the single-flight table)."""

    uow: UnitOfWork
    oauth: OAuthClient
    holder: str = field(default_factory=lambda: f"proc-{uuid.uuid4().hex[:12]}")
    _in_flight: dict[uuid.UUID | tuple[str, uuid.UUID], asyncio.Task] = field(default_factory=dict)
    _configs: dict[tuple[str, str], tuple[asyncio.Future, float]] = field(default_factory=dict)
    leases: RefreshLeases = field(init=False)
    token_reads: TokenReads = field(init=False)  # the token read path's per-account cache, this process's

    def __post_init__(self) -> None:
        self.leases = RefreshLeases(self.uow.pool, self.holder, LEASE_SECONDS)
        self.token_reads = TokenReads(self.uow)

    async def refresh(self, account_id: uuid.UUID, *, if_expiring_within: timedelta | None = None) -> AccountState:
        """Refresh now (or join the refresh already running in this process).

        if_expiring_within: refresh only if, once the lease is held, the token still expires within
        this margin: whoever held the lease before may have just refreshed it. None forces a refresh.
        """
        # The refresh runs as its own task, which no caller's cancellation (a closed HTTP request, a
        # shutting-down worker) can interrupt between the provider's answer and the append: a
        # rotated refresh token dropped there would get the grant revoked at the next refresh.
        task = self._in_flight.get(account_id)
        if task is None:
            task = asyncio.create_task(self._refresh_under_lease(account_id, if_expiring_within))
            self._in_flight[account_id] = task
            task.add_done_callback(lambda _: self._in_flight.pop(account_id, None))
        return await asyncio.shield(task)

    async def client_config(self, environment: str, integration: str) -> OAuthClientConfig:
        """The integration's client, cached briefly: a changed client takes effect within CONFIG_SECONDS.
        Concurrent misses share one load."""
        key = (environment, integration)
        loop = asyncio.get_running_loop()
        cached = self._configs.get(key)
        if cached is not None and cached[1] > loop.time():
            return await cached[0]
        loading = asyncio.ensure_future(oauth_config(self.uow, environment, integration))
        self._configs[key] = (loading, loop.time() + CONFIG_SECONDS)
        try:
            return await asyncio.shield(loading)
        except Exception:
            self._configs.pop(key, None)  # a failed load is not cached
            raise

    async def validate(self, account_id: uuid.UUID) -> AccountState:
        """The health check (module-level validate), shared by concurrent callers in this process
        (many first reads of one account run it once) and, like a refresh, not cut short by a
        caller's cancellation."""
        key = ("validate", account_id)
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.create_task(validate(self, account_id))
            self._in_flight[key] = task
            task.add_done_callback(lambda _: self._in_flight.pop(key, None))
        return await asyncio.shield(task)

    async def drain(self, timeout: float) -> None:
        """Let the refreshes in flight finish (at shutdown), so none is cut in half."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight.values()), timeout=timeout)

    async def ensure_fresh(self, account_id: uuid.UUID, *, margin: timedelta = ON_DEMAND_MARGIN,
                           wait_seconds: float = 15.0, state: AccountState | None = None) -> AccountState:
        """The account with an access token valid for at least `margin`, refreshing first if needed;
        when another process is refreshing it, wait for that outcome instead of refreshing twice.
        `state`: the account as the caller just loaded it."""
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while True:
            if state is None:
                state = await load_existing_account(self.uow, account_id)
            if not needs_refresh(state, self.uow.clock(), margin):
                return state
            try:
                return await self.refresh(account_id, if_expiring_within=margin)
            except RefreshInProgress:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)
            state = None

    async def _refresh_under_lease(self, account_id: uuid.UUID, if_expiring_within: timedelta | None) -> AccountState:
        # Lease time is the database's real time, not the domain clock (which tests may run fast):
        # the work under a lease takes real seconds. The outcome's event id is fixed now: its append
        # releases the lease.
        lease = await self.leases.take(account_id, uuid7(), self.token_reads.held_version(account_id))
        if lease is None:
            raise RefreshInProgress(str(account_id))
        outcome = _Outcome(lease.outcome_event_id)
        try:
            state, secrets = await self._read_under_lease(lease)
            if if_expiring_within is not None and not needs_refresh(state, self.uow.clock(), if_expiring_within):
                return state  # refreshed meanwhile by the lease's previous holder
            return await self._refresh_once(state, secrets, outcome)
        finally:
            if not outcome.appended:
                await self.leases.release(lease)

    async def _read_under_lease(self, lease: Lease) -> tuple[AccountState, dict | None]:
        """The account and its current secrets as read with the lease; secrets None when the head
        snapshot is behind (the caller then reads them the ordinary way)."""
        if lease.head is None:
            raise AccountNotFound(f"account {lease.account_id} does not exist", field="account_id")
        held = self.token_reads.hold_row(lease.account_id, lease.head)
        if held is None:
            return await load_existing_account(self.uow, lease.account_id), None
        return held.state, await self.token_reads.secrets(held)

    async def _refresh_once(self, state: AccountState, secrets: dict | None, outcome: "_Outcome") -> AccountState:
        uow = self.uow
        account_id = state.account_id
        if state.status in (None, "deleted"):
            raise NotRefreshable(f"account {account_id} does not exist or was deleted")
        if state.authentication_method != "oauth2":
            raise NotRefreshable(f"account {account_id} uses {state.authentication_method}: nothing to refresh")
        if secrets is None:
            secrets = await current_credentials(uow, account_id)
        refresh_token = secrets.get("refresh_token")
        if not refresh_token:
            raise NotRefreshable(f"account {account_id} holds no refresh token")
        config = await self.client_config(state.environment, state.integration)
        try:
            tokens = await self.oauth.refresh(config, refresh_token)
        except OAuthError as error:
            return await self._record_failure(state, error, outcome)
        merged = dict(secrets)
        merged["access_token"] = tokens.access_token
        if tokens.refresh_token:
            merged["refresh_token"] = tokens.refresh_token
        if getattr(tokens, "id_token", None):
            merged["id_token"] = tokens.id_token
        credentials = Credentials(
            access_token=merged["access_token"], refresh_token=merged.get("refresh_token"),
            extra={k: v for k, v in merged.get("extra", {}).items()},
        )
        command = RecordTokenRefresh(account_id=account_id, credentials=credentials, expires_at=tokens.expires_at,
                                     scopes=tokens.scopes)
        plaintext = credentials.plaintext()
        fingerprints = uow.fingerprinter.fingerprints(plaintext)
        stream = account_stream(account_id)
        data_key = await uow.data_keys.get(stream)

        sealed: dict[str, object] = {}  # the secret as appended: held for the next read

        def encode(events, now):
            out = []
            for index, event in enumerate(events):
                event_id = outcome.event_id if index == 0 else uuid7()
                if isinstance(event, TokenRefreshed):
                    ciphertext = encrypt(data_key.key, plaintext, event_aad(stream, event_id))
                    sealed.update(event_id=event_id, ciphertext=ciphertext)
                    out.append(uow.new_event(event, now, event_id=event_id, secret=ciphertext, key_id=data_key.key_id))
                else:
                    out.append(uow.new_event(event, now, event_id=event_id))
            return out

        # The new tokens must be persisted whatever else happened to the stream meanwhile: a rotated
        # refresh token exists nowhere else. So on a version conflict, decide again and re-append.
        append = decide_and_append(
            uow, stream, load=lambda: load_existing_account(uow, account_id),
            decide=lambda state, now: account_domain.decide(state, command, now, fingerprints=fingerprints),
            evolve=account_domain.evolve, encode=encode, initial=state,
        )
        # A successful refresh leaves the account active with the new expiry, so its next due time
        # is known now: written beside the append rather than after it (one wait instead of two).
        # Written and the append failed, it only brings the worker back early, to find out.
        due = next_due(state.model_copy(update={"status": "active", "expires_at": tokens.expires_at}), uow.clock())
        if due is None:
            new_state, events = await append
        else:
            appended, scheduled = await asyncio.gather(
                append, self.leases.schedule(account_id, due), return_exceptions=True)
            if isinstance(appended, BaseException):
                raise appended
            new_state, events = appended
            if isinstance(scheduled, Exception):
                log.warning("the next refresh of %s could not be scheduled: %s", account_id, type(scheduled).__name__)
        outcome.appended = bool(events)
        if events:
            self.token_reads.hold(new_state, sealed["event_id"], sealed["ciphertext"])
        return new_state

    async def _record_failure(self, state: AccountState, error: OAuthError, outcome: "_Outcome") -> AccountState:
        uow = self.uow
        attempt = state.consecutive_refresh_failures + 1
        now = uow.clock()
        retry_at = now + timedelta(seconds=_backoff(attempt, error.retry_after))
        command = RecordRefreshFailure(
            account_id=state.account_id, failure_class=error.failure_class, http_status=error.http_status,
            provider_error=error.provider_error, attempt=attempt,
            retry_at=retry_at if error.failure_class in ("transient", "network") else None,
        )

        def encode(events, now):
            return [uow.new_event(event, now, event_id=outcome.event_id if index == 0 else None)
                    for index, event in enumerate(events)]

        new_state, events = await decide_and_append(
            uow, account_stream(state.account_id), load=lambda: load_existing_account(uow, state.account_id),
            decide=lambda current, at: account_domain.decide(current, command, at),
            evolve=account_domain.evolve, encode=encode, initial=state,
        )
        outcome.appended = bool(events)
        if error.failure_class == "invalid_client":
            await flag_integration(uow, new_state.environment, new_state.integration, error)
        log.info("refresh of %s failed: %s (http %s, attempt %s)", state.account_id, error.failure_class,
                 error.http_status, attempt)
        if error.failure_class in ("transient", "network"):
            due = retry_at if new_state.status != "needs_reauth" else now + timedelta(seconds=SLOW_RETRY)
            await self.leases.schedule(state.account_id, due, attempt)
        elif error.failure_class == "invalid_grant":
            await uow.pool.execute("DELETE FROM refresh_schedule WHERE account_id = $1", state.account_id)
        return new_state


async def validate(refresher: "Refresher", account_id: uuid.UUID) -> AccountState:
    """The health check: the integration's lightweight call (its health_check URL, else the client's
    userinfo URL) with the account's access token, refreshing first when it has expired, so a dead
    token is found now rather than days later. Records AccountValidated or ValidationFailed."""
    uow = refresher.uow
    state = await refresher.ensure_fresh(account_id)
    if state.status in ("needs_reauth", "deleted"):
        return state
    integration = await load_integration(uow.store, state.environment, state.integration)
    url = (integration.health_check or {}).get("url") or (integration.oauth_client or {}).get("userinfo_url")
    ok, reason = True, None
    if url and state.authentication_method == "oauth2":
        config = await refresher.client_config(state.environment, state.integration)
        secrets = await current_credentials(uow, account_id)
        try:
            await refresher.oauth.userinfo(config, secrets["access_token"], url)
        except OAuthError as error:
            if error.failure_class in ("transient", "network"):
                raise  # says nothing about the account; the next round tries again
            ok, reason = False, f"health check refused: {error.failure_class} (http {error.http_status})"
    command = RecordValidation(account_id=account_id, ok=ok, reason=reason)
    new_state, events = await decide_and_append(
        uow, account_stream(account_id), load=lambda: load_existing_account(uow, account_id),
        decide=lambda current, now: account_domain.decide(current, command, now),
        evolve=account_domain.evolve, initial=state,
    )
    if events:
        await schedule_after(uow, new_state)
    return new_state


def needs_refresh(state: AccountState, now: datetime, margin: timedelta) -> bool:
    if state.authentication_method != "oauth2" or state.status in ("deleted", "needs_reauth"):
        return False
    return state.expires_at is not None and state.expires_at - now <= margin


def next_due(state: AccountState, now: datetime) -> datetime | None:
    """When the account is next due for the worker (the rule of schedule_accounts, for one account):
    at once while connecting (its health check), else 60-180 s before its token expires."""
    if state.status == "connecting":
        return now
    if state.status != "deleted" and state.authentication_method == "oauth2" and state.expires_at:
        return state.expires_at - timedelta(seconds=random.uniform(60, 180))
    return None


def _backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential with full jitter, capped; never before the provider's Retry-After."""
    delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))
    delay = max(delay, BACKOFF_BASE * 2 ** (attempt - 1) / 2)  # increasing: at least half the step
    return max(delay, retry_after or 0.0)


async def oauth_config(uow: UnitOfWork, environment: str, integration: str) -> OAuthClientConfig:
    """The integration's bring-your-own client, its secret decrypted from the latest configuration event."""
    state = await load_integration(uow.store, environment, integration)
    client = state.oauth_client
    if not client:
        raise NotRefreshable(f"integration {integration} in {environment} has no OAuth client configured")
    stream = integration_stream(environment, integration)
    row = await uow.pool.fetchrow(
        "SELECT event_id, secret FROM events WHERE stream_id = $1 AND type = 'OAuthClientConfigured'"
        " AND secret IS NOT NULL ORDER BY version DESC LIMIT 1", stream)
    data_key = await uow.data_keys.get(stream)
    secret = decrypt(data_key.key, bytes(row["secret"]), event_aad(stream, row["event_id"]))["client_secret"]
    return OAuthClientConfig(
        client_id=client["client_id"], client_secret=secret, token_url=client["token_url"],
        revocation_url=client.get("revocation_url"), userinfo_url=client.get("userinfo_url"),
        authorize_url=client.get("authorize_url"), client_authentication=client["client_authentication"],
        scopes=tuple(client.get("scopes") or ()),
    )


async def flag_integration(uow: UnitOfWork, environment: str, integration: str, error: OAuthError) -> None:
    """invalid_client is the OAuth app's fault, not the account's: flag the integration once."""
    _, events = await decide_and_append(
        uow, integration_stream(environment, integration),
        load=lambda: load_integration(uow.store, environment, integration),
        decide=lambda state, now: integration_domain.flag(state, "invalid_client", error.provider_error),
        evolve=integration_domain.evolve,
    )
    if events:
        log.warning("integration %s in %s flagged: the OAuth client is refused by the provider (%s)",
                    integration, environment, error.provider_error or error.http_status)


async def schedule_after(uow: UnitOfWork, state: AccountState) -> None:
    await schedule_accounts(uow, [state])
