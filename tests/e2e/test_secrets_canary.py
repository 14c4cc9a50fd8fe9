"""Canary secrets: distinctive values in every secret field, driven through every output path the
service has today, then searched for everywhere they must not be.

Secrets (access and refresh tokens, id tokens and other provider extras, the OAuth client secret,
an api_key account's key, a basic account's password, the API keys themselves) may appear in
exactly two places: the token endpoint (its own account's current credential) and the admin
export. Not in any other response body or header, not in a log record at DEBUG, not in
`events.data` or `stream_heads.snapshot` (or any other column), and in the `secret` column only
as ciphertext. Bad records whose *secret* fields carry canaries while another field is wrong must
not echo them in their error either.

What the scenario cannot reach today: a 410 (the token endpoint answers 404 for a deleted account
before it would touch the shredded key, and the export skips deleted accounts), and NATS (the
gateway runs no relay yet, so nothing is published).
"""

import base64
import json
import logging
import secrets as pysecrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import asyncpg
import pytest

PROBLEM_JSON = "application/problem+json"
INTEGRATION = "salesforce"
EXPIRES = "2031-10-15T14:30:00Z"


# --------------------------------------------------------------------------- canaries


# Letters that are neither hex digits nor vowels: a canary's random parts never collide with the
# hex of fingerprints, hashes, uuids and bytea dumps, nor spell an English word.
ALPHABET = "GHJKMNPQRSTVWXYZ"
SENTINEL = "ZQXJ"  # every canary ends with it, so a "last 4 characters" mask is caught too


def _random(n: int) -> str:
    return "".join(pysecrets.choice(ALPHABET) for _ in range(n))


class Canaries:
    """CANARY-<KIND>-<run mark>-<12 random letters>ZQXJ. The word, the run mark, the sentinel and
    both ends of the random part are each searched for, so a prefix, a suffix ("...ZQXJ") or an
    encoding of a canary is caught as well as the whole value."""

    def __init__(self) -> None:
        self.mark = _random(8)
        self.values: dict[str, str] = {}

    def __getitem__(self, kind: str) -> str:
        if kind not in self.values:
            self.values[kind] = f"CANARY-{kind}-{self.mark}-{_random(12)}{SENTINEL}"
        return self.values[kind]

    def all(self) -> list[str]:
        return list(self.values.values())


def _needles(secret: str) -> list[bytes]:
    """The forms a leak of `secret` could take in text: itself, both ends of its random part, its
    hex (a bytea rendered as text), its base64 at each of the three alignments."""
    raw = secret.encode()
    tail = secret.rsplit("-", 1)[-1]
    # The end needle spans 8 random letters and the sentinel: with only 4 random letters, two of a
    # run's ~130 canaries shared their last 8 characters every few runs (a false leak).
    out = [raw, tail[:8].encode(), tail[-12:].encode(), raw.hex().encode()]
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw)
        out.append(encoded[4 if pad else 0:-4])  # the part not touched by padding or neighbours
    return out


def _lower(data: bytes) -> bytes:
    return data.lower()


def find_leaks(blob: bytes, canaries: Canaries, allow: frozenset = frozenset(), extra: tuple[str, ...] = ()) -> list[str]:
    """Which canaries (or API keys in `extra`) show in `blob`, except those in `allow`."""
    low = _lower(blob)
    found = []
    if not allow:
        for word in (b"canary", canaries.mark.lower().encode(), SENTINEL.lower().encode()):
            if word in low:
                found.append(f"the marker {word.decode()!r}")
    for secret in [*canaries.all(), *extra]:
        if secret in allow:
            continue
        if any(_lower(needle) in low for needle in _needles(secret)):
            found.append(secret)
    return found


# --------------------------------------------------------------------------- request shapes


def truto_oauth(tenant: str, access: str | None, refresh: str | None, *, external_ref: str | None = None,
                integration: str = INTEGRATION, expires_at: object = EXPIRES, extra_token: dict | None = None,
                context: dict | None = None) -> dict:
    token = {"access_token": access, "refresh_token": refresh, "expires_at": expires_at, "token_type": "Bearer",
             "scope": "api refresh_token", **(extra_token or {})}
    return {
        "integration_name": integration, "tenant_id": tenant, "authentication_method": "oauth2",
        "external_ref": external_ref,
        "context": {"oauth": {"token": {k: v for k, v in token.items() if v is not None}},
                    "instance_url": f"https://{tenant}.my.salesforce.com", **(context or {})},
    }


def canonical(tenant: str, access: str | None, refresh: str | None, *, external_ref: str | None = None,
              integration: str = INTEGRATION, expires_at: object = EXPIRES, extra: dict | None = None, **more) -> dict:
    credentials = {k: v for k, v in (("access_token", access), ("refresh_token", refresh)) if v is not None}
    if extra:
        credentials["extra"] = extra
    return {"integration": integration, "tenant_id": tenant, "external_ref": external_ref,
            "authentication_method": "oauth2", "credentials": credentials, "expires_at": expires_at, **more}


