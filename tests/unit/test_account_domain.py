"""The account lifecycle: every transition of DESIGN's state machine, idempotency, reactivation,
refresh_unavailable, snapshots, encoding, and a property test over random command sequences."""

import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.canonical import canonical_json
from events.catalog.account import (
    AccountConnecting,
    AccountDeleted,
    AccountNeedsReauth,
    AccountReactivated,
    AccountValidated,
    CredentialsAccessed,
    KeyShredded,
    PostInstallFailed,
    TokenRefreshed,
    TokenRefreshFailed,
    TokensImported,
)
from events.catalog.base import decode, encode
from service.domain import account as domain
from service.domain import integration as integration_domain
from service.domain.account import STATUSES, AccountState
from service.domain.commands import (
    ConfigureIntegration,
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
from service.handlers.uow import snapshot_json

UTC = timezone.utc
T0 = datetime(2026, 10, 15, 12, 0, tzinfo=UTC)
EXPIRES = datetime(2026, 10, 15, 14, 30, tzinfo=UTC)
ACCESS = "00Dxx0000001gER!AQEAQ-example"
REFRESH = "5Aep861-example"
SECRETS = (ACCESS, REFRESH, "5Aep861-rotated", "00Dxx-new-access", "sk_live_api_key", "hunter2")
DATA_KEY = "dk-2026-01"


# --------------------------------------------------------------------------- helpers


def fp(value: str) -> str:
    return "fp_" + hashlib.sha256(value.encode()).hexdigest()[:16]


def fingerprints_of(credentials: Credentials) -> dict[str, str]:
    """What the handler computes (an HMAC in production; a hash is enough here)."""
    return {name: fp(value) for name, value in credentials.plaintext().items() if name in domain._SECRET_FIELDS}


def make_integration(name="salesforce", *, health_check=None, methods=("oauth2",)) -> IntegrationState:
    state = IntegrationState.blank("prod", name)
    command = ConfigureIntegration(environment="prod", name=name, authentication_methods=methods, health_check=health_check)
    for event in integration_domain.decide(state, command, T0):
        state = integration_domain.evolve(state, event)
    return state


PLAIN = make_integration()  # nothing to check after import
CHECKED = make_integration(health_check={"method": "GET", "url": "https://login.salesforce.com/services/oauth2/userinfo"})
MULTI = make_integration(methods=("oauth2", "api_key", "basic"))


def import_command(**overrides) -> ImportAccount:
    fields = dict(
        environment="prod", integration="salesforce", tenant_id="customer_123", authentication_method="oauth2",
        external_ref="merge-linked-account-8f2c",
        credentials=Credentials(access_token=ACCESS, refresh_token=REFRESH),
        token_type="Bearer", expires_at=EXPIRES, scopes=("api", "refresh_token"),
        context={"instance_url": "https://acme.my.salesforce.com"}, source="import:truto",
    )
    return ImportAccount(**(fields | overrides))


ACCOUNT_ID = account_id_for(import_command())


def check_step(state: AccountState, events) -> None:
    """What must hold after every step: snapshots round-trip, events are canonical and decode back."""
    assert AccountState.model_validate(state.model_dump(mode="json")) == state
    assert AccountState.model_validate(json.loads(json.dumps(state.model_dump(mode="json")))) == state
    assert AccountState.model_validate_json(snapshot_json(state)) == state  # the head row's form
    assert json.loads(snapshot_json(state)) == json.loads(state.model_dump_json(exclude_defaults=True))
    for event in events:
        text = canonical_json(encode(event))
        assert decode(event.type, event.schema_version, json.loads(text)) == event


class Account:
    """A test harness: current state, the log, and a clock; checks every step."""

    def __init__(self, account_id=ACCOUNT_ID):
        self.state = AccountState.blank(account_id)
        self.log: list = []
        self.now = T0

    def run(self, command, *, after=timedelta(seconds=10), **context):
        self.now = self.now + after
        if "fingerprints" not in context and getattr(command, "credentials", None) is not None:
            context["fingerprints"] = fingerprints_of(command.credentials)
        context.setdefault("data_key_id", DATA_KEY)
        if isinstance(command, ImportAccount):
            context.setdefault("integration", PLAIN)
        events = domain.decide(self.state, command, self.now, **context)
        before = self.state
        for event in events:
            self.state = domain.evolve(self.state, event)
        folded = domain.fold(before, events)  # all at once, assembled once: the same state
        assert folded == self.state and folded.model_fields_set == self.state.model_fields_set
        self.log += events
        check_step(self.state, events)
        assert self.state.version == len(self.log)
        return events

    def replayed(self) -> AccountState:
        state = AccountState.blank(self.state.account_id)
        decoded = [decode(event.type, event.schema_version, json.loads(canonical_json(encode(event)))) for event in self.log]
        for event in decoded:
            state = domain.evolve(state, event)
        assert domain.fold(AccountState.blank(self.state.account_id), decoded) == state
        return state


def types(events) -> list[str]:
    return [event.type for event in events]


def refresh(access="00Dxx-new-access", refresh_token=None, expires_at=None, scopes=None) -> RecordTokenRefresh:
    return RecordTokenRefresh(
        account_id=ACCOUNT_ID, credentials=Credentials(access_token=access, refresh_token=refresh_token),
        expires_at=expires_at, scopes=scopes,
    )


def failure(failure_class="invalid_grant", attempt=1, http_status=400) -> RecordRefreshFailure:
    return RecordRefreshFailure(
        account_id=ACCOUNT_ID, failure_class=failure_class, http_status=http_status,
        provider_error=failure_class, attempt=attempt,
    )


def validation(ok=True, stage="validation", reason=None) -> RecordValidation:
    return RecordValidation(account_id=ACCOUNT_ID, ok=ok, stage=stage, reason=reason)


def active_account() -> Account:
    account = Account()
    account.run(import_command())
    assert account.state.status == "active"
    return account


def needs_reauth_account() -> Account:
    account = active_account()
    account.run(failure("invalid_grant"))
    assert account.state.status == "needs_reauth"
    return account


# --------------------------------------------------------------------------- import


def test_import_without_health_check_goes_connecting_then_active_at_once():
    account = Account()
    events = account.run(import_command())
    assert types(events) == ["AccountConnecting", "TokensImported", "AccountValidated"]
    assert events[2].how == "import"
    state = account.state
    assert state.status == "active" and state.status_reason is None and state.version == 3
    assert (state.environment, state.integration, state.tenant_id) == ("prod", "salesforce", "customer_123")
    assert state.external_ref == "merge-linked-account-8f2c" and state.authentication_method == "oauth2"
    assert state.fingerprints == {"access_token": fp(ACCESS), "refresh_token": fp(REFRESH)}
    assert state.expires_at == EXPIRES and state.scopes == ("api", "refresh_token") and state.token_type == "Bearer"
    assert state.context == {"instance_url": "https://acme.my.salesforce.com"} and state.source == "import:truto"
    assert state.created_at == state.updated_at == account.now
    assert events[0].account_id == ACCOUNT_ID


def test_import_events_are_the_validated_events_with_times_in_utc():
    zone = timezone(timedelta(hours=-7))
    now = T0.astimezone(zone)
    command = import_command(expires_at=EXPIRES.astimezone(zone))
    events = domain.decide(AccountState.blank(ACCOUNT_ID), command, now, integration=PLAIN,
                           fingerprints=fingerprints_of(command.credentials), data_key_id=DATA_KEY)
    assert events == [type(event)(**event.__dict__) for event in events]  # as pydantic would have built them
    assert all(event.at.tzinfo is timezone.utc for event in events)
    assert events[1].expires_at == EXPIRES and events[1].expires_at.tzinfo is timezone.utc


def test_import_with_health_check_stays_connecting_until_validation():
    account = Account()
    assert types(account.run(import_command(), integration=CHECKED)) == ["AccountConnecting", "TokensImported"]
    assert account.state.status == "connecting"
    events = account.run(validation(ok=True))
    assert types(events) == ["AccountValidated"] and events[0].how == "health_check"
    assert account.state.status == "active"


def test_no_event_snapshot_or_error_holds_a_plaintext_secret():
    account = Account()
    account.run(import_command(), integration=CHECKED)
    account.run(refresh(refresh_token="5Aep861-rotated"))
    account.run(failure("invalid_grant"))
    account.run(ExportTokens(account_id=ACCOUNT_ID, purpose="audit"))
    everything = [canonical_json(encode(e)) for e in account.log] + [canonical_json(account.state.model_dump(mode="json"))]
    for secret in SECRETS:
        assert not any(secret in text for text in everything), secret


@pytest.mark.parametrize(
    "integration",
    [None, IntegrationState.blank("prod", "salesforce"), make_integration("hubspot")],
    ids=["none", "unconfigured", "another"],
)
def test_import_needs_the_configured_integration(integration):
    with pytest.raises(UnknownIntegration) as refused:
        domain.decide(AccountState.blank(ACCOUNT_ID), import_command(), T0, integration=integration,
                      fingerprints=fingerprints_of(import_command().credentials))
    assert refused.value.field == "integration"


def test_import_needs_the_method_enabled_on_the_integration():
    command = import_command(authentication_method="api_key", credentials=Credentials(api_key="sk_live_api_key"))
    with pytest.raises(MethodNotAllowed) as refused:
        Account().run(command, integration=PLAIN)
    assert refused.value.field == "authentication_method"
    assert "sk_live_api_key" not in str(refused.value)


@pytest.mark.parametrize(
    "method, credentials, field",
    [
        ("oauth2", Credentials(access_token=ACCESS), "credentials.refresh_token"),
        ("oauth2", Credentials(refresh_token=REFRESH), "credentials.access_token"),
        ("api_key", Credentials(access_token=ACCESS), "credentials.api_key"),
        ("basic", Credentials(username="jane"), "credentials.password"),
        ("basic", Credentials(password="hunter2"), "credentials.username"),
    ],
)
def test_import_needs_the_credentials_of_its_method(method, credentials, field):
    with pytest.raises(MissingCredentials) as refused:
        Account().run(import_command(authentication_method=method, credentials=credentials), integration=MULTI)
    assert refused.value.field == field
    for secret in SECRETS:
        assert secret not in str(refused.value)


@pytest.mark.parametrize(
    "method, credentials, keys",
    [
        ("api_key", Credentials(api_key="sk_live_api_key"), {"api_key"}),
        ("basic", Credentials(username="jane", password="hunter2"), {"password"}),
    ],
)
def test_api_key_and_basic_accounts_import(method, credentials, keys):
    account = Account()
    account.run(import_command(authentication_method=method, credentials=credentials, expires_at=None), integration=MULTI)
    assert account.state.status == "active" and set(account.state.fingerprints) == keys


def test_refresh_commands_on_a_non_oauth2_account_are_refused():
    account = Account()
    account.run(import_command(authentication_method="api_key", credentials=Credentials(api_key="sk_live_api_key")), integration=MULTI)
    with pytest.raises(MethodNotAllowed):
        account.run(refresh())
    with pytest.raises(MethodNotAllowed):
        account.run(failure("transient"))


@pytest.mark.parametrize(
    "context, field",
    [
        ({"oauth": {"token": {"access_token": ACCESS}}}, "context.oauth.token"),  # the outermost secret name
        ({"oauth": {"Access-Token": ACCESS}}, "context.oauth.Access-Token"),
        ({"settings": [{"api_key": "sk_live_api_key"}]}, "context.settings[0].api_key"),
        ({"geo": {"lat": 48.85}}, "context"),
    ],
)
def test_context_with_a_secret_or_a_float_is_refused(context, field):
    with pytest.raises(InvalidContext) as refused:
        Account().run(import_command(context=context))
    assert refused.value.field == field
    for secret in SECRETS:
        assert secret not in str(refused.value)


def test_the_caller_must_fingerprint_every_secret_and_never_pass_plaintext():
    with pytest.raises(ValueError):
        Account().run(import_command(), fingerprints=None)
    with pytest.raises(ValueError, match="credentials.refresh_token"):
        Account().run(import_command(), fingerprints={"access_token": fp(ACCESS)})
    with pytest.raises(ValueError) as refused:
        Account().run(import_command(), fingerprints={"access_token": ACCESS, "refresh_token": fp(REFRESH)})
    assert ACCESS not in str(refused.value)


def test_an_import_for_another_account_id_is_a_caller_bug():
    with pytest.raises(ValueError):
        Account(account_id=account_id_for(import_command(external_ref="other"))).run(import_command())


def test_time_must_be_aware():
    with pytest.raises(ValueError):
        domain.decide(AccountState.blank(ACCOUNT_ID), import_command(), datetime(2026, 1, 1), integration=PLAIN,
                      fingerprints=fingerprints_of(import_command().credentials))


# --------------------------------------------------------------------------- re-import


def test_reimporting_identical_tokens_changes_nothing():
    account = active_account()
    assert account.run(import_command()) == []
    assert account.run(import_command(source="import:nango")) == []  # only where it came from differs
    assert account.state.version == 3


@pytest.mark.parametrize(
    "change",
    [
        {"credentials": Credentials(access_token="00Dxx-new-access", refresh_token=REFRESH)},
        {"expires_at": EXPIRES + timedelta(hours=1)},
        {"scopes": ("api",)},
        {"token_type": "bearer"},
        {"context": {"instance_url": "https://acme2.my.salesforce.com"}},
    ],
    ids=["fingerprints", "expires_at", "scopes", "token_type", "context"],
)
def test_reimporting_changed_tokens_records_tokens_imported_only(change):
    account = active_account()
    events = account.run(import_command(**change))
    assert types(events) == ["TokensImported"]
    assert account.state.status == "active"


def test_reimport_of_the_same_instant_in_another_zone_is_identical():
    account = active_account()
    assert account.run(import_command(expires_at=EXPIRES.astimezone(timezone(timedelta(hours=-7))))) == []


def test_reimport_into_another_integration_or_tenant_is_an_identity_mismatch():
    account = active_account()
    other = make_integration("hubspot")
    with pytest.raises(IdentityMismatch) as refused:
        account.run(import_command(integration="hubspot"), integration=other)
    assert refused.value.field == "integration"
    with pytest.raises(IdentityMismatch) as refused:
        account.run(import_command(tenant_id="customer_999"))
    assert refused.value.field == "tenant_id"
    with pytest.raises(IdentityMismatch) as refused:
        account.run(import_command(authentication_method="api_key", credentials=Credentials(api_key="k")), integration=MULTI)
    assert refused.value.field == "authentication_method"


def test_reimport_reactivates_an_account_that_needs_reauth():
    account = needs_reauth_account()
    events = account.run(import_command(credentials=Credentials(access_token="00Dxx-new-access", refresh_token="5Aep861-rotated")),
                         after=timedelta(hours=2))
    assert types(events) == ["TokensImported", "AccountReactivated"]
    assert events[1].how == "tokens_imported" and events[1].after_seconds == 7200
    state = account.state
    assert state.status == "active" and state.needs_reauth_since is None and state.reactivation_count == 1
    assert state.consecutive_refresh_failures == 0


@pytest.mark.parametrize("stage, status", [("validation", "validation_error"), ("post_install", "post_install_error")])
def test_reimport_into_an_error_status_validates_when_there_is_nothing_to_check(stage, status):
    account = Account()
    account.run(import_command(), integration=CHECKED)
    account.run(validation(ok=False, stage=stage, reason="403"))
    assert account.state.status == status
    events = account.run(import_command(expires_at=EXPIRES + timedelta(hours=1)), integration=PLAIN)
    assert types(events) == ["TokensImported", "AccountValidated"] and events[1].how == "import"
    assert account.state.status == "active"


def test_reimport_into_an_error_status_waits_for_the_health_check_when_there_is_one():
    account = Account()
    account.run(import_command(), integration=CHECKED)
    account.run(validation(ok=False, reason="403"))
    assert types(account.run(import_command(expires_at=EXPIRES + timedelta(hours=1)), integration=CHECKED)) == ["TokensImported"]
    assert account.state.status == "validation_error"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "stage, event_type, status",
    [("validation", "ValidationFailed", "validation_error"), ("post_install", "PostInstallFailed", "post_install_error")],
)
def test_failed_validation_then_retry(stage, event_type, status):
    account = Account()
    account.run(import_command(), integration=CHECKED)
    events = account.run(validation(ok=False, stage=stage, reason="userinfo returned 403"))
    assert types(events) == [event_type]
    assert account.state.status == status and account.state.status_reason == "userinfo returned 403"
    assert account.run(validation(ok=False, stage=stage, reason="userinfo returned 403")) == []  # idempotent
    assert types(account.run(validation(ok=False, stage=stage, reason="timeout"))) == [event_type]
    assert account.state.status_reason == "timeout"
    events = account.run(validation(ok=True))
    assert types(events) == ["AccountValidated"] and events[0].how == "retry"
    assert account.state.status == "active" and account.state.status_reason is None


