"""The relay: the events table is the outbox; this publishes it to NATS JetStream.

It reads the log in (tx, position) order past its checkpoint, below the snapshot horizon (so it
skips nothing, DESIGN invariant 1), publishes every event as a CloudEvents 1.0 JSON message with
`Nats-Msg-Id` = event id, and moves its checkpoint forward, batch by batch, once every message of a
batch is acknowledged.

- Many publications are in flight at once (`max_in_flight`), but never two of the same stream: a
  stream's next event waits for the previous one's ack, so each stream's events are stored in
  JetStream in version order even when a publish has to be retried (a retry of v1 can never land
  after v2).
- A publish that times out or fails is "unknown": it is retried with the same message id, forever,
  with backoff; JetStream's duplicate window turns a retry of something stored into a `duplicate`
  ack, which counts as success. So NATS being down only makes the relay wait; appends never wait
  for NATS.
- One relay is active across replicas: it holds a session advisory lock on its own connection (the
  lock goes with the connection if the process dies). The others retry the lock now and then.
- Wake-up keeps latency low (`wake()`, called by the store in the same process after an append, or a
  NOTIFY on `linkledger_appended` from another process); polling keeps it correct.
- The relay reads no secret: its queries name their columns, and it runs as `linkledger_relay`, a
  role that may not read the `secret` column at all.

Subjects (stream `LINKLEDGER` captures `linkledger.>`; `prefix` replaces "linkledger" in tests):

    linkledger.<env>.<integration>.<EventType>        account events (stream account-<uuid>)
    linkledger.<env>._integration.<name>.<EventType>   integration events (integration-<env>-<name>)
    linkledger.<env>._environment.<EventType>          environment events (environment-<env>)
    linkledger._other.<EventType>                      anything else

Account events after AccountConnecting do not carry their environment or integration: they are
resolved from the stream's AccountConnecting event (its version 1) and cached.
"""

import asyncio
import json
import logging
import re
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Awaitable, Callable

import asyncpg

from events.envelope import LogPosition
from events.hashing import format_instant
from events.publish import STREAM_NAME, SUBJECT_PREFIX, ensure_stream

log = logging.getLogger("linkledger.relay")

NOTIFY_CHANNEL = "linkledger_appended"
CLOUDEVENTS_TYPE_PREFIX = "io.linkledger."
RELAY_ROLE = "linkledger_relay"

# Columns named one by one: never `secret` (the relay's role may not read it anyway).
_READ = (
    "SELECT position, tx, event_id, stream_id, version, type, schema_version, data, occurred_at"
    " FROM events WHERE (tx, position) > ($1::xid8, $2::bigint)"
    " AND tx < pg_snapshot_xmin(pg_current_snapshot())"
    " ORDER BY tx, position LIMIT $3"
)
_FIRST_EVENTS = "SELECT stream_id, data FROM events WHERE stream_id = ANY ($1::text[]) AND version = 1"
_TOKEN_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def subject_token(value: str) -> str:
    """A NATS subject token: anything but letters, digits, '_' and '-' becomes '_'."""
    return _TOKEN_UNSAFE.sub("_", value) or "_"


@dataclass(frozen=True)
class StreamContext:
    """Where a stream's events go: its subject stem and CloudEvents source/subject."""

    subject_stem: str  # e.g. "prod.salesforce" (without the prefix and the event type)
    environment: str | None
    subject: str  # CloudEvents `subject`: the account id, integration name or environment
    integration: str | None = None
    tenant_id: str | None = None


@dataclass
class Outgoing:
    position: LogPosition
    event_id: str
    stream_id: str
    subject: str
    body: bytes
    occurred_at: datetime
    done: asyncio.Future | None = None


