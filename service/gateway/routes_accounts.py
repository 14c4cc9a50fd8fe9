"""Accounts: import (one and bulk), list, detail, token, delete, export."""

import base64
import functools
import hashlib
import json
import uuid
from datetime import datetime

import orjson
from aiohttp import web

from projections import account_fold
from service.domain.account import AccountState
from service.domain.commands import DeleteAccount
from service.domain.errors import UnknownIntegration
from service.domain.integration import health_check_at_first_use
from service.domain.identity import account_stream
from service.gateway.auth import api_key, ensure_environment, requires
from service.gateway.errors import problem
from service.gateway.keys import ACCESS_RECORDER, METRICS, POOL, PROJECTION_RUNNERS, REFRESHER, UOW
from service.gateway.views import account_view, stored_account_view
from service.handlers.accounts import (
    AccountNotFound, current_credentials, delete_account, export_accounts, import_account, import_accounts,
    load_existing_account,
)
from service.handlers.import_profiles import PROFILES, iter_parse_import, to_command
from service.handlers.token_reads import token_fields
from service.handlers.tokens import ON_DEMAND_MARGIN, needs_refresh, validate
from service.handlers.repositories import load_integration

routes = web.RouteTableDef()
READERS = ("admin", "operator", "auditor")
WRITERS = ("admin", "operator")


def _profile(request: web.Request, default: str) -> str:
    profile = request.query.get("profile", default)
    if profile not in PROFILES:
        raise web.HTTPBadRequest(text=f"profile must be one of {', '.join(PROFILES)}")
    return profile


