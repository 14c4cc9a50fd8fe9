"""Bulk import profiles: bodies (NDJSON / JSON array) and vendor shapes (truto, nango, canonical) into
ImportAccount commands, one result per record, with errors that name the field and never a secret."""

import copy
import json
import os
import time
import traceback
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain.commands import NAME_PATTERN, Credentials, ImportAccount
from service.handlers.import_profiles import (
    ParsedRecord,
    RecordError,
    export_record,
    parse_body,
    parse_import,
    to_command,
)

UTC = timezone.utc
NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
ENV = "prod"

# EXAMPLES.md, "Importing one account (Truto-shaped body)"
TRUTO = {
    "integration_name": "salesforce",
    "tenant_id": "customer_123",
    "authentication_method": "oauth2",
    "external_ref": "merge-linked-account-8f2c",
    "context": {
        "oauth": {
            "token": {
                "access_token": "00Dxx0000001gER!AQEAQ-example",
                "refresh_token": "5Aep861-example",
                "expires_at": "2026-10-15T14:30:00Z",
                "token_type": "Bearer",
                "scope": "api refresh_token",
            }
        },
        "instance_url": "https://acme.my.salesforce.com",
    },
}

# EXAMPLES.md, "A Nango connection export"
NANGO = {
    "connection_id": "acme-hubspot",
    "provider_config_key": "hubspot",
    "end_user": {"id": "customer_123"},
    "credentials": {
        "type": "OAUTH2",
        "access_token": "CJ-example",
        "refresh_token": "na1-example",
        "expires_at": "2026-10-15T14:30:00.000Z",
        "raw": {"token_type": "bearer", "expires_in": 1800},
    },
    "connection_config": {"portalId": 4242},
}


def truto(**changes) -> dict:
    """The Truto example with changes; a key "context.oauth.token.x" edits inside, None deletes."""
    record = copy.deepcopy(TRUTO)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = record
        for part in parents:
            target = target[part]
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return record


def ndjson(*records) -> bytes:
    return b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode() for r in records) + b"\n"


def cmd(record, profile="truto", **kwargs) -> ImportAccount:
    return to_command(record, environment=kwargs.get("environment", ENV), profile=profile, now=NOW)


def error_of(record, profile="truto", environment=ENV) -> RecordError:
    with pytest.raises(RecordError) as caught:
        to_command(record, environment=environment, profile=profile, now=NOW)
    return caught.value


# --------------------------------------------------------------------------- the EXAMPLES.md shapes


def test_truto_example_maps_to_the_expected_command():
    command = cmd(TRUTO)
    assert command.environment == "prod"
    assert command.integration == "salesforce"
    assert command.tenant_id == "customer_123"
    assert command.authentication_method == "oauth2"
    assert command.external_ref == "merge-linked-account-8f2c"
    assert command.credentials.access_token.get_secret_value() == "00Dxx0000001gER!AQEAQ-example"
    assert command.credentials.refresh_token.get_secret_value() == "5Aep861-example"
    assert command.credentials.extra == {}
    assert command.expires_at == datetime(2026, 10, 15, 14, 30, tzinfo=UTC)
    assert command.expires_at.utcoffset() == timedelta(0)
    assert command.token_type == "Bearer"
    assert command.scopes == ("api", "refresh_token")
    assert command.context == {"instance_url": "https://acme.my.salesforce.com"}
    assert command.source == "import:truto"


def test_nango_example_maps_to_the_expected_command():
    command = cmd(NANGO, "nango")
    assert command.integration == "hubspot"
    assert command.tenant_id == "customer_123"
    assert command.external_ref == "acme-hubspot"
    assert command.authentication_method == "oauth2"
    assert command.credentials.access_token.get_secret_value() == "CJ-example"
    assert command.credentials.refresh_token.get_secret_value() == "na1-example"
    # expires_at wins over raw.expires_in (which is relative to when the vendor got the token)
    assert command.expires_at == datetime(2026, 10, 15, 14, 30, tzinfo=UTC)
    assert command.expires_at.utcoffset() == timedelta(0)
    assert command.token_type == "bearer"
    assert command.context == {"portalId": 4242}
    assert command.credentials.extra == {}
    assert command.source == "import:nango"


