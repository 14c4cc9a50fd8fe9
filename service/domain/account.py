"""The account lifecycle: pure decide/evolve over an account's stream.

    connecting --validated--> active
    connecting --post-install failed--> post_install_error --retry ok--> active
    connecting --validation failed--> validation_error --retry ok--> active
    active --invalid_grant--> needs_reauth
    active --transient failures past expiry, retries spent--> needs_reauth (refresh_unavailable)
    needs_reauth --refresh ok / tokens re-imported / validation ok--> active (reactivated)
    any --deleted--> deleted (terminal)

Transitions are idempotent: a repeated failure is recorded as an attempt, not as a second status
change. No I/O and no clock: time comes from `now`, fingerprints and the data key id from the
caller (the domain never sees a key).

Fingerprints are keyed by credential field name ("access_token", "refresh_token", "api_key",
"password"); "refresh_token" is what rotation is detected on.
"""

import re
from datetime import datetime, timezone
from typing import Any, Literal, get_args
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from events.canonical import canonical_json
from events.catalog.account import (
    AccountConnecting,
    AccountContextChanged,
    AccountDeleted,
    AccountEvent,
    AccountNeedsReauth,
    AccountOverrideChanged,
    AccountReactivated,
    AccountValidated,
    CredentialsAccessed,
    KeyShredded,
    PostInstallFailed,
    TokenRefreshed,
    TokenRefreshFailed,
    TokensExported,
    TokensImported,
    ValidationFailed,
)
from events.catalog.base import Event, Instant, assembled
from events.errors import InvalidEventError
from service.domain.commands import (
    AuthenticationMethod,
    Command,
    Credentials,
    DeleteAccount,
    ExportTokens,
    ImportAccount,
    RecordCredentialsAccess,
    RecordRefreshFailure,
    RecordTokenRefresh,
    RecordValidation,
)
from service.domain.errors import (
    AccountIsDeleted,
    DomainError,
    IdentityMismatch,
    InvalidContext,
    MethodNotAllowed,
    MissingCredentials,
    UnknownAccount,
    UnknownIntegration,
)
from service.domain.identity import account_id_for
from service.domain.integration import IntegrationState
from service.domain.overrides import compose_patches, merge_patch, overridden
from service.domain.secret_names import secret_field

Status = Literal["connecting", "active", "post_install_error", "validation_error", "needs_reauth", "deleted"]
STATUSES: tuple[str, ...] = get_args(Status)

_FINGERPRINT = re.compile(r"^fp_[A-Za-z0-9_-]{8,128}$")
_SECRET_FIELDS = ("access_token", "refresh_token", "api_key", "password")