def integration_body(client_secret: object, **oauth_more) -> dict:
    return {
        "display_name": "Salesforce",
        "authentication_methods": ["oauth2", "api_key", "basic"],
        "oauth_client": {"client_id": "3MVG9-client", "client_secret": client_secret,
                         "token_url": "https://login.salesforce.com/services/oauth2/token", **oauth_more},
    }


def ndjson(*records: object) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


# --------------------------------------------------------------------------- recording responses


@dataclass
class Seen:
    label: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    allow: frozenset  # canaries this response may carry (the token endpoint, the export)

    def blob(self) -> bytes:
        head = "\n".join(f"{k}: {v}" for k, v in self.headers).encode()
        return head + b"\n\n" + self.body


@dataclass
class Scenario:
    gateway: object
    c: Canaries
    seen: list[Seen] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)  # the secret part of every key minted
    ids: dict[str, str] = field(default_factory=dict)  # account name -> id
    token_bodies: dict[str, dict] = field(default_factory=dict)
    export_lines: list[dict] = field(default_factory=list)
    before_update: datetime | None = None
    export_expected: set[str] = field(default_factory=set)

    async def key(self, role: str, *environments: str) -> dict:
        headers = await self.gateway.headers(role, *environments)
        self.api_keys.append(headers["Authorization"].removeprefix("Bearer ").rsplit("_", 1)[1])
        return headers

    async def call(self, label: str, method: str, path: str, expect: int, *, allow=frozenset(), **kwargs) -> Seen:
        response = await self.gateway.client.request(method, path, **kwargs)
        body = await response.read()
        seen = Seen(label, response.status, list(response.headers.items()), body, frozenset(allow))
        self.seen.append(seen)
        if response.status != expect:
            self.unexpected.append(f"{label}: {method} {path} answered {response.status}, expected {expect}: {body[:300]!r}")
        elif response.status >= 400 and response.content_type != PROBLEM_JSON:
            self.unexpected.append(f"{label}: {response.status} as {response.content_type}, not problem+json")
        return seen

    def json(self, seen: Seen) -> dict:
        assert seen.status < 300, (seen.label, seen.status, seen.body[:500])
        return json.loads(seen.body)