def test_nango_falls_back_to_connection_id_and_uses_raw_expires_in_and_metadata():
    record = copy.deepcopy(NANGO)
    del record["end_user"]
    del record["credentials"]["expires_at"]
    record["credentials"]["raw"].update({"scope": "crm.objects.contacts.read,oauth", "id_token": "idt"})
    record["metadata"] = {"plan": "pro"}
    command = cmd(record, "nango")
    assert command.tenant_id == "acme-hubspot"
    assert command.expires_at == NOW + timedelta(seconds=1800)
    assert command.scopes == ("crm.objects.contacts.read", "oauth")
    assert command.context == {"portalId": 4242, "metadata": {"plan": "pro"}}
    assert command.credentials.extra["raw.id_token"].get_secret_value() == "idt"


def test_nango_api_key_and_basic_and_unsupported_types():
    api = {"connection_id": "c1", "provider_config_key": "bamboohr", "credentials": {"type": "API_KEY", "apiKey": "k-1"}}
    command = cmd(api, "nango")
    assert command.authentication_method == "api_key"
    assert command.credentials.api_key.get_secret_value() == "k-1"
    api["credentials"] = {"type": "API_KEY", "api_key": "k-2"}
    assert cmd(api, "nango").credentials.api_key.get_secret_value() == "k-2"
    basic = {"connection_id": "c2", "provider_config_key": "jira", "credentials": {"type": "BASIC", "username": "u", "password": "p"}}
    command = cmd(basic, "nango")
    assert (command.authentication_method, command.credentials.username) == ("basic", "u")
    assert command.credentials.password.get_secret_value() == "p"
    err = error_of({**basic, "credentials": {"type": "OAUTH1", "oauth_token": "t"}}, "nango")
    assert err.field == "credentials.type" and "OAUTH1" in err.reason
    err = error_of({**api, "credentials": {"type": "API_KEY"}}, "nango")
    assert (err.field, err.reason) == ("credentials.api_key", "required for api_key accounts")


def test_truto_api_key_and_basic_accounts_move_secrets_out_of_context():
    api = {"integration_name": "bamboohr", "tenant_id": "t1", "authentication_method": "api_key",
           "context": {"api_key": "key-1", "subdomain": "acme"}}
    command = cmd(api)
    assert command.credentials.api_key.get_secret_value() == "key-1"
    assert command.context == {"subdomain": "acme"}
    basic = {"integration_name": "jira", "tenant_id": "t2", "authentication_method": "basic",
             "context": {"username": "me@acme.test", "password": "pw", "site": "acme"}}
    command = cmd(basic)
    assert command.credentials.username == "me@acme.test"
    assert command.credentials.password.get_secret_value() == "pw"
    assert command.context == {"site": "acme"}
    assert error_of({**basic, "context": {"username": "me"}}).field == "context.password"
    assert error_of({**api, "context": {}}).field == "context.api_key"


def test_secret_named_context_keys_never_stay_in_clear_context():
    record = truto(context__client_secret="cs", context__nested={"webhook_secret": "ws", "region": "eu"})
    record["context"]["oauth"]["token"]["id_token"] = "idt"
    command = cmd(record)
    assert command.context == {"instance_url": "https://acme.my.salesforce.com", "nested": {"region": "eu"}}
    extra = {k: v.get_secret_value() for k, v in command.credentials.extra.items()}
    assert extra == {"client_secret": "cs", "nested.webhook_secret": "ws", "id_token": "idt"}


def test_context_floats_are_refused_with_their_path():
    err = error_of(truto(context__ratio={"x": 1.5}))
    assert err.field == "context.ratio.x"


