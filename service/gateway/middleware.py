"""The gateway's one middleware: request metrics, authorisation and problem+json errors in a single
layer (each layer of aiohttp middleware costs a coroutine and a frame per request on every route,
the token read's included)."""

import time

from aiohttp import web

from service.gateway.auth import authorize
from service.gateway.errors import problem_for
from service.gateway.metrics import Metrics


def gateway_middleware(metrics: Metrics):
    observe = metrics.http.observe

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500  # what a cancelled request counts as
        try:
            try:
                roles = getattr(request.match_info.handler, "roles", None)  # set by auth.requires
                response = (await authorize(request, roles) if roles is not None else None) or await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:  # redirects and the like go on as aiohttp answers them
                    status = exc.status
                    raise
                response = problem_for(request, exc)
            except Exception as exc:
                response = problem_for(request, exc)
            status = response.status
            return response
        finally:
            resource = request.match_info.route.resource
            observe(request.method, resource.canonical if resource is not None else "unmatched", status,
                    time.perf_counter() - started)

    return middleware