def test_validation_ok_on_an_active_account_changes_nothing():
    assert active_account().run(validation(ok=True)) == []


def test_failed_validation_on_an_active_account_is_a_validation_error():
    account = active_account()
    assert types(account.run(validation(ok=False, reason="scope revoked"))) == ["ValidationFailed"]
    assert account.state.status == "validation_error"


def test_validation_ok_reactivates_and_a_failure_leaves_needs_reauth_alone():
    account = needs_reauth_account()
    assert account.run(validation(ok=False, reason="401"), after=timedelta(seconds=20)) == []
    assert account.state.status == "needs_reauth"
    events = account.run(validation(ok=True), after=timedelta(minutes=1))
    assert types(events) == ["AccountReactivated"] and events[0].how == "validation" and events[0].after_seconds == 80


# --------------------------------------------------------------------------- refresh


def test_refresh_with_a_rotated_refresh_token():
    account = active_account()
    new_expiry = EXPIRES + timedelta(hours=2)
    events = account.run(refresh(refresh_token="5Aep861-rotated", expires_at=new_expiry))
    assert types(events) == ["TokenRefreshed"]
    event = events[0]
    assert event.rotated is True and event.scopes_changed is False and event.expires_at == new_expiry
    assert account.state.fingerprints == {"access_token": fp("00Dxx-new-access"), "refresh_token": fp("5Aep861-rotated")}
    assert account.state.last_refreshed_at == account.now and account.state.expires_at == new_expiry