async def run_scenario(gateway) -> Scenario:
    c = Canaries()
    s = Scenario(gateway, c)
    admin = await s.key("admin")
    operator = await s.key("operator")
    auditor = await s.key("auditor")
    service = await s.key("service")
    prod_admin = await s.key("admin", "prod")
    staging_operator = await s.key("operator", "staging")
    staging_service = await s.key("service", "staging")
    prod = "/v1/environments/prod"
    nd = {"Content-Type": "application/x-ndjson"}

    # ---- integrations: PUT responses, rotation of the client secret, every refusal
    s.json(await s.call("integration put", "PUT", f"{prod}/integrations/{INTEGRATION}", 200,
                        json=integration_body(c["CLIENT-SECRET-1"]), headers=admin))
    s.json(await s.call("integration rotate secret", "PUT", f"{prod}/integrations/{INTEGRATION}", 200,
                        json=integration_body(c["CLIENT-SECRET-2"]), headers=admin))
    s.json(await s.call("integration put unchanged", "PUT", f"{prod}/integrations/{INTEGRATION}", 200,
                        json=integration_body(c["CLIENT-SECRET-2"]), headers=admin))
    staging = {**integration_body(c["CLIENT-SECRET-STAGING"]), "authentication_methods": ["oauth2"]}
    s.json(await s.call("staging integration", "PUT", f"/v1/environments/staging/integrations/{INTEGRATION}", 200,
                        json=staging, headers=admin))
    await s.call("integration: token_url of the wrong type", "PUT", f"{prod}/integrations/bad1", 422,
                 json=integration_body(c["CLIENT-SECRET-BAD-TYPE"], token_url=12), headers=admin)
    await s.call("integration: unknown oauth_client field", "PUT", f"{prod}/integrations/bad2", 422,
                 json=integration_body(c["CLIENT-SECRET-BAD-EXTRA"], client_secret_old=c["CLIENT-SECRET-OLD"]),
                 headers=admin)
    await s.call("integration: secret of the wrong type", "PUT", f"{prod}/integrations/bad3", 422,
                 json=integration_body({"value": c["CLIENT-SECRET-NESTED"]}), headers=admin)
    await s.call("integration: no authentication method", "PUT", f"{prod}/integrations/bad4", 422,
                 json={**integration_body(c["CLIENT-SECRET-NO-METHOD"]), "authentication_methods": []}, headers=admin)
    await s.call("integration: bad client_authentication", "PUT", f"{prod}/integrations/bad5", 422,
                 json=integration_body(c["CLIENT-SECRET-BAD-AUTH"], client_authentication="private_key_jwt"),
                 headers=admin)
    await s.call("integration: truncated JSON", "PUT", f"{prod}/integrations/bad6", 422,
                 data=json.dumps(integration_body(c["CLIENT-SECRET-TRUNCATED"]))[:-3], headers=admin)
    await s.call("integration: operator", "PUT", f"{prod}/integrations/{INTEGRATION}", 403,
                 json=integration_body(c["CLIENT-SECRET-403"]), headers=operator)
    await s.call("integration: no key", "PUT", f"{prod}/integrations/{INTEGRATION}", 401,
                 json=integration_body(c["CLIENT-SECRET-401"]))
    await s.call("integration: other environment", "PUT", f"{prod}/integrations/{INTEGRATION}", 404,
                 json=integration_body(c["CLIENT-SECRET-404"]), headers=await s.key("admin", "staging"))

    # ---- single imports (truto): oauth2 with provider extras, api_key, basic; replays
    a = truto_oauth("cust-a", c["AT-A1"], c["RT-A1"], external_ref="ref-a",
                    extra_token={"id_token": c["IDTOKEN-A"]}, context={"webhook_secret": c["CTX-SECRET-A"]})
    s.ids["a"] = s.json(await s.call("import a", "POST", f"{prod}/accounts", 201, json=a, headers=operator))["account"]["id"]
    s.before_update = datetime.now(timezone.utc)
    b = {"integration_name": INTEGRATION, "tenant_id": "cust-b", "authentication_method": "api_key",
         "context": {"api_key": c["APIKEY-B"], "subdomain": "acme"}}
    s.ids["b"] = s.json(await s.call("import b (api_key)", "POST", f"{prod}/accounts", 201, json=b,
                                     headers=admin))["account"]["id"]
    basic = {"integration_name": INTEGRATION, "tenant_id": "cust-c", "authentication_method": "basic",
             "context": {"username": "user-c", "password": c["PASSWORD-C"]}}
    s.ids["c"] = s.json(await s.call("import c (basic)", "POST", f"{prod}/accounts", 201, json=basic,
                                     headers=admin))["account"]["id"]
    d = truto_oauth("cust-d", c["AT-D"], c["RT-D"])
    idem = {**operator, "Idempotency-Key": "import-d-1"}
    s.ids["d"] = s.json(await s.call("import d, idempotent", "POST", f"{prod}/accounts", 201, json=d,
                                     headers=idem))["account"]["id"]
    await s.call("import d, replayed", "POST", f"{prod}/accounts", 201, json=d, headers=idem)
    await s.call("import d, unchanged", "POST", f"{prod}/accounts", 200, json=d, headers=operator)
    await s.call("idempotency key reused for another body", "POST", f"{prod}/accounts", 422,
                 json=truto_oauth("cust-d", c["AT-D-OTHER"], c["RT-D-OTHER"]), headers=idem)
    e = truto_oauth("cust-e", c["AT-E"], c["RT-E"], external_ref="ref-e")
    s.ids["e"] = s.json(await s.call("import e (to delete)", "POST", f"{prod}/accounts", 201, json=e,
                                     headers=admin))["account"]["id"]
    s.ids["s"] = s.json(await s.call("import staging", "POST", "/v1/environments/staging/accounts", 201,
                                     json=truto_oauth("cust-s", c["AT-S"], c["RT-S"]), headers=staging_operator))["account"]["id"]

    # ---- single imports that fail, their secret fields all canaries
    bad_single = [
        ("bad expires_at", 422, truto_oauth("bad-1", c["AT-BAD-EXPIRY"], c["RT-BAD-EXPIRY"], expires_at="next tuesday")),
        ("expires_at in milliseconds", 422, truto_oauth("bad-2", c["AT-BAD-MS"], c["RT-BAD-MS"], expires_at=1792067400000)),
        ("unknown integration", 422, truto_oauth("bad-3", c["AT-BAD-INTEGRATION"], c["RT-BAD-INTEGRATION"],
                                                 integration="hubspot")),
        ("bad integration name", 422, truto_oauth("bad-4", c["AT-BAD-NAME"], c["RT-BAD-NAME"], integration="Sales Force!")),
        ("missing refresh_token", 422, truto_oauth("bad-5", c["AT-NO-REFRESH"], None)),
        ("missing access_token", 422, truto_oauth("bad-6", None, c["RT-NO-ACCESS"])),
        ("access_token not a string", 422, truto_oauth("bad-7", {"value": c["AT-AS-OBJECT"]}, c["RT-AS-OBJECT"])),
        ("tenant_id missing", 422, {**truto_oauth("x", c["AT-NO-TENANT"], c["RT-NO-TENANT"]), "tenant_id": None}),
        ("tenant_id an object", 422, {**truto_oauth("x", c["AT-TENANT-OBJ"], c["RT-TENANT-OBJ"]), "tenant_id": {"id": 1}}),
        ("unknown authentication method", 422, {**truto_oauth("bad-8", c["AT-BAD-METHOD"], c["RT-BAD-METHOD"]),
                                                "authentication_method": "oauth1"}),
        ("a secret-named key nested in context", 201, truto_oauth("ctx-1", c["AT-CTX"], c["RT-CTX"],
                                                                   context={"settings": {"private_key": c["CTX-PRIVATE-KEY"]}})),
        ("context not an object", 422, {**truto_oauth("bad-9", c["AT-CTX-LIST"], c["RT-CTX-LIST"]),
                                        "context": [c["CTX-LIST"]]}),
        ("same external_ref, another tenant", 409, truto_oauth("not-a", c["AT-MISMATCH"], c["RT-MISMATCH"],
                                                                external_ref="ref-a")),
        ("a record that is a list", 422, [c["AT-IN-LIST"]]),
    ]
    for label, status, body in bad_single:
        await s.call(f"single import: {label}", "POST", f"{prod}/accounts", status, json=body, headers=admin)
    api_key_on_staging = {"integration_name": INTEGRATION, "tenant_id": "stg-k", "authentication_method": "api_key",
                          "context": {"api_key": c["APIKEY-METHOD-OFF"]}}
    await s.call("single import: method not enabled", "POST", "/v1/environments/staging/accounts", 422,
                 json=api_key_on_staging, headers=admin)
    await s.call("single import: unknown profile", "POST", f"{prod}/accounts?profile=merge", 400,
                 json=truto_oauth("bad-p", c["AT-BAD-PROFILE"], c["RT-BAD-PROFILE"]), headers=admin)
    await s.call("single import: truncated JSON", "POST", f"{prod}/accounts", 400,
                 data=json.dumps(truto_oauth("bad-j", c["AT-TRUNCATED"], c["RT-TRUNCATED"]))[:-5], headers=admin)
    await s.call("single import: not UTF-8", "POST", f"{prod}/accounts", 400,
                 data=json.dumps(truto_oauth("bad-u", c["AT-LATIN1"], c["RT-LATIN1"])).encode() + b"\xff", headers=admin)
    await s.call("single import: auditor", "POST", f"{prod}/accounts", 403,
                 json=truto_oauth("bad-r", c["AT-403"], c["RT-403"]), headers=auditor)
    await s.call("single import: no key", "POST", f"{prod}/accounts", 401,
                 json=truto_oauth("bad-k", c["AT-401"], c["RT-401"]))
    await s.call("single import: revoked-looking key", "POST", f"{prod}/accounts", 401,
                 json=truto_oauth("bad-k2", c["AT-401B"], c["RT-401B"]),
                 headers={"Authorization": f"Bearer llk_admin_key_000000000000_{c['AT-AS-API-KEY']}"})
    await s.call("single import: other environment", "POST", f"{prod}/accounts", 404,
                 json=truto_oauth("bad-e", c["AT-404"], c["RT-404"]), headers=staging_operator)

    # ---- bulk imports: canonical NDJSON, truto array, nango; good and bad records together
    canonical_body = ndjson(
        canonical("cust-f", c["AT-F1"], c["RT-F1"], external_ref="ref-f", extra={"token_secret": c["EXTRA-F"]}),
        canonical("cust-g", c["AT-G"], c["RT-G"]),
        canonical("bulk-bad-1", c["AT-BULK-EXPIRY"], c["RT-BULK-EXPIRY"], expires_at="2031-13-45T99:00:00Z"),
        canonical("bulk-bad-2", c["AT-BULK-INTEGRATION"], c["RT-BULK-INTEGRATION"], integration="zendesk"),
        canonical("bulk-bad-3", c["AT-BULK-NO-REFRESH"], None),
        b'{"integration": "salesforce", "tenant_id": "bulk-bad-4", "credentials": {"access_token": "'
        + c["AT-BULK-BROKEN-JSON"].encode() + b'", "refresh_token": ',
        {**canonical("bulk-bad-5", None, c["RT-BULK-TYPO"]), "credentials": {"acess_token": c["AT-BULK-TYPO"],
                                                                             "refresh_token": c["RT-BULK-TYPO"]}},
        canonical("cust-f-again", c["AT-BULK-REPEAT"], c["RT-BULK-REPEAT"], external_ref="ref-f"),
        canonical("not-a", c["AT-BULK-MISMATCH"], c["RT-BULK-MISMATCH"], external_ref="ref-a"),
        {**canonical("bulk-bad-6", c["AT-BULK-UNKNOWN-FIELD"], c["RT-BULK-UNKNOWN-FIELD"]), "password": c["PW-BULK-TOP"]},
        canonical("bulk-bad-7", c["AT-BULK-NEG"], c["RT-BULK-NEG"], expires_at=None, expires_in=-5),
    )
    result = s.json(await s.call("bulk canonical", "POST", f"{prod}/accounts:import?profile=canonical", 200,
                                 data=canonical_body, headers={**operator, **nd}))
    outcomes = [r["outcome"] for r in result["results"]]
    assert outcomes[:2] == ["imported", "imported"] and set(outcomes[2:]) == {"rejected"}, result
    s.ids["f"], s.ids["g"] = result["results"][0]["account_id"], result["results"][1]["account_id"]

    truto_array = json.dumps([
        truto_oauth("cust-h", c["AT-H"], c["RT-H"], extra_token={"id_token": c["IDTOKEN-H"]}),
        {**truto_oauth("bulk-bad-8", c["AT-BULK-EXPIRES-IN"], c["RT-BULK-EXPIRES-IN"], expires_at=None),
         "context": {"oauth": {"token": {"access_token": c["AT-BULK-EXPIRES-IN"], "refresh_token": c["RT-BULK-EXPIRES-IN"],
                                         "expires_in": "soon"}}}},
    ]).encode()
    result = s.json(await s.call("bulk truto array", "POST", f"{prod}/accounts:import?profile=truto", 200,
                                 data=truto_array, headers={**admin, "Content-Type": "application/json"}))
    assert [r["outcome"] for r in result["results"]] == ["imported", "rejected"], result
    s.ids["h"] = result["results"][0]["account_id"]
    await s.call("bulk malformed array", "POST", f"{prod}/accounts:import?profile=truto", 200,
                 data=truto_array[:-40], headers={**admin, "Content-Type": "application/json"})

    nango_body = ndjson(
        {"connection_id": "conn-n", "provider_config_key": INTEGRATION, "end_user": {"id": "cust-n"},
         "credentials": {"type": "OAUTH2", "access_token": c["AT-N"], "refresh_token": c["RT-N"], "expires_at": EXPIRES,
                         "raw": {"token_type": "bearer", "expires_in": 1800, "access_token": c["AT-N"],
                                 "refresh_token": c["RT-N"], "id_token": c["IDTOKEN-N"]}},
         "connection_config": {"portalId": 4242, "oauth_client_secret": c["CTX-SECRET-N"]}},
        {"connection_id": "conn-nk", "provider_config_key": INTEGRATION, "end_user": {"id": "cust-nk"},
         "credentials": {"type": "API_KEY", "apiKey": c["APIKEY-N"]}},
        {"connection_id": "conn-bad", "provider_config_key": INTEGRATION,
         "credentials": {"type": "OAUTH1", "access_token": c["AT-NANGO-TYPE"], "refresh_token": c["RT-NANGO-TYPE"]}},
        {"connection_id": "conn-bad2", "provider_config_key": INTEGRATION, "end_user": {"id": "x"},
         "credentials": {"type": "OAUTH2", "access_token": c["AT-NANGO-NO-REFRESH"], "expires_at": "yesterday"}},
    )
    result = s.json(await s.call("bulk nango", "POST", f"{prod}/accounts:import?profile=nango", 200,
                                 data=nango_body, headers={**admin, **nd}))
    assert [r["outcome"] for r in result["results"]] == ["imported", "imported", "rejected", "rejected"], result
    s.ids["n"], s.ids["nk"] = result["results"][0]["account_id"], result["results"][1]["account_id"]

    for label, status, headers, query in (
        ("bulk unknown profile", 400, admin, "?profile=finch"),
        ("bulk auditor", 403, auditor, ""),
        ("bulk service", 403, service, ""),
        ("bulk no key", 401, nd, ""),
        ("bulk other environment", 404, staging_operator, ""),
    ):
        body = ndjson(canonical(f"bulk-{status}", c[f"AT-BULK-{status}"], c[f"RT-BULK-{status}"]))
        await s.call(label, "POST", f"{prod}/accounts:import{query}", status, data=body, headers={**headers, **nd})

    # ---- updates: new canary tokens for known accounts, one by one and in bulk
    a2 = truto_oauth("cust-a", c["AT-A2"], c["RT-A2"], external_ref="ref-a",
                     extra_token={"id_token": c["IDTOKEN-A"]}, context={"webhook_secret": c["CTX-SECRET-A"]})
    assert s.json(await s.call("update a", "POST", f"{prod}/accounts", 200, json=a2, headers=operator))["outcome"] == "updated"
    result = s.json(await s.call("bulk update f", "POST", f"{prod}/accounts:import", 200, headers={**operator, **nd},
                                 data=ndjson(canonical("cust-f", c["AT-F2"], c["RT-F2"], external_ref="ref-f",
                                                       extra={"token_secret": c["EXTRA-F"]}))))
    assert result["results"][0]["outcome"] == "updated", result

    # ---- reads: list (filters, pages, refusals), detail, as_of
    await s.call("list", "GET", f"{prod}/accounts", 200, headers=auditor)
    await s.call("list filtered", "GET", f"{prod}/accounts?integration={INTEGRATION}&status=active&tenant_id=cust-a",
                 200, headers=operator)
    cursor, pages = None, 0
    while pages < 20:
        page = s.json(await s.call("list page", "GET", f"{prod}/accounts?limit=2" + (f"&cursor={cursor}" if cursor else ""),
                                   200, headers=admin))
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    await s.call("list bad limit", "GET", f"{prod}/accounts?limit=lots", 400, headers=admin)
    await s.call("list bad cursor", "GET", f"{prod}/accounts?cursor=%FF%FE", 400, headers=admin)
    await s.call("list service", "GET", f"{prod}/accounts", 403, headers=service)
    await s.call("list other environment", "GET", f"{prod}/accounts", 404, headers=staging_operator)
    for name in ("a", "b", "c", "d", "f", "h", "n", "nk"):
        await s.call(f"detail {name}", "GET", f"/v1/accounts/{s.ids[name]}", 200, headers=auditor)
    before = s.before_update.isoformat().replace("+00:00", "Z")
    await s.call("detail a as_of before the update", "GET", f"/v1/accounts/{s.ids['a']}?as_of={before}", 200,
                 headers=operator)
    await s.call("detail a as_of now", "GET", f"/v1/accounts/{s.ids['a']}?as_of=2999-01-01T00:00:00Z", 200, headers=admin)
    for name in ("a", "b", "c", "f", "nk"):
        await s.call(f"history {name}", "GET", f"/v1/accounts/{s.ids[name]}/events", 200, headers=auditor)
    await s.call("audit trail", "GET", "/v1/audit?limit=1000", 200, headers=auditor)
    await s.call("audit trail csv", "GET", "/v1/audit?format=csv", 200, headers=auditor)
    await s.call("health", "GET", "/v1/environments/prod/health", 200, headers=auditor)
    await s.call("ledger verify", "POST", "/v1/ledger/verify", 200, headers=auditor)
    await s.call("detail a as_of before it existed", "GET", f"/v1/accounts/{s.ids['a']}?as_of=2001-01-01T00:00:00Z",
                 404, headers=admin)
    await s.call("detail a as_of garbage", "GET", f"/v1/accounts/{s.ids['a']}?as_of=yesterday", 400, headers=admin)
    await s.call("detail a as_of naive", "GET", f"/v1/accounts/{s.ids['a']}?as_of=2030-01-01T00:00:00", 400, headers=admin)
    await s.call("detail service", "GET", f"/v1/accounts/{s.ids['a']}", 403, headers=service)
    await s.call("detail other environment", "GET", f"/v1/accounts/{s.ids['a']}", 404, headers=staging_operator)
    await s.call("detail unknown", "GET", f"/v1/accounts/{uuid.uuid4()}", 404, headers=admin)

    # ---- the token endpoint: allowed to carry its own account's current credential, nothing else
    for name, allowed in (("a", "AT-A2"), ("b", "APIKEY-B"), ("c", "PASSWORD-C"), ("f", "AT-F2"), ("nk", "APIKEY-N")):
        seen = await s.call(f"token {name}", "GET", f"/v1/accounts/{s.ids[name]}/token", 200,
                            allow={c[allowed]}, headers=service)
        s.token_bodies[name] = s.json(seen)
    await s.call("token auditor", "GET", f"/v1/accounts/{s.ids['a']}/token", 403, headers=auditor)
    await s.call("token operator", "GET", f"/v1/accounts/{s.ids['a']}/token", 403, headers=operator)
    await s.call("token other environment", "GET", f"/v1/accounts/{s.ids['a']}/token", 404, headers=staging_service)
    await s.call("token unknown", "GET", f"/v1/accounts/{uuid.uuid4()}/token", 404, headers=service)
    await s.call("token no key", "GET", f"/v1/accounts/{s.ids['a']}/token", 401)

    # ---- delete, and everything that follows a deletion
    before_delete = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    await s.call("delete e", "DELETE", f"/v1/accounts/{s.ids['e']}?reason=customer%20left", 200, headers=admin)
    await s.call("delete e again", "DELETE", f"/v1/accounts/{s.ids['e']}", 200, headers=admin)
    await s.call("delete operator", "DELETE", f"/v1/accounts/{s.ids['a']}", 403, headers=operator)
    await s.call("detail e after delete", "GET", f"/v1/accounts/{s.ids['e']}", 200, headers=admin)
    await s.call("detail e as_of before delete", "GET", f"/v1/accounts/{s.ids['e']}?as_of={before_delete}", 200, headers=admin)
    await s.call("token e after delete", "GET", f"/v1/accounts/{s.ids['e']}/token", 404, headers=admin)
    await s.call("re-import e after delete", "POST", f"{prod}/accounts", 409,
                 json=truto_oauth("cust-e", c["AT-E-AFTER-DELETE"], c["RT-E-AFTER-DELETE"], external_ref="ref-e"),
                 headers=admin)
    result = s.json(await s.call("bulk re-import e after delete", "POST", f"{prod}/accounts:import", 200,
                                 headers={**admin, **nd},
                                 data=ndjson(canonical("cust-e", c["AT-E-BULK-AFTER-DELETE"], c["RT-E-BULK-AFTER-DELETE"],
                                                       external_ref="ref-e"))))
    assert result["results"][0]["outcome"] == "rejected", result

    # ---- the export: allowed to carry the current secrets of its environment's live accounts
    current = {"AT-A2", "RT-A2", "IDTOKEN-A", "CTX-SECRET-A", "APIKEY-B", "PASSWORD-C", "AT-D", "RT-D", "AT-CTX",
               "RT-CTX", "CTX-PRIVATE-KEY", "AT-F2", "RT-F2", "EXTRA-F", "AT-G", "RT-G", "AT-H", "RT-H", "IDTOKEN-H",
               "AT-N", "RT-N", "IDTOKEN-N", "CTX-SECRET-N", "APIKEY-N"}
    seen = await s.call("export", "POST", f"{prod}/accounts:export", 200, json={"purpose": "migration off the vendor"},
                        headers=prod_admin, allow={c[k] for k in current})
    s.export_lines = [json.loads(line) for line in seen.body.splitlines() if line.strip()]
    s.export_expected = {c[k] for k in current}
    await s.call("export without purpose", "POST", f"{prod}/accounts:export", 422, json={"why": "x"}, headers=admin)
    await s.call("export operator", "POST", f"{prod}/accounts:export", 403, json={"purpose": "x"}, headers=operator)
    await s.call("export auditor", "POST", f"{prod}/accounts:export", 403, json={"purpose": "x"}, headers=auditor)
    await s.call("export other environment", "POST", f"{prod}/accounts:export", 404, json={"purpose": "x"},
                 headers=await s.key("admin", "staging"))

    # ---- the rest of the surface
    await s.call("unknown route", "GET", "/v1/nothing-here", 404, headers=admin)
    await s.call("method not allowed", "PUT", f"/v1/accounts/{s.ids['a']}/token", 405, headers=admin,
                 json={"context": {"access_token": c["AT-405"]}})
    for path in ("/openapi.json", "/docs", "/metrics", "/healthz", "/readyz"):
        await s.call(path, "GET", path, 200)
    return s


