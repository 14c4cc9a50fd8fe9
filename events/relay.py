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
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Awaitable, Callable

import asyncpg

from events.envelope import LogPosition
from events.hashing import format_instant
from events.horizon import HORIZON
from events.publish import STREAM_NAME, SUBJECT_PREFIX, ensure_stream

log = logging.getLogger("linkledger.relay")

NOTIFY_CHANNEL = "linkledger_appended"
CLOUDEVENTS_TYPE_PREFIX = "io.linkledger."
RELAY_ROLE = "linkledger_relay"

# Columns named one by one: never `secret` (the relay's role may not read it anyway).
_READ = (
    "SELECT position, tx, event_id, stream_id, version, type, schema_version, data, occurred_at"
    f" FROM events WHERE (tx, position) > ($1::xid8, $2::bigint) AND tx < {HORIZON}"
    " ORDER BY tx, position LIMIT $3"
)
# A probe per stream (see the note on lookups in events.store).
_FIRST_EVENTS = (
    "SELECT e.stream_id, e.data FROM unnest($1::text[]) AS k(stream_id)"
    " CROSS JOIN LATERAL (SELECT stream_id, data FROM events WHERE stream_id = k.stream_id AND version = 1 LIMIT 1) AS e"
)
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
class _Batch:
    size: int
    done: asyncio.Future
    remaining: int = -1

    def __post_init__(self) -> None:
        self.remaining = self.size