def test_refresh_without_a_new_refresh_token_keeps_the_old_one():
    account = active_account()
    event = account.run(refresh(scopes=("api", "refresh_token")))[0]
    assert event.rotated is False and event.scopes_changed is False
    assert account.state.fingerprints == {"access_token": fp("00Dxx-new-access"), "refresh_token": fp(REFRESH)}
    assert account.run(refresh(refresh_token=REFRESH))[0].rotated is False  # same refresh token returned again


def test_refresh_with_changed_scopes():
    account = active_account()
    event = account.run(refresh(scopes=("api",)))[0]
    assert event.scopes_changed is True and account.state.scopes == ("api",)


def test_refresh_needs_an_access_token():
    account = active_account()
    command = RecordTokenRefresh(account_id=ACCOUNT_ID, credentials=Credentials(refresh_token="x"))
    with pytest.raises(MissingCredentials) as refused:
        account.run(command, fingerprints={"refresh_token": fp("x")})
    assert refused.value.field == "credentials.access_token"


def test_refresh_of_a_connecting_account_validates_it():
    account = Account()
    account.run(import_command(), integration=CHECKED)
    events = account.run(refresh())
    assert types(events) == ["TokenRefreshed", "AccountValidated"] and events[1].how == "refresh"
    assert account.state.status == "active"