def _account_id(request: web.Request) -> uuid.UUID:
    try:
        return _parse_account_id(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound(text="no such account") from None


@functools.lru_cache(maxsize=16384)  # token reads ask for the same accounts over and over; a miss parses
def _parse_account_id(text: str) -> uuid.UUID:
    return uuid.UUID(text)


async def _scoped_account(request: web.Request) -> AccountState:
    state = await load_existing_account(request.app[UOW], _account_id(request))
    if not api_key(request).may_access(state.environment):
        raise AccountNotFound(f"account {state.account_id} does not exist", field="account_id")
    return state


@routes.post("/v1/environments/{env}/accounts")
@requires(*WRITERS)
async def import_one(request: web.Request) -> web.Response:
    env = request.match_info["env"]
    ensure_environment(request, env)
    key = api_key(request)
    body = await request.read()
    idempotency_key = request.headers.get("Idempotency-Key")
    request_hash = hashlib.sha256(request.path_qs.encode() + b"\n" + body).digest()
    pool = request.app[POOL]
    if idempotency_key:
        seen = await pool.fetchrow(
            "SELECT request_hash, status, body FROM idempotency_keys WHERE key_id = $1 AND idempotency_key = $2",
            key.key_id, idempotency_key,
        )
        if seen is not None:
            if bytes(seen["request_hash"]) != request_hash:
                raise web.HTTPUnprocessableEntity(text="this Idempotency-Key was used with a different request")
            return web.json_response(json.loads(seen["body"]), status=seen["status"], headers={"Idempotent-Replayed": "true"})
    uow = request.app[UOW].acting_as(key.actor)
    try:
        record = json.loads(body or b"null")
    except ValueError:
        raise web.HTTPBadRequest(text="the body is not valid JSON") from None
    command = to_command(record, environment=env, profile=_profile(request, "truto"), now=uow.clock())
    outcome = await import_account(command, uow)
    status = 201 if outcome.outcome == "imported" else 200
    payload = {"outcome": outcome.outcome, "account": account_view(outcome.state)}
    if idempotency_key:
        await pool.execute(
            "INSERT INTO idempotency_keys (key_id, idempotency_key, request_hash, status, body)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            key.key_id, idempotency_key, request_hash, status, json.dumps(payload),
        )
    return web.json_response(payload, status=status)


@routes.post("/v1/environments/{env}/accounts:import")
@requires(*WRITERS)
async def import_bulk(request: web.Request) -> web.Response:
    env = request.match_info["env"]
    ensure_environment(request, env)
    profile = _profile(request, "canonical")
    uow = request.app[UOW].acting_as(api_key(request).actor)
    records = iter_parse_import(await request.read(), request.headers.get("Content-Type"),
                                environment=env, profile=profile, now=uow.clock())
    results = await import_accounts(records, uow, profile=profile)
    summary = {"imported": 0, "updated": 0, "unchanged": 0, "rejected": 0}
    for result in results:
        summary[result.outcome] += 1
        request.app[METRICS].import_records.labels(result.outcome).inc()
    return web.json_response({"summary": summary, "results": [r.as_dict() for r in results]})


def _cursor(stream_id: str) -> str:
    return base64.urlsafe_b64encode(stream_id.encode()).decode().rstrip("=")


def _uncursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError:
        raise web.HTTPBadRequest(text="cursor is not one this API gave out") from None


@routes.get("/v1/environments/{env}/accounts")
@requires(*READERS)
async def list_accounts(request: web.Request) -> web.Response:
    env = request.match_info["env"]
    ensure_environment(request, env)
    query = request.query
    try:
        limit = min(max(int(query.get("limit", "50")), 1), 500)
    except ValueError:
        raise web.HTTPBadRequest(text="limit must be an integer from 1 to 500") from None
    after = _uncursor(query["cursor"]) if query.get("cursor") else ""
    await request.app[PROJECTION_RUNNERS]["account_view"].settled()
    rows = await request.app[POOL].fetch(
        "SELECT stream_id, state FROM account_view WHERE environment = $1"
        " AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR integration = $3)"
        " AND ($4::text IS NULL OR tenant_id = $4) AND stream_id > $5 ORDER BY stream_id LIMIT $6",
        env, query.get("status"), query.get("integration"), query.get("tenant_id"), after, limit + 1,
    )
    page = rows[:limit]
    data = [stored_account_view(json.loads(r["state"])) for r in page]
    next_cursor = _cursor(page[-1]["stream_id"]) if len(rows) > limit else None
    return web.json_response({"data": data, "next_cursor": next_cursor})


@routes.get("/v1/accounts/{id}")
@requires(*READERS)
async def get_account(request: web.Request) -> web.Response:
    account_id = _account_id(request)
    as_of = request.query.get("as_of")
    if as_of:
        instant = parse_instant(as_of, "as_of")
        recorded = await request.app[UOW].store.read_stream(account_stream(account_id))
        past = account_fold.as_of(str(account_id), ((r.occurred_at, r.type, r.data) for r in recorded), instant)
        if past is None or not api_key(request).may_access(past["environment"]):
            raise AccountNotFound(f"account {account_id} did not exist at {as_of}", field="as_of")
        return web.json_response(stored_account_view(past))
    await request.app[PROJECTION_RUNNERS]["account_view"].settled()
    row = await request.app[POOL].fetchrow("SELECT environment, state FROM account_view WHERE account_id = $1",
                                           account_id)
    if row is None or not api_key(request).may_access(row["environment"]):
        raise AccountNotFound(f"account {account_id} does not exist", field="account_id")
    return web.json_response(stored_account_view(json.loads(row["state"])))


def parse_instant(text: str, name: str) -> datetime:
    try:
        instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an ISO-8601 instant") from None
    if instant.tzinfo is None:
        raise web.HTTPBadRequest(text=f"{name} must carry a time zone, e.g. 2026-10-15T14:30:00Z")
    return instant


@routes.get("/v1/accounts/{id}/token")
@requires("service", "admin")
async def get_token(request: web.Request) -> web.Response:
    app = request.app
    uow, refresher = app[UOW], app[REFRESHER]
    key = api_key(request)
    state, secrets, fields = await refresher.token_reads.read(_account_id(request))
    if not key.may_access(state.environment) or state.status == "deleted":
        raise AccountNotFound(f"account {state.account_id} does not exist", field="account_id")
    now = uow.clock()
    if state.status in ("connecting", "validation_error") and await _checked_at_first_use(request, state):
        if state.status == "connecting":
            # The account's first use runs its health check (refreshing first if the token expires soon).
            state = await refresher.validate(state.account_id)
            secrets, fields = None, token_fields(state)
        if state.status == "validation_error":  # until an operator's /validate succeeds or tokens are re-imported
            return problem(409, "Conflict", f"the account failed its health check ({state.status_reason})",
                           type_="validation-error", status_of_account=state.status, reason=state.status_reason)
    # A token that expires within 30 s is refreshed first (or the refresh running elsewhere awaited).
    if needs_refresh(state, now, ON_DEMAND_MARGIN):
        fresh = await refresher.ensure_fresh(state.account_id, state=state)
        if fresh is not state:
            state, secrets, fields = fresh, None, token_fields(fresh)
    if state.status == "needs_reauth":
        return problem(409, "Conflict", f"the account needs re-authentication ({state.status_reason or 'unknown'})",
                       type_="needs-reauth", status_of_account=state.status, reason=state.status_reason)
    if state.expires_at is not None and state.expires_at <= uow.clock():  # now again: a refresh takes time
        response = problem(503, "Service Unavailable", "the access token has expired and the provider could not "
                           "refresh it yet; linkledger keeps retrying", type_="provider-unavailable",
                           status_of_account=state.status)
        response.headers["Retry-After"] = "5"
        return response
    if secrets is None:
        secrets = await current_credentials(uow, state.account_id)
    body = dict(fields)
    for name in _TOKEN_SECRETS:
        if name in secrets:
            body[name] = secrets[name]
    app[ACCESS_RECORDER].record(key.key_id, state.account_id, now)
    return web.Response(body=_token_json(body), headers=_TOKEN_HEADERS)


async def _checked_at_first_use(request: web.Request, state: AccountState) -> bool:
    integration = await load_integration(request.app[UOW].store, state.environment, state.integration)
    return health_check_at_first_use(integration)


_TOKEN_SECRETS = ("access_token", "api_key", "username", "password")
_TOKEN_HEADERS = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"}


def _token_json(body: dict) -> bytes:
    """orjson: several times faster than json.dumps on the hottest answer; json.dumps for what
    orjson refuses (integers beyond 64 bits in an imported context)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body).encode()


@routes.delete("/v1/accounts/{id}")
@requires("admin")
async def remove_account(request: web.Request) -> web.Response:
    state = await _scoped_account(request)
    uow = request.app[UOW].acting_as(api_key(request).actor)
    state = await delete_account(DeleteAccount(account_id=state.account_id, reason=request.query.get("reason")), uow)
    return web.json_response(account_view(state))


@routes.post("/v1/environments/{env}/accounts:export")
@requires("admin")
async def export(request: web.Request) -> web.StreamResponse:
    """Plaintext tokens, admin only, each account's TokensExported written before its record."""
    env = request.match_info["env"]
    ensure_environment(request, env)
    try:
        body = json.loads(await request.read() or b"{}")
        purpose = body["purpose"]
        integration = body.get("integration")
        if not isinstance(purpose, str) or not purpose.strip():
            raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise web.HTTPUnprocessableEntity(text='body must be {"purpose": "<why>", "integration": optional}') from None
    if integration is not None and not (await load_integration(request.app[UOW].store, env, integration)).configured:
        raise UnknownIntegration(f"integration {integration!r} is not configured in environment {env!r}",
                                 field="integration")
    uow = request.app[UOW].acting_as(api_key(request).actor)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"})
    await response.prepare(request)
    async for record in export_accounts(uow, environment=env, purpose=purpose, integration=integration):
        await response.write(json.dumps(record).encode() + b"\n")
    await response.write_eof()
    return response


@routes.post("/v1/accounts/{id}/refresh")
@requires(*WRITERS)
async def force_refresh(request: web.Request) -> web.Response:
    state = await _scoped_account(request)
    refresher = request.app[REFRESHER]
    state = await refresher.refresh(state.account_id)
    return web.json_response(account_view(state))


@routes.post("/v1/accounts/{id}/validate")
@requires(*WRITERS)
async def force_validate(request: web.Request) -> web.Response:
    state = await _scoped_account(request)
    state = await validate(request.app[REFRESHER], state.account_id)
    return web.json_response(account_view(state))
