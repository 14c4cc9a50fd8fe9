"""Seeding a benchmark database fast: valid, hash-chained account histories written with COPY."""

import random
import uuid

import asyncpg

import json
from events.envelope import uuid7
from events.hashing import GENESIS_HASH, body_hash, chain_hash, header_bytes
from projections import account_fold
from scripts import workload

# The workload's payloads are exact by construction, so the checks of events.canonical are skipped;
# the encoding is the same (sorted keys, no whitespace, UTF-8).
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode

EVENT_COLUMNS = ("event_id", "stream_id", "version", "type", "schema_version", "data", "secret", "key_id",
                 "occurred_at", "actor", "correlation_id", "causation_id", "prev_hash", "hash")


async def seed_events(conn: asyncpg.Connection, total: int, accounts: int, *, seed: int = 1,
                      chunk: int = 100_000) -> dict[str, dict]:
    """Append about `total` events over `accounts` account streams, interleaved in time as a real
    log is, each chunk in its own transaction (so the log has many transaction ids). Returns each
    stream's folded state with its head (version, hash), for writers that go on appending."""
    rng = random.Random(seed)
    tick = workload.clock()
    states: dict[str, dict] = {}
    heads: dict[str, tuple[int, bytes]] = {}
    streams: list[str] = []
    rows: list[tuple] = []
    written = 0

    def add(stream: str, group: list[tuple[str, dict]], at) -> None:
        version, prev = heads.get(stream, (0, GENESIS_HASH))
        for type_, data in group:
            version += 1
            event_id, actor, correlation = uuid7(), rng.choice(workload.ACTORS), uuid.uuid4()
            text = _canonical(data)
            header = header_bytes(event_id=event_id, stream_id=stream, version=version, type=type_, schema_version=1,
                                  occurred_at=at, actor=actor, correlation_id=correlation, causation_id=None,
                                  key_id=None)
            current = chain_hash(prev, body_hash(header, text, None))
            rows.append((event_id, stream, version, type_, 1, text, None, None, at, actor, correlation, None, prev,
                         current))
            prev = current
        heads[stream] = (version, prev)
        states[stream] = workload.evolve_all(states.get(stream) or account_fold.blank(stream[8:]), group)

    async def flush() -> None:
        nonlocal rows
        if rows:
            async with conn.transaction():
                await conn.copy_records_to_table("events", records=rows, columns=EVENT_COLUMNS)
            rows = []

    while written < total:
        at = tick()
        if len(streams) < accounts and (not streams or rng.random() < accounts / max(total, 1) * 4):
            account_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            stream = f"account-{account_id}"
            streams.append(stream)
            group = workload.opening(rng, account_id, at)
        else:
            stream = rng.choice(streams)
            group = workload.next_events(rng, states[stream], at)
        add(stream, group, at)
        written += len(group)
        if len(rows) >= chunk:
            await flush()
    await flush()
    await conn.copy_records_to_table(
        "stream_heads", records=[(s, v, h, 0) for s, (v, h) in heads.items()],
        columns=("stream_id", "version", "last_hash", "last_tx"))
    await conn.execute("ANALYZE events")
    return {stream: {**states[stream], "_head": heads[stream]} for stream in streams}