def test_refresh_reactivates_an_account_that_needs_reauth():
    account = needs_reauth_account()
    since = account.state.needs_reauth_since
    assert since == account.now
    events = account.run(refresh(refresh_token="5Aep861-rotated"), after=timedelta(days=3))
    assert types(events) == ["TokenRefreshed", "AccountReactivated"]
    assert events[1].how == "refresh" and events[1].after_seconds == 3 * 86_400
    state = account.state
    assert state.status == "active" and state.reactivation_count == 1 and state.needs_reauth_since is None
    assert state.consecutive_refresh_failures == 0


# --------------------------------------------------------------------------- refresh failures


def test_invalid_grant_ends_the_grant_once():
    account = active_account()
    first = account.run(failure("invalid_grant"))
    assert types(first) == ["TokenRefreshFailed", "AccountNeedsReauth"]
    assert first[1].reason == "invalid_grant" and first[1].since == account.now
    since = account.state.needs_reauth_since
    second = account.run(failure("invalid_grant", attempt=2))
    assert types(second) == ["TokenRefreshFailed"]  # an attempt, not a second status change
    assert account.state.status == "needs_reauth" and account.state.needs_reauth_since == since
    assert account.state.consecutive_refresh_failures == 2
    assert types(account.log).count("AccountNeedsReauth") == 1


