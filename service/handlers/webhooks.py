"""Webhook endpoints: registration, filters, signing secrets (shown once, rotatable with an
overlap during which both sign), attempts; and the Standard Webhooks signature itself."""

import base64
import hashlib
import hmac
import os
import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from service.crypto.keyring import Keyring

WEBHOOK_NAMES = (
    "integrated_account:created",
    "integrated_account:active",
    "integrated_account:updated",
    "integrated_account:authentication_error",
    "integrated_account:reactivated",
    "integrated_account:post_install_error",
    "integrated_account:validation_error",
    "integrated_account:deleted",
)
SECRET_PREFIX = "whsec_"
DEFAULT_OVERLAP = timedelta(hours=24)


class WebhookNotFound(LookupError):
    pass


def new_signing_key() -> tuple[bytes, str]:
    key = os.urandom(32)
    return key, SECRET_PREFIX + base64.b64encode(key).decode()


def sign(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature`: `v1,<base64 HMAC-SHA256 of id.timestamp.body>` per key, space-separated."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode() for key in keys)


def host_of(url: str) -> str:
    return urlsplit(url).hostname or ""


def endpoint_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "environment": row["environment"],
        "url": row["url"],
        "events": list(row["events"]) or list(WEBHOOK_NAMES),
        "filtered": bool(row["events"]),
        "description": row["description"],
        "enabled": row["enabled"],
        "disabled_at": row["disabled_at"].isoformat() if row["disabled_at"] else None,
        "disabled_reason": row["disabled_reason"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


async def _add_secret(conn, keyring: Keyring, endpoint_id: uuid.UUID, now: datetime) -> str:
    key, secret = new_signing_key()
    kek_id, wrapped = keyring.wrap(key)
    await conn.execute(
        "INSERT INTO webhook_secrets (endpoint_id, secret_id, kek_id, wrapped, created_at) VALUES ($1, $2, $3, $4, $5)",
        endpoint_id, f"ws_{uuid.uuid4().hex[:12]}", kek_id, wrapped, now,
    )
    return secret


async def create_endpoint(pool: asyncpg.Pool, keyring: Keyring, *, environment: str, url: str, events: list[str],
                          description: str | None, actor: str, now: datetime) -> tuple[asyncpg.Record, str]:
    endpoint_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO webhook_endpoints (id, environment, url, events, description, created_by, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING *",
            endpoint_id, environment, url, sorted(set(events)), description, actor, now,
        )
        secret = await _add_secret(conn, keyring, endpoint_id, now)
    return row, secret


async def list_endpoints(pool: asyncpg.Pool, environment: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM webhook_endpoints WHERE environment = $1 AND deleted_at IS NULL ORDER BY created_at, id", environment
    )


async def get_endpoint(pool: asyncpg.Pool, endpoint_id: uuid.UUID) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM webhook_endpoints WHERE id = $1 AND deleted_at IS NULL", endpoint_id)
    if row is None:
        raise WebhookNotFound(f"webhook {endpoint_id} does not exist")
    return row


async def update_endpoint(pool: asyncpg.Pool, endpoint_id: uuid.UUID, changes: dict[str, Any], now: datetime) -> asyncpg.Record:
    sets, args = ["updated_at = $2"], [endpoint_id, now]
    for column in ("url", "events", "description"):
        if column in changes:
            args.append(sorted(set(changes[column])) if column == "events" else changes[column])
            sets.append(f"{column} = ${len(args)}")
    if "enabled" in changes:
        args.append(bool(changes["enabled"]))
        sets.append(f"enabled = ${len(args)}")
        if changes["enabled"]:
            sets += ["disabled_at = NULL", "disabled_reason = NULL", "failing_since = NULL"]
        else:
            sets += ["disabled_at = $2", "disabled_reason = 'disabled through the API'"]
    row = await pool.fetchrow(
        f"UPDATE webhook_endpoints SET {', '.join(sets)} WHERE id = $1 AND deleted_at IS NULL RETURNING *", *args
    )
    if row is None:
        raise WebhookNotFound(f"webhook {endpoint_id} does not exist")
    return row


async def delete_endpoint(pool: asyncpg.Pool, endpoint_id: uuid.UUID, now: datetime) -> asyncpg.Record:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE webhook_endpoints SET deleted_at = $2, updated_at = $2, enabled = false WHERE id = $1"
            " AND deleted_at IS NULL RETURNING *", endpoint_id, now,
        )
        if row is None:
            raise WebhookNotFound(f"webhook {endpoint_id} does not exist")
        await conn.execute("UPDATE webhook_deliveries SET state = 'failed' WHERE endpoint_id = $1 AND state = 'pending'",
                           endpoint_id)
    return row


async def rotate_secret(pool: asyncpg.Pool, keyring: Keyring, endpoint_id: uuid.UUID, now: datetime,
                        overlap: timedelta = DEFAULT_OVERLAP) -> tuple[str, datetime]:
    """A new secret signs from now on; the current ones keep signing (beside it) until now + overlap."""
    async with pool.acquire() as conn, conn.transaction():
        found = await conn.fetchval("SELECT id FROM webhook_endpoints WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
                                    endpoint_id)
        if found is None:
            raise WebhookNotFound(f"webhook {endpoint_id} does not exist")
        until = now + overlap
        await conn.execute(
            "UPDATE webhook_secrets SET expires_at = least(coalesce(expires_at, $2), $2) WHERE endpoint_id = $1",
            endpoint_id, until,
        )
        secret = await _add_secret(conn, keyring, endpoint_id, now)
        await conn.execute("UPDATE webhook_endpoints SET updated_at = $2 WHERE id = $1", endpoint_id, now)
    return secret, until


async def signing_keys(pool: asyncpg.Pool, keyring: Keyring, endpoint_id: uuid.UUID, now: datetime) -> list[bytes]:
    rows = await pool.fetch(
        "SELECT kek_id, wrapped FROM webhook_secrets WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > $2)"
        " ORDER BY created_at DESC", endpoint_id, now,
    )
    return [keyring.unwrap(r["kek_id"], bytes(r["wrapped"])) for r in rows]


async def list_attempts(pool: asyncpg.Pool, endpoint_id: uuid.UUID, limit: int = 100) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT a.*, d.event_id, d.name, d.state FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id"
        " WHERE a.endpoint_id = $1 ORDER BY a.id DESC LIMIT $2", endpoint_id, limit,
    )
    return [{
        "id": r["id"], "webhook_id": str(r["delivery_id"]), "event_id": str(r["event_id"]), "name": r["name"],
        "attempt": r["attempt"], "attempted_at": r["attempted_at"].isoformat(), "status_code": r["status_code"],
        "error": r["error"], "duration_ms": r["duration_ms"], "succeeded": r["succeeded"], "delivery_state": r["state"],
    } for r in rows]
