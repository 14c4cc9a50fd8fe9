"""Webhook endpoints per environment: admin registers and changes them, admin and operator read."""

import uuid
from datetime import timedelta
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.bootstrap import load_keyring
from service.gateway.auth import api_key, ensure_environment, requires
from service.gateway.keys import POOL, SETTINGS, UOW
from service.gateway.requests import parse_json
from service.handlers import webhooks
from service.handlers.webhooks import WEBHOOK_NAMES, WebhookNotFound, endpoint_view

routes = web.RouteTableDef()
ADMIN = ("admin",)
READERS = ("admin", "operator")
WebhookName = Literal[WEBHOOK_NAMES]  # type: ignore[valid-type]


def _check_url(value: str | None) -> str | None:
    if value is None:
        return value
    if not value.startswith(("https://", "http://")) or len(value) > 2000 or " " in value:
        raise ValueError("must be an http(s) URL")
    return value


class EndpointBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    events: list[WebhookName] = Field(default_factory=list, description="webhook names to send; empty: all")
    description: str | None = Field(None, max_length=500)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = None
    events: list[WebhookName] | None = None
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _check_url(value)


class RotateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    overlap_seconds: int = Field(86_400, ge=0, le=7 * 86_400, description="how long the previous secret keeps signing")


def _endpoint_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound(text="no such webhook") from None


async def _scoped(request: web.Request):
    try:
        row = await webhooks.get_endpoint(request.app[POOL], _endpoint_id(request))
    except WebhookNotFound:
        raise web.HTTPNotFound(text="no such webhook") from None
    if not api_key(request).may_access(row["environment"]):
        raise web.HTTPNotFound(text="no such webhook")
    return row


def _now(request: web.Request):
    return request.app[UOW].clock()


@routes.post("/v1/environments/{env}/webhooks")
@requires(*ADMIN)
async def create(request: web.Request) -> web.Response:
    env = request.match_info["env"]
    ensure_environment(request, env)
    body = await parse_json(request, EndpointBody)
    row, secret = await webhooks.create_endpoint(
        request.app[POOL], load_keyring(request.app[SETTINGS]), environment=env, url=body.url, events=list(body.events),
        description=body.description, actor=api_key(request).actor, now=_now(request),
    )
    # The secret is shown this once; only its wrapped form is stored.
    return web.json_response({**endpoint_view(row), "secret": secret}, status=201, headers={"Cache-Control": "no-store"})


@routes.get("/v1/environments/{env}/webhooks")
@requires(*READERS)
async def list_(request: web.Request) -> web.Response:
    env = request.match_info["env"]
    ensure_environment(request, env)
    rows = await webhooks.list_endpoints(request.app[POOL], env)
    return web.json_response({"data": [endpoint_view(r) for r in rows]})


@routes.get("/v1/webhooks/{id}")
@requires(*READERS)
async def detail(request: web.Request) -> web.Response:
    return web.json_response(endpoint_view(await _scoped(request)))


@routes.patch("/v1/webhooks/{id}")
@requires(*ADMIN)
async def patch(request: web.Request) -> web.Response:
    row = await _scoped(request)
    body = await parse_json(request, EndpointPatch)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("url", "") is None or changes.get("events", []) is None or changes.get("enabled", True) is None:
        raise web.HTTPUnprocessableEntity(text="url, events and enabled cannot be null")
    row = await webhooks.update_endpoint(request.app[POOL], row["id"], changes, _now(request))
    return web.json_response(endpoint_view(row))


@routes.delete("/v1/webhooks/{id}")
@requires(*ADMIN)
async def delete(request: web.Request) -> web.Response:
    row = await _scoped(request)
    row = await webhooks.delete_endpoint(request.app[POOL], row["id"], _now(request))
    return web.json_response({**endpoint_view(row), "deleted": True})


@routes.post("/v1/webhooks/{id}/secret:rotate")
@requires(*ADMIN)
async def rotate(request: web.Request) -> web.Response:
    row = await _scoped(request)
    body = await parse_json(request, RotateBody) if await request.read() else RotateBody()
    secret, until = await webhooks.rotate_secret(request.app[POOL], load_keyring(request.app[SETTINGS]), row["id"],
                                                 _now(request), timedelta(seconds=body.overlap_seconds))
    return web.json_response({"id": str(row["id"]), "secret": secret, "previous_secrets_expire_at": until.isoformat()},
                             headers={"Cache-Control": "no-store"})


@routes.get("/v1/webhooks/{id}/attempts")
@requires(*READERS)
async def attempts(request: web.Request) -> web.Response:
    row = await _scoped(request)
    try:
        limit = min(500, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        raise web.HTTPBadRequest(text="limit must be an integer") from None
    return web.json_response({"data": await webhooks.list_attempts(request.app[POOL], row["id"], limit)})
