"""The OpenAPI 3.1 document: what /openapi.json serves and `linkledger openapi` prints."""

from typing import Any

from service.gateway.routes_integrations import IntegrationBody
from service.gateway.routes_overrides import AccountPatchBody, EnvironmentOverrideBody, PreviewBody, RollbackBody

PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problems(*statuses: int) -> dict[str, Any]:
    reasons = {400: "Bad request", 401: "No or unknown API key", 403: "The key's role may not do this",
               404: "Not found (or outside the key's environments)", 409: "Conflict with the account's state",
               410: "Secrets destroyed", 422: "Invalid input; `errors` names each field", 503: "A dependency is down"}
    return {str(s): {"description": reasons[s], "content": {"application/problem+json": {"schema": PROBLEM}}}
            for s in statuses}


def _op(summary: str, roles: list[str] | None, responses: dict[str, Any], *, params=None, body=None, tag="accounts"):
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if roles is not None:
        op["description"] = "Roles: " + ", ".join(roles) + "."
        op["security"] = [{"bearer": []}]
    else:
        op["security"] = []
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    return op


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


def _query(name: str, description: str, schema: dict | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema or {"type": "string"}, "description": description}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ENV = _path("env", "environment name")
ACCOUNT_ID = _path("id", "account id (UUID)")
PROFILE = _query("profile", "shape of the records", {"type": "string", "enum": ["canonical", "truto", "nango"]})

ACCOUNT = {"$ref": "#/components/schemas/Account"}


def _body(model) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}


def _override_paths() -> dict[str, Any]:
    """Overrides: three levels (integration base, environment, account) merged as JSON Merge Patches."""
    level = {"enum": ["integration", "environment", "account"]}
    override_state = {"type": "object", "properties": {
        "version": {"type": "integer"}, "override": {"type": "object"}, "override_hash": {"type": ["string", "null"]},
        "changed": {"type": "boolean", "description": "false when the patch changed nothing (no event appended)"}}}
    history = {"type": "object", "properties": {"versions": {"type": "array", "items": {"type": "object", "properties": {
        "version": {"type": "integer", "description": "stream version of the change; what a roll-back names"},
        "occurred_at": {"type": "string", "format": "date-time"}, "actor": {"type": "string"},
        "merge_patch": {"type": "object"}, "resulting_hash": {"type": "string"},
        "restored_version": {"type": ["integer", "null"]}}}}}}
    effective = {"type": "object", "properties": {
        "config": {"type": "object", "description": "the merged method configuration"},
        "provenance": {"type": "object", "additionalProperties": level,
                       "description": "for each field (dotted path of each leaf) the level it came from"},
        "integration_settings": {"type": "object", "description": "the integration's config without the unified "
                                 "model, with environment and account `integration_override` merged on top"},
        "integration_settings_provenance": {"type": "object", "additionalProperties": level},
        "versions": {"type": "object", "additionalProperties": {"type": "integer"}},
        "hashes": {"type": "object", "additionalProperties": {"type": "string"}}, "etag": {"type": "string"}}}
    preview = {"type": "object", "properties": {
        "expression": {"type": "string"}, "mapping": {"type": "string"}, "level": level, "result": {},
        "error": {"type": ["object", "null"], "properties": {"code": {"type": ["string", "null"]},
                                                            "message": {"type": "string"},
                                                            "position": {"type": ["integer", "null"]}}}}}
    rollback = "Restore the override as of an earlier version, as one new event (version 0: no override)"
    return {
        "/v1/accounts/{id}": {"patch": _op(
            "Change the account override (`unified_model_override`, `integration_override`) and/or its non-secret "
            "context by JSON Merge Patches, in one append; every mapping compiled first", ["admin", "operator"],
            {"200": _json(ACCOUNT), **_problems(401, 403, 404, 409, 422)}, params=[ACCOUNT_ID],
            body=_body(AccountPatchBody), tag="overrides")},
        "/v1/environments/{env}/overrides": {"put": _op(
            "Change the environment override by a JSON Merge Patch (every mapping compiled first)", ["admin", "operator"],
            {"200": _json(override_state), **_problems(401, 403, 404, 409, 422)}, params=[ENV],
            body=_body(EnvironmentOverrideBody), tag="overrides")},
        "/v1/environments/{env}/overrides/history": {"get": _op(
            "Every version of the environment override: actor, time, patch, resulting hash",
            ["admin", "operator", "auditor"], {"200": _json(history), **_problems(401, 403, 404)}, params=[ENV],
            tag="overrides")},
        "/v1/environments/{env}/overrides:rollback": {"post": _op(
            rollback, ["admin", "operator"], {"200": _json(override_state), **_problems(401, 403, 404, 409, 422)},
            params=[ENV], body=_body(RollbackBody), tag="overrides")},
        "/v1/accounts/{id}/overrides/history": {"get": _op(
            "Every version of the account override: actor, time, patch, resulting hash",
            ["admin", "operator", "auditor"], {"200": _json(history), **_problems(401, 403, 404)}, params=[ACCOUNT_ID],
            tag="overrides")},
        "/v1/accounts/{id}/overrides:rollback": {"post": _op(
            rollback, ["admin", "operator"], {"200": _json(ACCOUNT), **_problems(401, 403, 404, 409, 422)},
            params=[ACCOUNT_ID], body=_body(RollbackBody), tag="overrides")},
        "/v1/accounts/{id}/effective-config/{model}/{resource}/{method}": {"get": _op(
            "The merged configuration of one method for the account, with the level each field came from; "
            "ETag / If-None-Match (304)", ["admin", "operator", "auditor"],
            {"200": _json(effective), "304": {"description": "unchanged since the ETag given"},
             **_problems(401, 403, 404)},
            params=[ACCOUNT_ID, _path("model", "unified model, e.g. crm"), _path("resource", "e.g. contacts"),
                    _path("method", "e.g. list"),
                    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}],
            tag="overrides")},
        "/v1/mappings:preview": {"post": _op(
            "Evaluate an account's effective mapping, or an expression, against a sample (before-step results "
            "bound as `step`); evaluation errors come back in `error`", ["admin", "operator"],
            {"200": _json(preview), **_problems(401, 403, 404, 422)}, body=_body(PreviewBody), tag="overrides")},
    }


