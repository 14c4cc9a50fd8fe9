"""Bearer API keys, roles per route, environment scopes."""

from aiohttp import web

from service.apikeys import ApiKey, authenticate
from service.gateway.errors import problem
from service.gateway.keys import POOL

API_KEY = web.RequestKey("api_key", ApiKey)  # request-scoped: the authenticated key


def requires(*roles: str):
    """Mark a handler with the roles that may call it."""
    def mark(handler):
        handler.roles = frozenset(roles)
        return handler
    return mark


def api_key(request: web.Request) -> ApiKey:
    return request[API_KEY]


def ensure_environment(request: web.Request, environment: str) -> None:
    """Out-of-scope environments look like they do not exist: a key never learns of other tenants' data."""
    if not api_key(request).may_access(environment):
        raise web.HTTPNotFound(text=f"environment {environment} not found")


async def authorize(request: web.Request, roles: frozenset[str]) -> web.Response | None:
    """Authenticate the bearer key and check its role: None when it may go on (the key is then
    api_key(request)), else the 401 or 403 answer."""
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    key = await authenticate(request.app[POOL], secret.strip()) if scheme.lower() == "bearer" else None
    if key is None:
        response = problem(401, "Unauthorized", "a valid API key is required: Authorization: Bearer <key>",
                           type_="unauthorized")
        response.headers["WWW-Authenticate"] = 'Bearer realm="linkledger"'
        return response
    if key.role not in roles:
        return problem(403, "Forbidden", f"the {key.role} role may not do this", type_="forbidden")
    request[API_KEY] = key
    return None
