"""RFC 9457 problem details: the only error shape the API answers with, never a stack trace."""

import logging

from aiohttp import web

from events.errors import ConcurrencyError, InvalidEventError

log = logging.getLogger("linkledger.gateway")

PROBLEM_TYPE_BASE = "https://linkledger.dev/problems/"


def problem(status: int, title: str, detail: str | None = None, *, type_: str | None = None, **extra) -> web.Response:
    body = {"type": PROBLEM_TYPE_BASE + (type_ or title.lower().replace(" ", "-")), "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.json_response(body, status=status, content_type="application/problem+json")


@web.middleware
async def problem_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem(exc.status, exc.reason, exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else None)
    except ConcurrencyError as exc:
        return problem(409, "Conflict", str(exc), type_="concurrency", actual_version=exc.actual_version)
    except InvalidEventError as exc:
        return problem(422, "Unprocessable Content", str(exc), type_="invalid-event")
    except Exception:
        # The cause goes to the log under a reference; the caller gets the reference only.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "Internal Server Error", "the error was logged", type_="internal")