def _audit_paths() -> dict[str, Any]:
    """Auditing, health and integrity routes (routes_audit.py, routes_ledger.py)."""
    auditors = ["admin", "auditor"]
    page = lambda items: _json({"type": "object", "properties": {  # noqa: E731
        "data": {"type": "array", "items": items}, "next_cursor": {"type": ["string", "null"]}}})
    return {
        "/v1/accounts/{id}/events": {"get": _op(
            "The account's complete history, secret-free: type, data, actor, correlation, version, position, hash chain",
            ["admin", "auditor", "operator"],
            {"200": _json({"type": "object", "properties": {"account_id": {"type": "string"}, "events": {
                "type": "array", "items": {"$ref": "#/components/schemas/HistoryEvent"}}}}),
             **_problems(401, 403, 404)}, params=[ACCOUNT_ID], tag="audit")},
        "/v1/audit": {"get": _op(
            "The audit trail across accounts in log order: JSON cursor pages, or CSV with Accept: text/csv or "
            "format=csv", auditors,
            {"200": {**page({"$ref": "#/components/schemas/AuditEntry"}),
                     "content": {**page({})["content"], "text/csv": {"schema": {"type": "string"}}}},
             **_problems(400, 401, 403, 404)},
            params=[_query("environment", "filter"), _query("account", "account id filter"),
                    _query("actor", "filter, e.g. key:key_..."), _query("type", "event type filter"),
                    _query("since", "from this instant", {"type": "string", "format": "date-time"}),
                    _query("until", "up to this instant", {"type": "string", "format": "date-time"}),
                    _query("limit", "page size, 1-1000", {"type": "integer"}), _query("cursor", "from next_cursor"),
                    _query("format", "csv for CSV", {"type": "string", "enum": ["json", "csv"]})], tag="audit")},
        "/v1/environments/{env}/health": {"get": _op(
            "Migration health per integration: imported vs active vs needs_reauth, refresh success rate, "
            "auto-reactivation rate, mean time to reconnect, accounts stuck in needs_reauth over 7 days",
            ["admin", "operator", "auditor"], {"200": _json({"type": "object"}), **_problems(401, 403, 404)},
            params=[ENV], tag="audit")},
        "/v1/ledger/verify": {"post": _op(
            "Recompute every hash chain and check the signed digests (problems are a count for scoped keys)",
            auditors, {"200": _json({"type": "object", "properties": {
                "ok": {"type": "boolean"}, "streams": {"type": "integer"}, "events": {"type": "integer"},
                "digests": {"type": "integer"}, "problems": {}}}), **_problems(401, 403)}, tag="audit")},
        "/v1/ledger/digests": {"get": _op(
            "Signed ledger digests, newest first", auditors,
            {"200": _json({"type": "object", "properties": {"data": {"type": "array", "items": {"type": "object"}},
                                                             "next_before": {"type": ["integer", "null"]}}}),
             **_problems(400, 401, 403)},
            params=[_query("limit", "1-1000", {"type": "integer"}), _query("before", "digest_id", {"type": "integer"})],
            tag="audit")},
    }


