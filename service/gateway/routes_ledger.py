"""Integrity for auditors: verify every hash chain and signed digest, list the digests."""

from aiohttp import web

from events.integrity import list_digests, load_public_key, load_signing_key, verify_log
from service.apikeys import ALL_ENVIRONMENTS
from service.gateway.auth import api_key, requires
from service.gateway.keys import POOL, SETTINGS

routes = web.RouteTableDef()


def _whole_ledger(request: web.Request) -> bool:
    return ALL_ENVIRONMENTS in api_key(request).environments


def _trusted_public_key(settings):
    if settings.ledger_public_key:
        return load_public_key(settings.ledger_public_key)
    if settings.ledger_signing_key:
        return load_signing_key(settings.ledger_signing_key).public_key()
    return None


@routes.post("/v1/ledger/verify")
@requires("admin", "auditor")
async def verify(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        report = (await verify_log(conn, _trusted_public_key(request.app[SETTINGS]))).as_dict()
    if not _whole_ledger(request):
        # The verdict covers the whole ledger; where a problem lies may name other environments' streams.
        report["problems"] = len(report["problems"])
    return web.json_response(report)


@routes.get("/v1/ledger/digests")
@requires("admin", "auditor")
async def digests(request: web.Request) -> web.Response:
    try:
        limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
        before = int(request.query["before"]) if request.query.get("before") else None
    except ValueError:
        raise web.HTTPBadRequest(text="limit and before must be integers") from None
    async with request.app[POOL].acquire() as conn:
        found = await list_digests(conn, limit, before)
    next_before = found[-1].digest_id if len(found) == limit else None
    return web.json_response({"data": [d.as_dict() for d in found], "next_before": next_before})
