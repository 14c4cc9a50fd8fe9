"""Account events: stream `account-<uuid>`.

Every account event carries `at`, the instant the domain decided it (the command's `now`), so
folding a stream is pure and reproducible without the envelope's metadata.
"""

from typing import ClassVar, Literal
from uuid import UUID

from pydantic import Field

from events.catalog.base import Event, Fingerprints, Instant, JsonObject

AuthenticationMethod = Literal["oauth2", "api_key", "basic"]


class AccountEvent(Event):
    family: ClassVar[str] = "account"

    at: Instant


class AccountConnecting(AccountEvent):
    """An account came into custody (imported or newly connected); always the stream's first event."""

    type: ClassVar[str] = "AccountConnecting"

    account_id: UUID
    environment: str
    integration: str
    tenant_id: str
    external_ref: str | None = None
    authentication_method: AuthenticationMethod
    context: JsonObject = {}
    source: str


class TokensImported(AccountEvent):
    """Credentials were imported (first import or re-import). Secrets are in the event's secret
    column; the payload carries their fingerprints, keyed by credential field name."""

    type: ClassVar[str] = "TokensImported"

    source: str
    external_ref: str | None = None
    token_type: str | None = None
    expires_at: Instant | None = None
    scopes: tuple[str, ...] = ()
    fingerprints: Fingerprints
    context: JsonObject = {}  # the non-secret context as imported


class AccountValidated(AccountEvent):
    type: ClassVar[str] = "AccountValidated"

    how: Literal["import", "health_check", "refresh", "retry"]


class ValidationFailed(AccountEvent):
    type: ClassVar[str] = "ValidationFailed"

    reason: str | None = None


class PostInstallFailed(AccountEvent):
    type: ClassVar[str] = "PostInstallFailed"

    reason: str | None = None


class TokenRefreshed(AccountEvent):
    """A refresh succeeded. `fingerprints` is the complete set after the refresh (old ones merged
    with the new); `rotated` says the provider issued a new refresh token."""

    type: ClassVar[str] = "TokenRefreshed"

    rotated: bool
    expires_at: Instant | None = None
    scopes: tuple[str, ...] = ()
    scopes_changed: bool = False
    fingerprints: Fingerprints


class TokenRefreshFailed(AccountEvent):
    """One refresh attempt failed; recorded for every attempt."""

    type: ClassVar[str] = "TokenRefreshFailed"

    failure_class: Literal["invalid_grant", "invalid_client", "transient", "network"]
    http_status: int | None = None
    provider_error: str | None = None
    attempt: int = Field(ge=1)
    retry_at: Instant | None = None


class AccountNeedsReauth(AccountEvent):
    type: ClassVar[str] = "AccountNeedsReauth"

    reason: str  # "invalid_grant", "refresh_unavailable", ...
    since: Instant


class AccountReactivated(AccountEvent):
    type: ClassVar[str] = "AccountReactivated"

    how: Literal["refresh", "tokens_imported", "reconnect", "validation"]
    after_seconds: int = Field(ge=0)  # time spent in needs_reauth


class AccountOverrideChanged(AccountEvent):
    """The account-level override changed by a JSON Merge Patch (RFC 7396), composed onto the
    override keeping its nulls; a roll-back gives the whole restored override as `document`."""

    type: ClassVar[str] = "AccountOverrideChanged"

    level: Literal["account"] = "account"
    merge_patch: JsonObject
    resulting_hash: str
    restored_version: int | None = Field(default=None, ge=0)  # set by a roll-back: the version restored
    document: JsonObject | None = None  # set by a roll-back: the override restored, replacing the last


class AccountContextChanged(AccountEvent):
    """The account's non-secret context changed by a JSON Merge Patch (RFC 7396)."""

    type: ClassVar[str] = "AccountContextChanged"

    merge_patch: JsonObject
    resulting_hash: str


class CredentialsAccessed(AccountEvent):
    """Token reads, batched per accessor: `count` reads between `first_at` and `last_at`."""

    type: ClassVar[str] = "CredentialsAccessed"

    accessor: str
    count: int = Field(ge=1)
    first_at: Instant
    last_at: Instant


class TokensExported(AccountEvent):
    """Plaintext tokens left custody through an audited export (who: the envelope's actor)."""

    type: ClassVar[str] = "TokensExported"

    purpose: str


class AccountDeleted(AccountEvent):
    type: ClassVar[str] = "AccountDeleted"

    reason: str | None = None


class KeyShredded(AccountEvent):
    """The account's data key was destroyed: its ciphertexts are unreadable from now on."""

    type: ClassVar[str] = "KeyShredded"

    key_id: str
