"""For auditors: an account's history, the audit trail across accounts (JSON or CSV), health figures."""

import base64
import csv
import io
import json
import uuid
from typing import Any

from aiohttp import web

from events.hashing import format_instant
from projections.migration_health import health_report
from service.apikeys import ALL_ENVIRONMENTS
from service.domain.identity import account_stream
from service.gateway.auth import api_key, ensure_environment, requires
from service.gateway.keys import POOL, PROJECTION_RUNNERS, UOW
from service.gateway.routes_accounts import parse_instant
from service.handlers.accounts import AccountNotFound

routes = web.RouteTableDef()
AUDIT_COLUMNS = ("position", "occurred_at", "environment", "integration", "account_id", "stream_id", "version",
                 "actor", "action", "outcome", "correlation_id", "causation_id", "event_id", "detail")


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


@routes.get("/v1/accounts/{id}/events")
@requires("admin", "auditor", "operator")
async def account_events(request: web.Request) -> web.Response:
    """The account's whole history as stored, without the ciphertext: what each event said, who
    did it, under which correlation, and the hash chain that proves it unaltered."""
    try:
        account_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound(text="no such account") from None
    recorded = await request.app[UOW].store.read_stream(account_stream(account_id))
    if not recorded or not api_key(request).may_access(recorded[0].data.get("environment", "")):
        raise AccountNotFound(f"account {account_id} does not exist", field="account_id")
    events = [{
        "position": r.position, "version": r.version, "type": r.type, "schema_version": r.schema_version,
        "occurred_at": format_instant(r.occurred_at), "actor": r.actor, "event_id": str(r.event_id),
        "correlation_id": _text(r.correlation_id), "causation_id": _text(r.causation_id),
        "data": r.data, "encrypted_secret": r.secret is not None, "key_id": r.key_id,
        "prev_hash": r.prev_hash.hex(), "hash": r.hash.hex(),
    } for r in recorded]
    return web.json_response({"account_id": str(account_id), "events": events})


def _encode_cursor(tx: int, position: int) -> str:
    return base64.urlsafe_b64encode(f"{tx}:{position}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        tx, position = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split(":")
        return int(tx), int(position)
    except ValueError:
        raise web.HTTPBadRequest(text="cursor is not one this API gave out") from None


def _audit_filters(request: web.Request) -> tuple[str, list[Any]]:
    query, key = request.query, api_key(request)
    clauses, args = [], []

    def where(clause: str, value: Any) -> None:
        args.append(value)
        clauses.append(clause.replace("?", f"${len(args)}"))

    if query.get("environment"):
        ensure_environment(request, query["environment"])
        where("environment = ?", query["environment"])
    elif ALL_ENVIRONMENTS not in key.environments:
        where("environment = ANY(?::text[])", list(key.environments))
    if query.get("account"):
        try:
            where("account_id = ?::uuid", uuid.UUID(query["account"]))
        except ValueError:
            raise web.HTTPBadRequest(text="account must be an account id (UUID)") from None
    if query.get("actor"):
        where("actor = ?", query["actor"])
    if query.get("type"):
        where("action = ?", query["type"])
    if query.get("since"):
        where("occurred_at >= ?", parse_instant(query["since"], "since"))
    if query.get("until"):
        where("occurred_at <= ?", parse_instant(query["until"], "until"))
    return " AND ".join(clauses) or "true", args


def _audit_item(row) -> dict[str, Any]:
    return {
        "position": row["position"], "occurred_at": format_instant(row["occurred_at"]),
        "environment": row["environment"], "integration": row["integration"], "account_id": _text(row["account_id"]),
        "stream_id": row["stream_id"], "version": row["version"], "actor": row["actor"], "action": row["action"],
        "outcome": row["outcome"], "correlation_id": _text(row["correlation_id"]),
        "causation_id": _text(row["causation_id"]), "event_id": str(row["event_id"]), "detail": json.loads(row["detail"]),
    }


@routes.get("/v1/audit")
@requires("admin", "auditor")
async def audit(request: web.Request) -> web.StreamResponse:
    """The audit trail in log order; JSON cursor pages, or CSV (Accept: text/csv or ?format=csv)."""
    condition, args = _audit_filters(request)
    wants_csv = request.query.get("format") == "csv" or "text/csv" in request.headers.get("Accept", "")
    try:
        limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
    except ValueError:
        raise web.HTTPBadRequest(text="limit must be an integer from 1 to 1000") from None
    after = _decode_cursor(request.query["cursor"]) if request.query.get("cursor") else (0, 0)
    await request.app[PROJECTION_RUNNERS]["audit_trail"].settled()
    pool = request.app[POOL]
    page_query = (f"SELECT * FROM audit_trail WHERE {condition} AND (tx, position) > (${len(args) + 1}::xid8,"
                  f" ${len(args) + 2}::bigint) ORDER BY tx, position LIMIT ${len(args) + 3}")
    if not wants_csv:
        rows = await pool.fetch(page_query, *args, *after, limit + 1)
        page = rows[:limit]
        cursor = _encode_cursor(int(page[-1]["tx"]), page[-1]["position"]) if len(rows) > limit else None
        return web.json_response({"data": [_audit_item(r) for r in page], "next_cursor": cursor})
    response = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8",
                                           "Content-Disposition": 'attachment; filename="audit.csv"'})
    await response.prepare(request)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(AUDIT_COLUMNS)
    while True:
        rows = await pool.fetch(page_query, *args, *after, 1000)
        for row in rows:
            item = _audit_item(row)
            writer.writerow([json.dumps(item[c], sort_keys=True) if c == "detail" else item[c] for c in AUDIT_COLUMNS])
        await response.write(buffer.getvalue().encode())
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < 1000:
            break
        after = (int(rows[-1]["tx"]), rows[-1]["position"])
    await response.write_eof()
    return response


@routes.get("/v1/environments/{env}/health")
@requires("admin", "operator", "auditor")
async def environment_health(request: web.Request) -> web.Response:
    env = request.match_info["env"]
    ensure_environment(request, env)
    await request.app[PROJECTION_RUNNERS]["migration_health"].settled()
    async with request.app[POOL].acquire() as conn:
        return web.json_response(await health_report(conn, env, request.app[UOW].clock()))
