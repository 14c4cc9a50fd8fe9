"""The event catalog: registry, encoding to canonical JSON, decoding, schemas, and no secrets."""

import json
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError

from events.canonical import canonical_json
from events.catalog import base
from events.catalog.account import (
    AccountConnecting,
    AccountContextChanged,
    AccountDeleted,
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
from events.catalog.base import CatalogError, Event, catalog, decode, encode, encode_json, register_upcaster, schemas
from events.catalog.environment import EnvironmentOverrideChanged, WebhookEndpointDisabled
from events.catalog.integration import IntegrationConfigured, IntegrationFlagged, OAuthClientConfigured

UTC = timezone.utc
AT = datetime(2026, 10, 15, 14, 30, tzinfo=UTC)
FP_A = "fp_0123abcd4567ef89"
FP_R = "fp_89ef4567abcd0123"

EXPECTED_TYPES = {
    "account": {
        "AccountConnecting", "TokensImported", "AccountValidated", "ValidationFailed", "PostInstallFailed",
        "TokenRefreshed", "TokenRefreshFailed", "AccountNeedsReauth", "AccountReactivated",
        "AccountOverrideChanged", "AccountContextChanged", "CredentialsAccessed", "TokensExported", "AccountDeleted", "KeyShredded",
    },
    "integration": {"IntegrationConfigured", "OAuthClientConfigured", "IntegrationFlagged"},
    "environment": {"EnvironmentOverrideChanged", "WebhookEndpointDisabled"},
}

# One realistic instance of every event type; a new type without an example fails a test below.
EXAMPLES: list[Event] = [
    IntegrationConfigured(
        environment="prod", name="salesforce", display_name="Salesforce", authentication_methods=("oauth2",),
        health_check={"method": "GET", "url": "https://login.salesforce.com/services/oauth2/userinfo"},
        config={"unified_model": {"crm": {"contacts": {"list": {"resource": "Contact"}}}}, "page_size": 200},
    ),
    OAuthClientConfigured(
        environment="prod", integration="salesforce", client_id="3MVG9-example", client_secret_fingerprint=FP_A,
        authorize_url="https://login.salesforce.com/services/oauth2/authorize",
        token_url="https://login.salesforce.com/services/oauth2/token", scopes=("api", "refresh_token"),
    ),
    IntegrationFlagged(environment="prod", integration="salesforce", reason="invalid_client", detail="client identifier invalid"),
    EnvironmentOverrideChanged(
        environment="prod", merge_patch={"unified_model_override": {"crm": {"contacts": None}}}, resulting_hash="sha256:ab12"
    ),
    WebhookEndpointDisabled(
        environment="prod", endpoint_id=uuid.UUID("0b5f2f7e-8e5c-5a44-9d0e-2f1b8c3a9d12"), host="hooks.example.com",
        reason="failing for 24 hours", failing_since=AT,
    ),
    AccountConnecting(
        at=AT, account_id=uuid.UUID("0b5f2f7e-8e5c-5a44-9d0e-2f1b8c3a9d11"), environment="prod", integration="salesforce",
        tenant_id="customer_123", external_ref="merge-linked-account-8f2c", authentication_method="oauth2",
        context={"instance_url": "https://acme.my.salesforce.com"}, source="import:truto",
    ),
    TokensImported(
        at=AT, source="import:truto", external_ref="merge-linked-account-8f2c", token_type="Bearer",
        expires_at=datetime(2026, 10, 15, 16, 30, 0, 123456, tzinfo=UTC), scopes=("api", "refresh_token"),
        fingerprints={"access_token": FP_A, "refresh_token": FP_R}, context={"instance_url": "https://acme.my.salesforce.com"},
    ),
    AccountValidated(at=AT, how="import"),
    ValidationFailed(at=AT, reason="userinfo returned 403"),
    PostInstallFailed(at=AT, reason="webhook subscription refused"),
    TokenRefreshed(
        at=AT, rotated=True, expires_at=AT + timedelta(hours=2), scopes=("api",), scopes_changed=True,
        fingerprints={"access_token": FP_A, "refresh_token": FP_R},
    ),
    TokenRefreshFailed(
        at=AT, failure_class="transient", http_status=503, provider_error="temporarily_unavailable", attempt=3,
        retry_at=AT + timedelta(seconds=40),
    ),
    AccountNeedsReauth(at=AT, reason="invalid_grant", since=AT),
    AccountReactivated(at=AT, how="refresh", after_seconds=86_400),
    AccountOverrideChanged(
        at=AT, merge_patch={"unified_model_override": {"crm": {"contacts": {"list": {"resource": "business_contacts"}}}}},
        resulting_hash="sha256:cd34",
    ),
    AccountContextChanged(at=AT, merge_patch={"instance_url": "https://acme2.my.salesforce.com"}, resulting_hash="sha256:ef56"),
    CredentialsAccessed(at=AT, accessor="key_01", count=12, first_at=AT - timedelta(minutes=5), last_at=AT),
    TokensExported(at=AT, purpose="migration to another custodian"),
    AccountDeleted(at=AT, reason="customer offboarded"),
    KeyShredded(at=AT, key_id="dk-2026-01"),
]

# Field names that would hold a plaintext secret. A fingerprint of one is fine (and must say so).
SECRET_NAME = re.compile(r"(access|refresh|id)_?token|client_?secret|password|passwd|api_?key|private_?key|^secret$|^token$", re.I)


def secret_named_fields(model: type[BaseModel], path: str = "") -> list[str]:
    """Every field, at any depth of nested models, whose name says it holds a secret value."""
    found = []
    for name, field in model.model_fields.items():
        here = f"{path}{name}"
        if SECRET_NAME.search(name) and "fingerprint" not in name:
            found.append(here)
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found += secret_named_fields(candidate, f"{here}.")
    return found


def floats_in(value) -> list:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for item in value.values() for f in floats_in(item)]
    if isinstance(value, list):
        return [f for item in value for f in floats_in(item)]
    return []