def test_invalid_client_is_recorded_but_never_fails_the_account():
    account = active_account()
    for attempt in range(1, 6):
        assert types(account.run(failure("invalid_client", attempt=attempt, http_status=401), after=timedelta(hours=1))) == [
            "TokenRefreshFailed"
        ]
    assert account.state.status == "active" and account.state.consecutive_refresh_failures == 5


@pytest.mark.parametrize("failure_class", ["transient", "network"])
def test_transient_failures_before_expiry_never_end_the_account(failure_class):
    account = active_account()  # expires at 14:30, now is 12:00
    for attempt in range(1, 11):
        assert types(account.run(failure(failure_class, attempt=attempt, http_status=503), after=timedelta(minutes=5))) == [
            "TokenRefreshFailed"
        ]
    assert account.now < EXPIRES and account.state.status == "active"


@pytest.mark.parametrize("failure_class", ["transient", "network"])
def test_refresh_unavailable_only_after_expiry_and_n_failures(failure_class):
    account = active_account()
    account.run(failure(failure_class, attempt=1), after=timedelta(hours=1))  # before expiry
    # After expiry: the second failure is not yet the third...
    assert types(account.run(failure(failure_class, attempt=2), after=timedelta(hours=2))) == ["TokenRefreshFailed"]
    assert account.now >= EXPIRES and account.state.consecutive_refresh_failures == 2
    # ...the third is, counting the one before expiry.
    events = account.run(failure(failure_class, attempt=3))
    assert types(events) == ["TokenRefreshFailed", "AccountNeedsReauth"] and events[1].reason == "refresh_unavailable"
    assert account.state.status == "needs_reauth" and account.state.status_reason == "refresh_unavailable"
    # Background retries go on: attempts, no second status change.
    assert types(account.run(failure(failure_class, attempt=4))) == ["TokenRefreshFailed"]