# --------------------------------------------------------------------------- expiry and scopes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-10-15T14:30:00Z", datetime(2026, 10, 15, 14, 30, tzinfo=UTC)),
        ("2026-10-15T16:30:00+02:00", datetime(2026, 10, 15, 14, 30, tzinfo=UTC)),
        ("2026-10-15T14:30:00.250Z", datetime(2026, 10, 15, 14, 30, 0, 250000, tzinfo=UTC)),
        ("2026-10-15T14:30:00", datetime(2026, 10, 15, 14, 30, tzinfo=UTC)),  # naive means UTC
        (1791995400, datetime(2026, 10, 14, 16, 30, tzinfo=UTC)),
        ("1791995400", datetime(2026, 10, 14, 16, 30, tzinfo=UTC)),
    ],
)
def test_expires_at_forms_normalise_to_aware_utc(value, expected):
    expires_at = cmd(truto(context__oauth__token__expires_at=value)).expires_at
    assert expires_at == expected
    assert expires_at.tzinfo is not None and expires_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", [3600, "3600"])
def test_expires_in_counts_from_the_injected_now(value):
    record = truto(context__oauth__token__expires_at=None, context__oauth__token__expires_in=value)
    assert cmd(record).expires_at == NOW + timedelta(hours=1)
    canonical = export_record(**_export_args(cmd(TRUTO)))
    canonical["expires_at"] = None
    canonical["expires_in"] = value
    assert cmd(canonical, "canonical").expires_at == NOW + timedelta(hours=1)


def test_expires_at_wins_over_expires_in():
    record = truto(context__oauth__token__expires_in=60)
    assert cmd(record).expires_at == datetime(2026, 10, 15, 14, 30, tzinfo=UTC)


@pytest.mark.parametrize("value", ["-5", -5, "soon", True, [1]])
def test_bad_expires_in_is_refused(value):
    record = truto(context__oauth__token__expires_at=None, context__oauth__token__expires_in=value)
    assert error_of(record).field == "context.oauth.token.expires_in"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("api refresh_token", ("api", "refresh_token")),
        ("api,refresh_token", ("api", "refresh_token")),
        ("api, refresh_token  web", ("api", "refresh_token", "web")),
        (["api", "refresh_token"], ("api", "refresh_token")),
        ("", ()),
    ],
)
def test_scope_forms(value, expected):
    assert cmd(truto(context__oauth__token__scope=value)).scopes == expected


def test_scope_list_with_a_non_string_names_the_item():
    err = error_of(truto(context__oauth__token__scope=["api", 7]))
    assert err.field == "context.oauth.token.scope[1]"


# --------------------------------------------------------------------------- bad records, good neighbours


def test_each_bad_record_kind_gets_its_line_and_field_while_neighbours_parse():
    good = lambda n: truto(external_ref=f"ref-{n}")  # noqa: E731
    no_refresh = truto(external_ref="ref-x1", context__oauth__token__refresh_token=None)
    bad_expiry = truto(external_ref="ref-x2", context__oauth__token__expires_at="next tuesday")
    bad_method = truto(external_ref="ref-x3", authentication_method="saml")
    no_tenant = truto(external_ref="ref-x4", tenant_id=None)
    no_access = truto(external_ref="ref-x5", context__oauth__token__access_token=None)
    body = ndjson(
        good(1),                   # 1
        b"[1, 2]",                 # 2 not an object
        good(2),                   # 3
        b'{"integration_name": ',  # 4 invalid JSON
        no_refresh,                # 5
        bad_expiry,                # 6
        bad_method,                # 7
        no_tenant,                 # 8
        good(3),                   # 9
        good(1),                   # 10 repeats line 1
        no_access,                 # 11
        good(4),                   # 12
    )
    results = parse_import(body, "application/x-ndjson", environment=ENV, profile="truto", now=NOW)
    assert [r.line for r in results] == list(range(1, 13))
    assert [r.line for r in results if r.ok] == [1, 3, 9, 12]
    errors = {r.line: r.error for r in results if not r.ok}
    assert all(r.command is None for r in results if r.error) and all(r.error is None for r in results if r.command)
    assert (errors[2].field, errors[2].reason) == ("", "each record must be a JSON object")
    assert errors[4].field == "" and errors[4].reason.startswith("not valid JSON: ")
    assert errors[5].field == "context.oauth.token.refresh_token"
    assert errors[5].reason.startswith("required for oauth2") and "kept alive" in errors[5].reason
    assert errors[6].field == "context.oauth.token.expires_at" and "next tuesday" in errors[6].reason
    assert errors[7].field == "authentication_method" and "saml" in errors[7].reason
    assert errors[8].field == "tenant_id"
    assert (errors[10].field, errors[10].reason) == ("external_ref", "repeats line 1")
    assert errors[11].field == "context.oauth.token.access_token"