AUDIT_SCHEMAS = {
    "HistoryEvent": {"type": "object", "properties": {
        "position": {"type": "integer"}, "version": {"type": "integer"}, "type": {"type": "string"},
        "occurred_at": {"type": "string", "format": "date-time"}, "actor": {"type": "string"},
        "correlation_id": {"type": ["string", "null"]}, "causation_id": {"type": ["string", "null"]},
        "data": {"type": "object"}, "encrypted_secret": {"type": "boolean"}, "prev_hash": {"type": "string"},
        "hash": {"type": "string"}}},
    "AuditEntry": {"type": "object", "properties": {
        "position": {"type": "integer"}, "occurred_at": {"type": "string", "format": "date-time"},
        "environment": {"type": ["string", "null"]}, "integration": {"type": ["string", "null"]},
        "account_id": {"type": ["string", "null"]}, "actor": {"type": "string"}, "action": {"type": "string"},
        "outcome": {"enum": ["success", "failure"]}, "correlation_id": {"type": ["string", "null"]},
        "detail": {"type": "object"}}},
}


WEBHOOK_ID = _path("id", "webhook endpoint id (UUID)")
WEBHOOK = {"type": "object", "description": "a webhook endpoint (its secret is shown only when created or rotated)",
           "properties": {"id": {"type": "string", "format": "uuid"}, "environment": {"type": "string"},
                          "url": {"type": "string"}, "events": {"type": "array", "items": {"type": "string"}},
                          "description": {"type": ["string", "null"]}, "enabled": {"type": "boolean"},
                          "disabled_reason": {"type": ["string", "null"]}}}