# --------------------------------------------------------------------------- the registry


def test_the_catalog_holds_exactly_the_designed_event_types_by_family():
    by_family: dict[str, set[str]] = {}
    for cls in catalog():
        by_family.setdefault(cls.family, set()).add(cls.type)
    assert by_family == EXPECTED_TYPES


def test_every_event_type_is_past_tense_frozen_and_strict():
    for cls in catalog():
        assert cls.type == cls.__name__
        # Past tense; AccountConnecting (the act began) and AccountNeedsReauth (a status reached)
        # keep the names DESIGN.md gives them.
        assert re.search(r"(ed|ing)$", cls.type) or cls.type == "AccountNeedsReauth", cls.type
        assert cls.model_config["frozen"] is True and cls.model_config["extra"] == "forbid"
        assert cls.schema_version >= 1


def test_every_event_type_has_an_example_here():
    assert {type(event) for event in EXAMPLES} == set(catalog())


def test_a_type_name_cannot_be_registered_twice():
    with pytest.raises(TypeError, match="already registered"):

        class AccountDeleted(Event):  # noqa: F811 - deliberately clashing
            type = "AccountDeleted"

    assert base.event_class("AccountDeleted").__module__ == "events.catalog.account"


def test_event_type_and_version_are_class_attributes_not_payload():
    event = AccountValidated(at=AT, how="refresh")
    assert (event.type, event.schema_version) == ("AccountValidated", 1)
    assert "type" not in encode(event) and "schema_version" not in encode(event)


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_every_event_encodes_to_canonical_json_and_decodes_back_equal(event):
    data = encode(event)
    text = canonical_json(data)
    assert floats_in(data) == []
    stored = json.loads(text)
    assert decode(event.type, event.schema_version, stored) == event
    assert canonical_json(encode(decode(event.type, event.schema_version, stored))) == text


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_the_stored_text_is_the_canonical_json_of_the_encoded_payload(event):
    assert encode_json(event) == canonical_json(encode(event))


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_an_event_from_checked_values_equals_the_validated_one(event):
    fields = dict(event.__dict__)
    made = type(event).from_checked(**fields)
    assert made == event
    assert encode_json(made) == encode_json(event)
    assert made.model_dump() == event.model_dump()


def test_from_checked_wants_every_field_and_no_other():
    with pytest.raises(TypeError, match=r"missing \['how'\]"):
        AccountValidated.from_checked(at=AT)
    with pytest.raises(TypeError, match=r"unknown \['extra'\]"):
        AccountValidated.from_checked(at=AT, how="import", extra=1)


def test_the_stored_text_of_an_event_with_a_zone_and_whole_seconds_is_canonical():
    paris = timezone(timedelta(hours=2))
    event = TokensImported(at=datetime(2026, 10, 15, 16, 30, tzinfo=paris), source="import:truto",
                           expires_at=datetime(2026, 12, 15, 14, 30, tzinfo=timezone.utc), scopes=("b", "a"),
                           fingerprints={"refresh_token": "fp_0123456789abcdef", "access_token": "fp_fedcba9876543210"},
                           context={"z": {"b": 1, "a": [True, None, "é"]}, "a": 2**70})
    assert encode_json(event) == canonical_json(encode(event))
    assert '"expires_at":"2026-12-15T14:30:00.000000Z"' in encode_json(event)