def test_expiry_exactly_now_counts_as_expired_and_the_threshold_is_configurable():
    account = active_account()
    account.now = EXPIRES - timedelta(seconds=10)
    events = account.run(failure("transient"), refresh_unavailable_after=1)  # lands exactly on expires_at
    assert account.now == EXPIRES
    assert types(events) == ["TokenRefreshFailed", "AccountNeedsReauth"]


def test_a_success_resets_the_failure_count():
    account = active_account()
    account.run(failure("transient"), after=timedelta(hours=3))
    account.run(failure("transient"))
    account.run(refresh(expires_at=account.now - timedelta(seconds=1)))  # a refresh that returned a stale expiry
    assert account.state.consecutive_refresh_failures == 0
    assert types(account.run(failure("transient"))) == ["TokenRefreshFailed"]
    assert types(account.run(failure("transient"))) == ["TokenRefreshFailed"]
    assert types(account.run(failure("transient"))) == ["TokenRefreshFailed", "AccountNeedsReauth"]


def test_a_token_without_expiry_is_never_refresh_unavailable():
    account = Account()
    account.run(import_command(expires_at=None))
    for _ in range(5):
        assert types(account.run(failure("network"), after=timedelta(days=1))) == ["TokenRefreshFailed"]


# --------------------------------------------------------------------------- reads, exports, deletion


def test_export_and_credential_access_are_recorded_without_changing_the_account():
    account = active_account()
    updated_at = account.state.updated_at
    events = account.run(ExportTokens(account_id=ACCOUNT_ID, purpose="migration"))
    assert types(events) == ["TokensExported"] and events[0].purpose == "migration"
    events = account.run(RecordCredentialsAccess(account_id=ACCOUNT_ID, accessor="key_01", count=7, first_at=T0, last_at=account.now))
    assert types(events) == ["CredentialsAccessed"] and events[0].count == 7
    assert account.state.updated_at == updated_at and account.state.status == "active"
    with pytest.raises(DomainError) as refused:
        account.run(RecordCredentialsAccess(account_id=ACCOUNT_ID, accessor="k", count=1, first_at=account.now, last_at=T0))
    assert refused.value.field == "first_at"


@pytest.mark.parametrize("setup", ["active", "connecting", "needs_reauth", "validation_error"])
def test_delete_from_any_status_shreds_the_key_and_is_terminal(setup):
    account = Account()
    account.run(import_command(), integration=CHECKED if setup != "active" else PLAIN)
    if setup == "needs_reauth":
        account.run(failure("invalid_grant"))
    if setup == "validation_error":
        account.run(validation(ok=False, reason="x"))
    events = account.run(DeleteAccount(account_id=ACCOUNT_ID, reason="customer offboarded"))
    assert types(events) == ["AccountDeleted", "KeyShredded"] and events[1].key_id == DATA_KEY
    state = account.state
    assert state.status == "deleted" and state.deleted_at == account.now and state.shredded_key_id == DATA_KEY
    assert account.run(DeleteAccount(account_id=ACCOUNT_ID)) == []
    for command in [import_command(), validation(), refresh(), failure(), ExportTokens(account_id=ACCOUNT_ID, purpose="x"),
                    RecordCredentialsAccess(account_id=ACCOUNT_ID, accessor="k", count=1, first_at=T0, last_at=T0)]:
        with pytest.raises(AccountIsDeleted):
            account.run(command)


def test_delete_needs_the_data_key_id():
    account = active_account()
    with pytest.raises(ValueError):
        account.run(DeleteAccount(account_id=ACCOUNT_ID), data_key_id=None)