def _webhook_paths() -> dict[str, Any]:
    from service.gateway.routes_webhooks import EndpointBody, EndpointPatch, RotateBody

    ref = {"$ref": "#/components/schemas/Webhook"}
    admin, readers = ["admin"], ["admin", "operator"]
    return {
        "/v1/environments/{env}/webhooks": {
            "post": _op("Register a webhook endpoint; the response carries its signing secret (whsec_...) once", admin,
                        {"201": _json({"allOf": [ref, {"type": "object", "properties": {"secret": {"type": "string"}}}]}),
                         **_problems(401, 403, 404, 422)}, params=[ENV], body=_body(EndpointBody), tag="webhooks"),
            "get": _op("List the environment's webhook endpoints", readers,
                       {"200": _json({"type": "object", "properties": {"data": {"type": "array", "items": ref}}}),
                        **_problems(401, 403, 404)}, params=[ENV], tag="webhooks"),
        },
        "/v1/webhooks/{id}": {
            "get": _op("A webhook endpoint", readers, {"200": _json(ref), **_problems(401, 403, 404)},
                       params=[WEBHOOK_ID], tag="webhooks"),
            "patch": _op("Change URL, event filter, description; enable or disable", admin,
                         {"200": _json(ref), **_problems(401, 403, 404, 422)}, params=[WEBHOOK_ID],
                         body=_body(EndpointPatch), tag="webhooks"),
            "delete": _op("Delete a webhook endpoint (its pending deliveries are dropped)", admin,
                          {"200": _json(ref), **_problems(401, 403, 404)}, params=[WEBHOOK_ID], tag="webhooks"),
        },
        "/v1/webhooks/{id}/secret:rotate": {"post": _op(
            "New signing secret (shown once); the previous ones keep signing beside it for overlap_seconds", admin,
            {"200": _json({"type": "object", "properties": {"secret": {"type": "string"},
                                                             "previous_secrets_expire_at": {"type": "string"}}}),
             **_problems(401, 403, 404, 422)}, params=[WEBHOOK_ID], body=_body(RotateBody), tag="webhooks")},
        "/v1/webhooks/{id}/attempts": {"get": _op(
            "Every delivery attempt to the endpoint, newest first", readers,
            {"200": _json({"type": "object", "properties": {"data": {"type": "array", "items": {"type": "object"}}}}),
             **_problems(400, 401, 403, 404)}, params=[WEBHOOK_ID, _query("limit", "1-500", {"type": "integer"})],
            tag="webhooks")},
    }


