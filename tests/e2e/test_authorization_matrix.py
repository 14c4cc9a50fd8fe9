"""Who may do what, where: every route of the app x every role x every key scope.

Two environments ("prod", "staging"), each with an integration and an account. For each route
(enumerated from the app's router, so a new route without an entry in ROUTES fails the run) and
each role and key scope (`*`, the target's own environment, the other environment only):

* a role the route allows, in scope      -> 2xx
* a role the route does not allow        -> 403 (whatever the scope)
* an allowed role, other environment     -> 404, never 403, and never the data: a key must not
  learn that another environment's accounts exist
* no key / a malformed key / a revoked key -> 401 with WWW-Authenticate

Refused requests must also have no effect (no account imported, none deleted).
"""

import json
import uuid
from base64 import urlsafe_b64encode
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import asyncpg

from service.apikeys import revoke_key

PROBLEM_JSON = "application/problem+json"
ENVS = ("prod", "staging")
OTHER = {"prod": "staging", "staging": "prod"}
ROLES = ("admin", "operator", "service", "auditor")
SCOPES = ("*", "own", "other")
ALL = frozenset(ROLES)
READERS = frozenset({"admin", "operator", "auditor"})
WRITERS = frozenset({"admin", "operator"})
INTEGRATION = "salesforce"


# --------------------------------------------------------------------------- the expectation table


@dataclass(frozen=True)
class Route:
    """What the contract (DESIGN.md "Gateway") says about one route.

    kind: "env" (the environment is in the path or a filter), "account" (an account id is in the
    path), "webhook" (a webhook endpoint id is in the path), "ledger" (the whole log, any scope) or
    "open" (no key needed, e.g. /healthz)."""

    roles: frozenset
    kind: str


ROUTES: dict[tuple[str, str], Route] = {
    ("PUT", "/v1/environments/{env}/integrations/{name}"): Route(frozenset({"admin"}), "env"),
    ("POST", "/v1/environments/{env}/accounts"): Route(WRITERS, "env"),
    ("GET", "/v1/environments/{env}/accounts"): Route(READERS, "env"),
    ("POST", "/v1/environments/{env}/accounts:import"): Route(WRITERS, "env"),
    ("POST", "/v1/environments/{env}/accounts:export"): Route(frozenset({"admin"}), "env"),
    ("GET", "/v1/accounts/{id}"): Route(READERS, "account"),
    ("DELETE", "/v1/accounts/{id}"): Route(frozenset({"admin"}), "account"),
    ("GET", "/v1/accounts/{id}/token"): Route(frozenset({"service", "admin"}), "account"),
    ("POST", "/v1/accounts/{id}/refresh"): Route(WRITERS, "account"),
    ("POST", "/v1/accounts/{id}/validate"): Route(WRITERS, "account"),
    ("PUT", "/v1/environments/{env}/overrides"): Route(WRITERS, "env"),
    ("GET", "/v1/environments/{env}/overrides/history"): Route(READERS, "env"),
    ("POST", "/v1/environments/{env}/overrides:rollback"): Route(WRITERS, "env"),
    ("PATCH", "/v1/accounts/{id}"): Route(WRITERS, "account"),
    ("GET", "/v1/accounts/{id}/overrides/history"): Route(READERS, "account"),
    ("POST", "/v1/accounts/{id}/overrides:rollback"): Route(WRITERS, "account"),
    ("GET", "/v1/accounts/{id}/effective-config/{model}/{resource}/{method}"): Route(READERS, "account"),
    # The account is named in the body; another environment's account is 404 like the others.
    ("POST", "/v1/mappings:preview"): Route(WRITERS, "account"),
    ("GET", "/v1/accounts/{id}/events"): Route(frozenset({"admin", "auditor", "operator"}), "account"),
    ("GET", "/v1/audit"): Route(frozenset({"admin", "auditor"}), "env"),
    ("GET", "/v1/environments/{env}/health"): Route(READERS, "env"),
    ("POST", "/v1/ledger/verify"): Route(frozenset({"admin", "auditor"}), "ledger"),
    ("GET", "/v1/ledger/digests"): Route(frozenset({"admin", "auditor"}), "ledger"),
    ("POST", "/v1/environments/{env}/webhooks"): Route(frozenset({"admin"}), "env"),
    ("GET", "/v1/environments/{env}/webhooks"): Route(WRITERS, "env"),
    ("GET", "/v1/webhooks/{id}"): Route(WRITERS, "webhook"),
    ("PATCH", "/v1/webhooks/{id}"): Route(frozenset({"admin"}), "webhook"),
    ("DELETE", "/v1/webhooks/{id}"): Route(frozenset({"admin"}), "webhook"),
    ("POST", "/v1/webhooks/{id}/secret:rotate"): Route(frozenset({"admin"}), "webhook"),
    ("GET", "/v1/webhooks/{id}/attempts"): Route(WRITERS, "webhook"),
    ("GET", "/healthz"): Route(ALL, "open"),
    ("GET", "/readyz"): Route(ALL, "open"),
    ("GET", "/openapi.json"): Route(ALL, "open"),
    ("GET", "/docs"): Route(ALL, "open"),
    ("GET", "/metrics"): Route(ALL, "open"),
}