@pytest.mark.parametrize(
    "command",
    [validation(), refresh(), failure(), ExportTokens(account_id=ACCOUNT_ID, purpose="x"), DeleteAccount(account_id=ACCOUNT_ID),
     RecordCredentialsAccess(account_id=ACCOUNT_ID, accessor="k", count=1, first_at=T0, last_at=T0)],
    ids=lambda c: type(c).__name__,
)
def test_only_an_import_creates_an_account(command):
    with pytest.raises(UnknownAccount):
        Account().run(command)


def test_a_command_for_another_account_is_a_caller_bug():
    account = active_account()
    with pytest.raises(ValueError):
        account.run(RecordValidation(account_id=account_id_for(import_command(external_ref="x")), ok=True))


def test_integration_commands_are_not_account_commands():
    with pytest.raises(DomainError):
        domain.decide(AccountState.blank(ACCOUNT_ID), ConfigureIntegration(environment="prod", name="x"), T0)


# --------------------------------------------------------------------------- overrides, evolve guards, replay


def test_account_override_changes_merge_and_are_idempotent_by_hash():
    account = active_account()
    patch = {"unified_model_override": {"crm": {"contacts": {"list": {"resource": "business_contacts"}}}}}
    events = domain.change_override(account.state, patch, "h1", account.now)
    assert types(events) == ["AccountOverrideChanged"]
    account.state = domain.evolve(account.state, events[0])
    account.log += events
    check_step(account.state, events)
    assert account.state.override == patch and account.state.override_hash == "h1"
    assert domain.change_override(account.state, patch, "h1", account.now) == []
    events = domain.change_override(account.state, {"unified_model_override": {"crm": None}, "x": [1]}, "h2", account.now)
    account.state = domain.evolve(account.state, events[0])
    account.log += events
    # The null stays: it deletes `crm` of the levels below (see test_overrides_merge).
    assert account.state.override == {"unified_model_override": {"crm": None}, "x": [1]}
    assert account.replayed() == account.state


def test_merge_patch_follows_rfc_7396():
    assert domain.merge_patch({"a": "b", "c": {"d": "e", "f": "g"}}, {"a": "z", "c": {"f": None}}) == {"a": "z", "c": {"d": "e"}}
    assert domain.merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert domain.merge_patch({"a": 1}, {"b": {"c": None}}) == {"a": 1, "b": {}}


def test_evolve_refuses_events_out_of_place():
    blank = AccountState.blank(ACCOUNT_ID)
    with pytest.raises(ValueError):
        domain.evolve(blank, AccountValidated(at=T0, how="import"))
    account = active_account()
    with pytest.raises(ValueError):
        domain.evolve(account.state, account.log[0])  # a second AccountConnecting


def test_a_whole_lifecycle_replays_to_the_same_state():
    account = Account()
    account.run(import_command(), integration=CHECKED)
    account.run(validation(ok=False, stage="post_install", reason="webhook refused"))
    account.run(validation(ok=True))
    account.run(refresh(refresh_token="5Aep861-rotated", expires_at=EXPIRES + timedelta(hours=2)))
    account.run(failure("invalid_grant"), after=timedelta(hours=5))
    account.run(failure("invalid_grant"))
    account.run(import_command(credentials=Credentials(access_token="a2", refresh_token="r2")), after=timedelta(days=2))
    account.run(RecordCredentialsAccess(account_id=ACCOUNT_ID, accessor="key_01", count=3, first_at=T0, last_at=account.now))
    account.run(DeleteAccount(account_id=ACCOUNT_ID, reason="done"))
    assert account.replayed() == account.state
    assert account.state.reactivation_count == 1 and account.state.status == "deleted"
    every = {type(e) for e in account.log}
    assert {AccountConnecting, TokensImported, PostInstallFailed, AccountValidated, TokenRefreshed, TokenRefreshFailed,
            AccountNeedsReauth, AccountReactivated, CredentialsAccessed, AccountDeleted, KeyShredded} <= every


# --------------------------------------------------------------------------- property test

ACCESS_POOL = ["a1", "a2", "a3"]
REFRESH_POOL = ["r1", "r2"]
EXPIRY_POOL = [None, T0 + timedelta(minutes=30), T0 + timedelta(hours=3)]

def _import(access, refresh_token, expires_at, scopes, context, tenant, method):
    api_key = access if method == "api_key" else None
    return import_command(
        credentials=Credentials(access_token=access, refresh_token=refresh_token, api_key=api_key),
        expires_at=expires_at, scopes=scopes, context=context, tenant_id=tenant, authentication_method=method,
    )