def test_repeat_without_external_ref_is_reported_on_tenant_id():
    a = truto(external_ref=None)
    other_integration = truto(external_ref=None, integration_name="hubspot")
    results = parse_import(ndjson(a, other_integration, a), None, environment=ENV, profile="truto", now=NOW)
    assert [r.ok for r in results] == [True, True, False]
    assert (results[2].error.field, results[2].error.reason) == ("tenant_id", "repeats line 1")


def test_nango_repeat_is_reported_on_connection_id():
    results = parse_import(ndjson(NANGO, NANGO), None, environment=ENV, profile="nango", now=NOW)
    assert results[1].error.field == "connection_id" and results[1].error.reason == "repeats line 1"


def test_pydantic_errors_become_record_errors_on_the_profile_path():
    err = error_of(truto(integration_name="Sales Force"))
    assert err.field == "integration_name" and "pattern" in err.reason and "Sales Force" in err.reason
    err = error_of({**NANGO, "provider_config_key": "HubSpot Prod"}, "nango")
    assert err.field == "provider_config_key"
    assert error_of(truto(tenant_id="x" * 201)).field == "tenant_id"
    assert error_of(truto(external_ref="")).field == "external_ref"
    err = error_of(TRUTO, environment="Not Valid")
    assert err.field == "environment"
    assert error_of(truto(tenant_id="")).field == "tenant_id"


def test_non_object_records_are_refused():
    for value in (None, 1, "x", [TRUTO], True):
        err = error_of(value)
        assert (err.field, err.reason) == ("", "each record must be a JSON object")


# --------------------------------------------------------------------------- bodies


def test_ndjson_blank_lines_and_crlf_keep_physical_line_numbers():
    one, two = json.dumps(truto(external_ref="a")).encode(), json.dumps(truto(external_ref="b")).encode()
    body = b"\r\n" + one + b"\r\n\r\n   \r\n" + two + b"\r\n\r\nnot json\r\n"
    results = parse_import(body, "application/jsonl", environment=ENV, profile="truto", now=NOW)
    assert [(r.line, r.ok) for r in results] == [(2, True), (5, True), (7, False)]


def test_one_bad_line_does_not_stop_the_rest_of_the_body():
    lines = [b"{bad"] + [json.dumps(truto(external_ref=f"r{i}")).encode() for i in range(3)] + [b"\xff\xfe"]
    values = list(parse_body(b"\n".join(lines), "application/x-ndjson"))
    assert [n for n, _ in values] == [1, 2, 3, 4, 5]
    assert isinstance(values[0][1], RecordError) and isinstance(values[4][1], RecordError)
    assert all(isinstance(v, dict) for _, v in values[1:4])


def test_json_array_body_numbers_records_by_index():
    body = json.dumps([truto(external_ref="a"), 5, truto(external_ref="b")]).encode()
    results = parse_import(body, "application/json; charset=utf-8", environment=ENV, profile="truto", now=NOW)
    assert [(r.line, r.ok) for r in results] == [(1, True), (2, False), (3, True)]
    assert results[1].error.reason == "each record must be a JSON object"


def test_array_sniffed_without_content_type_and_ndjson_type_forces_lines():
    body = json.dumps([truto(external_ref="a"), truto(external_ref="b")]).encode()
    assert [r.ok for r in parse_import(b"  \n" + body, None, environment=ENV, profile="truto", now=NOW)] == [True, True]
    lines = parse_import(b"[1]\n" + json.dumps(TRUTO).encode(), "application/x-ndjson", environment=ENV, profile="truto", now=NOW)
    assert [(r.line, r.ok) for r in lines] == [(1, False), (2, True)]