@dataclass
class RelayStats:
    """What /metrics shows of the relay (read at scrape time)."""

    active: bool = False
    published: int = 0  # messages JetStream acknowledged as new
    duplicates: int = 0  # acknowledged as duplicates (a retry, or a re-publication after a restart)
    retries: int = 0  # publish attempts that timed out or failed
    checkpoint: LogPosition = field(default_factory=LogPosition.start)
    head_position: int = 0  # the highest position the log has handed out (sequence value)
    oldest_unacked_at: float | None = None  # time.time() of the oldest event read but not checkpointed

    @property
    def lag_events(self) -> int:
        """Positions handed out beyond the checkpoint (approximate: positions may have gaps)."""
        return max(0, self.head_position - self.checkpoint.position)

    @property
    def lag_seconds(self) -> float:
        return 0.0 if self.oldest_unacked_at is None else max(0.0, time.time() - self.oldest_unacked_at)


def cloudevent(*, event_id: str, type_: str, schema_version: int, stream_version: int, position: int,
               data_json: str, occurred_at: datetime, context: StreamContext) -> bytes:
    """The CloudEvents 1.0 structured-mode JSON body of one event.

    `data` is the event's stored, secret-free payload with `stream_version` and `log_position`
    added (the stored canonical JSON is spliced, not re-encoded).
    """
    extra = f'"log_position":{position},"stream_version":{stream_version}'
    data = "{" + extra + ("," + data_json[1:] if data_json != "{}" else "}")
    source = f"/environments/{context.environment}" if context.environment else "/linkledger"
    attributes = {
        "specversion": "1.0",
        "id": event_id,
        "type": f"{CLOUDEVENTS_TYPE_PREFIX}{type_}.v{schema_version}",
        "source": source,
        "subject": context.subject,
        "time": format_instant(occurred_at),
        "datacontenttype": "application/json",
    }
    if context.integration:
        attributes["integration"] = context.integration  # extension attributes, for filtering
    if context.tenant_id:
        attributes["tenantid"] = context.tenant_id
    head = json.dumps(attributes, separators=(",", ":"))
    return (head[:-1] + ',"data":' + data + "}").encode()


class _ContextCache:
    """Stream id -> StreamContext, bounded (least recently used go first)."""

    def __init__(self, size: int = 200_000):
        self._size = size
        self._items: OrderedDict[str, StreamContext] = OrderedDict()

    def get(self, stream_id: str) -> StreamContext | None:
        item = self._items.get(stream_id)
        if item is not None:
            self._items.move_to_end(stream_id)
        return item

    def put(self, stream_id: str, context: StreamContext) -> None:
        self._items[stream_id] = context
        self._items.move_to_end(stream_id)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


def _account_context(stream_id: str, first: dict[str, Any]) -> StreamContext:
    env, integration = first.get("environment"), first.get("integration")
    return StreamContext(f"{subject_token(env)}.{subject_token(integration)}", env, stream_id.removeprefix("account-"),
                         integration, first.get("tenant_id"))


def _static_context(stream_id: str) -> StreamContext | None:
    """Integration and environment streams name their environment in the stream id. Names may hold
    '-', so the id alone is ambiguous for integrations; their payloads say it (see _payload_context)."""
    if stream_id.startswith("environment-"):
        env = stream_id.removeprefix("environment-")
        return StreamContext(f"{subject_token(env)}._environment", env, env)
    return None


def _payload_context(stream_id: str, data: dict[str, Any]) -> StreamContext:
    if stream_id.startswith("integration-"):
        env = data.get("environment")
        name = data.get("integration") or data.get("name")
        if env and name:
            return StreamContext(f"{subject_token(env)}._integration.{subject_token(name)}", env, name, name)
    return StreamContext("_other", None, stream_id)


