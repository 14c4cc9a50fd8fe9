"""The webhook dispatcher: a durable JetStream consumer of account events, which turns each into
the webhooks its environment's endpoints asked for and delivers them, signed per Standard
Webhooks, retried with exponential backoff for up to 24 hours, every attempt recorded.

- Consuming: a durable pull consumer (`linkledger-webhooks`) on the stream; for each account event
  that maps to a webhook name, one delivery row per matching endpoint (unique per endpoint, event
  and name, so a redelivered message or a second replica changes nothing), then the message is
  acknowledged. Endpoints registered after an event do not get it.
- Delivering: due deliveries are claimed with FOR UPDATE SKIP LOCKED (any number of replicas), sent
  with `webhook-id` (the delivery id, the same on every attempt), `webhook-timestamp` and
  `webhook-signature` (one `v1,` signature per live secret: during a rotation's overlap both the
  new and the previous secret sign). A 2xx is success; anything else, a timeout or a refused
  connection is a failure, retried on the schedule.
- An endpoint that has failed without a single success for `disable_after` (24 h) is disabled,
  with a WebhookEndpointDisabled event in its environment's stream.

Mapping (the domain already emits AccountNeedsReauth / AccountReactivated once per transition, so
:authentication_error and :reactivated fire once per transition, never per failed attempt):

    AccountConnecting -> :created          AccountValidated   -> :active
    AccountNeedsReauth -> :authentication_error                AccountReactivated -> :reactivated
    PostInstallFailed -> :post_install_error                  ValidationFailed   -> :validation_error
    AccountDeleted -> :deleted             TokensImported (a re-import), AccountOverrideChanged,
                                           AccountContextChanged -> :updated

Payloads carry the account id, environment, integration, tenant, status and reason: never a token,
a fingerprint is not even needed.
"""

import asyncio
import json
import logging
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import aiohttp
import asyncpg
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events.catalog.environment import WebhookEndpointDisabled
from events.catalog.base import encode_json
from events.envelope import NewEvent
from events.errors import ConcurrencyError
from events.store import PostgresEventStore
from service.crypto.keyring import Keyring
from service.handlers.webhooks import host_of, sign, signing_keys

log = logging.getLogger("linkledger.webhooks")

DURABLE = "linkledger-webhooks"
# Seconds after the first attempt at which each attempt is made: immediately, 5 s, 5 min, 30 min,
# 2 h, 5 h, 10 h, 24 h (the last one); exponential-ish, as Standard Webhooks senders do.
SCHEDULE = (0, 5, 300, 1_800, 7_200, 18_000, 36_000, 86_400)
DISABLE_AFTER = timedelta(hours=24)
CLAIM_LEASE = timedelta(seconds=60)

_NAMES = {
    "AccountConnecting": ("integrated_account:created", "connecting"),
    "AccountValidated": ("integrated_account:active", "active"),
    "AccountNeedsReauth": ("integrated_account:authentication_error", "needs_reauth"),
    "AccountReactivated": ("integrated_account:reactivated", "active"),
    "PostInstallFailed": ("integrated_account:post_install_error", "post_install_error"),
    "ValidationFailed": ("integrated_account:validation_error", "validation_error"),
    "AccountDeleted": ("integrated_account:deleted", "deleted"),
}


def system_clock() -> datetime:
    return datetime.now(timezone.utc)


def webhook_for(event: dict[str, Any]) -> tuple[str, str | None] | None:
    """(name, status or None when it must be looked up) for a CloudEvent of an account event."""
    type_ = event["type"].removeprefix("io.linkledger.").rsplit(".v", 1)[0]
    if type_ in _NAMES:
        return _NAMES[type_]
    if type_ in ("AccountOverrideChanged", "AccountContextChanged") or (type_ == "TokensImported" and event["data"].get("stream_version", 0) > 2):
        return "integrated_account:updated", None
    return None


class WebhookDispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        keyring: Keyring,
        nats_client: Callable,
        *,
        stream: str,
        prefix: str,
        store: PostgresEventStore | None = None,
        durable: str = DURABLE,
        clock: Callable[[], datetime] = system_clock,
        schedule: tuple[float, ...] = SCHEDULE,
        disable_after: timedelta = DISABLE_AFTER,
        timeout: float = 10.0,
        poll_interval: float = 1.0,
    ):
        self._pool = pool
        self._keyring = keyring
        self._nats_client = nats_client
        self._stream = stream
        self._prefix = prefix
        self._store = store or PostgresEventStore(pool)
        self._durable = durable
        self.clock = clock
        self.schedule = schedule
        self.disable_after = disable_after
        self._timeout = timeout
        self._poll_interval = poll_interval
        self._sub = None
        self._session: aiohttp.ClientSession | None = None
        self._due = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"User-Agent": "linkledger-webhooks"},
                                              timeout=aiohttp.ClientTimeout(total=self._timeout))

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001 - connection gone
                pass
            self._sub = None
        if self._session is not None:
            await self._session.close()

    async def run(self) -> None:
        await self.start()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._consume_forever())
                group.create_task(self._deliver_forever())
        finally:
            await self.close()

    async def _consume_forever(self) -> None:
        while True:
            try:
                if not await self.consume_once(timeout=self._poll_interval):
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS or PostgreSQL away: try again
                log.warning("webhook consumer: %s", type(exc).__name__)
                self._sub = None
                await asyncio.sleep(1.0)

    async def _deliver_forever(self) -> None:
        while True:
            try:
                sent = await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("webhook delivery: %s", type(exc).__name__)
                sent = 0
            if not sent:
                self._due.clear()
                try:
                    await asyncio.wait_for(self._due.wait(), self._poll_interval)
                except asyncio.TimeoutError:
                    pass

    # ------------------------------------------------------------------ consuming

    async def _subscription(self):
        if self._sub is None:
            nc = await self._nats_client()
            js = nc.jetstream()
            self._sub = await js.pull_subscribe(
                f"{self._prefix}.*.*.*", durable=self._durable, stream=self._stream,
                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                                      ack_wait=60, max_ack_pending=1000),
            )
        return self._sub

    async def consume_once(self, batch: int = 200, timeout: float = 1.0) -> int:
        """Fetch what the consumer has, record the deliveries it calls for, ack. Returns messages handled."""
        sub = await self._subscription()
        try:
            messages = await sub.fetch(batch, timeout=timeout)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nothing there (fetch raises either)
            return 0
        created = 0
        for message in messages:
            created += await self._record(message.data)
            await message.ack()
        if created:
            self._due.set()
        return len(messages)

    async def _record(self, body: bytes) -> int:
        event = json.loads(body)
        mapped = webhook_for(event)
        if mapped is None or not event.get("source", "").startswith("/environments/"):
            return 0
        name, status = mapped
        environment = event["source"].removeprefix("/environments/")
        occurred = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
        endpoints = await self._pool.fetch(
            "SELECT id FROM webhook_endpoints WHERE environment = $1 AND deleted_at IS NULL AND enabled"
            " AND created_at <= $2 AND (cardinality(events) = 0 OR $3 = ANY (events))",
            environment, occurred, name,
        )
        if not endpoints:
            return 0
        data = event["data"]
        if status is None:
            status = await self._pool.fetchval(
                "SELECT snapshot->>'status' FROM stream_heads WHERE stream_id = $1", f"account-{event['subject']}"
            )
        payload = {
            "type": name,
            "timestamp": event["time"],
            "data": {
                "id": event["subject"],
                "environment": environment,
                "integration": event.get("integration"),
                "tenant_id": event.get("tenantid"),
                "status": status,
                "reason": data.get("reason") or data.get("how"),
                "event_id": event["id"],
                "event_type": event["type"],
            },
        }
        text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        now = self.clock()
        created = 0
        for endpoint in endpoints:
            delivery_id = uuid.uuid5(endpoint["id"], f"{event['id']}:{name}")
            done = await self._pool.execute(
                "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, name, body, next_attempt_at, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT DO NOTHING",
                delivery_id, endpoint["id"], uuid.UUID(event["id"]), name, text, now,
            )
            created += done.endswith(" 1")
        return created

    # ------------------------------------------------------------------ delivering

    async def deliver_due(self, limit: int = 50) -> int:
        """Attempt every delivery due by the clock (claimed, so replicas share them). Returns attempts made."""
        now = self.clock()
        claimed = await self._pool.fetch(
            "UPDATE webhook_deliveries d SET next_attempt_at = $2 + $3::interval"
            " FROM webhook_endpoints e WHERE d.id IN ("
            "   SELECT d2.id FROM webhook_deliveries d2 JOIN webhook_endpoints e2 ON e2.id = d2.endpoint_id"
            "    WHERE d2.state = 'pending' AND d2.next_attempt_at <= $2 AND e2.enabled AND e2.deleted_at IS NULL"
            "    ORDER BY d2.next_attempt_at LIMIT $1 FOR UPDATE OF d2 SKIP LOCKED)"
            " AND e.id = d.endpoint_id"
            " RETURNING d.id, d.endpoint_id, d.body, d.attempts, d.created_at, e.url, e.environment",
            limit, now, CLAIM_LEASE,
        )
        if not claimed:
            return 0
        await asyncio.gather(*(self._attempt(row) for row in claimed))
        return len(claimed)

    async def _attempt(self, row: asyncpg.Record) -> None:
        now = self.clock()
        body = row["body"].encode()
        msg_id = str(row["id"])
        timestamp = int(now.timestamp())
        keys = await signing_keys(self._pool, self._keyring, row["endpoint_id"], now)
        headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(keys, msg_id, timestamp, body)}
        status_code, error = None, None
        started = time.perf_counter()
        try:
            async with self._session.post(row["url"], data=body, headers=headers, allow_redirects=False) as response:
                status_code = response.status
                await response.read()
        except asyncio.TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as exc:
            error = type(exc).__name__
        duration_ms = int((time.perf_counter() - started) * 1000)
        ok = status_code is not None and 200 <= status_code < 300
        attempt = row["attempts"] + 1
        first = row["created_at"]
        if ok:
            state, next_at = "succeeded", now
        elif attempt < len(self.schedule):
            state, next_at = "pending", first + timedelta(seconds=self.schedule[attempt])
        else:
            state, next_at = "failed", now
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, endpoint_id, attempt, attempted_at, status_code, error,"
                " duration_ms, succeeded) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                row["id"], row["endpoint_id"], attempt, now, status_code, error, duration_ms, ok,
            )
            await conn.execute(
                "UPDATE webhook_deliveries SET attempts = $2, state = $3, next_attempt_at = $4 WHERE id = $1",
                row["id"], attempt, state, max(next_at, now) if state == "pending" else next_at,
            )
            if ok:
                await conn.execute("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1", row["endpoint_id"])
                return
            failing_since = await conn.fetchval(
                "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, $2) WHERE id = $1"
                " RETURNING failing_since", row["endpoint_id"], now,
            )
            if now - failing_since < self.disable_after:
                return
            disabled = await conn.fetchval(
                "UPDATE webhook_endpoints SET enabled = false, disabled_at = $2, updated_at = $2,"
                " disabled_reason = 'failing for ' || $3 || ' hours' WHERE id = $1 AND enabled RETURNING id",
                row["endpoint_id"], now, str(int(self.disable_after.total_seconds() // 3600)),
            )
            if disabled is None:
                return
            await conn.execute("UPDATE webhook_deliveries SET state = 'failed' WHERE endpoint_id = $1 AND state = 'pending'",
                               row["endpoint_id"])
        log.warning("webhook endpoint %s disabled: failing since %s", row["endpoint_id"], failing_since.isoformat())
        await self._record_disabled(row, failing_since, now)

    async def _record_disabled(self, row: asyncpg.Record, failing_since: datetime, now: datetime) -> None:
        environment = row["environment"]
        event = WebhookEndpointDisabled(
            environment=environment, endpoint_id=row["endpoint_id"], host=host_of(row["url"]),
            reason=f"no successful delivery for {int(self.disable_after.total_seconds() // 3600)} hours",
            failing_since=failing_since,
        )
        stream = f"environment-{environment}"
        for _ in range(5):
            head = await self._store.head(stream)
            try:
                await self._store.append(stream, [NewEvent(event.type, encode_json(event), schema_version=event.schema_version,
                                                           occurred_at=now, actor="system:webhooks")],
                                         head.version if head else 0)
                return
            except ConcurrencyError:
                continue