def test_a_malformed_array_is_one_error_at_line_1():
    body = json.dumps([TRUTO, TRUTO]).encode()[:-5]
    results = parse_import(body, "application/json", environment=ENV, profile="truto", now=NOW)
    assert len(results) == 1
    assert results[0].line == 1 and results[0].error.field == ""
    assert "array could not be parsed" in results[0].error.reason


def test_pretty_printed_single_object_as_application_json_is_one_record():
    results = parse_import(json.dumps(TRUTO, indent=2).encode(), "application/json", environment=ENV, profile="truto", now=NOW)
    assert [(r.line, r.ok) for r in results] == [(1, True)]


def test_nan_and_deep_nesting_are_per_line_errors():
    body = b'{"a": NaN}\n' + b"[" * 100_000 + b"\n" + json.dumps(TRUTO).encode()
    results = parse_import(body, None, environment=ENV, profile="truto", now=NOW)
    assert [(r.line, r.ok) for r in results] == [(1, False), (2, False), (3, True)]


def test_ten_thousand_records_parse_quickly():
    template = json.dumps(TRUTO)
    body = "\n".join(template.replace("merge-linked-account-8f2c", f"ref-{i}") for i in range(10_000)).encode()
    started = time.process_time()  # CPU time: other processes on a busy machine don't count
    results = parse_import(body, "application/x-ndjson", environment=ENV, profile="truto", now=NOW)
    elapsed = time.process_time() - started
    assert len(results) == 10_000 and all(r.ok for r in results)
    assert len({r.command.external_ref for r in results}) == 10_000
    assert elapsed < 2.0, f"10,000 records took {elapsed:.2f}s of CPU"


# --------------------------------------------------------------------------- canonical format and round trip


def _export_args(command: ImportAccount) -> dict:
    return {
        "integration": command.integration,
        "tenant_id": command.tenant_id,
        "authentication_method": command.authentication_method,
        "external_ref": command.external_ref,
        "secrets": command.credentials.plaintext(),
        "token_type": command.token_type,
        "expires_at": command.expires_at,
        "scopes": command.scopes,
        "context": command.context,
    }


def test_export_record_writes_the_canonical_format():
    record = export_record(**_export_args(cmd(truto(context__oauth__token__id_token="idt"))))
    assert record == {
        "integration": "salesforce",
        "tenant_id": "customer_123",
        "authentication_method": "oauth2",
        "external_ref": "merge-linked-account-8f2c",
        "credentials": {
            "access_token": "00Dxx0000001gER!AQEAQ-example",
            "refresh_token": "5Aep861-example",
            "extra": {"id_token": "idt"},
        },
        "token_type": "Bearer",
        "expires_at": "2026-10-15T14:30:00Z",
        "scopes": ["api", "refresh_token"],
        "context": {"instance_url": "https://acme.my.salesforce.com"},
    }


@pytest.mark.parametrize(("record", "profile"), [(TRUTO, "truto"), (NANGO, "nango")])
def test_vendor_imports_round_trip_through_the_canonical_format(record, profile):
    original = cmd(record, profile)
    exported = json.loads(json.dumps(export_record(**_export_args(original))))
    back = cmd(exported, "canonical")
    assert back == original.model_copy(update={"source": "import:canonical"})
    assert back != original  # source differs: the comparison above is not vacuous


def test_canonical_refuses_unknown_fields():
    exported = export_record(**_export_args(cmd(TRUTO)))
    assert error_of({**exported, "scope": "api"}, "canonical").field == "scope"
    exported["credentials"]["acess_token"] = "x"
    assert error_of(exported, "canonical").field == "credentials.acess_token"