def test_times_are_iso_utc_strings_with_z_whatever_zone_they_came_in():
    paris = timezone(timedelta(hours=2))
    event = AccountNeedsReauth(at=datetime(2026, 10, 15, 16, 30, tzinfo=paris), reason="invalid_grant", since=AT)
    data = encode(event)
    assert data["at"] == "2026-10-15T14:30:00.000000Z"
    assert data["since"] == "2026-10-15T14:30:00.000000Z"
    assert decode("AccountNeedsReauth", 1, data).at == AT


def test_naive_times_are_refused():
    with pytest.raises(ValidationError):
        AccountValidated(at=datetime(2026, 1, 1), how="import")


def test_free_form_objects_refuse_floats_with_the_path():
    with pytest.raises(ValidationError, match=r"object\.geo\.lat: floats are not allowed"):
        TokensImported(at=AT, source="api", fingerprints={"access_token": FP_A}, context={"geo": {"lat": 48.85}})
    with pytest.raises(ValidationError):
        EnvironmentOverrideChanged(environment="prod", merge_patch={"ratio": 0.5}, resulting_hash="h")


def test_durations_are_integers():
    with pytest.raises(ValidationError):
        AccountReactivated(at=AT, how="refresh", after_seconds=1.5)


def test_decode_refuses_unknown_fields_types_and_versions():
    data = encode(AccountValidated(at=AT, how="import"))
    with pytest.raises(ValidationError):
        decode("AccountValidated", 1, {**data, "access_token": "leak"})
    with pytest.raises(CatalogError, match="unknown event type"):
        decode("AccountTeleported", 1, data)
    with pytest.raises(CatalogError, match="no schema version 2"):
        decode("AccountValidated", 2, data)


def test_decode_upcasts_older_schema_versions():
    class WidgetRenamed(Event):
        type = "WidgetRenamedForTest"
        schema_version = 2
        family = "test"
        new_name: str

    try:
        with pytest.raises(CatalogError, match="no upcaster"):
            decode("WidgetRenamedForTest", 1, {"name": "x"})
        register_upcaster("WidgetRenamedForTest", 1)(lambda data: {"new_name": data["name"]})
        assert decode("WidgetRenamedForTest", 1, {"name": "x"}) == WidgetRenamed(new_name="x")
        assert decode("WidgetRenamedForTest", 2, {"new_name": "y"}) == WidgetRenamed(new_name="y")
    finally:
        base._REGISTRY.pop("WidgetRenamedForTest", None)
        base._UPCASTERS.pop(("WidgetRenamedForTest", 1), None)
    assert "WidgetRenamedForTest" not in {cls.type for cls in catalog()}


def test_events_are_immutable():
    event = TokensExported(at=AT, purpose="audit")
    with pytest.raises(ValidationError):
        event.purpose = "something else"


# --------------------------------------------------------------------------- schemas


def test_every_event_has_a_json_schema_for_the_catalog_command():
    printed = schemas()
    assert [entry["type"] for entry in printed] == [cls.type for cls in catalog()]
    for entry in printed:
        schema = entry["schema"]
        json.dumps(schema)  # printable
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert entry["schema_version"] >= 1 and entry["family"] in EXPECTED_TYPES
    imported = next(e for e in printed if e["type"] == "TokensImported")["schema"]
    assert imported["properties"]["at"]["format"] == "date-time"
    assert "fingerprints" in imported["required"]


# --------------------------------------------------------------------------- no secrets


def test_the_secret_field_check_catches_a_secret_named_field():
    class Leaky(BaseModel):
        token_type: str
        client_secret_fingerprint: str
        refresh_token: str

    class Nested(BaseModel):
        inner: Leaky | None = None

    assert secret_named_fields(Leaky) == ["refresh_token"]
    assert secret_named_fields(Nested) == ["inner.refresh_token"]


def test_no_catalog_event_has_a_field_that_could_hold_a_plaintext_secret():
    offenders = {cls.type: secret_named_fields(cls) for cls in catalog()}
    assert {t: f for t, f in offenders.items() if f} == {}


def test_fingerprint_fields_accept_only_fingerprints_and_never_echo_the_refused_value():
    plaintext = "00Dxx0000001gER!AQEAQ-example"
    with pytest.raises(ValidationError) as refused:
        TokensImported(at=AT, source="api", fingerprints={"access_token": plaintext})
    assert plaintext not in str(refused.value)
    with pytest.raises(ValidationError) as refused:
        OAuthClientConfigured(
            environment="prod", integration="x", client_id="c", client_secret_fingerprint="s3cr3t-value", token_url="https://t"
        )
    assert "s3cr3t-value" not in str(refused.value)
