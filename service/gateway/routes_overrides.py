"""Overrides: environment and account merge patches, effective configuration, mapping previews,
history and roll-back."""

import hashlib
import re
import uuid
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from events.canonical import canonical_json
from service.domain.account import AccountState, require_live
from service.domain.commands import NAME_PATTERN
from service.domain.errors import InvalidConfiguration
from service.domain.identity import account_stream, environment_stream
from service.domain.mappings import InvalidMapping, MappingProblem
from service.gateway.auth import api_key, ensure_environment, requires
from service.gateway.keys import PREVIEWS, UOW
from service.gateway.requests import InvalidRequest, parse_json
from service.gateway.views import account_view
from service.handlers.accounts import AccountNotFound, load_existing_account
from service.handlers.overrides import (
    ACCOUNT_OVERRIDE_EVENT,
    ENVIRONMENT_OVERRIDE_EVENT,
    change_account,
    change_environment_override,
    effective_config,
    override_history,
    roll_back_account,
    roll_back_environment,
)

routes = web.RouteTableDef()
READERS = ("admin", "operator", "auditor")
WRITERS = ("admin", "operator")
MAPPING_NAME = r"^[a-z][a-z0-9_]*_mapping$"
SAMPLE_NAME = {"response_mapping": "response", "query_mapping": "query", "request_body_mapping": "body"}


class EnvironmentOverrideBody(BaseModel):
    """A merge patch of the environment override; `integrations.<name>` applies to one integration."""

    model_config = ConfigDict(extra="forbid")
    unified_model_override: dict[str, Any] | None = None
    integration_override: dict[str, Any] | None = None
    integrations: dict[str, dict[str, Any] | None] | None = None


class AccountPatchBody(BaseModel):
    """Merge patches of the account override and of its non-secret context."""

    model_config = ConfigDict(extra="forbid")
    unified_model_override: dict[str, Any] | None = None
    integration_override: dict[str, Any] | None = None
    context: dict[str, Any] | None = None


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=0, description="an override version from the history; 0: no override")


class PreviewBody(BaseModel):
    """Either an account's effective mapping (account_id, model, resource, method, mapping) or a
    given `expression` (with an optional account_id for its context)."""

    model_config = ConfigDict(extra="forbid")
    account_id: uuid.UUID | None = None
    model: str | None = None
    resource: str | None = None
    method: str | None = None
    mapping: str = Field(default="response_mapping", pattern=MAPPING_NAME)
    expression: str | None = None
    sample: Any = None
    sample_as: Literal["response", "query", "body"] | None = None
    steps: dict[str, Any] = {}
    query: Any = None
    context: dict[str, Any] | None = None


def _environment(request: web.Request) -> str:
    """The path's environment, if the key may reach it and it is a name environments can have."""
    env = request.match_info["env"]
    ensure_environment(request, env)
    if not re.match(NAME_PATTERN, env):
        raise InvalidRequest([{"field": "env", "reason": f"an environment name matches {NAME_PATTERN}"}])
    return env


def _account_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound(text="no such account") from None


async def _scoped_account(request: web.Request, account_id: uuid.UUID) -> AccountState:
    """The account, if the key's environments include it; otherwise as if it did not exist."""
    state = await load_existing_account(request.app[UOW], account_id)
    if not api_key(request).may_access(state.environment):
        raise AccountNotFound(f"account {account_id} does not exist", field="account_id")
    return state


async def _live_account(request: web.Request, account_id: uuid.UUID) -> AccountState:
    """The account, as _scoped_account, and not deleted (409 otherwise, as commands answer)."""
    state = await _scoped_account(request, account_id)
    require_live(state)
    return state


def _patch_of(body: BaseModel) -> dict[str, Any]:
    return body.model_dump(mode="json", exclude_unset=True)


@routes.put("/v1/environments/{env}/overrides")
@requires(*WRITERS)
async def put_environment_override(request: web.Request) -> web.Response:
    env = _environment(request)
    patch = _patch_of(await parse_json(request, EnvironmentOverrideBody))
    uow = request.app[UOW].acting_as(api_key(request).actor)
    state, changed = await change_environment_override(uow, env, patch)
    return web.json_response({**state.model_dump(mode="json"), "changed": changed})


@routes.get("/v1/environments/{env}/overrides/history")
@requires(*READERS)
async def environment_override_history(request: web.Request) -> web.Response:
    env = _environment(request)
    history = await override_history(request.app[UOW], environment_stream(env), ENVIRONMENT_OVERRIDE_EVENT)
    return web.json_response({"environment": env, "versions": [entry.as_dict() for entry in history]})


