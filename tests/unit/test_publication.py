"""Pure parts of publication: CloudEvents bodies, subject tokens, webhook names, signatures."""

import base64
import json
import uuid
from datetime import datetime, timezone

from cloudevents.v1.http import from_json
from standardwebhooks import Webhook

from events.relay import StreamContext, cloudevent, subject_token
from service.handlers.webhooks import WEBHOOK_NAMES, new_signing_key, sign
from service.workers.webhooks import webhook_for

AT = datetime(2026, 10, 15, 14, 30, tzinfo=timezone.utc)


def _event(type_: str, stream_version: int = 3, **data) -> dict:
    context = StreamContext("prod.crm", "prod", "0b5f2f7e-8e5c-5a44-9d0e-2f1b8c3a9d11", "crm", "t-1")
    body = cloudevent(event_id=str(uuid.uuid4()), type_=type_, schema_version=1, stream_version=stream_version,
                      position=42, data_json=json.dumps(data, sort_keys=True, separators=(",", ":")),
                      occurred_at=AT, context=context)
    return json.loads(body)


def test_a_cloudevent_body_carries_the_payload_plus_version_and_position():
    body = _event("AccountNeedsReauth", reason="invalid_grant")
    assert body["data"] == {"reason": "invalid_grant", "stream_version": 3, "log_position": 42}
    assert body["type"] == "io.linkledger.AccountNeedsReauth.v1" and body["source"] == "/environments/prod"
    assert body["time"] == "2026-10-15T14:30:00.000000Z" and body["integration"] == "crm" and body["tenantid"] == "t-1"
    assert from_json(json.dumps(body).encode())["subject"] == "0b5f2f7e-8e5c-5a44-9d0e-2f1b8c3a9d11"
    assert _event("AccountValidated")["data"] == {"stream_version": 3, "log_position": 42}  # an empty payload


def test_subject_tokens_hold_no_wildcard_separator_or_space():
    assert subject_token("sales.force *>x y") == "sales_force___x_y"
    assert subject_token("hub-spot_2") == "hub-spot_2"


def test_webhook_names_follow_the_domain_events():
    cases = {
        "AccountConnecting": "integrated_account:created", "AccountValidated": "integrated_account:active",
        "AccountNeedsReauth": "integrated_account:authentication_error",
        "AccountReactivated": "integrated_account:reactivated",
        "PostInstallFailed": "integrated_account:post_install_error",
        "ValidationFailed": "integrated_account:validation_error", "AccountDeleted": "integrated_account:deleted",
        "AccountOverrideChanged": "integrated_account:updated", "AccountContextChanged": "integrated_account:updated",
    }
    for type_, name in cases.items():
        assert webhook_for(_event(type_))[0] == name, type_
    assert {name for name in cases.values()} == set(WEBHOOK_NAMES)
    assert webhook_for(_event("TokensImported", stream_version=2)) is None  # part of the first import
    assert webhook_for(_event("TokensImported", stream_version=7))[0] == "integrated_account:updated"
    for quiet in ("TokenRefreshed", "TokenRefreshFailed", "CredentialsAccessed", "TokensExported", "KeyShredded"):
        assert webhook_for(_event(quiet)) is None, quiet


def test_signatures_are_what_the_reference_library_computes():
    key, secret = new_signing_key()
    other_key, other = new_signing_key()
    assert base64.b64decode(secret.removeprefix("whsec_")) == key
    body = b'{"type":"integrated_account:created"}'
    header = sign([key, other_key], "msg_1", 1792067400, body)
    for s in (secret, other):
        expected = Webhook(s).sign("msg_1", datetime.fromtimestamp(1792067400, timezone.utc), body.decode())
        assert expected in header.split(" ")
