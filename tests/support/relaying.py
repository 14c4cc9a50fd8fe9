"""Helpers for tests that publish the log: realistic account events, a relay on the test's own
stream and subject prefix, and reading a JetStream stream back whole."""

import asyncio
import uuid
from datetime import datetime, timezone

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events.catalog.account import AccountConnecting, AccountValidated, TokenRefreshed, TokensImported
from events.catalog.base import encode
from events.envelope import NewEvent

AT = datetime(2026, 10, 15, 14, 30, tzinfo=timezone.utc)


def connecting(account_id: uuid.UUID, env: str = "prod", integration: str = "salesforce",
               tenant: str = "customer_123") -> NewEvent:
    return NewEvent("AccountConnecting", encode(AccountConnecting(
        at=AT, account_id=account_id, environment=env, integration=integration, tenant_id=tenant,
        authentication_method="oauth2", context={"instance_url": "https://acme.my.salesforce.com"}, source="import",
    )), actor="system:test")


def imported(secret: bytes | None = None) -> NewEvent:
    return NewEvent("TokensImported", encode(TokensImported(
        at=AT, source="import", fingerprints={"access_token": "fp_abcdefgh12"}, expires_at=AT,
    )), actor="system:test", secret=secret, key_id="dk-test" if secret else None)


def validated() -> NewEvent:
    return NewEvent("AccountValidated", encode(AccountValidated(at=AT, how="import")), actor="system:test")


def refreshed(n: int = 0) -> NewEvent:
    return NewEvent("TokenRefreshed", encode(TokenRefreshed(
        at=AT, rotated=bool(n % 2), fingerprints={"access_token": f"fp_refresh{n:06d}"}, expires_at=AT,
    )), actor="system:test")


async def stream_count(nc, stream: str) -> int:
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    except Exception:  # noqa: BLE001 - not created yet
        return 0


async def wait_for_count(nc, stream: str, count: int, timeout: float = 60.0) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        seen = await stream_count(nc, stream)
        if seen >= count or asyncio.get_running_loop().time() > deadline:
            return seen
        await asyncio.sleep(0.05)


async def read_stream(nc, stream: str, subject: str = ">") -> list:
    """Every message of `stream`, in stream order (an ephemeral pull consumer)."""
    js = nc.jetstream()
    total = await stream_count(nc, stream)
    if total == 0:
        return []
    filter_subject = None if subject == ">" else subject
    sub = await js.pull_subscribe(filter_subject or "", durable=None, stream=stream, config=ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, filter_subject=filter_subject,
        inactive_threshold=30.0))
    out = []
    try:
        while len(out) < total:
            try:
                batch = await sub.fetch(min(1000, total - len(out)), timeout=5)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                break
            out.extend(batch)
    finally:
        await sub.unsubscribe()
    return out


async def delete_stream(nc, stream: str) -> None:
    try:
        await nc.jetstream().delete_stream(stream)
    except Exception:  # noqa: BLE001 - never created
        pass