_names = st.from_regex(NAME_PATTERN, fullmatch=True)
_text = st.text(min_size=1, max_size=20)
_context_keys = st.sampled_from(["instance_url", "portalId", "subdomain", "region", "site", "a", "b"])
_context_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_context_keys, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def _commands(draw) -> ImportAccount:
    method = draw(st.sampled_from(["oauth2", "api_key", "basic"]))
    secrets: dict = {}
    optional = lambda: draw(st.none() | _text)  # noqa: E731
    secrets["access_token"] = draw(_text) if method == "oauth2" else optional()
    secrets["refresh_token"] = draw(_text) if method == "oauth2" else optional()
    secrets["api_key"] = draw(_text) if method == "api_key" else optional()
    secrets["username"] = draw(_text) if method == "basic" else optional()
    secrets["password"] = draw(st.text(max_size=10)) if method == "basic" else optional()
    secrets["extra"] = draw(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=10), max_size=3))
    return ImportAccount(
        environment=ENV,
        integration=draw(_names),
        tenant_id=draw(st.text(min_size=1, max_size=40)),
        authentication_method=method,
        external_ref=draw(st.none() | st.text(min_size=1, max_size=40)),
        credentials=Credentials(**{k: v for k, v in secrets.items() if v is not None}),
        token_type=draw(st.none() | st.sampled_from(["Bearer", "bearer", "MAC"])),
        expires_at=draw(st.none() | st.datetimes(
            min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1),
            timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-7))]),
        )),
        scopes=tuple(draw(st.lists(st.text(max_size=10), max_size=4))),
        context=draw(st.dictionaries(_context_keys, _context_values, max_size=4)),
        source="import:canonical",
    )


@settings(max_examples=150, deadline=None)
@given(_commands())
def test_canonical_round_trip_gives_an_equal_command(original):
    exported = json.loads(json.dumps(export_record(**_export_args(original))))
    assert to_command(exported, environment=ENV, profile="canonical", now=NOW) == original


# --------------------------------------------------------------------------- no secret ever leaks


CANARIES = {
    "access": "CANARY-ACCESS-123",
    "refresh": "CANARY-REFRESH-456",
    "api_key": "CANARY-APIKEY-789",
    "password": "CANARY-PASSWORD-000",
    "client_secret": "CANARY-CLIENTSECRET-111",
    "extra": "CANARY-EXTRA-222",
}


def _canary_truto(**changes) -> dict:
    """The Truto example carrying every kind of secret as a canary, then `changes` (see `truto`)."""
    token = dict(TRUTO["context"]["oauth"]["token"], access_token=CANARIES["access"],
                 refresh_token=CANARIES["refresh"], id_token=CANARIES["extra"])
    context = dict(TRUTO["context"], oauth={"token": token}, api_key=CANARIES["api_key"],
                   password=CANARIES["password"], client_secret=CANARIES["client_secret"])
    base = {**TRUTO, "context": context}
    record = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = record
        for part in parents:
            target = target[part]
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return record


def _canary_nango(**credentials) -> dict:
    record = copy.deepcopy(NANGO)
    record["credentials"].update(access_token=CANARIES["access"], refresh_token=CANARIES["refresh"])
    record["credentials"]["raw"]["id_token"] = CANARIES["extra"]
    record["connection_config"]["client_secret"] = CANARIES["client_secret"]
    for key, value in credentials.items():
        if value is None:
            record["credentials"].pop(key, None)
        else:
            record["credentials"][key] = value
    return record


def _canary_canonical(**changes) -> dict:
    record = export_record(
        integration="salesforce", tenant_id="t", authentication_method="oauth2", external_ref="r",
        secrets={"access_token": CANARIES["access"], "refresh_token": CANARIES["refresh"],
                 "api_key": CANARIES["api_key"], "username": "u", "password": CANARIES["password"],
                 "extra": {"client_secret": CANARIES["client_secret"], "x": CANARIES["extra"]}},
        token_type="Bearer", expires_at=NOW, scopes=["api"], context={"instance_url": "https://x.test"},
    )
    for key, value in changes.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def _assert_no_canary(error: RecordError) -> None:
    texts = [str(error), repr(error), error.field, error.reason, repr(error.args),
             "".join(traceback.format_exception(error))]
    for text in texts:
        for canary in CANARIES.values():
            assert canary not in text, (canary, text)
    assert "CANARY" not in "".join(texts)


