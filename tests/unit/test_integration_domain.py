"""Integration definitions and BYO OAuth clients: pure decide/evolve."""

from datetime import datetime, timezone

import pytest

from events.canonical import canonical_json
from events.catalog.base import decode, encode
from events.catalog.integration import IntegrationConfigured, IntegrationFlagged, OAuthClientConfigured
from service.domain import integration as domain
from service.domain.commands import ConfigureIntegration, ConfigureOAuthClient
from service.domain.errors import DomainError, InvalidConfiguration, UnknownIntegration
from service.domain.integration import IntegrationState

NOW = datetime(2026, 10, 15, 14, 30, tzinfo=timezone.utc)
FP1 = "fp_1111aaaa2222bbbb"
FP2 = "fp_3333cccc4444dddd"
SECRET = "client-secret-plaintext-xyz"


def configure(**overrides) -> ConfigureIntegration:
    fields = dict(
        environment="prod", name="salesforce", display_name="Salesforce", authentication_methods=("oauth2",),
        health_check={"method": "GET", "url": "https://login.salesforce.com/services/oauth2/userinfo"},
        config={"unified_model": {"crm": {"contacts": {"list": {"resource": "Contact"}}}}},
    )
    return ConfigureIntegration(**(fields | overrides))


def oauth_client(**overrides) -> ConfigureOAuthClient:
    fields = dict(
        environment="prod", integration="salesforce", client_id="3MVG9-example", client_secret=SECRET,
        authorize_url="https://login.salesforce.com/services/oauth2/authorize",
        token_url="https://login.salesforce.com/services/oauth2/token", scopes=("api", "refresh_token"),
    )
    return ConfigureOAuthClient(**(fields | overrides))


def apply(state, command, **context):
    events = domain.decide(state, command, NOW, **context)
    for event in events:
        state = domain.evolve(state, event)
        assert IntegrationState.model_validate(state.model_dump(mode="json")) == state
        assert decode(event.type, event.schema_version, json_roundtrip(encode(event))) == event
    return state, events


def json_roundtrip(data):
    import json

    return json.loads(canonical_json(data))


def configured() -> IntegrationState:
    state, _ = apply(IntegrationState.blank("prod", "salesforce"), configure())
    return state


def test_blank_state_is_not_configured():
    state = IntegrationState.blank("prod", "salesforce")
    assert (state.version, state.configured, state.oauth_client, state.flagged) == (0, False, None, None)
    assert not state.allows("oauth2")


def test_configure_integration_emits_the_whole_definition():
    state, events = apply(IntegrationState.blank("prod", "salesforce"), configure())
    assert [type(e) for e in events] == [IntegrationConfigured]
    assert state.configured and state.version == 1
    assert state.display_name == "Salesforce" and state.authentication_methods == ("oauth2",)
    assert state.health_check == {"method": "GET", "url": "https://login.salesforce.com/services/oauth2/userinfo"}
    assert state.allows("oauth2") and not state.allows("api_key")


def test_configuring_the_same_definition_again_changes_nothing():
    assert domain.decide(configured(), configure(), NOW) == []


def test_a_changed_definition_is_a_new_event():
    state, events = apply(configured(), configure(authentication_methods=("oauth2", "api_key"), health_check=None))
    assert len(events) == 1 and state.version == 2
    assert state.authentication_methods == ("oauth2", "api_key") and state.health_check is None


def test_display_name_defaults_to_the_name_and_methods_are_deduplicated():
    state, _ = apply(
        IntegrationState.blank("prod", "hubspot"),
        configure(name="hubspot", display_name=None, authentication_methods=("oauth2", "api_key", "oauth2")),
    )
    assert state.display_name == "hubspot" and state.authentication_methods == ("oauth2", "api_key")


