"""Liveness and readiness."""

import asyncio

from aiohttp import web

from service.gateway.errors import problem
from service.gateway.keys import NATS, POOL

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    checks = {"postgres": "ok", "nats": "ok"}
    try:
        async with asyncio.timeout(2):
            await request.app[POOL].fetchval("SELECT 1 FROM stream_heads LIMIT 1")
    except Exception as exc:
        checks["postgres"] = f"unavailable: {type(exc).__name__}"
    try:
        link = request.app[NATS]
        if not link.is_connected:
            raise ConnectionError("not connected")
        async with asyncio.timeout(2):
            await link.client.jetstream().account_info()
    except Exception as exc:
        checks["nats"] = f"unavailable: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return web.json_response({"status": "ready", "checks": checks})
    return problem(503, "Service Unavailable", "a dependency is not ready", type_="not-ready", checks=checks)