imports = st.builds(
    _import,
    st.sampled_from(ACCESS_POOL),
    st.sampled_from([*REFRESH_POOL, *REFRESH_POOL, None]),  # None: refused (oauth2 needs a refresh token)
    st.sampled_from(EXPIRY_POOL),
    st.sampled_from([(), ("api",), ("api", "refresh_token")]),
    st.sampled_from([{}, {"instance_url": "https://acme.my.salesforce.com"}]),
    st.sampled_from(["customer_123"] * 5 + ["customer_999"]),  # another tenant: an identity mismatch
    st.sampled_from(["oauth2"] * 5 + ["api_key"]),
)
first_import = st.builds(
    _import, st.sampled_from(ACCESS_POOL), st.sampled_from(REFRESH_POOL), st.sampled_from(EXPIRY_POOL),
    st.just(("api",)), st.just({}), st.just("customer_123"), st.just("oauth2"),
)
validations = st.builds(
    validation, st.booleans(), st.sampled_from(["validation", "post_install"]), st.sampled_from([None, "403", "timeout"])
)
refreshes = st.builds(
    refresh, st.sampled_from(ACCESS_POOL), st.sampled_from([None, *REFRESH_POOL]),
    st.sampled_from([None, T0 + timedelta(hours=1), T0 + timedelta(hours=6)]), st.sampled_from([None, ("api",)]),
)
failures = st.builds(failure, st.sampled_from(["invalid_grant", "invalid_client", "transient", "transient", "network"]),
                     st.integers(1, 5))
# Repeats weight the choice: failures and retries are common, deletion rare.
commands = st.sampled_from(
    [imports] * 2 + [validations] * 3 + [refreshes] * 2 + [failures] * 6
    + [
        st.just(ExportTokens(account_id=ACCOUNT_ID, purpose="audit")),
        st.just(RecordCredentialsAccess(account_id=ACCOUNT_ID, accessor="key_01", count=2, first_at=T0, last_at=T0)),
        st.just(DeleteAccount(account_id=ACCOUNT_ID, reason="test")),
    ]
).flatmap(lambda strategy: strategy)
integrations = st.sampled_from([PLAIN, CHECKED, CHECKED, MULTI, None])
first_step = st.tuples(first_import, st.sampled_from([PLAIN, CHECKED]), st.just(0))
steps = st.builds(
    lambda first, rest: [first, *rest],
    first_step,
    st.lists(st.tuples(commands, integrations, st.integers(0, 3 * 3600)), max_size=30),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps, threshold=st.integers(1, 4))
def test_random_command_sequences_keep_every_invariant(steps, threshold):
    state = AccountState.blank(ACCOUNT_ID)
    log = []
    now = T0
    was_deleted = False
    for command, integration, seconds in steps:
        now = now + timedelta(seconds=seconds)
        context = {"integration": integration, "refresh_unavailable_after": threshold, "data_key_id": DATA_KEY}
        if getattr(command, "credentials", None) is not None:
            context["fingerprints"] = fingerprints_of(command.credentials)
        before = state
        try:
            events = domain.decide(state, command, now, **context)
        except DomainError:
            continue
        for event in events:
            if isinstance(event, AccountNeedsReauth):
                assert state.status != "needs_reauth", "a second status change for the same condition"
            if isinstance(event, AccountReactivated):
                assert state.status == "needs_reauth"
            state = domain.evolve(state, event)
        log += events
        check_step(state, events)
        assert state.version == len(log)
        assert state.status in STATUSES
        assert (state.status == "needs_reauth") == (state.needs_reauth_since is not None)
        if state.status == "active":
            assert state.status_reason is None
        if was_deleted:
            assert state == before and events == []
        was_deleted = state.status == "deleted"
        if isinstance(command, RecordRefreshFailure) and before.status is not None:
            assert isinstance(events[0], TokenRefreshFailed)  # every attempt is recorded
    replayed = AccountState.blank(ACCOUNT_ID)
    for event in log:
        replayed = domain.evolve(replayed, decode(event.type, event.schema_version, json.loads(canonical_json(encode(event)))))
    assert replayed == state
    assert all(isinstance(e, AccountConnecting) for e in log[:1])
    assert sum(isinstance(e, AccountConnecting) for e in log) <= 1
    assert sum(isinstance(e, AccountDeleted) for e in log) <= 1