class Relay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        nats_client: Callable[[], Awaitable[Any]],
        *,
        name: str = "default",
        stream: str = STREAM_NAME,
        prefix: str = SUBJECT_PREFIX,
        max_in_flight: int = 256,
        batch_size: int = 1000,
        poll_interval: float = 0.5,
        publish_timeout: float = 5.0,
        lock_retry: float = 2.0,
        on_published: Callable[[Outgoing, bool], None] | None = None,
    ):
        self._pool = pool
        self._nats_client = nats_client
        self.name = name
        self.stream = stream
        self.prefix = prefix
        self.max_in_flight = max_in_flight
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.publish_timeout = publish_timeout
        self.lock_retry = lock_retry
        self.on_published = on_published
        self.stats = RelayStats()
        self._wake = asyncio.Event()
        self._contexts = _ContextCache()
        self._lock_key = zlib.crc32(f"linkledger-relay:{name}".encode()) - (1 << 31)
        self._caught_up = asyncio.Event()

    # ------------------------------------------------------------------ wake-up

    def wake(self) -> None:
        """New events may be there (called after an append in this process)."""
        self._wake.set()

    def _on_notify(self, *_args) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Run forever: become the active relay when the lock is free, publish, and start over
        after any failure (database or NATS trouble), from the stored checkpoint."""
        while True:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the relay must outlive any outage
                log.warning("relay %s stopped (%s: %s); starting over", self.name, type(exc).__name__, exc)
            self.stats.active = False
            await asyncio.sleep(self.lock_retry)

    async def _run_once(self) -> None:
        async with self._pool.acquire() as conn:
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key)
            if not got:
                return
            try:
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                try:
                    log.info("relay %s active", self.name)
                    self.stats.active = True
                    await self._pump(conn)
                finally:
                    await conn.remove_listener(NOTIFY_CHANNEL, self._on_notify)
            finally:
                if not conn.is_closed():
                    await conn.execute("SELECT pg_advisory_unlock($1)", self._lock_key)

    async def _load_checkpoint(self, conn: asyncpg.Connection) -> LogPosition:
        row = await conn.fetchrow(
            "INSERT INTO relay_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name"
            " RETURNING tx, position",
            self.name,
        )
        return LogPosition(int(row["tx"]), row["position"])

    async def _pump(self, lock_conn: asyncpg.Connection) -> None:
        nc = await self._nats_client()
        await ensure_stream(nc, self.stream, self.prefix)
        cursor = await self._load_checkpoint(lock_conn)
        self.stats.checkpoint = cursor
        batches: asyncio.Queue = asyncio.Queue(maxsize=max(2, (4 * self.max_in_flight) // self.batch_size + 2))
        in_flight = asyncio.Semaphore(self.max_in_flight)
        last_of_stream: dict[str, asyncio.Future] = {}
        tasks: set[asyncio.Task] = set()
        pending_times: list[float] = []  # occurred_at (epoch) of the first event of each queued batch

        async def read() -> None:
            nonlocal cursor
            backoff = 0.0
            while True:
                self._wake.clear()
                rows = await self._pool.fetch(_READ, cursor.tx, cursor.position, self.batch_size)
                if not rows:
                    self._caught_up.set()
                    if backoff:
                        # Woken, but what was appended is not below the horizon yet (a transaction
                        # still running): look again soon, then less often.
                        try:
                            await asyncio.wait_for(self._wake.wait(), backoff)
                        except asyncio.TimeoutError:
                            pass
                        backoff = backoff * 2 if backoff * 2 < self.poll_interval else 0.0
                        continue
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                        backoff = 0.002
                    except asyncio.TimeoutError:
                        pass
                    continue
                backoff = 0.002
                self._caught_up.clear()
                outgoing = await self._messages(rows)
                for message in outgoing:
                    message.done = asyncio.get_running_loop().create_future()
                    previous = last_of_stream.get(message.stream_id)
                    last_of_stream[message.stream_id] = message.done
                    task = asyncio.create_task(self._deliver(nc, message, previous, in_flight, last_of_stream))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                cursor = outgoing[-1].position
                if self.stats.oldest_unacked_at is None:
                    self.stats.oldest_unacked_at = outgoing[0].occurred_at.timestamp()
                pending_times.append(outgoing[0].occurred_at.timestamp())
                await batches.put((cursor, [m.done for m in outgoing]))

        async def commit() -> None:
            while True:
                position, futures = await batches.get()
                await asyncio.gather(*futures)
                await lock_conn.execute(
                    "UPDATE relay_checkpoints SET tx = $2::xid8, position = $3, published = published + $4,"
                    " updated_at = now() WHERE name = $1 AND (tx, position) < ($2::xid8, $3)",
                    self.name, position.tx, position.position, len(futures),
                )
                self.stats.checkpoint = position
                pending_times.pop(0)
                self.stats.oldest_unacked_at = pending_times[0] if pending_times else None

        async def watch_head() -> None:
            while True:
                value = await self._pool.fetchval(
                    "SELECT pg_sequence_last_value(pg_get_serial_sequence('events', 'position')::regclass)"
                )
                self.stats.head_position = value or 0
                await asyncio.sleep(1.0)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(read())
                group.create_task(commit())
                group.create_task(watch_head())
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.stats.oldest_unacked_at = None

    async def _messages(self, rows: list[asyncpg.Record]) -> list[Outgoing]:
        # Contexts of account streams not seen yet come from their AccountConnecting event.
        missing = set()
        for row in rows:
            stream_id = row["stream_id"]
            if stream_id.startswith("account-") and self._contexts.get(stream_id) is None:
                if row["version"] == 1:
                    self._contexts.put(stream_id, _account_context(stream_id, json.loads(row["data"])))
                else:
                    missing.add(stream_id)
        if missing:
            for found in await self._pool.fetch(_FIRST_EVENTS, list(missing)):
                self._contexts.put(found["stream_id"], _account_context(found["stream_id"], json.loads(found["data"])))
        out = []
        for row in rows:
            stream_id = row["stream_id"]
            context = self._contexts.get(stream_id) if stream_id.startswith("account-") else _static_context(stream_id)
            if context is None:
                context = _payload_context(stream_id, json.loads(row["data"]))
            event_id = str(row["event_id"])
            out.append(Outgoing(
                position=LogPosition(int(row["tx"]), row["position"]),
                event_id=event_id,
                stream_id=stream_id,
                subject=f"{self.prefix}.{context.subject_stem}.{subject_token(row['type'])}",
                body=cloudevent(event_id=event_id, type_=row["type"], schema_version=row["schema_version"],
                                stream_version=row["version"], position=row["position"], data_json=row["data"],
                                occurred_at=row["occurred_at"], context=context),
                occurred_at=row["occurred_at"],
            ))
        return out

    async def _deliver(self, nc, message: Outgoing, previous: asyncio.Future | None, gate: asyncio.Semaphore,
                       last_of_stream: dict[str, asyncio.Future]) -> None:
        if previous is not None and not previous.done():
            await asyncio.shield(previous)
        try:
            async with gate:
                duplicate = await self._publish(nc, message)
        except BaseException as exc:
            if not message.done.done():
                message.done.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                message.done.exception()  # retrieved: a cancelled relay does not warn about it
            raise
        if duplicate:
            self.stats.duplicates += 1
        else:
            self.stats.published += 1
        message.done.set_result(None)
        if last_of_stream.get(message.stream_id) is message.done:
            del last_of_stream[message.stream_id]
        if self.on_published is not None:
            self.on_published(message, duplicate)

    async def _publish(self, nc, message: Outgoing) -> bool:
        """Publish until JetStream acknowledges; True when it was a duplicate."""
        js = nc.jetstream()
        headers = {"Nats-Msg-Id": message.event_id}
        delay = 0.05
        while True:
            if nc.is_connected:
                try:
                    ack = await js.publish(message.subject, message.body, timeout=self.publish_timeout,
                                           headers=headers)
                    return bool(ack.duplicate)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - timeout, no responders, disconnect: unknown, retry
                    self.stats.retries += 1
                    log.debug("publish of %s not acknowledged (%s); retrying", message.event_id, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def wait_caught_up(self, timeout: float | None = None) -> None:
        """Tests and benchmarks: until a read found nothing new."""
        await asyncio.wait_for(self._caught_up.wait(), timeout)


class AppendNotifier:
    """Tells relays in other processes that this one appended: a NOTIFY on `linkledger_appended`,
    outside any append transaction and at most one per `interval`, so appends are neither slowed
    nor serialised by it."""

    def __init__(self, pool: asyncpg.Pool, interval: float = 0.01):
        self._pool = pool
        self._interval = interval
        self._pending = asyncio.Event()

    def appended(self) -> None:
        self._pending.set()

    async def run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                await self._pool.execute(f"NOTIFY {NOTIFY_CHANNEL}")
            except (asyncpg.PostgresError, OSError) as exc:
                log.debug("NOTIFY failed: %s", type(exc).__name__)
            await asyncio.sleep(self._interval)