@routes.post("/v1/environments/{env}/overrides:rollback")
@requires(*WRITERS)
async def roll_back_environment_override(request: web.Request) -> web.Response:
    env = _environment(request)
    body = await parse_json(request, RollbackBody)
    uow = request.app[UOW].acting_as(api_key(request).actor)
    state, changed = await roll_back_environment(uow, env, body.version)
    return web.json_response({**state.model_dump(mode="json"), "changed": changed, "restored_version": body.version})


@routes.patch("/v1/accounts/{id}")
@requires(*WRITERS)
async def patch_account(request: web.Request) -> web.Response:
    state = await _live_account(request, _account_id(request))
    patch = _patch_of(await parse_json(request, AccountPatchBody))
    context_patch = patch.pop("context", None)
    uow = request.app[UOW].acting_as(api_key(request).actor)
    state, changed = await change_account(uow, state.account_id, override_patch=patch or None,
                                          context_patch=context_patch)
    return web.json_response({**account_view(state), "changed": changed})


@routes.get("/v1/accounts/{id}/overrides/history")
@requires(*READERS)
async def account_override_history(request: web.Request) -> web.Response:
    state = await _scoped_account(request, _account_id(request))
    history = await override_history(request.app[UOW], account_stream(state.account_id), ACCOUNT_OVERRIDE_EVENT)
    return web.json_response({"account_id": str(state.account_id), "versions": [entry.as_dict() for entry in history]})


@routes.post("/v1/accounts/{id}/overrides:rollback")
@requires(*WRITERS)
async def roll_back_account_override(request: web.Request) -> web.Response:
    state = await _live_account(request, _account_id(request))
    body = await parse_json(request, RollbackBody)
    uow = request.app[UOW].acting_as(api_key(request).actor)
    state, changed = await roll_back_account(uow, state.account_id, body.version)
    return web.json_response({**account_view(state), "changed": changed, "restored_version": body.version})


def _etag(body: dict[str, Any]) -> str:
    return '"' + hashlib.sha256(canonical_json(body, what="effective config").encode()).hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


@routes.get("/v1/accounts/{id}/effective-config/{model}/{resource}/{method}")
@requires(*READERS)
async def get_effective_config(request: web.Request) -> web.Response:
    state = await _live_account(request, _account_id(request))
    info = request.match_info
    found = await effective_config(request.app[UOW], state, info["model"], info["resource"], info["method"])
    body = {
        "account_id": str(state.account_id), "environment": state.environment, "integration": state.integration,
        "model": info["model"], "resource": info["resource"], "method": info["method"],
        "config": found.config, "provenance": found.provenance, "removed": found.removed,
        "integration_settings": found.integration_settings,
        "integration_settings_provenance": found.integration_settings_provenance,
        "versions": found.versions, "hashes": found.hashes,
    }
    etag = _etag(body)
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if _matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    return web.json_response({**body, "etag": etag}, headers=headers)


@routes.post("/v1/mappings:preview")
@requires(*WRITERS)
async def preview_mapping(request: web.Request) -> web.Response:
    body = await parse_json(request, PreviewBody)
    account = await _live_account(request, body.account_id) if body.account_id else None
    source: dict[str, Any] = {}
    if body.expression is not None:
        expression = body.expression
    else:
        if account is None or not (body.model and body.resource and body.method):
            raise InvalidConfiguration("give an expression, or account_id with model, resource and method",
                                       field="expression")
        found = await effective_config(request.app[UOW], account, body.model, body.resource, body.method)
        expression = found.config.get(body.mapping)
        if not isinstance(expression, str):
            raise InvalidConfiguration(f"no {body.mapping} is configured for {body.model}/{body.resource}/{body.method}",
                                       field="mapping")
        source = {"mapping": body.mapping, "level": found.provenance.get(body.mapping)}
    sample_as = body.sample_as or SAMPLE_NAME.get(body.mapping, "response")
    bindings = {
        "response": None, "query": body.query, "body": None,
        "context": body.context if body.context is not None else (account.context if account else {}),
        "step": body.steps,
    }
    bindings[sample_as] = body.sample
    try:
        outcome = await request.app[PREVIEWS].preview(expression, bindings)
    except InvalidMapping as invalid:
        if body.expression is None:
            raise
        raise InvalidMapping([MappingProblem("expression", p.message, p.code, p.position) for p in invalid.problems]) from None
    return web.json_response({"expression": expression, **source, "result": outcome.result, "error": outcome.error})
