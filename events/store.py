"""The event store: a small interface and its one PostgreSQL implementation."""

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping, Protocol, Sequence

import asyncpg
import orjson

from events.batching import Coalescer
from events.canonical import MAX_PAYLOAD_BYTES, CanonicalJson, canonical_json
from events.envelope import LogPosition, NewEvent, RecordedEvent, uuid_text
from events.errors import (
    AppendOrderError,
    ConcurrencyError,
    EventStoreError,
    InvalidEventError,
    RetryableAppendError,
)
from events.hashing import GENESIS_HASH, body_hash, chain_hash, format_instant, header_bytes

# A stream's transaction ids must grow with its versions; in the rare race where this
# transaction got its id before the previous writer, a fresh transaction fixes it.
_ORDER_RETRIES = 5


@dataclass(frozen=True)
class AppendResult:
    position: int
    version: int
    hash: bytes


@dataclass(frozen=True)
class StreamHead:
    stream_id: str
    version: int
    last_hash: bytes
    snapshot: dict[str, Any] | None
    snapshot_version: int | None


class EventStore(Protocol):
    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        snapshot: dict[str, Any] | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> list[AppendResult]: ...

    async def read_stream(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[RecordedEvent]: ...

    async def read_all(self, after: LogPosition, limit: int = 1000) -> list[RecordedEvent]: ...


_COLUMNS = (
    "position, tx, event_id, stream_id, version, type, schema_version, data, occurred_at, actor,"
    " correlation_id, causation_id, secret, key_id, prev_hash, hash"
)


def record_from_row(row: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        position=row["position"],
        tx=row["tx"],
        event_id=row["event_id"],
        stream_id=row["stream_id"],
        version=row["version"],
        type=row["type"],
        schema_version=row["schema_version"],
        data_json=row["data"],
        occurred_at=row["occurred_at"],
        actor=row["actor"],
        correlation_id=row["correlation_id"],
        causation_id=row["causation_id"],
        secret=row["secret"],
        key_id=row["key_id"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


# Lookups of head rows (and events) by key are written as per-row probes (LATERAL ... LIMIT 1,
# scalar subqueries) rather than joins or `= ANY(array)` filters. A statement's plan is cached on
# its connection, and a new database's tables look empty or tiny to the planner: a join would be
# planned as a hash join over a scan of the whole table, a filter on a table of one page as a scan
# of it, and kept while the table grows to millions of rows (until autovacuum next analyzes it). A
# probe is planned as an index lookup however big the table looks.

# Group commit. Single-event appends outside a caller's transaction (the hot path: refreshes,
# status changes, imports) from concurrent callers are sent together: one statement, one
# transaction, one commit for many streams. Each head row is locked in stream order, moved only if
# it is at the caller's expected version and was last written by an older transaction (the fence
# of invariant 2, per stream), and its old last_hash kept as prev_hash (SET reads the old row).
# New streams get their head row inserted. An item that returns no row falls back to ll_append on
# its own, which says why (or finds it stored already).
_APPEND_BATCH = """
WITH input AS (
  SELECT * FROM ROWS FROM (json_to_recordset($1::json)
    AS (stream_id text, expected int, event_id uuid, type text, schema_version int2, data text, secret bytea,
        key_id text, occurred_at timestamptz, actor text, correlation_id uuid, causation_id uuid, body_hash bytea),
    unnest($3::text[]::jsonb[]))
    AS i(stream_id, expected, event_id, type, schema_version, data, secret, key_id, occurred_at, actor,
         correlation_id, causation_id, body_hash, snapshot)
), locked AS (
  SELECT h.stream_id FROM (SELECT stream_id FROM input ORDER BY stream_id) AS k
   CROSS JOIN LATERAL (SELECT stream_id FROM stream_heads WHERE stream_id = k.stream_id LIMIT 1 FOR UPDATE) AS h
), moved AS (
  UPDATE stream_heads h
     SET version = h.version + 1, prev_hash = h.last_hash, last_hash = sha256(h.last_hash || i.body_hash),
         last_tx = pg_current_xact_id(), snapshot = coalesce(i.snapshot, h.snapshot),
         snapshot_version = CASE WHEN i.snapshot IS NULL THEN h.snapshot_version ELSE h.version + 1 END,
         updated_at = now()
    FROM input i JOIN locked l ON l.stream_id = i.stream_id
   WHERE h.stream_id = ANY(ARRAY(SELECT stream_id FROM locked)) AND h.stream_id = i.stream_id
     AND i.expected > 0 AND h.version = i.expected
     AND h.last_tx < pg_current_xact_id()
  RETURNING h.stream_id, h.prev_hash, h.last_hash, h.version
), created AS (
  INSERT INTO stream_heads (stream_id, version, prev_hash, last_hash, last_tx, snapshot, snapshot_version)
  SELECT i.stream_id, 1, $2::bytea, sha256($2::bytea || i.body_hash), pg_current_xact_id(), i.snapshot,
         CASE WHEN i.snapshot IS NULL THEN NULL ELSE 1 END
    FROM input i WHERE i.expected = 0
  ON CONFLICT (stream_id) DO NOTHING
  RETURNING stream_id, prev_hash, last_hash, version
), placed AS (
  SELECT * FROM moved UNION ALL SELECT * FROM created
)
INSERT INTO events (event_id, stream_id, version, type, schema_version, data, secret, key_id,
                    occurred_at, actor, correlation_id, causation_id, prev_hash, hash)
SELECT i.event_id, i.stream_id, p.version, i.type, i.schema_version, i.data, i.secret, i.key_id,
       i.occurred_at, i.actor, i.correlation_id, i.causation_id, p.prev_hash, p.last_hash
  FROM placed p JOIN input i ON i.stream_id = p.stream_id
RETURNING stream_id, position, version, hash
"""


# Several heads, each with its snapshot unless the reader holds that version already.
_READ_HEADS = """
SELECT h.stream_id, h.version, h.last_hash, h.snapshot_version,
       CASE WHEN k.known IS DISTINCT FROM h.version THEN h.snapshot END AS snapshot
  FROM unnest($1::text[], $2::int[]) AS k(stream_id, known)
 CROSS JOIN LATERAL (SELECT * FROM stream_heads WHERE stream_id = k.stream_id LIMIT 1) AS h
"""


# Bulk creation of new streams (imports): a new stream's chain starts at the genesis hash, so the
# writer computes every hash itself and thousands of streams go in one statement. A stream that
# exists already is skipped (ON CONFLICT) and reported back, to be appended to the ordinary way.
# The head rows ({heads}) and the events ({events}) each travel as one document (see _relation).
_CREATE_STREAMS = """
WITH {gates}heads AS (
  INSERT INTO stream_heads (stream_id, version, prev_hash, last_hash, last_tx, snapshot, snapshot_version)
  SELECT h.stream_id, h.version, h.prev_hash, h.last_hash, pg_current_xact_id(), h.snapshot::jsonb,
         CASE WHEN h.snapshot IS NULL THEN NULL ELSE h.version END
    FROM {heads} AS h{gate_filter}
  ON CONFLICT (stream_id) DO NOTHING
  RETURNING stream_id
){followers}{insert_events}
"""
_INSERT_EVENTS = """
INSERT INTO events (event_id, stream_id, version, type, schema_version, data, secret, key_id,
                    occurred_at, actor, correlation_id, causation_id, prev_hash, hash)
SELECT e.event_id, e.stream_id, e.version, e.type, e.schema_version, e.data, e.secret, e.key_id,
       e.occurred_at, e.actor, e.correlation_id, e.causation_id, e.prev_hash, e.hash
  FROM {events} AS e
  JOIN heads USING (stream_id)
 ORDER BY e.stream_id, e.version"""
# What the statement answers: each new event's position, version and hash, or only which streams
# it created (a command creating accounts needs no more, and 8 rows decode quicker than 24).
_EVENT_RESULTS = _INSERT_EVENTS + "\nRETURNING stream_id, position, version, hash"
_STREAM_RESULTS = ", created_events AS (" + _INSERT_EVENTS + ")\nSELECT stream_id FROM heads"
_HEAD_COLUMNS = (("stream_id", "text"), ("version", "int"), ("prev_hash", "bytea"), ("last_hash", "bytea"),
                 ("snapshot", "text"))
_EVENT_COLUMNS = (("event_id", "uuid"), ("stream_id", "text"), ("version", "int"), ("type", "text"),
                  ("schema_version", "int2"), ("data", "text"), ("secret", "bytea"), ("key_id", "text"),
                  ("occurred_at", "timestamptz"), ("actor", "text"), ("correlation_id", "uuid"),
                  ("causation_id", "uuid"), ("prev_hash", "bytea"), ("hash", "bytea"))
_CREATE_PARAMETERS = 2

# A relation's rows travel as one text document, not as one array parameter per column (asyncpg
# spends about a microsecond on each array element): rows split by RS (\x1e), fields by US
# (\x1f), NULL written as GS (\x1d), each field read by its type's input function. PostgreSQL
# splits that about twice as fast as it parses the same rows as JSON (which it parses twice: to
# accept the parameter, then to read the records), and it is a fifth smaller. Canonical JSON
# and the ids, hashes and names the log holds never contain those three characters; a batch in
# which any value does (a caller's own stream id or companion value, say), or that holds a value
# with no text form here (a float), goes as JSON documents instead (json_to_recordset).
_ROW, _FIELD, _NULL = "\x1e", "\x1f", "\x1d"
TEXT_FORM, JSON_FORM = "text", "json"


def _relation(parameter: int, columns: Sequence[tuple[str, str]], form: str) -> str:
    """The relation a document parameter holds, with these (name, SQL type) columns."""
    if form == JSON_FORM:
        names = ", ".join(f"{name} {kind}" for name, kind in columns)
        return f"(SELECT * FROM json_to_recordset(${parameter}::json) AS r({names}))"
    fields = ", ".join(f"f[{index}]::{kind} AS {name}" for index, (name, kind) in enumerate(columns, start=1))
    return (f"(SELECT {fields} FROM unnest(string_to_array(${parameter}::text, E'\\x1e')) AS line,"
            f" string_to_array(line, E'\\x1f', E'\\x1d') AS f)")


@dataclass(frozen=True)
class Companion:
    """A row of another table that belongs with a new stream, written by the statement that
    creates the stream, so that both or neither are stored (and in one round trip).

    `insert` writes the rows of a batch of new streams: an INSERT ... SELECT from `{rows}` (its
    only placeholder; other braces doubled), a relation with the columns `stream_id` and then
    `columns` ((name, SQL type) pairs); `values` is this stream's row. A `gate` companion is
    written first and must return the stream_id of each row it wrote (`RETURNING ... AS
    stream_id`): a stream it writes no row for is not created (e.g. the data key its secrets are
    encrypted under, when the owner has a key already). A gate may also be a plain SELECT that
    writes nothing (e.g. a check that another stream is still at the version a decision was made
    on). Gates run in the order given, each seeing only the streams the earlier ones admitted.
    Other companions are written only for the streams created.
    """

    insert: str
    columns: tuple[tuple[str, str], ...]
    values: tuple
    gate: bool = False

    @property
    def kind(self) -> tuple:
        return (self.insert, self.columns, self.gate)


def _creation_sql(kinds: tuple[tuple, ...], form: str = TEXT_FORM, answer: str = "events") -> str:
    """The stream-creation statement with these kinds of companions, its documents in `form`,
    answering with each new event (`answer` "events") or each new stream ("streams")."""
    gates, filters, followers = [], [], []
    gates_so_far: list[int] = []
    parameter = _CREATE_PARAMETERS
    for index, (insert, columns, gate) in enumerate(kinds):
        parameter += 1
        rows = f"(SELECT * FROM {_relation(parameter, (('stream_id', 'text'), *columns), form)} AS c"
        if gate:
            if gates_so_far:
                rows += " WHERE " + " AND ".join(f"c.stream_id IN (SELECT stream_id FROM companion{earlier})"
                                                 for earlier in gates_so_far)
            gates.append(f"companion{index} AS ({insert.format(rows=rows + ') AS rows')}),\n")
            filters.append(f"h.stream_id IN (SELECT stream_id FROM companion{index})")
            gates_so_far.append(index)
        else:
            rows += " WHERE c.stream_id IN (SELECT stream_id FROM heads)) AS rows"
            followers.append(f", companion{index} AS ({insert.format(rows=rows)})")
    return _CREATE_STREAMS.format(
        gates="".join(gates), gate_filter="\n   WHERE " + " AND ".join(filters) if filters else "",
        followers="".join(followers), heads=_relation(1, _HEAD_COLUMNS, form),
        insert_events=(_EVENT_RESULTS if answer == "events" else _STREAM_RESULTS).format(events=_relation(2, _EVENT_COLUMNS, form)),
    )


def _validate_text(name: str, value: str | None, *, required: bool = True, limit: int = 200, of: str = "") -> None:
    """`of`: the event type the value belongs to, named in the error (its label is only made then)."""
    if value is None and not required:
        return
    if type(value) is str and value.isascii() and 1 <= len(value) <= limit:
        return  # the usual case: ASCII holds no lone surrogate
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise InvalidEventError(f"{of + ': ' if of else ''}{name} must be a string of 1 to {limit} characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidEventError(f"{of + ': ' if of else ''}{name} is not valid Unicode (lone surrogate)") from None


def _validate_stream_id(stream_id: str) -> None:
    _validate_text("stream_id", stream_id)


def _snapshot_text(snapshot: dict[str, Any] | str | None) -> str | None:
    """A head snapshot is given as a JSON object or as its JSON text (PostgreSQL parses it as jsonb)."""
    if snapshot is None or isinstance(snapshot, str):
        return snapshot
    return json.dumps(snapshot, separators=(",", ":"))


@dataclass(frozen=True)
class PreparedStream:
    """A new stream validated, encoded and hashed, ready for create_prepared_stream or
    creation_batch: the CPU-bound part of creating it, which may be done in another process (it
    holds no connection)."""

    stream_id: str
    item: tuple  # (stream_id, rows, snapshot text, companion values), as _create_prepared takes it
    kinds: tuple  # the companions' kinds


def prepare_creation(
    stream_id: str, events: Sequence[NewEvent], snapshot: dict[str, Any] | str | None = None,
    companions: Sequence[Companion] = (),
) -> PreparedStream:
    """Validate and encode a new stream's events (at versions 1, 2, ...), head snapshot and companions."""
    item = (stream_id, PostgresEventStore._prepare(stream_id, events, 0), _snapshot_text(snapshot),
            tuple(companion.values for companion in companions))
    return PreparedStream(stream_id, item, tuple(companion.kind for companion in companions))


_HEAD_FIELDS = tuple(name for name, _ in _HEAD_COLUMNS)
_EVENT_FIELDS = tuple(name for name, _ in _EVENT_COLUMNS)
_APPEND_FIELDS = ("stream_id", "expected", "event_id", "type", "schema_version", "data", "secret", "key_id",
                  "occurred_at", "actor", "correlation_id", "causation_id", "body_hash")


def _bytea(value: Any) -> str:
    """orjson's hook for what it does not encode itself: bytes, as bytea's hex text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    raise TypeError(f"{type(value).__name__} cannot be sent to PostgreSQL as JSON")


def _json_rows(fields: Sequence[str], rows) -> str:
    """Rows as a JSON array of objects (json_to_recordset); bytea as "\\\\x<hex>", its text form. (The
    group commit's rows go this way: a few per statement, where parsing costs little.)"""
    return orjson.dumps([dict(zip(fields, row)) for row in rows], default=_bytea).decode()


def _text_field(value: Any) -> str:
    """A value as its type's input function reads it (what the JSON form's scalars become)."""
    kind = type(value)
    if kind is str:
        return value
    if value is None:
        return _NULL
    if kind is uuid.UUID:
        return uuid_text(value)
    if kind is int:
        return str(value)
    if kind is bytes:
        return "\\x" + value.hex()
    if kind is bool:
        return "t" if value else "f"
    if isinstance(value, str):  # a subclass (CanonicalJson)
        return str(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        # Not format_instant: its cache is for the few instants every event repeats, and a
        # companion's instants (refresh due times) are each new.
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (int, uuid.UUID)):
        return str(value)
    raise TypeError(f"{kind.__name__} has no text form here")  # the JSON form takes it, or says why not


def _uuid_texts(values: list[uuid.UUID]) -> list[str]:
    """str() of each, made by orjson in one call (UUID.__str__ is Python, a microsecond each)."""
    if not values:
        return []
    try:
        return orjson.dumps(values).decode()[2:-2].split('","')
    except TypeError:  # not exactly UUIDs (a subclass)
        return [str(value) for value in values]


@dataclass(frozen=True)
class CreationBatch:
    """New streams ready to be written in one statement: hashes chained, rows encoded as the
    statement's documents. Pure data, so a worker process may make it (creation_batch)."""

    stream_ids: tuple[str, ...]
    kinds: tuple
    documents: tuple[str, ...]  # the heads, the events, then each companion's rows (see _relation)
    form: str = TEXT_FORM


def creation_batch(streams: Sequence[PreparedStream]) -> CreationBatch:
    """The batch that creates these streams (each once; companions of the same kinds)."""
    if len({stream.stream_id for stream in streams}) != len(streams):
        raise InvalidEventError("each stream may appear once in create_streams")
    kinds = {stream.kinds for stream in streams}
    if len(kinds) > 1:
        raise InvalidEventError("the streams of one create_streams call need companions of the same kinds")
    return _creation_batch([stream.item for stream in streams], kinds.pop() if kinds else ())


_GENESIS_TEXT = "\\x" + GENESIS_HASH.hex()


def _creation_batch(streams: list[tuple], kinds: tuple[tuple, ...]) -> CreationBatch:
    """A new stream's chain starts at the genesis hash, so the writer chains every hash itself."""
    streams = sorted(streams, key=lambda stream: stream[0])  # row locks in one order: no deadlocks
    heads: list[tuple] = []
    events: list[tuple] = []
    for stream_id, rows, snapshot, *_ in streams:
        # Hashes as bytea's text here, where each is made (and a hash is its successor's prev_hash).
        prev, prev_text = GENESIS_HASH, _GENESIS_TEXT
        last_prev_text = prev_text
        for version, (event_id, type_, schema_version, data, secret, key_id, occurred_at, actor, corr, cause,
                      body) in enumerate(rows, start=1):
            current = chain_hash(prev, body)
            current_text = "\\x" + current.hex()
            events.append((event_id, stream_id, version, type_, schema_version, data,
                           None if secret is None else "\\x" + secret.hex(), key_id, occurred_at, actor, corr, cause,
                           prev_text, current_text))
            last_prev_text, prev, prev_text = prev_text, current, current_text
        heads.append((stream_id, len(rows), last_prev_text, prev_text, snapshot))
    companions = [
        (("stream_id", *(name for name, _ in columns)), [(stream[0], *stream[3][index]) for stream in streams])
        for index, (_, columns, _) in enumerate(kinds)
    ]
    stream_ids = tuple(stream[0] for stream in streams)
    documents = _text_documents(heads, events, companions)
    if documents is not None:
        return CreationBatch(stream_ids, kinds, documents, TEXT_FORM)
    return CreationBatch(stream_ids, kinds, (
        _json_rows(_HEAD_FIELDS, heads), _json_rows(_EVENT_FIELDS, events),
        *(_json_rows(fields, rows) for fields, rows in companions)), JSON_FORM)


def _text_documents(heads: list[tuple], events: list[tuple], companions: list[tuple]) -> tuple[str, ...] | None:
    """The batch's documents in the text form; None when a value holds a separator or has no text
    form. Only what may come from outside (stream ids, types, actors, key ids, snapshots,
    companions' texts) is searched for separators: the other values are ids, numbers, hashes and
    canonical JSON (control characters escaped)."""
    outside: list[str] = []
    ids = _uuid_texts([event[0] for event in events])
    correlations = {event[10] for event in events} | {event[11] for event in events}
    correlations.discard(None)
    named = dict(zip(correlations, _uuid_texts(list(correlations))))
    lines = []
    for (event_id, stream_id, version, type_, schema_version, data, secret, key_id, occurred_at, actor, corr, cause,
         prev_text, hash_text), id_text in zip(events, ids):
        lines.append(
            f"{id_text}\x1f{stream_id}\x1f{version}\x1f{type_}\x1f{schema_version}\x1f{data}"
            f"\x1f{_NULL if secret is None else secret}\x1f{_NULL if key_id is None else key_id}"
            f"\x1f{format_instant(occurred_at)}\x1f{actor}\x1f{_NULL if corr is None else named[corr]}"
            f"\x1f{_NULL if cause is None else named[cause]}\x1f{prev_text}\x1f{hash_text}")
    outside.extend({event[3] for event in events} | {event[9] for event in events} | {event[7] or "" for event in events})
    outside.extend(head[0] for head in heads)
    outside.extend(head[4] for head in heads if head[4] is not None)  # a caller's own snapshot text, unchecked
    documents = [
        _ROW.join([f"{stream_id}\x1f{count}\x1f{prev}\x1f{last}\x1f{_NULL if snapshot is None else snapshot}"
                   for stream_id, count, prev, last, snapshot in heads]),
        _ROW.join(lines),
    ]
    for _, rows in companions:
        try:
            documents.append(_ROW.join([_FIELD.join([_text_field(value) for value in row]) for row in rows]))
        except TypeError:
            return None
        outside.extend(value for row in rows for value in row[1:] if isinstance(value, str))
    outside_text = "".join(outside)
    if _ROW in outside_text or _FIELD in outside_text or _NULL in outside_text:  # memchr-quick; a regex is not
        return None
    return tuple(documents)


class PostgresEventStore:
    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool
        # An item a batch could not place retries alone, and meets its own error there.
        self._alone_on = alone_on = (asyncpg.PostgresError, OSError, asyncio.TimeoutError, EventStoreError)
        self._group_commit = Coalescer(self._send_appends, alone_on=alone_on)
        self._stream_creator = Coalescer(self._create_prepared, alone_on=alone_on)
        self._head_reader = Coalescer(self._read_heads, alone_on=alone_on)
        self._creators: dict[tuple, Coalescer] = {}  # creations with companions, by their kinds
        self._creation_statements: dict[tuple, str] = {}
        self._append_listeners: list[Callable[[], None]] = []

    def on_append(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each append returns (readers in this process wake up at once;
        the append may still be uncommitted if it joined a caller's transaction)."""
        self._append_listeners.append(listener)

    def _appended(self) -> None:
        for listener in self._append_listeners:
            listener()

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        snapshot: dict[str, Any] | str | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> list[AppendResult]:
        """Append `events` to `stream_id` if it is at `expected_version` (0: a new stream).

        `snapshot`, the stream's state after the append, as a JSON object or JSON text, is kept in
        the head row.

        With `conn` the append joins the caller's transaction and must be its first write.
        """
        try:
            return await self._append(stream_id, events, expected_version, snapshot=snapshot, conn=conn)
        finally:
            self._appended()

    async def _append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        snapshot: dict[str, Any] | str | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> list[AppendResult]:
        rows = self._prepare(stream_id, events, expected_version)
        snapshot_json = _snapshot_text(snapshot)
        if conn is None and len(rows) == 1:
            stored = await self._group_commit.submit(stream_id, (stream_id, expected_version, rows[0], snapshot_json))
            if stored:
                return stored
        elif conn is None and expected_version == 0:
            stored = await self._stream_creator.submit(stream_id, (stream_id, rows, snapshot_json))
            if stored:
                return stored
        args = (stream_id, expected_version, *(list(column) for column in zip(*rows)), snapshot_json)
        if conn is not None:
            return await self._call_append(conn, stream_id, expected_version, args)
        for attempt in range(_ORDER_RETRIES):
            try:
                async with self._pool.acquire() as own:
                    return await self._call_append(own, stream_id, expected_version, args)
            except RetryableAppendError:
                await asyncio.sleep(0.001 * (attempt + 1))
        raise EventStoreError(f"could not order the append to {stream_id!r} after {_ORDER_RETRIES} attempts")

    async def _send_appends(self, items: list[tuple]) -> dict[str, list[AppendResult]]:
        """One group-commit batch of single-event appends (distinct streams)."""
        rows = await self._pool.fetch(_APPEND_BATCH, _json_rows(_APPEND_FIELDS, (
            (stream_id, expected, *row) for stream_id, expected, row, _ in items)),
            GENESIS_HASH, [snapshot for *_, snapshot in items])
        return {r["stream_id"]: [AppendResult(r["position"], r["version"], bytes(r["hash"]))] for r in rows}

    async def create_streams(self, streams: Sequence[tuple]) -> dict[str, list[AppendResult] | None]:
        """Create many new streams at once, each (stream_id, events, head snapshot[, companions]),
        in one transaction; the streams of one call have companions of the same kinds. Returns each
        stream's results, or None for a stream that already existed or that a gate companion refused
        (nothing of it was written)."""
        return await self.create_batch(creation_batch([prepare_creation(*stream) for stream in streams]))

    async def create_stream(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        snapshot: dict[str, Any] | str | None = None,
        companions: Sequence[Companion] = (),
    ) -> list[AppendResult] | None:
        """Create a new stream with its events, head snapshot and companion rows (see Companion),
        in one statement shared with concurrent creations. None when the stream exists already or a
        gate companion refused it: nothing of it was written then."""
        return await self.create_prepared_stream(prepare_creation(stream_id, events, snapshot, companions))

    async def create_prepared_stream(self, stream: PreparedStream) -> list[AppendResult] | None:
        """create_stream for a stream `prepare_creation` made."""
        creator = self._creators.get(stream.kinds)
        if creator is None:
            creator = self._creators[stream.kinds] = Coalescer(
                lambda batch, kinds=stream.kinds: self._create_prepared(batch, kinds), alone_on=self._alone_on)
        stored = await creator.submit(stream.stream_id, stream.item)
        if stored is None:  # not created, or the shared statement failed: alone, to know which
            stored = (await self._create_prepared([stream.item], stream.kinds))[stream.stream_id]
        return stored

    async def _create_prepared(
        self, streams: list[tuple], kinds: tuple[tuple, ...] = ()
    ) -> dict[str, list[AppendResult] | None]:
        """create_streams for streams whose rows `_prepare` made (stream_id, rows, snapshot text[,
        companion values])."""
        return await self.create_batch(_creation_batch(streams, kinds))

    async def create_batch(self, batch: "CreationBatch") -> dict[str, list[AppendResult] | None]:
        """Write a creation_batch (made here or in another process) in one statement."""
        rows = await self._write_batch(batch, "events")
        created: dict[str, list[AppendResult] | None] = dict.fromkeys(batch.stream_ids)
        for row in rows:
            results = created[row["stream_id"]] or []
            results.append(AppendResult(row["position"], row["version"], bytes(row["hash"])))
            created[row["stream_id"]] = results
        if rows:
            self._appended()
        return created

    async def create_batch_streams(self, batch: "CreationBatch") -> set[str]:
        """create_batch, answering only which of the batch's streams it created."""
        created = {row[0] for row in await self._write_batch(batch, "streams")}
        if created:
            self._appended()
        return created

    async def _write_batch(self, batch: "CreationBatch", answer: str) -> list[asyncpg.Record]:
        key = (batch.kinds, batch.form, answer)
        sql = self._creation_statements.get(key)
        if sql is None:
            sql = self._creation_statements[key] = _creation_sql(batch.kinds, batch.form, answer)
        try:
            return await self._pool.fetch(sql, *batch.documents)
        except asyncpg.UniqueViolationError as exc:
            raise InvalidEventError("an event id in this batch is already used by another event") from exc
        except asyncpg.CheckViolationError as exc:
            raise InvalidEventError(f"event refused by the log: {exc.constraint_name or exc}") from None

    @staticmethod
    def _prepare(stream_id: str, events: Sequence[NewEvent], expected_version: int) -> list[tuple]:
        """Validate and encode each event as the row ll_append takes, body hash included."""
        _validate_stream_id(stream_id)
        if not events:
            raise InvalidEventError("an append needs at least one event")
        if not isinstance(expected_version, int) or isinstance(expected_version, bool) or expected_version < 0:
            raise InvalidEventError("expected_version must be an integer >= 0")
        rows = []
        for version, event in enumerate(events, start=expected_version + 1):
            _validate_text("event type", event.type)
            _validate_text("actor", event.actor, of=event.type)
            _validate_text("key_id", event.key_id, required=False, of=event.type)
            if event.occurred_at.tzinfo is None:
                raise InvalidEventError(f"{event.type}: occurred_at must be timezone-aware")
            if event.secret is not None and len(event.secret) > MAX_PAYLOAD_BYTES:
                raise InvalidEventError(f"{event.type}: secret is larger than {MAX_PAYLOAD_BYTES} bytes")
            data = event.data
            if type(data) is not CanonicalJson:
                data = canonical_json(data, what=f"{event.type}.data")
            header = header_bytes(
                event_id=event.event_id,
                stream_id=stream_id,
                version=version,
                type=event.type,
                schema_version=event.schema_version,
                occurred_at=event.occurred_at,
                actor=event.actor,
                correlation_id=event.correlation_id,
                causation_id=event.causation_id,
                key_id=event.key_id,
            )
            rows.append((
                event.event_id, event.type, event.schema_version, data, event.secret, event.key_id,
                event.occurred_at, event.actor, event.correlation_id, event.causation_id,
                body_hash(header, data, event.secret),
            ))
        if len(rows) > 1 and len({row[0] for row in rows}) != len(rows):
            raise InvalidEventError("event ids within one append must be distinct")
        return rows

    @staticmethod
    async def _call_append(
        conn: asyncpg.Connection, stream_id: str, expected_version: int, args: tuple
    ) -> list[AppendResult]:
        try:
            rows = await conn.fetch(
                "SELECT out_position, out_version, out_hash FROM ll_append("
                "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb)",
                *args,
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "events_pkey":
                raise InvalidEventError("an event id in this batch is already used by another event") from None
            raise ConcurrencyError(stream_id, expected_version, -1) from exc
        except asyncpg.PostgresError as exc:
            code = getattr(exc, "sqlstate", None)
            if code == "LL001":
                raise ConcurrencyError(stream_id, expected_version, int(exc.detail)) from None
            if code == "LL002":
                raise AppendOrderError(str(exc)) from None
            if code == "LL003":
                raise RetryableAppendError(str(exc)) from None
            if code in ("LL005", "LL006"):
                raise InvalidEventError(str(exc)) from None
            if code == "23514":  # check constraint: size or shape limits
                raise InvalidEventError(f"event refused by the log: {exc.constraint_name or exc}") from None
            raise
        return [AppendResult(r["out_position"], r["out_version"], bytes(r["out_hash"])) for r in rows]

    async def read_stream(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[RecordedEvent]:
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 AND version >= $2"
            " AND ($3::int IS NULL OR version <= $3) ORDER BY version",
            stream_id,
            from_version,
            to_version,
        )
        return [record_from_row(r) for r in rows]

    async def read_all(self, after: LogPosition, limit: int = 1000) -> list[RecordedEvent]:
        """Events after `after` in log order, only below the snapshot horizon (invariant 1):

        a transaction that took its position earlier may still commit, so nothing at or above the
        oldest transaction still running is handed out yet.
        """
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM events"
            " WHERE (tx, position) > ($1::xid8, $2::bigint)"
            " AND tx < pg_snapshot_xmin(pg_current_snapshot())"
            " ORDER BY tx, position LIMIT $3",
            after.tx,
            after.position,
            limit,
        )
        return [record_from_row(r) for r in rows]

    async def heads(
        self, stream_ids: Sequence[str], *, known: Mapping[str, int] | None = None
    ) -> dict[str, StreamHead | None]:
        """Several streams' heads (None: no such stream) in one query shared with concurrent callers.

        A stream whose version is `known[stream_id]` comes without its snapshot: the caller holds
        that version's state already (a cache checked against the head in the same read).
        """
        request = [(stream_id, (known or {}).get(stream_id)) for stream_id in stream_ids]
        found = await self._head_reader.submit(None, request)
        if found is None:  # the shared read failed: this one alone, with its own error
            found = await self._fetch_heads(request)
        return {stream_id: found.get(stream_id) for stream_id in stream_ids}

    async def _read_heads(self, requests: list[list[tuple[str, int | None]]]) -> list[dict[str, StreamHead]]:
        merged: dict[str, int | None] = {}
        for request in requests:
            for stream_id, known in request:
                # Two readers holding different versions: both get the snapshot.
                merged[stream_id] = known if merged.get(stream_id, known) == known else None
        found = await self._fetch_heads(list(merged.items()))
        return [found] * len(requests)

    async def _fetch_heads(self, request: list[tuple[str, int | None]]) -> dict[str, StreamHead]:
        rows = await self._pool.fetch(
            _READ_HEADS, [stream_id for stream_id, _ in request], [known for _, known in request])
        return {
            row["stream_id"]: StreamHead(
                row["stream_id"], row["version"], bytes(row["last_hash"]),
                json.loads(row["snapshot"]) if row["snapshot"] is not None else None, row["snapshot_version"],
            )
            for row in rows
        }

    async def head(self, stream_id: str) -> StreamHead | None:
        row = await self._pool.fetchrow(
            "SELECT stream_id, version, last_hash, snapshot, snapshot_version FROM stream_heads WHERE stream_id = $1",
            stream_id,
        )
        if row is None:
            return None
        snapshot = json.loads(row["snapshot"]) if row["snapshot"] is not None else None
        return StreamHead(row["stream_id"], row["version"], bytes(row["last_hash"]), snapshot, row["snapshot_version"])