@dataclass(eq=False)
class Outgoing:
    position: LogPosition
    event_id: str
    stream_id: str
    subject: str
    body: bytes
    occurred_at: datetime
    batch: _Batch | None = None
    sent_at: float = 0.0
    read_at: float = 0.0  # time.perf_counter() when the relay read it from the log


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
        read_ahead: int = 5000,
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
        self.read_ahead = read_ahead
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
                causes = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
                log.warning("relay %s stopped (%s); starting over", self.name,
                            "; ".join(f"{type(c).__name__}: {c}" for c in causes))
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
        batches: asyncio.Queue = asyncio.Queue(maxsize=max(2, self.read_ahead // self.batch_size))
        publisher = _Publisher(nc, self.max_in_flight, self.publish_timeout, self.stats, self.on_published)
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
                batch = _Batch(len(outgoing), asyncio.get_running_loop().create_future())
                for message in outgoing:
                    message.batch = batch
                publisher.submit(outgoing)
                cursor = outgoing[-1].position
                if self.stats.oldest_unacked_at is None:
                    self.stats.oldest_unacked_at = outgoing[0].occurred_at.timestamp()
                pending_times.append(outgoing[0].occurred_at.timestamp())
                await batches.put((cursor, batch))

        async def commit() -> None:
            while True:
                position, batch = await batches.get()
                await batch.done
                await lock_conn.execute(
                    "UPDATE relay_checkpoints SET tx = $2::xid8, position = $3, published = published + $4,"
                    " updated_at = now() WHERE name = $1 AND (tx, position) < ($2::xid8, $3)",
                    self.name, position.tx, position.position, batch.size,
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

        await publisher.start()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(read())
                group.create_task(commit())
                group.create_task(watch_head())
                group.create_task(publisher.run())
        finally:
            await publisher.close()
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
        read_at = time.perf_counter()
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
                read_at=read_at,
            ))
        return out

    async def wait_caught_up(self, timeout: float | None = None) -> None:
        """Tests and benchmarks: until a read found nothing new."""
        await asyncio.wait_for(self._caught_up.wait(), timeout)


class AppendNotifier:
    """Tells relays in other processes that this one appended: a NOTIFY on `linkledger_appended`,
    outside any append transaction and at most one per `interval`, so appends are neither slowed
    nor serialised by it."""

    def __init__(self, pool: asyncpg.Pool, interval: float = 0.01, *, needless: Callable[[], bool] = lambda: False):
        self._pool = pool
        self._interval = interval
        self._needless = needless  # e.g. "this process's relay is the active one": woken in process already
        self._pending = asyncio.Event()

    def appended(self) -> None:
        if not self._needless():
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


class _Publisher:
    """Publishes to JetStream with at most `max_in_flight` messages unacknowledged and at most one
    per stream, over one reply subscription (no task or request future per message).

    A message is acknowledged by the first PubAck that names it; one that gets no ack within
    `timeout` (or an error, or no responders) is sent again with the same `Nats-Msg-Id`, so a
    lost ack costs a `duplicate` ack, never a second copy. A stream's next message is released
    only when the previous one is acknowledged: each stream's events are stored in order.
    """

    def __init__(self, nc, max_in_flight: int, timeout: float, stats: RelayStats, on_published):
        self._nc = nc
        self._max = max_in_flight
        self._timeout = timeout
        self._stats = stats
        self._on_published = on_published
        self._inbox = nc.new_inbox()
        self._sub = None
        self._tokens = 0
        self._flying: dict[str, Outgoing] = {}
        self._ready: deque[Outgoing] = deque()
        self._busy: dict[str, deque[Outgoing]] = {}  # stream -> its messages waiting behind the outstanding one
        self._kick = asyncio.Event()

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be gone
                pass
        for message in [*self._flying.values(), *self._ready, *(m for q in self._busy.values() for m in q)]:
            if message.batch is not None and not message.batch.done.done():
                message.batch.done.cancel()

    def submit(self, messages: list[Outgoing]) -> None:
        for message in messages:
            waiting = self._busy.get(message.stream_id)
            if waiting is None:
                self._busy[message.stream_id] = deque()
                self._ready.append(message)
            else:
                waiting.append(message)
        self._kick.set()

    async def run(self) -> None:
        next_sweep = time.monotonic() + self._timeout / 4
        while True:
            while self._ready and len(self._flying) < self._max and self._nc.is_connected:
                message = self._ready.popleft()
                self._tokens += 1
                token = str(self._tokens)
                message.sent_at = time.monotonic()
                self._flying[token] = message
                try:
                    await self._nc.publish(message.subject, message.body, reply=f"{self._inbox}.{token}",
                                           headers={"Nats-Msg-Id": message.event_id})
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - disconnected, buffer full: try again shortly
                    self._flying.pop(token, None)
                    self._ready.appendleft(message)
                    self._stats.retries += 1
                    log.debug("publish of %s failed (%s); retrying", message.event_id, type(exc).__name__)
                    break
            self._kick.clear()
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + self._timeout / 4
                self._sweep(now)
            try:
                await asyncio.wait_for(self._kick.wait(), max(0.01, min(self._timeout / 4, 0.05 if self._ready else 1.0)))
            except asyncio.TimeoutError:
                pass

    def _sweep(self, now: float) -> None:
        """No ack in time: unknown; send again (same message id)."""
        late = [token for token, m in self._flying.items() if now - m.sent_at > self._timeout]
        for token in late:
            message = self._flying.pop(token)
            self._stats.retries += 1
            self._ready.appendleft(message)
        if late:
            log.debug("%d publication(s) unacknowledged after %.1fs; sending again", len(late), self._timeout)

    async def _on_ack(self, msg) -> None:
        token = msg.subject.rpartition(".")[2]
        message = self._flying.pop(token, None)
        if message is None:
            return  # a late ack of a publication already sent again: that one will be acked
        try:
            ack = json.loads(msg.data) if msg.data else None
        except ValueError:
            ack = None
        if not isinstance(ack, dict) or "error" in ack or "seq" not in ack:
            # No responders (JetStream not ready), or an error: try again a little later.
            self._stats.retries += 1
            asyncio.get_running_loop().call_later(0.1, self._retry, message)
            return
        if ack.get("duplicate"):
            self._stats.duplicates += 1
        else:
            self._stats.published += 1
        waiting = self._busy.get(message.stream_id)
        if waiting:
            self._ready.append(waiting.popleft())
        else:
            self._busy.pop(message.stream_id, None)
        batch = message.batch
        batch.remaining -= 1
        if batch.remaining == 0 and not batch.done.done():
            batch.done.set_result(None)
        self._kick.set()
        if self._on_published is not None:
            self._on_published(message, bool(ack.get("duplicate")))

    def _retry(self, message: Outgoing) -> None:
        self._ready.appendleft(message)
        self._kick.set()