def test_no_error_ever_contains_a_secret():
    c = CANARIES
    tok = "context__oauth__token__"
    truto_bad = [
        json.dumps({"access_token": c["access"], "refresh_token": c["refresh"]}).encode()[:-3],  # invalid JSON
        json.dumps(c["access"]).encode(),  # a string, not an object
        json.dumps([c["access"], c["refresh"]]).encode(),
        _canary_truto(**{f"{tok}refresh_token": None}),
        _canary_truto(**{f"{tok}access_token": None}),
        _canary_truto(**{f"{tok}access_token": [c["access"]]}),
        _canary_truto(**{f"{tok}refresh_token": {"v": c["refresh"]}}),
        _canary_truto(**{f"{tok}access_token": c["access"] + "\ud800"}),
        _canary_truto(**{f"{tok}expires_at": "never"}),
        _canary_truto(**{f"{tok}expires_at": None, f"{tok}expires_in": "later"}),
        _canary_truto(**{f"{tok}scope": [c["access"], 1]}),
        _canary_truto(authentication_method="saml"),
        _canary_truto(authentication_method="api_key", context__api_key=None),
        _canary_truto(tenant_id=None),
        _canary_truto(tenant_id="x" * 500),
        _canary_truto(integration_name="Not A Name"),
        _canary_truto(external_ref=""),
        _canary_truto(context__ratio=0.5),
        _canary_truto(context__deep=json.loads("[" * 40 + "]" * 40)),
        _canary_truto(context__oauth__token="not an object"),
        _canary_truto(context__password=[c["password"]]),
        _canary_truto(context__api_key=7),
    ]
    dupe = _canary_truto(external_ref="dupe")
    truto_bad += [dupe, dupe]
    results = parse_import(ndjson(*truto_bad), None, environment=ENV, profile="truto", now=NOW)
    assert len(results) == len(truto_bad)
    assert [r.ok for r in results].count(True) == 1  # only the first of the duplicates is good

    nango_bad = [
        _canary_nango(refresh_token=None),
        _canary_nango(access_token=None),
        _canary_nango(type="OAUTH1"),
        _canary_nango(expires_at="whenever"),
        _canary_nango(type="API_KEY"),
        _canary_nango(access_token=12345),
        {**_canary_nango(), "provider_config_key": "Bad Key"},
        {**_canary_nango(), "end_user": "someone"},
        {**_canary_nango(), "connection_config": {"x": 1.5, "client_secret": c["client_secret"]}},
    ]
    results += parse_import(ndjson(*nango_bad), None, environment=ENV, profile="nango", now=NOW)

    canonical_bad = [
        _canary_canonical(credentials={"access_token": c["access"], "refresh_token": c["refresh"], "bogus": c["extra"]}),
        _canary_canonical(credentials={"access_token": c["access"], "extra": {"k": [c["extra"]]}}),
        _canary_canonical(credentials={"refresh_token": c["refresh"]}),
        _canary_canonical(expires_at="yesterday-ish"),
        _canary_canonical(tenant_id=None),
        _canary_canonical(scope="api"),
        _canary_canonical(context={"client_secret": "dup", "nested": 1.25}),
        _canary_canonical(credentials={"access_token": c["access"], "refresh_token": c["refresh"],
                                       "extra": {"client_secret": c["extra"]}}, context={"client_secret": "x"}),
    ]
    results += parse_import(ndjson(*canonical_bad), None, environment=ENV, profile="canonical", now=NOW)
    # a bad environment fails every record, through pydantic, with all secrets present
    results += parse_import(ndjson(_canary_truto()), None, environment="BAD ENV", profile="truto", now=NOW)
    # a malformed array holding secrets
    results += parse_import(json.dumps([_canary_truto()]).encode()[:-2], "application/json",
                            environment=ENV, profile="truto", now=NOW)

    errors = [r.error for r in results if r.error is not None]
    assert len(errors) == len(results) - 1
    if os.environ.get("SHOW_CANARY_ERRORS"):
        print(*(repr(e) for e in errors), sep="\n")
    for error in errors:
        _assert_no_canary(error)
    # good commands hide their secrets too
    assert "CANARY" not in repr(results)