def build_openapi() -> dict[str, Any]:
    integration_schema = IntegrationBody.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = integration_schema.pop("$defs", {})
    record_result = {"type": "object", "required": ["line", "outcome"], "properties": {
        "line": {"type": "integer"}, "outcome": {"enum": ["imported", "updated", "unchanged", "rejected"]},
        "account_id": {"type": "string", "format": "uuid"}, "status": {"type": "string"},
        "field": {"type": "string"}, "reason": {"type": "string"}}}
    paths = {
        "/healthz": {"get": _op("Liveness", None, {"200": _json({"type": "object"})}, tag="operations")},
        "/readyz": {"get": _op("Readiness: PostgreSQL and NATS answer", None,
                               {"200": _json({"type": "object"}), **_problems(503)}, tag="operations")},
        "/metrics": {"get": _op("Prometheus metrics", None, {"200": {"description": "text exposition format"}}, tag="operations")},
        "/v1/environments/{env}/integrations/{name}": {"put": _op(
            "Define an integration and its bring-your-own OAuth client", ["admin"],
            {"200": _json({"$ref": "#/components/schemas/Integration"}), **_problems(401, 403, 404, 422)},
            params=[ENV, _path("name", "integration name")],
            body={"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/IntegrationBody"}}}},
            tag="integrations")},
        "/v1/environments/{env}/accounts": {
            "post": _op("Import one account (Truto-shaped body by default)", ["admin", "operator"],
                        {"201": _json({"type": "object", "properties": {"outcome": {"type": "string"}, "account": ACCOUNT}}, "Imported"),
                         "200": _json({"type": "object", "properties": {"outcome": {"type": "string"}, "account": ACCOUNT}}, "Updated or unchanged"),
                         **_problems(401, 403, 404, 409, 422)},
                        params=[ENV, PROFILE, {"name": "Idempotency-Key", "in": "header", "required": False,
                                               "schema": {"type": "string"}, "description": "a repeat gets the first response"}],
                        body={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}),
            "get": _op("List accounts (masked)", ["admin", "operator", "auditor"],
                       {"200": _json({"type": "object", "properties": {"data": {"type": "array", "items": ACCOUNT},
                                                                        "next_cursor": {"type": ["string", "null"]}}}),
                        **_problems(400, 401, 403, 404)},
                       params=[ENV, _query("status", "filter"), _query("integration", "filter"), _query("tenant_id", "filter"),
                               _query("limit", "page size, 1-500", {"type": "integer"}), _query("cursor", "from next_cursor")]),
        },
        "/v1/environments/{env}/accounts:import": {"post": _op(
            "Bulk import (NDJSON or JSON array); one result per record", ["admin", "operator"],
            {"200": _json({"type": "object", "properties": {"summary": {"type": "object"},
                                                             "results": {"type": "array", "items": record_result}}}),
             **_problems(400, 401, 403, 404)},
            params=[ENV, PROFILE],
            body={"required": True, "content": {"application/x-ndjson": {"schema": {"type": "string"}},
                                                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}})},
        "/v1/environments/{env}/accounts:export": {"post": _op(
            "Export tokens in the canonical import format (plaintext; every account gets a TokensExported event)", ["admin"],
            {"200": {"description": "NDJSON, one canonical record per line", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
             **_problems(401, 403, 404, 422)},
            params=[ENV],
            body={"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["purpose"], "properties": {
                "purpose": {"type": "string"}, "integration": {"type": "string"}}}}}})},
        "/v1/accounts/{id}": {
            "get": _op("Account detail (masked); as_of gives its state at an instant", ["admin", "operator", "auditor"],
                       {"200": _json(ACCOUNT), **_problems(400, 401, 403, 404)},
                       params=[ACCOUNT_ID, _query("as_of", "ISO-8601 instant", {"type": "string", "format": "date-time"})]),
            "delete": _op("Delete: the account's data key is destroyed, its history stays", ["admin"],
                          {"200": _json(ACCOUNT), **_problems(401, 403, 404)}, params=[ACCOUNT_ID, _query("reason", "why")]),
        },
        "/v1/accounts/{id}/refresh": {"post": _op(
            "Refresh the access token now (one refresh per grant across replicas)", ["admin", "operator"],
            {"200": _json(ACCOUNT), **_problems(401, 403, 404, 409, 503)}, params=[ACCOUNT_ID])},
        "/v1/accounts/{id}/validate": {"post": _op(
            "Run the integration's health check now (refreshing first if the token has expired)", ["admin", "operator"],
            {"200": _json(ACCOUNT), **_problems(401, 403, 404, 409, 503)}, params=[ACCOUNT_ID])},
        "/v1/accounts/{id}/token": {"get": _op(
            "A usable credential for the account, with its non-secret context; refreshed first when it "
            "expires within 30 s. 409 when the account needs re-authentication. An account of an integration "
            "whose health_check.when is first_use is health-checked by its first read (409 validation-error "
            "when the check fails).", ["service", "admin"],
            {"200": _json({"type": "object"}), **_problems(401, 403, 404, 409, 410, 503)}, params=[ACCOUNT_ID])},
        **_webhook_paths(),
    }
    for path, operations in (_override_paths() | _audit_paths()).items():
        paths.setdefault(path, {}).update(operations)
    return {
        "openapi": "3.1.0",
        "info": {"title": "linkledger", "version": "1",
                 "description": "Event-sourced custody of OAuth linked accounts. Errors are RFC 9457 problem details."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "an API key (llk_<role>_...)"}},
            "schemas": {
                **defs,
                **AUDIT_SCHEMAS,
                "IntegrationBody": integration_schema,
                "Integration": {"type": "object", "description": "the integration's state; the client secret only as a fingerprint"},
                "Account": {"type": "object", "description": "an account as stored, secrets only as fingerprints", "properties": {
                    "id": {"type": "string", "format": "uuid"}, "environment": {"type": "string"},
                    "integration": {"type": "string"}, "tenant_id": {"type": "string"},
                    "external_ref": {"type": ["string", "null"]}, "status": {"type": "string"},
                    "fingerprints": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "Webhook": WEBHOOK,
                "Problem": {"type": "object", "required": ["type", "title", "status"], "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                    "detail": {"type": "string"}, "errors": {"type": "array", "items": {"type": "object", "properties": {
                        "field": {"type": "string"}, "reason": {"type": "string"}}}}}},
            },
        },
    }
