"""RFC 9457 problem details: the only error shape the API answers with, never a stack trace."""

import logging

import asyncpg

from aiohttp import web

from events.errors import ConcurrencyError, InvalidEventError
from service.crypto.datakeys import KeyShreddedError, MissingKeyError
from service.domain.errors import AccountIsDeleted, DomainError, IdentityMismatch, UnknownAccount, UnknownIntegration
from service.domain.mappings import InvalidMapping
from service.gateway.requests import InvalidRequest
from service.handlers.accounts import AccountNotFound
from service.handlers.import_profiles import RecordError
from service.handlers.previews import PreviewsBusy
from service.handlers.tokens import NotRefreshable, RefreshInProgress
from service.oauth.errors import OAuthError

log = logging.getLogger("linkledger.gateway")

PROBLEM_TYPE_BASE = "https://linkledger.dev/problems/"
_DATABASE_UNAVAILABLE = (asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError,
                         asyncpg.ConnectionDoesNotExistError, ConnectionError, OSError)


def problem(status: int, title: str, detail: str | None = None, *, type_: str | None = None, **extra) -> web.Response:
    body = {"type": PROBLEM_TYPE_BASE + (type_ or title.lower().replace(" ", "-")), "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update({k: v for k, v in extra.items() if v is not None})
    return web.json_response(body, status=status, content_type="application/problem+json")


def problem_for(request: web.Request, exc: Exception) -> web.Response:
    """The problem answer for an exception a handler raised (an HTTPException of 4xx/5xx included)."""
    if isinstance(exc, web.HTTPException):
        return problem(exc.status, exc.reason, exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else None)
    if isinstance(exc, InvalidRequest):
        return problem(422, "Unprocessable Content", str(exc), type_="invalid-request", errors=exc.errors)
    if isinstance(exc, RecordError):
        return problem(422, "Unprocessable Content", exc.reason, type_="invalid-record",
                       errors=[{"field": exc.field, "reason": exc.reason}])
    if isinstance(exc, (AccountNotFound, UnknownAccount)):
        return problem(404, "Not Found", str(exc), type_="not-found")
    if isinstance(exc, UnknownIntegration):
        return problem(422, "Unprocessable Content", str(exc), type_="unknown-integration",
                       errors=[{"field": exc.field or "integration", "reason": str(exc)}])
    if isinstance(exc, InvalidMapping):
        return problem(422, "Unprocessable Content", str(exc), type_="invalid-mapping",
                       errors=[p.as_dict() for p in exc.problems])
    if isinstance(exc, (AccountIsDeleted, IdentityMismatch)):
        return problem(409, "Conflict", str(exc), type_="state-conflict")
    if isinstance(exc, DomainError):
        return problem(422, "Unprocessable Content", str(exc), type_="refused",
                       errors=[{"field": exc.field, "reason": str(exc)}] if exc.field else None)
    if isinstance(exc, OAuthError):
        response = problem(503, "Service Unavailable", f"the provider did not answer usefully: {exc.failure_class}",
                           type_="provider-unavailable", http_status=exc.http_status)
        response.headers["Retry-After"] = str(int(exc.retry_after or 5))
        return response
    if isinstance(exc, PreviewsBusy):
        response = problem(503, "Service Unavailable", "as many mapping previews as allowed are running; retry shortly",
                           type_="previews-busy")
        response.headers["Retry-After"] = "1"
        return response
    if isinstance(exc, RefreshInProgress):
        response = problem(503, "Service Unavailable", "the token is being refreshed; retry shortly", type_="refreshing")
        response.headers["Retry-After"] = "1"
        return response
    if isinstance(exc, NotRefreshable):
        return problem(409, "Conflict", str(exc), type_="not-refreshable")
    if isinstance(exc, KeyShreddedError):
        return problem(410, "Gone", "this account's secrets were destroyed when it was deleted", type_="shredded")
    if isinstance(exc, MissingKeyError):
        return problem(404, "Not Found", "this account holds no readable credentials", type_="not-found")
    if isinstance(exc, ConcurrencyError):
        return problem(409, "Conflict", str(exc), type_="concurrency", actual_version=exc.actual_version)
    if isinstance(exc, InvalidEventError):
        return problem(422, "Unprocessable Content", str(exc), type_="invalid-event")
    if isinstance(exc, _DATABASE_UNAVAILABLE):
        log.warning("database unavailable on %s %s: %s", request.method, request.path, type(exc).__name__)
        response = problem(503, "Service Unavailable", "the database is not accepting connections right now",
                           type_="database-unavailable")
        response.headers["Retry-After"] = "1"
        return response
    # The cause goes to the log under a reference; the caller gets the reference only.
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return problem(500, "Internal Server Error", "the error was logged", type_="internal")
