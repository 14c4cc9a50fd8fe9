"""The OpenAPI 3.1 document: what /openapi.json serves and `linkledger openapi` prints."""

from typing import Any

from service.gateway.routes_integrations import IntegrationBody

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
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "linkledger", "version": "1",
                 "description": "Event-sourced custody of OAuth linked accounts. Errors are RFC 9457 problem details."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "an API key (llk_<role>_...)"}},
            "schemas": {
                **defs,
                "IntegrationBody": integration_schema,
                "Integration": {"type": "object", "description": "the integration's state; the client secret only as a fingerprint"},
                "Account": {"type": "object", "description": "an account as stored, secrets only as fingerprints", "properties": {
                    "id": {"type": "string", "format": "uuid"}, "environment": {"type": "string"},
                    "integration": {"type": "string"}, "tenant_id": {"type": "string"},
                    "external_ref": {"type": ["string", "null"]}, "status": {"type": "string"},
                    "fingerprints": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "Problem": {"type": "object", "required": ["type", "title", "status"], "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                    "detail": {"type": "string"}, "errors": {"type": "array", "items": {"type": "object", "properties": {
                        "field": {"type": "string"}, "reason": {"type": "string"}}}}}},
            },
        },
    }