def _app_routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves; HEAD stands for its GET twin."""
    found = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        method = "GET" if route.method == "HEAD" else route.method
        found.add((method, resource.canonical))
    return found


# --------------------------------------------------------------------------- fixtures and helpers


def _truto(tenant: str, *, external_ref: str | None = None, access: str | None = None) -> dict:
    return {
        "integration_name": INTEGRATION,
        "tenant_id": tenant,
        "authentication_method": "oauth2",
        "external_ref": external_ref,
        "context": {
            "oauth": {"token": {
                "access_token": access or f"at-{uuid.uuid4().hex}",
                "refresh_token": f"rt-{uuid.uuid4().hex}",
                "expires_at": "2031-10-15T14:30:00Z",
                "token_type": "Bearer",
                "scope": "api refresh_token",
            }},
            "instance_url": f"https://{tenant}.my.salesforce.com",
        },
    }


def _canonical(tenant: str) -> dict:
    return {
        "integration": INTEGRATION,
        "tenant_id": tenant,
        "authentication_method": "oauth2",
        "credentials": {"access_token": f"at-{uuid.uuid4().hex}", "refresh_token": f"rt-{uuid.uuid4().hex}"},
        "expires_at": "2031-10-15T14:30:00Z",
    }


def _integration_body() -> dict:
    return {
        "display_name": "Salesforce",
        "unified_model": {"crm": {"contacts": {"list": {"resource": "Contact",
                                                        "response_mapping": "response.{ 'id': $string(Id) }"}}}},
        "authentication_methods": ["oauth2", "api_key", "basic"],
        "oauth_client": {"client_id": "client-1", "client_secret": "matrix-client-secret",
                         "token_url": "https://login.salesforce.com/services/oauth2/token"},
    }


@dataclass
class World:
    gateway: object
    admin: dict  # headers of an admin key for every environment
    accounts: dict[str, str]  # environment -> the id of its account
    tenants: dict[str, str]  # environment -> that account's tenant id
    keys: dict[tuple[str, str], dict] = field(default_factory=dict)  # (role, key environments) -> headers
    webhooks: dict[str, str] = field(default_factory=dict)  # environment -> the id of its webhook endpoint

    @property
    def client(self):
        return self.gateway.client

    async def headers(self, role: str, scope: str, target_env: str) -> dict:
        environments = {"*": "*", "own": target_env, "other": OTHER[target_env]}[scope]
        if (role, environments) not in self.keys:
            self.keys[(role, environments)] = await self.gateway.headers(role, environments)
        return self.keys[(role, environments)]

    async def import_account(self, env: str, tenant: str) -> str:
        response = await self.client.post(f"/v1/environments/{env}/accounts", json=_truto(tenant), headers=self.admin)
        assert response.status == 201, await response.text()
        return (await response.json())["account"]["id"]

    async def create_webhook(self, env: str, tag: str) -> str:
        response = await self.client.post(f"/v1/environments/{env}/webhooks", headers=self.admin,
                                          json={"url": f"https://hooks.example.com/{tag}"})
        assert response.status == 201, await response.text()
        return (await response.json())["id"]

    async def webhook_exists(self, webhook_id: str) -> bool:
        return (await self.client.get(f"/v1/webhooks/{webhook_id}", headers=self.admin)).status == 200

    async def account(self, account_id: str) -> dict:
        response = await self.client.get(f"/v1/accounts/{account_id}", headers=self.admin)
        assert response.status == 200, await response.text()
        return await response.json()

    async def tenants_of(self, env: str) -> set[str]:
        response = await self.client.get(f"/v1/environments/{env}/accounts?limit=500", headers=self.admin)
        assert response.status == 200, await response.text()
        return {a["tenant_id"] for a in (await response.json())["data"]}


async def _world(gateway) -> World:
    admin = await gateway.headers("admin")
    client = gateway.client
    accounts, tenants = {}, {}
    for env in ENVS:
        response = await client.put(f"/v1/environments/{env}/integrations/{INTEGRATION}", json=_integration_body(),
                                    headers=admin)
        assert response.status == 200, await response.text()
    world = World(gateway, admin, accounts, tenants)
    for env in ENVS:
        tenants[env] = f"{env}-customer-1"
        accounts[env] = await world.import_account(env, tenants[env])
        world.webhooks[env] = await world.create_webhook(env, f"{env}-shared")
    return world


# One request per route: (world, target environment, headers, tag) -> response. `tag` makes what
# an import creates traceable to the (role, scope) that sent it.
Send = Callable[[World, str, dict, str], Awaitable[object]]


async def _put_integration(w: World, env: str, headers: dict, tag: str):
    return await w.client.put(f"/v1/environments/{env}/integrations/{INTEGRATION}", json=_integration_body(),
                              headers=headers)


async def _import_one(w: World, env: str, headers: dict, tag: str):
    return await w.client.post(f"/v1/environments/{env}/accounts", json=_truto(f"mx-one-{tag}"), headers=headers)


async def _list(w: World, env: str, headers: dict, tag: str):
    return await w.client.get(f"/v1/environments/{env}/accounts", headers=headers)


async def _import_bulk(w: World, env: str, headers: dict, tag: str):
    body = json.dumps(_canonical(f"mx-bulk-{tag}")) + "\n"
    return await w.client.post(f"/v1/environments/{env}/accounts:import?profile=canonical", data=body,
                               headers={**headers, "Content-Type": "application/x-ndjson"})


async def _export(w: World, env: str, headers: dict, tag: str):
    return await w.client.post(f"/v1/environments/{env}/accounts:export", json={"purpose": "authorization matrix"},
                               headers=headers)


async def _detail(w: World, env: str, headers: dict, tag: str):
    return await w.client.get(f"/v1/accounts/{w.accounts[env]}", headers=headers)


async def _token(w: World, env: str, headers: dict, tag: str):
    return await w.client.get(f"/v1/accounts/{w.accounts[env]}/token", headers=headers)


async def _delete(w: World, env: str, headers: dict, tag: str, *, fresh: bool = False):
    # A delete that should succeed gets an account of its own; one that should be refused aims at
    # the environment's shared account, which must survive it.
    account_id = await w.import_account(env, f"mx-del-{tag}") if fresh else w.accounts[env]
    return await w.client.delete(f"/v1/accounts/{account_id}", headers=headers)


async def _force_refresh(w: World, env: str, headers: dict, tag: str):
    return await w.client.post(f"/v1/accounts/{w.accounts[env]}/refresh", headers=headers)


async def _force_validate(w: World, env: str, headers: dict, tag: str):
    return await w.client.post(f"/v1/accounts/{w.accounts[env]}/validate", headers=headers)


OVERRIDE_PATCH = {"unified_model_override": {"crm": {"contacts": {"list": {"resource": "contacts"}}}}}


async def _put_environment_override(w: World, env: str, headers: dict, tag: str):
    return await w.client.put(f"/v1/environments/{env}/overrides", json=OVERRIDE_PATCH, headers=headers)


async def _environment_override_history(w: World, env: str, headers: dict, tag: str):
    return await w.client.get(f"/v1/environments/{env}/overrides/history", headers=headers)


async def _roll_back_environment_override(w: World, env: str, headers: dict, tag: str):
    return await w.client.post(f"/v1/environments/{env}/overrides:rollback", json={"version": 0}, headers=headers)


async def _patch_account(w: World, env: str, headers: dict, tag: str):
    return await w.client.patch(f"/v1/accounts/{w.accounts[env]}", json={**OVERRIDE_PATCH, "context": {"patched_by": tag}},
                                headers=headers)


async def _account_override_history(w: World, env: str, headers: dict, tag: str):
    return await w.client.get(f"/v1/accounts/{w.accounts[env]}/overrides/history", headers=headers)


async def _roll_back_account_override(w: World, env: str, headers: dict, tag: str):
    return await w.client.post(f"/v1/accounts/{w.accounts[env]}/overrides:rollback", json={"version": 0}, headers=headers)


async def _effective_config(w: World, env: str, headers: dict, tag: str):
    return await w.client.get(f"/v1/accounts/{w.accounts[env]}/effective-config/crm/contacts/list", headers=headers)


async def _preview(w: World, env: str, headers: dict, tag: str):
    return await w.client.post("/v1/mappings:preview", json={
        "account_id": w.accounts[env], "model": "crm", "resource": "contacts", "method": "list",
        "sample": [{"Id": 1}]}, headers=headers)


async def _events(w: World, env: str, headers: dict, tag: str):
    return await w.client.get(f"/v1/accounts/{w.accounts[env]}/events", headers=headers)


async def _audit(w: World, env: str, headers: dict, tag: str):
    return await w.client.get(f"/v1/audit?environment={env}", headers=headers)


async def _health(w: World, env: str, headers: dict, tag: str):
    return await w.client.get(f"/v1/environments/{env}/health", headers=headers)


async def _verify(w: World, env: str, headers: dict, tag: str):
    return await w.client.post("/v1/ledger/verify", headers=headers)


async def _digests(w: World, env: str, headers: dict, tag: str):
    return await w.client.get("/v1/ledger/digests", headers=headers)


async def _create_webhook(w: World, env: str, headers: dict, tag: str):
    return await w.client.post(f"/v1/environments/{env}/webhooks", json={"url": f"https://hooks.example.com/{tag}"},
                               headers=headers)


async def _list_webhooks(w: World, env: str, headers: dict, tag: str):
    return await w.client.get(f"/v1/environments/{env}/webhooks", headers=headers)


async def _webhook_detail(w: World, env: str, headers: dict, tag: str):
    return await w.client.get(f"/v1/webhooks/{w.webhooks[env]}", headers=headers)


async def _patch_webhook(w: World, env: str, headers: dict, tag: str):
    return await w.client.patch(f"/v1/webhooks/{w.webhooks[env]}", json={"description": f"by {tag}"}, headers=headers)


async def _delete_webhook(w: World, env: str, headers: dict, tag: str, *, fresh: bool = False):
    webhook_id = await w.create_webhook(env, f"del-{tag}") if fresh else w.webhooks[env]
    return await w.client.delete(f"/v1/webhooks/{webhook_id}", headers=headers)


async def _rotate_webhook(w: World, env: str, headers: dict, tag: str):
    return await w.client.post(f"/v1/webhooks/{w.webhooks[env]}/secret:rotate", json={"overlap_seconds": 60},
                               headers=headers)


async def _webhook_attempts(w: World, env: str, headers: dict, tag: str):
    return await w.client.get(f"/v1/webhooks/{w.webhooks[env]}/attempts", headers=headers)


def _refusable_delete(method: str, path: str):
    """DELETE routes aim at a fresh target when the delete should succeed (see _delete)."""
    return {"/v1/accounts/{id}": _delete, "/v1/webhooks/{id}": _delete_webhook}.get(path) if method == "DELETE" else None


def _open(path: str) -> Send:
    async def send(w: World, env: str, headers: dict, tag: str):
        return await w.client.get(path, headers=headers)
    return send


SENDERS: dict[tuple[str, str], Send] = {
    ("PUT", "/v1/environments/{env}/integrations/{name}"): _put_integration,
    ("POST", "/v1/environments/{env}/accounts"): _import_one,
    ("GET", "/v1/environments/{env}/accounts"): _list,
    ("POST", "/v1/environments/{env}/accounts:import"): _import_bulk,
    ("POST", "/v1/environments/{env}/accounts:export"): _export,
    ("GET", "/v1/accounts/{id}"): _detail,
    ("DELETE", "/v1/accounts/{id}"): _delete,
    ("GET", "/v1/accounts/{id}/token"): _token,
    ("POST", "/v1/accounts/{id}/refresh"): _force_refresh,
    ("POST", "/v1/accounts/{id}/validate"): _force_validate,
    ("PUT", "/v1/environments/{env}/overrides"): _put_environment_override,
    ("GET", "/v1/environments/{env}/overrides/history"): _environment_override_history,
    ("POST", "/v1/environments/{env}/overrides:rollback"): _roll_back_environment_override,
    ("PATCH", "/v1/accounts/{id}"): _patch_account,
    ("GET", "/v1/accounts/{id}/overrides/history"): _account_override_history,
    ("POST", "/v1/accounts/{id}/overrides:rollback"): _roll_back_account_override,
    ("GET", "/v1/accounts/{id}/effective-config/{model}/{resource}/{method}"): _effective_config,
    ("POST", "/v1/mappings:preview"): _preview,
    ("GET", "/v1/accounts/{id}/events"): _events,
    ("GET", "/v1/audit"): _audit,
    ("GET", "/v1/environments/{env}/health"): _health,
    ("POST", "/v1/ledger/verify"): _verify,
    ("GET", "/v1/ledger/digests"): _digests,
    ("POST", "/v1/environments/{env}/webhooks"): _create_webhook,
    ("GET", "/v1/environments/{env}/webhooks"): _list_webhooks,
    ("GET", "/v1/webhooks/{id}"): _webhook_detail,
    ("PATCH", "/v1/webhooks/{id}"): _patch_webhook,
    ("DELETE", "/v1/webhooks/{id}"): _delete_webhook,
    ("POST", "/v1/webhooks/{id}/secret:rotate"): _rotate_webhook,
    ("GET", "/v1/webhooks/{id}/attempts"): _webhook_attempts,
    **{("GET", path): _open(path) for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/metrics")},
}


def _expected(route: Route, role: str, scope: str) -> int:
    """The status class (2, 4xx exact) the contract asks for."""
    if route.kind == "open":
        return 2
    if role not in route.roles:
        return 403
    if scope == "other" and route.kind != "ledger":
        return 404
    return 2


def _matches(status: int, expected: int) -> bool:
    return 200 <= status < 300 if expected == 2 else status == expected


# --------------------------------------------------------------------------- the tests


async def test_every_route_has_an_entry_in_the_expectation_table(gateway):
    served = _app_routes(gateway.client.app)
    missing = sorted(r for r in served if r not in ROUTES)
    assert not missing, f"routes with no authorization expectation (add them to ROUTES and SENDERS): {missing}"
    assert any(path.startswith("/v1/") for _, path in served)
    gone = sorted(r for r in ROUTES if r not in served)
    assert not gone, f"routes the contract lists that the app does not serve: {gone}"
    assert set(SENDERS) == set(ROUTES)


async def test_each_route_declares_the_roles_the_contract_gives_it(gateway):
    """The @requires(...) marks match the contract, and open routes carry none."""
    wrong = []
    for route in gateway.client.app.router.routes():
        if route.resource is None or route.method == "HEAD":
            continue
        expected = ROUTES.get((route.method, route.resource.canonical))
        if expected is None:
            continue  # reported by the test above
        roles = getattr(route.handler, "roles", None)
        if expected.kind == "open":
            if roles is not None:
                wrong.append((route.method, route.resource.canonical, sorted(roles), "open"))
        elif roles != expected.roles:
            wrong.append((route.method, route.resource.canonical, sorted(roles or ()), sorted(expected.roles)))
    assert not wrong, wrong


async def test_openapi_documents_every_v1_route_with_its_roles(gateway):
    spec = await (await gateway.client.get("/openapi.json")).json()
    wrong = []
    for (method, path), route in ROUTES.items():
        if not path.startswith("/v1/"):
            continue  # /healthz, /openapi.json, ... need no key; the spec need not describe itself
        op = spec["paths"].get(path, {}).get(method.lower())
        if op is None:
            wrong.append((method, path, "not documented"))
            continue
        documented = op.get("description", "").removeprefix("Roles: ").split(".")[0].split(", ")
        if set(documented) != set(route.roles) or op.get("security") != [{"bearer": []}]:
            wrong.append((method, path, documented))
        if "401" not in op["responses"] or "403" not in op["responses"]:
            wrong.append((method, path, "401/403 not documented"))
    assert not wrong, wrong


async def test_every_route_x_role_x_key_scope(gateway):
    w = await _world(gateway)
    served = sorted(_app_routes(gateway.client.app))
    failures = []
    allowed_imports: dict[str, set[str]] = {env: set() for env in ENVS}
    allowed_patches: dict[str, set[str]] = {env: set() for env in ENVS}
    checked = 0
    for method, path in served:
        route = ROUTES.get((method, path))
        if route is None:
            failures.append(f"{method} {path}: no expectation")
            continue
        send = SENDERS[(method, path)]
        for target in ENVS:
            for role in ROLES:
                for scope in SCOPES:
                    expected = _expected(route, role, scope)
                    tag = f"{role}-{scope.replace('*', 'all')}"
                    headers = await w.headers(role, scope, target)
                    if _refusable_delete(method, path):
                        response = await _refusable_delete(method, path)(w, target, headers, f"{target}-{tag}",
                                                                          fresh=expected == 2)
                    else:
                        response = await send(w, target, headers, tag)
                    body = await response.read()
                    checked += 1
                    label = f"{method} {path} [{target}] role={role} scope={scope}"
                    if not _matches(response.status, expected):
                        failures.append(f"{label}: {response.status}, expected {expected if expected != 2 else '2xx'}"
                                        f" {body[:200]!r}")
                        continue
                    if expected != 2:
                        if response.content_type != PROBLEM_JSON:
                            failures.append(f"{label}: {response.content_type}, not problem+json")
                        if expected == 404 and route.kind in ("account", "webhook"):
                            # Nothing about the hidden account: not its tenant, integration or status.
                            for leak in (w.tenants[target], INTEGRATION, "instance_url", "fingerprint"):
                                if leak.encode() in body:
                                    failures.append(f"{label}: the 404 shows {leak!r}")
                    elif (method, path) == ("PATCH", "/v1/accounts/{id}"):
                        allowed_patches[target].add(tag)
                    elif path.endswith("/accounts") and method == "POST":
                        allowed_imports[target].add(f"mx-one-{tag}")
                    elif path.endswith(":import"):
                        result = json.loads(body)
                        if result["summary"]["rejected"]:
                            failures.append(f"{label}: {result}")
                        allowed_imports[target].add(f"mx-bulk-{tag}")
    assert not failures, f"{len(failures)} of {checked} checks failed:\n" + "\n".join(failures)
    # every route x 2 target environments x 4 roles x 3 scopes
    assert checked == len(served) * len(ENVS) * len(ROLES) * len(SCOPES)

    # Refused requests changed nothing: only allowed imports landed, and the shared accounts,
    # aimed at by every refused DELETE, still stand.
    for env in ENVS:
        made = {t for t in await w.tenants_of(env) if t.startswith("mx-one-") or t.startswith("mx-bulk-")}
        assert made == allowed_imports[env], (env, sorted(made ^ allowed_imports[env]))
        assert (await w.account(w.accounts[env]))["status"] != "deleted"
        assert await w.webhook_exists(w.webhooks[env])
    # Only allowed PATCHes changed an account's context (each one tags it with its sender).
    conn = await asyncpg.connect(gateway.database_url)
    try:
        for env in ENVS:
            rows = await conn.fetch("SELECT data FROM events WHERE stream_id = $1 AND type = 'AccountContextChanged'",
                                    f"account-{w.accounts[env]}")
            assert {json.loads(r["data"])["merge_patch"]["patched_by"] for r in rows} == allowed_patches[env], env
    finally:
        await conn.close()


async def test_an_out_of_scope_account_is_indistinguishable_from_a_missing_one(gateway):
    """Same status and same body (modulo the id) for another environment's account as for an id
    that exists nowhere: the key cannot probe for accounts outside its environments."""
    w = await _world(gateway)
    missing = str(uuid.uuid4())
    for role, suffix, method in (("admin", "", "GET"), ("operator", "", "GET"), ("auditor", "", "GET"),
                                 ("admin", "/token", "GET"), ("service", "/token", "GET"), ("admin", "", "DELETE"),
                                 ("operator", "", "PATCH"), ("auditor", "/effective-config/crm/contacts/list", "GET"),
                                 ("auditor", "/overrides/history", "GET"), ("operator", "/overrides:rollback", "POST")):
        headers = await w.headers(role, "own", "prod")
        hidden = await w.client.request(method, f"/v1/accounts/{w.accounts['staging']}{suffix}", headers=headers)
        absent = await w.client.request(method, f"/v1/accounts/{missing}{suffix}", headers=headers)
        hidden_body = (await hidden.text()).replace(w.accounts["staging"], "<id>")
        absent_body = (await absent.text()).replace(missing, "<id>")
        assert (hidden.status, hidden_body) == (absent.status, absent_body) == (404, absent_body), (role, suffix, method)
        assert hidden.headers.get("Content-Type") == absent.headers.get("Content-Type")
    # The same for environment routes: another environment and one that exists nowhere.
    headers = await w.headers("admin", "own", "prod")
    for method, path, kwargs in (
        ("GET", "/v1/environments/{env}/accounts", {}),
        ("POST", "/v1/environments/{env}/accounts:export", {"json": {"purpose": "probe"}}),
        ("PUT", "/v1/environments/{env}/integrations/salesforce", {"json": _integration_body()}),
        ("PUT", "/v1/environments/{env}/overrides", {"json": OVERRIDE_PATCH}),
        ("GET", "/v1/environments/{env}/overrides/history", {}),
        ("POST", "/v1/environments/{env}/overrides:rollback", {"json": {"version": 0}}),
    ):
        hidden = await w.client.request(method, path.format(env="staging"), headers=headers, **kwargs)
        absent = await w.client.request(method, path.format(env="nowhere"), headers=headers, **kwargs)
        assert hidden.status == absent.status == 404, (method, path)
        assert (await hidden.text()).replace("staging", "<env>") == (await absent.text()).replace("nowhere", "<env>")
    # An account named in a preview's body: the same.
    hidden = await w.client.post("/v1/mappings:preview", headers=headers, json={
        "account_id": w.accounts["staging"], "model": "crm", "resource": "contacts", "method": "list", "sample": {}})
    absent = await w.client.post("/v1/mappings:preview", headers=headers, json={
        "account_id": missing, "model": "crm", "resource": "contacts", "method": "list", "sample": {}})
    assert hidden.status == absent.status == 404
    assert (await hidden.text()).replace(w.accounts["staging"], "<id>") == (await absent.text()).replace(missing, "<id>")
    # A malformed id is a plain 404 too.
    response = await w.client.get("/v1/accounts/not-a-uuid", headers=w.admin)
    assert response.status == 404 and response.content_type == PROBLEM_JSON


async def test_no_key_a_malformed_key_or_a_revoked_key_is_401_with_www_authenticate(gateway):
    w = await _world(gateway)
    valid_service = (await gateway.headers("service"))["Authorization"].removeprefix("Bearer ")
    # A real service key with its role prefix edited to "admin": the prefix is not authority.
    tampered = valid_service.replace("llk_service_", "llk_admin_", 1)
    revoked = (await gateway.headers("admin"))["Authorization"].removeprefix("Bearer ")
    assert (await w.client.get(f"/v1/accounts/{w.accounts['prod']}", headers={"Authorization": f"Bearer {revoked}"})).status == 200
    conn = await asyncpg.connect(gateway.database_url)
    try:
        key_id = "_".join(revoked.split("_")[2:4])
        assert await revoke_key(conn, key_id)
    finally:
        await conn.close()
    bad_headers = {
        "no key": {},
        "empty bearer": {"Authorization": "Bearer "},
        "not a key": {"Authorization": "Bearer not-a-key"},
        "well-formed unknown key": {"Authorization": "Bearer llk_admin_key_000000000000_" + "A" * 43},
        "basic scheme": {"Authorization": "Basic YWRtaW46YWRtaW4="},
        "key without scheme": {"Authorization": valid_service},
        "tampered role prefix": {"Authorization": f"Bearer {tampered}"},
        "revoked key": {"Authorization": f"Bearer {revoked}"},
    }
    failures = []
    checked = 0
    for (method, path), route in sorted(ROUTES.items()):
        send = SENDERS[(method, path)]
        for name, headers in bad_headers.items():
            delete = _refusable_delete(method, path)
            response = await (delete(w, "prod", headers, "unauth") if delete else send(w, "prod", headers, "unauth"))
            checked += 1
            if route.kind == "open":
                if not 200 <= response.status < 300:
                    failures.append(f"{method} {path} {name}: {response.status} on an open route")
                continue
            challenge = response.headers.get("WWW-Authenticate", "")
            if response.status != 401 or not challenge.lower().startswith("bearer"):
                failures.append(f"{method} {path} {name}: {response.status} WWW-Authenticate={challenge!r}")
            elif response.content_type != PROBLEM_JSON:
                failures.append(f"{method} {path} {name}: {response.content_type}")
        # 401 comes before 404: an unauthenticated caller learns nothing about ids either.
        if route.kind in ("account", "webhook"):
            url = path.replace("{id}", str(uuid.uuid4())).replace("{model}/{resource}/{method}", "crm/contacts/list")
            response = await w.client.request(method, url)
            if response.status != 401:
                failures.append(f"{method} {path} unknown id, no key: {response.status}")
    assert not failures, "\n".join(failures)
    assert checked == len(ROUTES) * len(bad_headers)
    assert (await w.account(w.accounts["prod"]))["status"] != "deleted"
    assert await w.webhook_exists(w.webhooks["prod"])
    assert not {t for t in await w.tenants_of("prod") if "unauth" in t}


async def test_a_scoped_list_never_shows_another_environments_accounts(gateway):
    w = await _world(gateway)
    for env in ENVS:
        for i in range(3):
            await w.import_account(env, f"{env}-extra-{i}")
    ids = {env: set() for env in ENVS}
    for env in ENVS:
        response = await gateway.client.get(f"/v1/environments/{env}/accounts?limit=500", headers=w.admin)
        ids[env] = {a["id"] for a in (await response.json())["data"]}
        assert len(ids[env]) == 4
    for role in sorted(READERS):
        for env in ENVS:
            headers = await w.headers(role, "own", env)
            seen, cursor = [], None
            for _ in range(10):  # page through, one account a page, with every filter the list has
                query = "limit=1" + (f"&cursor={cursor}" if cursor else "")
                page = await gateway.client.get(f"/v1/environments/{env}/accounts?{query}", headers=headers)
                assert page.status == 200, await page.text()
                body = await page.json()
                seen += [a["id"] for a in body["data"]]
                assert all(a["environment"] == env for a in body["data"])
                cursor = body["next_cursor"]
                if not cursor:
                    break
            assert set(seen) == ids[env] and len(seen) == len(ids[env]), (role, env)
            for query in (f"tenant_id={w.tenants[OTHER[env]]}", f"integration={INTEGRATION}", "status=active"):
                response = await gateway.client.get(f"/v1/environments/{env}/accounts?{query}", headers=headers)
                assert {a["id"] for a in (await response.json())["data"]} <= ids[env], (role, env, query)
            # A cursor naming the other environment's account does not cross over either.
            foreign = urlsafe_b64encode(f"account-{sorted(ids[OTHER[env]])[0]}".encode()).decode().rstrip("=")
            response = await gateway.client.get(f"/v1/environments/{env}/accounts?cursor={foreign}", headers=headers)
            assert {a["id"] for a in (await response.json())["data"]} <= ids[env]
            # And asking for the other environment outright is a 404 with no data.
            response = await gateway.client.get(f"/v1/environments/{OTHER[env]}/accounts", headers=headers)
            assert response.status == 404
            text = await response.text()
            assert not any(account_id in text for account_id in ids[OTHER[env]])


async def test_the_service_role_reads_tokens_but_cannot_list_or_see_details(gateway):
    w = await _world(gateway)
    for scope in ("*", "own"):
        headers = await w.headers("service", scope, "prod")
        token = await gateway.client.get(f"/v1/accounts/{w.accounts['prod']}/token", headers=headers)
        assert token.status == 200, await token.text()
        assert (await token.json())["access_token"].startswith("at-")
        assert token.headers.get("Cache-Control") == "no-store"
        assert (await gateway.client.get("/v1/environments/prod/accounts", headers=headers)).status == 403
        assert (await gateway.client.get(f"/v1/accounts/{w.accounts['prod']}", headers=headers)).status == 403
        assert (await gateway.client.post("/v1/environments/prod/accounts", json=_truto("svc"), headers=headers)).status == 403
        assert (await gateway.client.post("/v1/environments/prod/accounts:export", json={"purpose": "x"},
                                          headers=headers)).status == 403
    # A service key of one environment reads no token of another.
    headers = await w.headers("service", "own", "prod")
    assert (await gateway.client.get(f"/v1/accounts/{w.accounts['staging']}/token", headers=headers)).status == 404


async def test_the_auditor_never_gets_a_token_or_an_export(gateway):
    w = await _world(gateway)
    for scope in ("*", "own", "other"):
        for env in ENVS:
            headers = await w.headers("auditor", scope, env)
            token = await gateway.client.get(f"/v1/accounts/{w.accounts[env]}/token", headers=headers)
            export = await gateway.client.post(f"/v1/environments/{env}/accounts:export",
                                               json={"purpose": "audit"}, headers=headers)
            for response in (token, export):
                body = await response.read()
                assert response.status == 403, (scope, env, response.status, body[:200])
                assert b"access_token" not in body and b"at-" not in body
    # What it may do, it can: read the list and the details of its environment.
    headers = await w.headers("auditor", "own", "prod")
    assert (await gateway.client.get("/v1/environments/prod/accounts", headers=headers)).status == 200
    assert (await gateway.client.get(f"/v1/accounts/{w.accounts['prod']}", headers=headers)).status == 200
    # No TokensExported was recorded for a refused export.
    conn = await asyncpg.connect(gateway.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE type = 'TokensExported'") == 0
    finally:
        await conn.close()


async def test_a_key_for_several_environments_reaches_each_of_them_and_no_other(gateway):
    w = await _world(gateway)
    both = await gateway.headers("operator", "prod", "staging")
    only_dev = await gateway.headers("operator", "dev")
    for env in ENVS:
        assert (await gateway.client.get(f"/v1/accounts/{w.accounts[env]}", headers=both)).status == 200
        assert (await gateway.client.get(f"/v1/environments/{env}/accounts", headers=both)).status == 200
        assert (await gateway.client.get(f"/v1/accounts/{w.accounts[env]}", headers=only_dev)).status == 404
        assert (await gateway.client.get(f"/v1/environments/{env}/accounts", headers=only_dev)).status == 404
    assert (await gateway.client.get("/v1/environments/dev/accounts", headers=both)).status == 404


async def test_head_requests_are_guarded_like_their_gets(gateway):
    """aiohttp serves HEAD for every GET route with the same handler: the same rules apply."""
    w = await _world(gateway)
    failures = []
    for (method, path), route in sorted(ROUTES.items()):
        if method != "GET" or route.kind == "open":
            continue
        url = path.replace("{env}", "prod").replace(
            "{id}", w.webhooks["prod"] if route.kind == "webhook" else w.accounts["prod"]).replace(
            "{model}/{resource}/{method}", "crm/contacts/list")
        if path == "/v1/audit":
            url += "?environment=prod"  # unfiltered, a scoped key sees its own environments' trail
        response = await gateway.client.head(url)
        if response.status != 401 or "WWW-Authenticate" not in response.headers:
            failures.append(f"HEAD {path} no key: {response.status}")
        for role in ROLES:
            for scope in SCOPES:
                response = await gateway.client.head(url, headers=await w.headers(role, scope, "prod"))
                expected = _expected(route, role, scope)
                if not _matches(response.status, expected):
                    failures.append(f"HEAD {path} role={role} scope={scope}: {response.status}, expected {expected}")
    assert not failures, "\n".join(failures)