# --------------------------------------------------------------------------- capture


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self, record: logging.LogRecord) -> str:
        parts = [repr(record.msg), repr(record.args), repr({k: v for k, v in vars(record).items() if k != "exc_info"})]
        try:
            parts.append(self.formatter.format(record))  # message with args, exception and stack
        except Exception as exc:  # noqa: BLE001 - a broken record is itself worth showing
            parts.append(f"<unformattable: {exc!r}>")
        if record.exc_info:
            parts.append(self.formatter.formatException(record.exc_info))
        return "\n".join(parts)


@pytest.fixture
def logs():
    """Every log record of every logger at DEBUG, while the test runs."""
    handler = Collect()
    root = logging.getLogger()
    saved = {name: lg.level for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    saved_root = root.level
    isolated = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger) and not lg.propagate]
    saved_disable = logging.root.manager.disable
    logging.disable(logging.NOTSET)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in saved:
        logging.getLogger(name).setLevel(logging.DEBUG)
    for lg in isolated:
        lg.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    root.setLevel(saved_root)
    logging.disable(saved_disable)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    for lg in isolated:
        lg.removeHandler(handler)


@pytest.fixture
async def scenario(gateway, logs):
    return await run_scenario(gateway)


async def _dump_database(database_url: str) -> dict[str, list[str]]:
    """Every row of every table, as PostgreSQL renders it as text (bytea as hex)."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        out = {}
        for t in tables:
            name = f'"{t["table_schema"]}"."{t["table_name"]}"'
            out[name] = [r[0] for r in await conn.fetch(f"SELECT t::text FROM {name} t")]
        return out
    finally:
        await conn.close()


# --------------------------------------------------------------------------- the tests


async def test_every_error_class_was_provoked_as_problem_json(scenario):
    """The scenario reached what it meant to (else a clean search would prove little)."""
    assert not scenario.unexpected, "\n".join(scenario.unexpected)
    statuses = {seen.status for seen in scenario.seen}
    assert {200, 201, 400, 401, 403, 404, 405, 409, 422} <= statuses, sorted(statuses)
    assert not [s.label for s in scenario.seen if s.status >= 500]


async def test_no_response_body_or_header_carries_a_secret(scenario):
    leaks = []
    for seen in scenario.seen:
        found = find_leaks(seen.blob(), scenario.c, seen.allow, extra=tuple(scenario.api_keys))
        if found:
            leaks.append(f"{seen.label} ({seen.status}): {found}\n    {seen.blob()[:400]!r}")
    assert not leaks, f"{len(leaks)} responses leak:\n" + "\n".join(leaks)


async def test_no_log_record_carries_a_secret(scenario, logs):
    assert logs.records, "no log record captured at all: the capture is broken"
    leaks = []
    for record in logs.records:
        text = logs.text(record)
        found = find_leaks(text.encode("utf-8", "backslashreplace"), scenario.c, extra=tuple(scenario.api_keys))
        if found:
            leaks.append(f"{record.name} {record.levelname}: {found}\n    {text[:400]}")
    assert not leaks, "\n".join(leaks)


async def test_stdout_stderr_and_warnings_carry_no_secret(gateway, logs, capfd, recwarn):
    s = await run_scenario(gateway)
    out, err = capfd.readouterr()
    assert not find_leaks((out + err).encode("utf-8", "backslashreplace"), s.c, extra=tuple(s.api_keys)), (out + err)[-2000:]
    warned = "\n".join(f"{w.category.__name__}: {w.message}" for w in recwarn.list)
    assert not find_leaks(warned.encode(), s.c, extra=tuple(s.api_keys)), warned


async def test_events_and_snapshots_hold_no_secret_and_the_secret_column_only_ciphertext(scenario):
    c = scenario.c
    conn = await asyncpg.connect(scenario.gateway.database_url)
    try:
        events = await conn.fetch("SELECT stream_id, version, type, data, actor AS metadata, secret, key_id"
                                  " FROM events ORDER BY position")
        heads = await conn.fetch("SELECT stream_id, snapshot::text AS snapshot FROM stream_heads")
    finally:
        await conn.close()
    assert len(events) > 30 and len(heads) > 10
    leaks = []
    for e in events:
        where = f"events {e['stream_id']} v{e['version']} {e['type']}"
        for column in ("data", "metadata"):
            found = find_leaks((e[column] or "").encode(), c, extra=tuple(scenario.api_keys))
            if found:
                leaks.append(f"{where} .{column}: {found}")
        if e["secret"] is not None:
            secret = bytes(e["secret"])
            if e["key_id"] is None:
                leaks.append(f"{where}: a secret without a key_id")
            if find_leaks(secret, c) or b"access_token" in secret or b"client_secret" in secret:
                leaks.append(f"{where} .secret holds plaintext")
            try:
                json.loads(secret)
                leaks.append(f"{where} .secret parses as JSON: not ciphertext")
            except ValueError:
                pass
    for h in heads:
        found = find_leaks((h["snapshot"] or "").encode(), c, extra=tuple(scenario.api_keys))
        if found:
            leaks.append(f"stream_heads {h['stream_id']}: {found}")
    assert not leaks, "\n".join(leaks)
    # The secrets did go somewhere: every imported credential and both client secrets are sealed.
    sealed = {e["type"] for e in events if e["secret"] is not None}
    assert sealed == {"TokensImported", "OAuthClientConfigured"}, sealed


async def test_no_table_holds_a_secret_in_clear(scenario):
    """Beyond events and stream heads: idempotency records, api keys, data keys, anything."""
    dump = await _dump_database(scenario.gateway.database_url)
    assert '"public"."events"' in dump and '"public"."idempotency_keys"' in dump
    leaks = []
    for table, rows in dump.items():
        for row in rows:
            found = find_leaks(row.encode(), scenario.c, extra=tuple(scenario.api_keys))
            if found:
                leaks.append(f"{table}: {found} in {row[:300]}")
    assert not leaks, "\n".join(leaks)


async def test_the_token_endpoint_serves_the_newest_credential_and_only_its_own(scenario):
    c, tokens = scenario.c, scenario.token_bodies
    assert tokens["a"]["access_token"] == c["AT-A2"]
    assert tokens["f"]["access_token"] == c["AT-F2"]
    assert tokens["b"]["api_key"] == c["APIKEY-B"] and "access_token" not in tokens["b"]
    assert (tokens["c"]["username"], tokens["c"]["password"]) == ("user-c", c["PASSWORD-C"])
    assert tokens["nk"]["api_key"] == c["APIKEY-N"]
    for name, body in tokens.items():
        assert "refresh_token" not in body, name
        assert body["account_id"] == scenario.ids[name]
    assert tokens["a"]["context"]["instance_url"] == "https://cust-a.my.salesforce.com"
    # find_leaks on these bodies already showed no other canary is present (allow = its own only).
    for seen in scenario.seen:
        if seen.label.startswith("token ") and seen.status == 200:
            assert ("cache-control", "no-store") in [(k.lower(), v) for k, v in seen.headers], seen.label


async def test_the_admin_export_returns_the_canaries(scenario):
    """The search works: the one place that must hand secrets out does, all of them, current ones."""
    c = scenario.c
    exported = json.dumps(scenario.export_lines).encode()
    present = {v for v in c.all() if v.encode() in exported}
    assert present == scenario.export_expected, (
        sorted(k for k, v in c.values.items() if v in present ^ scenario.export_expected))
    # And the search finds them the way it looks for leaks.
    assert set(find_leaks(exported, c)) >= scenario.export_expected
    by_tenant = {r["tenant_id"]: r for r in scenario.export_lines}
    assert by_tenant["cust-a"]["credentials"]["access_token"] == c["AT-A2"]
    assert by_tenant["cust-a"]["credentials"]["refresh_token"] == c["RT-A2"]
    assert "cust-e" not in by_tenant and "cust-s" not in by_tenant
    # The canaries in the export are the same values the leak search is run with.
    assert find_leaks(c["AT-A1"].encode(), c) and not find_leaks(b"nothing to see", c)


async def test_an_export_of_an_unknown_integration_is_refused(gateway):
    """OpenAPI documents 422 for the export, and the handler means to check the integration
    (`await load_integration(...)` when one is named), but load_integration returns a blank state
    for an unknown one instead of raising: the export answers 200 with nothing, so a typo in the
    integration name looks like "no accounts" to a migrating team."""
    admin = await gateway.headers("admin")
    response = await gateway.client.put(f"/v1/environments/prod/integrations/{INTEGRATION}",
                                        json=integration_body("client-secret"), headers=admin)
    assert response.status == 200
    response = await gateway.client.post("/v1/environments/prod/accounts:export",
                                         json={"purpose": "migration", "integration": "hubspot"}, headers=admin)
    body = await response.read()
    assert response.status == 422, (response.status, body)
    assert response.content_type == PROBLEM_JSON
    problem = json.loads(body)
    assert problem["errors"][0]["field"] == "integration"