def test_a_definition_needs_an_authentication_method_and_float_free_config():
    blank = IntegrationState.blank("prod", "salesforce")
    with pytest.raises(InvalidConfiguration) as refused:
        domain.decide(blank, configure(authentication_methods=()), NOW)
    assert refused.value.field == "authentication_methods"
    with pytest.raises(InvalidConfiguration) as refused:
        domain.decide(blank, configure(config={"rate": 0.5}), NOW)
    assert refused.value.field == "config"


def test_a_command_for_another_integration_is_a_caller_bug():
    with pytest.raises(ValueError):
        domain.decide(IntegrationState.blank("prod", "hubspot"), configure(), NOW)


def test_oauth_client_needs_a_configured_integration():
    with pytest.raises(UnknownIntegration) as refused:
        domain.decide(IntegrationState.blank("prod", "salesforce"), oauth_client(), NOW, client_secret_fingerprint=FP1)
    assert refused.value.field == "integration"


def test_oauth_client_is_recorded_with_a_fingerprint_never_the_secret():
    state, events = apply(configured(), oauth_client(), client_secret_fingerprint=FP1)
    assert [type(e) for e in events] == [OAuthClientConfigured]
    assert SECRET not in canonical_json(encode(events[0]))
    assert SECRET not in canonical_json(state.model_dump(mode="json"))
    assert state.oauth_client["client_secret_fingerprint"] == FP1
    assert state.oauth_client["client_id"] == "3MVG9-example"
    assert state.oauth_client["token_url"] == "https://login.salesforce.com/services/oauth2/token"


def test_oauth_client_fingerprint_is_required_from_the_caller():
    with pytest.raises(ValueError):
        domain.decide(configured(), oauth_client(), NOW)


def test_identical_oauth_client_changes_nothing_but_a_new_secret_does():
    state, _ = apply(configured(), oauth_client(), client_secret_fingerprint=FP1)
    assert domain.decide(state, oauth_client(), NOW, client_secret_fingerprint=FP1) == []
    assert len(domain.decide(state, oauth_client(), NOW, client_secret_fingerprint=FP2)) == 1
    assert len(domain.decide(state, oauth_client(client_id="other"), NOW, client_secret_fingerprint=FP1)) == 1


def test_flagging_is_idempotent_per_reason_and_a_new_client_clears_it():
    state, _ = apply(configured(), oauth_client(), client_secret_fingerprint=FP1)
    events = domain.flag(state, "invalid_client", "client identifier invalid")
    assert [type(e) for e in events] == [IntegrationFlagged]
    state = domain.evolve(state, events[0])
    assert state.flagged == {"reason": "invalid_client", "detail": "client identifier invalid"}
    assert domain.flag(state, "invalid_client", "again") == []
    assert len(domain.flag(state, "unauthorized_client")) == 1
    state, _ = apply(state, oauth_client(), client_secret_fingerprint=FP2)
    assert state.flagged is None


def test_flagging_an_unconfigured_integration_is_refused():
    with pytest.raises(UnknownIntegration):
        domain.flag(IntegrationState.blank("prod", "salesforce"), "invalid_client")


def test_replaying_the_events_reproduces_the_state():
    state = IntegrationState.blank("prod", "salesforce")
    log = []
    for command, context in [
        (configure(), {}),
        (oauth_client(), {"client_secret_fingerprint": FP1}),
        (configure(display_name="Salesforce CRM"), {}),
        (oauth_client(scopes=("api",)), {"client_secret_fingerprint": FP2}),
    ]:
        state, events = apply(state, command, **context)
        log += events
    replayed = IntegrationState.blank("prod", "salesforce")
    for event in log:
        replayed = domain.evolve(replayed, decode(event.type, event.schema_version, encode(event)))
    assert replayed == state and state.version == 4


def test_non_integration_commands_and_events_are_refused():
    from events.catalog.account import AccountValidated
    from service.domain.commands import ExportTokens

    import uuid

    with pytest.raises(DomainError):
        domain.decide(configured(), ExportTokens(account_id=uuid.uuid4(), purpose="x"), NOW)
    with pytest.raises(ValueError):
        domain.evolve(configured(), AccountValidated(at=NOW, how="import"))