# --------------------------------------------------------------------------- fuzzing: never raises


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
    | st.sampled_from(["\ud800", "2026-10-15T14:30:00Z", "1791995400", "oauth2", "api_key", "basic", "OAUTH2", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
_plausible = st.sampled_from(["salesforce", "customer_123", "ref-1", "tok", "Bearer", "api refresh_token", "x"]) | _json


def _maybe(**fields):
    return st.fixed_dictionaries({}, optional=fields)


_truto_records = _maybe(
    integration_name=_plausible, tenant_id=_plausible, external_ref=_plausible, authentication_method=_plausible,
    context=_maybe(
        oauth=_maybe(token=_maybe(access_token=_plausible, refresh_token=_plausible, expires_at=_plausible,
                                  expires_in=_plausible, token_type=_plausible, scope=_plausible, id_token=_json) | _json)
        | _json,
        api_key=_plausible, password=_plausible, username=_plausible, instance_url=_json, client_secret=_json,
    ) | _json,
)
_nango_records = _maybe(
    connection_id=_plausible, provider_config_key=_plausible, end_user=_maybe(id=_plausible) | _json,
    credentials=_maybe(type=st.sampled_from(["OAUTH2", "API_KEY", "BASIC", "OAUTH1"]) | _json, access_token=_plausible,
                       refresh_token=_plausible, expires_at=_plausible, apiKey=_plausible, api_key=_plausible,
                       username=_plausible, password=_plausible,
                       raw=_maybe(token_type=_plausible, expires_in=_plausible, scope=_plausible) | _json) | _json,
    connection_config=_json, metadata=_json,
)
_canonical_records = _maybe(
    integration=_plausible, tenant_id=_plausible, authentication_method=_plausible, external_ref=_plausible,
    credentials=_maybe(access_token=_plausible, refresh_token=_plausible, api_key=_plausible, username=_plausible,
                       password=_plausible, extra=_json) | _json,
    token_type=_plausible, expires_at=_plausible, expires_in=_plausible, scopes=_plausible, context=_json,
)


def _check_results(results, expected_count=None):
    assert all(isinstance(r, ParsedRecord) for r in results)
    if expected_count is not None:
        assert len(results) == expected_count
    for r in results:
        assert (r.command is None) != (r.error is None)
        assert r.error is None or isinstance(r.error, RecordError)
        assert r.command is None or isinstance(r.command, ImportAccount)
    lines = [r.line for r in results]
    assert lines == sorted(lines) and len(set(lines)) == len(lines)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([("truto", _truto_records), ("nango", _nango_records), ("canonical", _canonical_records)]).flatmap(
        lambda pair: st.tuples(st.just(pair[0]), st.lists(pair[1] | _json, min_size=1, max_size=5))
    ),
    st.booleans(),
)
def test_fuzz_parse_import_never_raises_for_json_records(profile_records, as_array):
    profile, records = profile_records
    if as_array:
        body, content_type = json.dumps(records).encode(), "application/json"
    else:
        body, content_type = b"\n".join(json.dumps(r).encode() for r in records), "application/x-ndjson"
    _check_results(parse_import(body, content_type, environment=ENV, profile=profile, now=NOW), len(records))


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=200) | st.lists(st.sampled_from([b"{", b"}", b"[", b"]", b"\n", b'"', b":", b",", b"1", b"\xff", b" "]),
                                       max_size=40).map(b"".join),
    st.sampled_from([None, "application/json", "application/x-ndjson", "text/plain", "application/jsonl; x=1"]),
    st.sampled_from(["truto", "nango", "canonical"]),
)
def test_fuzz_parse_import_never_raises_for_arbitrary_bytes(body, content_type, profile):
    _check_results(parse_import(body, content_type, environment=ENV, profile=profile, now=NOW))