class AccountState(BaseModel):
    """An account as folded from its stream; also the stream-head snapshot (model_dump(mode="json"))."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    account_id: UUID
    version: int = 0
    environment: str | None = None
    integration: str | None = None
    tenant_id: str | None = None
    external_ref: str | None = None
    authentication_method: AuthenticationMethod | None = None
    status: Status | None = None  # None: the account does not exist (blank state)
    status_reason: str | None = None
    context: dict[str, Any] = {}
    token_type: str | None = None
    expires_at: Instant | None = None
    scopes: tuple[str, ...] = ()
    fingerprints: dict[str, str] = {}
    source: str | None = None
    created_at: Instant | None = None
    updated_at: Instant | None = None
    last_refreshed_at: Instant | None = None
    consecutive_refresh_failures: int = 0
    needs_reauth_since: Instant | None = None
    reactivation_count: int = 0
    deleted_at: Instant | None = None
    override: dict[str, Any] = {}  # the account-level override, merge patches applied
    override_hash: str | None = None
    override_version: int = 0  # the stream version of the last override change
    shredded_key_id: str | None = None  # set once the data key is destroyed

    @classmethod
    def blank(cls, account_id: UUID) -> "AccountState":
        if type(account_id) is not UUID:
            return cls(account_id=account_id)  # validated (and converted) the long way
        # A copy of one validated blank: the defaults need no validating again for every account
        # an import creates. Safe to share its empty containers: states are never changed in place.
        return _replaced(_BLANK, {"account_id": account_id})

    @property
    def exists(self) -> bool:
        return self.status is not None


_BLANK = AccountState(account_id=UUID(int=0))

def _replaced(state: AccountState, update: dict[str, Any]) -> AccountState:
    """state.model_copy(update=update), which it equals, for the values evolve computes (already
    the fields' types): without model_copy's generic copying of each of the model's parts, a
    fifth of what an import spends folding a new account's three events."""
    return assembled(AccountState, {**state.__dict__, **update}, state.__pydantic_fields_set__.union(update))


# --------------------------------------------------------------------------- decide


def decide(
    state: AccountState,
    command: Command,
    now: datetime,
    *,
    integration: IntegrationState | None = None,
    fingerprints: dict[str, str] | None = None,
    refresh_unavailable_after: int = 3,
    data_key_id: str | None = None,
) -> list[Event]:
    """The events `command` produces against `state` at `now`; [] when nothing changes.

    integration: the account's integration (ImportAccount). fingerprints: of the command's
    credentials (ImportAccount, RecordTokenRefresh). data_key_id: the key shredded on DeleteAccount.
    Raises DomainError when a rule refuses the command, ValueError when the caller broke a contract.
    """
    now = _utc(now)
    if isinstance(command, ImportAccount):
        return _import(state, command, now, integration, fingerprints)
    account_id = getattr(command, "account_id", None)
    if account_id is None:
        raise DomainError(f"{type(command).__name__} is not an account command")
    if account_id != state.account_id:
        raise ValueError(f"command for account {account_id} given the state of account {state.account_id}")
    if state.status is None:
        raise UnknownAccount(f"account {account_id} does not exist", field="account_id")
    if state.status == "deleted":
        if isinstance(command, DeleteAccount):
            return []
        raise AccountIsDeleted(f"account {account_id} was deleted", field="account_id")
    if isinstance(command, RecordValidation):
        return _record_validation(state, command, now)
    if isinstance(command, RecordTokenRefresh):
        return _record_refresh(state, command, now, fingerprints)
    if isinstance(command, RecordRefreshFailure):
        return _record_refresh_failure(state, command, now, refresh_unavailable_after)
    if isinstance(command, ExportTokens):
        return [TokensExported(at=now, purpose=command.purpose)]
    if isinstance(command, DeleteAccount):
        if not data_key_id:
            raise ValueError("data_key_id is required to delete an account: its data key is shredded")
        return [AccountDeleted(at=now, reason=command.reason), KeyShredded(at=now, key_id=data_key_id)]
    if isinstance(command, RecordCredentialsAccess):
        _aware(command.first_at, "first_at")
        _aware(command.last_at, "last_at")
        if command.first_at > command.last_at:
            raise DomainError("first_at is after last_at", field="first_at")
        return [
            CredentialsAccessed(
                at=now, accessor=command.accessor, count=command.count, first_at=command.first_at, last_at=command.last_at
            )
        ]
    raise DomainError(f"{type(command).__name__} is not an account command")


def change_override(
    state: AccountState, merge_patch: dict[str, Any], resulting_hash: str, now: datetime, *,
    restored_version: int | None = None, document: dict[str, Any] | None = None,
) -> list[Event]:
    """Record an account-level override change (validated by the caller): `merge_patch` composed
    onto the override, or for a roll-back the whole `document`; [] if the result is unchanged."""
    require_live(state)
    if (document if document is not None else compose_patches(state.override, merge_patch)) == state.override:
        return []
    return [AccountOverrideChanged(at=_utc(now), merge_patch=merge_patch, resulting_hash=resulting_hash,
                                   restored_version=restored_version, document=document)]


def change_context(state: AccountState, patch: dict[str, Any], resulting_hash: str, now: datetime) -> list[Event]:
    """Record a change of the non-secret context; [] if the result is unchanged. Secrets are refused."""
    require_live(state)
    context = merge_patch(state.context, patch)
    _check_context(context)
    if context == state.context:
        return []
    return [AccountContextChanged(at=_utc(now), merge_patch=patch, resulting_hash=resulting_hash)]


def require_live(state: AccountState) -> None:
    """UnknownAccount for an account that does not exist, AccountIsDeleted for a deleted one."""
    if state.status is None:
        raise UnknownAccount(f"account {state.account_id} does not exist", field="account_id")
    if state.status == "deleted":
        raise AccountIsDeleted(f"account {state.account_id} was deleted", field="account_id")


def _import(
    state: AccountState,
    command: ImportAccount,
    now: datetime,
    integration: IntegrationState | None,
    fingerprints: dict[str, str] | None,
) -> list[Event]:
    if account_id_for(command) != state.account_id:
        raise ValueError(f"import of account {account_id_for(command)} given the state of account {state.account_id}")
    if state.status == "deleted":
        raise AccountIsDeleted(f"account {state.account_id} was deleted", field="account_id")
    if (
        integration is None
        or not integration.configured
        or (integration.environment, integration.name) != (command.environment, command.integration)
    ):
        raise UnknownIntegration(
            f"integration {command.integration!r} is not configured in environment {command.environment!r}",
            field="integration",
        )
    if command.authentication_method not in integration.authentication_methods:
        raise MethodNotAllowed(
            f"{command.authentication_method} is not enabled for {command.integration!r}"
            f" (enabled: {', '.join(integration.authentication_methods)})",
            field="authentication_method",
        )
    _check_credentials(command.authentication_method, command.credentials)
    _check_context(command.context)
    _aware(command.expires_at, "expires_at")
    fps = _require_fingerprints(fingerprints, command.credentials)
    # Every value below is checked: the command's by its validation, the context, fingerprints and
    # instants just above (Event.from_checked).
    at = _utc(now)
    imported = TokensImported.from_checked(
        at=at,
        source=command.source,
        external_ref=command.external_ref,
        token_type=command.token_type,
        expires_at=None if command.expires_at is None else _utc(command.expires_at),
        scopes=command.scopes,
        fingerprints=fps,
        context=command.context,
    )
    nothing_to_check = not integration.health_check

    if state.status is None:
        events: list[Event] = [
            AccountConnecting.from_checked(
                at=at,
                account_id=state.account_id,
                environment=command.environment,
                integration=command.integration,
                tenant_id=command.tenant_id,
                external_ref=command.external_ref,
                authentication_method=command.authentication_method,
                context=command.context,
                source=command.source,
            ),
            imported,
        ]
        if nothing_to_check:
            events.append(AccountValidated.from_checked(at=at, how="import"))
        return events

    for field, ours, theirs in (
        ("environment", state.environment, command.environment),
        ("integration", state.integration, command.integration),
        ("tenant_id", state.tenant_id, command.tenant_id),
        ("authentication_method", state.authentication_method, command.authentication_method),
    ):
        if ours != theirs:
            raise IdentityMismatch(
                f"this record names account {state.account_id}, which has {field} {ours!r}, not {theirs!r}", field=field
            )
    if (state.fingerprints, state.expires_at, state.scopes, state.token_type, state.context) == (
        imported.fingerprints,
        imported.expires_at,
        imported.scopes,
        imported.token_type,
        imported.context,
    ):
        return []
    events = [imported]
    if state.status == "needs_reauth":
        events.append(AccountReactivated(at=now, how="tokens_imported", after_seconds=_seconds_since(state.needs_reauth_since, now)))
    elif state.status in ("connecting", "validation_error", "post_install_error") and nothing_to_check:
        events.append(AccountValidated(at=now, how="import"))
    return events


def _record_validation(state: AccountState, command: RecordValidation, now: datetime) -> list[Event]:
    if command.ok:
        if state.status == "active":
            return []
        if state.status == "needs_reauth":
            return [AccountReactivated(at=now, how="validation", after_seconds=_seconds_since(state.needs_reauth_since, now))]
        return [AccountValidated(at=now, how="health_check" if state.status == "connecting" else "retry")]
    if state.status == "needs_reauth":
        return []  # the grant is already known dead; a reconnect, not a validation, is what helps
    if command.stage == "post_install":
        if state.status == "post_install_error" and state.status_reason == command.reason:
            return []
        return [PostInstallFailed(at=now, reason=command.reason)]
    if state.status == "validation_error" and state.status_reason == command.reason:
        return []
    return [ValidationFailed(at=now, reason=command.reason)]


def _record_refresh(
    state: AccountState, command: RecordTokenRefresh, now: datetime, fingerprints: dict[str, str] | None
) -> list[Event]:
    _require_oauth2(state)
    if command.credentials.access_token is None:
        raise MissingCredentials("a refresh yields an access token", field="credentials.access_token")
    _aware(command.expires_at, "expires_at")
    fps = _require_fingerprints(fingerprints, command.credentials)
    new_refresh = fps.get("refresh_token")
    rotated = new_refresh is not None and new_refresh != state.fingerprints.get("refresh_token")
    scopes = tuple(command.scopes) if command.scopes is not None else state.scopes
    events: list[Event] = [
        TokenRefreshed(
            at=now,
            rotated=rotated,
            expires_at=command.expires_at,
            scopes=scopes,
            scopes_changed=scopes != state.scopes,
            fingerprints={**state.fingerprints, **fps},
        )
    ]
    if state.status == "needs_reauth":
        events.append(AccountReactivated(at=now, how="refresh", after_seconds=_seconds_since(state.needs_reauth_since, now)))
    elif state.status == "connecting":
        events.append(AccountValidated(at=now, how="refresh"))
    return events


def _record_refresh_failure(
    state: AccountState, command: RecordRefreshFailure, now: datetime, refresh_unavailable_after: int
) -> list[Event]:
    _require_oauth2(state)
    _aware(command.retry_at, "retry_at")
    events: list[Event] = [
        TokenRefreshFailed(
            at=now,
            failure_class=command.failure_class,
            http_status=command.http_status,
            provider_error=command.provider_error,
            attempt=command.attempt,
            retry_at=command.retry_at,
        )
    ]
    if state.status == "needs_reauth":
        return events  # an attempt, not a new status change
    if command.failure_class == "invalid_grant":
        events.append(AccountNeedsReauth(at=now, reason="invalid_grant", since=now))
    elif command.failure_class in ("transient", "network"):
        expired = state.expires_at is not None and state.expires_at <= now
        failures = state.consecutive_refresh_failures + 1
        if expired and failures >= refresh_unavailable_after:
            events.append(AccountNeedsReauth(at=now, reason="refresh_unavailable", since=now))
    # invalid_client: the OAuth app is at fault; the integration is flagged, not the account.
    return events


def _require_oauth2(state: AccountState) -> None:
    if state.authentication_method != "oauth2":
        raise MethodNotAllowed(
            f"token refresh applies to oauth2 accounts, this one uses {state.authentication_method}",
            field="authentication_method",
        )


def _check_credentials(method: str, credentials: Credentials) -> None:
    required = {"oauth2": ("access_token", "refresh_token"), "api_key": ("api_key",), "basic": ("username", "password")}[method]
    for name in required:
        if getattr(credentials, name) is None:
            raise MissingCredentials(f"{method} accounts need {name}", field=f"credentials.{name}")


def _check_context(context: dict[str, Any], path: str = "context") -> None:
    try:
        canonical_json(context, what=path)
    except InvalidEventError as error:
        raise InvalidContext(str(error), field=path) from None
    if (field := secret_field(context, path)) is not None:
        raise InvalidContext("secret values belong in the credentials, not in the context", field=field)


def _require_fingerprints(fingerprints: dict[str, str] | None, credentials: Credentials) -> dict[str, str]:
    """The caller's fingerprints must cover every secret the credentials hold, and be fingerprints."""
    if not fingerprints:
        raise ValueError("fingerprints of the credentials are required (computed by the caller)")
    for name in _SECRET_FIELDS:
        if getattr(credentials, name) is not None and name not in fingerprints:
            raise ValueError(f"no fingerprint given for credentials.{name}")
    for name, value in fingerprints.items():
        if not isinstance(value, str) or not _FINGERPRINT.match(value):
            raise ValueError(f"fingerprint {name!r} is not of the form fp_<hex>")  # never echo the value
    return dict(sorted(fingerprints.items()))


def _utc(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return instant if instant.tzinfo is timezone.utc else instant.astimezone(timezone.utc)


def _aware(instant: datetime | None, field: str) -> None:
    if instant is not None and instant.tzinfo is None:
        raise DomainError("times must include a timezone (UTC)", field=field)


def _seconds_since(since: datetime | None, now: datetime) -> int:
    if since is None:
        return 0
    return max(0, int((now - since).total_seconds()))


# --------------------------------------------------------------------------- evolve


def evolve(state: AccountState, event: Event) -> AccountState:
    """The state after `event`: version + 1, times taken from the event."""
    return _replaced(state, _changes(state, event))


def fold(state: AccountState, events: list[Event]) -> AccountState:
    """evolve() over `events`, the state assembled once at the end instead of once per event (a
    new account's three events are folded for every import)."""
    if len(events) < 2:
        return evolve(state, events[0]) if events else state
    fields, changed = dict(state.__dict__), set()
    current = _FieldView(fields)
    for event in events:
        update = _changes(current, event)
        fields.update(update)
        changed.update(update)
    return assembled(AccountState, fields, state.__pydantic_fields_set__ | changed)


class _FieldView:
    """A state's fields, read as attributes (its __dict__ is the fields), while fold() changes them in place."""

    def __init__(self, fields: dict[str, Any]):
        self.__dict__ = fields


def _changes(state: AccountState | _FieldView, event: Event) -> dict[str, Any]:
    """The fields `event` changes, and their new values."""
    if not isinstance(event, AccountEvent):
        raise ValueError(f"{event.type} is not an account event")
    if (state.status is None) != isinstance(event, AccountConnecting):
        raise ValueError(
            f"{event.type} cannot apply to account {state.account_id} at version {state.version}"
            " (an account stream starts with AccountConnecting, once)"
        )
    update: dict[str, Any] = {"version": state.version + 1, "updated_at": event.at}
    if isinstance(event, AccountConnecting):
        update |= {
            "environment": event.environment,
            "integration": event.integration,
            "tenant_id": event.tenant_id,
            "external_ref": event.external_ref,
            "authentication_method": event.authentication_method,
            "context": event.context,
            "source": event.source,
            "status": "connecting",
            "created_at": event.at,
        }
    elif isinstance(event, TokensImported):
        update |= {
            "source": event.source,
            "external_ref": event.external_ref if event.external_ref is not None else state.external_ref,
            "token_type": event.token_type,
            "expires_at": event.expires_at,
            "scopes": event.scopes,
            "fingerprints": event.fingerprints,
            "context": event.context,
            "consecutive_refresh_failures": 0,
        }
    elif isinstance(event, AccountValidated):
        update |= {"status": "active", "status_reason": None}
    elif isinstance(event, ValidationFailed):
        update |= {"status": "validation_error", "status_reason": event.reason}
    elif isinstance(event, PostInstallFailed):
        update |= {"status": "post_install_error", "status_reason": event.reason}
    elif isinstance(event, TokenRefreshed):
        update |= {
            "expires_at": event.expires_at,
            "scopes": event.scopes,
            "fingerprints": event.fingerprints,
            "last_refreshed_at": event.at,
            "consecutive_refresh_failures": 0,
        }
    elif isinstance(event, TokenRefreshFailed):
        update |= {"consecutive_refresh_failures": state.consecutive_refresh_failures + 1}
    elif isinstance(event, AccountNeedsReauth):
        update |= {"status": "needs_reauth", "status_reason": event.reason, "needs_reauth_since": event.since}
    elif isinstance(event, AccountReactivated):
        update |= {
            "status": "active",
            "status_reason": None,
            "needs_reauth_since": None,
            "reactivation_count": state.reactivation_count + 1,
        }
    elif isinstance(event, AccountOverrideChanged):
        update |= {"override": overridden(state.override, event), "override_hash": event.resulting_hash,
                   "override_version": state.version + 1}
    elif isinstance(event, AccountContextChanged):
        update |= {"context": merge_patch(state.context, event.merge_patch)}
    elif isinstance(event, (CredentialsAccessed, TokensExported)):
        del update["updated_at"]  # reads are audited, but they do not change the account
    elif isinstance(event, AccountDeleted):
        update |= {"status": "deleted", "status_reason": event.reason, "deleted_at": event.at, "needs_reauth_since": None}
    elif isinstance(event, KeyShredded):
        update |= {"shredded_key_id": event.key_id}
    else:  # pragma: no cover - a new account event without a rule here
        raise ValueError(f"no evolve rule for {event.type}")
    return update
