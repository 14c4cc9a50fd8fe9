"""The runner: keeps projections' live tables current — one or several, read from the log once.

Each batch is one transaction: take each projection's advisory lock (transaction-scoped, tried, so
across replicas one runner per projection is active at a time and another takes over at once if it
dies), read its checkpoint under a row lock, read the next events below the snapshot horizon once,
and apply to each projection those past its own checkpoint, writing rows and checkpoint together.
Reading the checkpoints from their tables every batch also follows a rebuild's swap: the next
batch simply continues from the new tables' checkpoint.

One runner for all projections (what `serve` runs) matters for lag: every runner transaction is
open while it applies, and an open transaction holds back the snapshot horizon of every reader, so
separate runners kept delaying each other's view of the log.

It wakes when told (`wake()`, e.g. after a local append) and polls otherwise, so appends from other
replicas are seen within the poll interval.
"""

import asyncio
import hashlib
import logging
from collections import deque
from typing import Sequence
from datetime import datetime, timezone

import asyncpg

from events.envelope import LogPosition
from projections.framework import Projection, Tables, apply_batch, checkpoint_table
from projections.source import read_after

log = logging.getLogger("linkledger.projections")
LIVE = Tables()


def lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"linkledger projection {name}".encode()).digest()[:8], "big", signed=True)


class ProjectionRunner:
    def __init__(self, pool: asyncpg.Pool, projections: Projection | Sequence[Projection], *, batch_size: int = 1000,
                 poll_interval: float = 0.1):
        self.pool = pool
        self.projections = tuple(projections) if isinstance(projections, (list, tuple)) else (projections,)
        self.name = ", ".join(p.name for p in self.projections)  # for log lines
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._wakeup = asyncio.Event()
        # Read-your-writes inside one process: wake() asks for a pass that starts later; waiters
        # are released once a pass that started after their request found nothing more to apply.
        self._requested = 0
        self._served = 0
        self._passed = asyncio.Event()
        self.applied = 0
        self.lag_seconds = 0.0  # age of the newest event applied when it was applied; 0 when caught up
        self.recent_lags: deque[float] = deque(maxlen=100_000)  # per event, for benchmarks

    def wake(self) -> None:
        self._requested += 1
        self._wakeup.set()

    async def settled(self, timeout: float = 10.0) -> None:
        """Return once everything this process appended before the call is applied (or at `timeout`)."""
        target = self._requested
        deadline = asyncio.get_running_loop().time() + timeout
        while self._served < target:
            self._passed.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._passed.wait(), remaining)
            except asyncio.TimeoutError:
                log.warning("projection %s: still behind this process's appends after %.0f s; answering from"
                            " what it has", self.name, timeout)
                return

    async def step(self) -> int:
        """Apply at most one batch; returns how many events were read and applied, 0 when caught up or
        when other replicas' runners have the turn, -1 when committed events wait behind the horizon
        (a transaction that began before them is still running)."""
        async with self.pool.acquire() as conn, conn.transaction():
            won: list[tuple[Projection, LogPosition]] = []
            for projection in self.projections:
                # One round trip: the lock is tried first, the checkpoint row read (and locked) only if it was won.
                row = await conn.fetchrow(f"SELECT tx, position FROM {checkpoint_table(projection, LIVE)}"
                                          " WHERE pg_try_advisory_xact_lock($1) FOR UPDATE", lock_key(projection.name))
                if row is not None:
                    won.append((projection, LogPosition(int(row["tx"]), row["position"])))
            if not won:
                return 0
            after = min(checkpoint for _, checkpoint in won)
            events = await read_after(conn, after, self.batch_size)
            if not events:
                self.lag_seconds = 0.0
                # Ordered and limited, not EXISTS: PostgreSQL drops the ORDER BY inside EXISTS and then
                # plans a sequential scan of the whole log, which is every idle poll's usual answer.
                held_back = await conn.fetchval(
                    "SELECT true FROM events WHERE (tx, position) > ($1::xid8, $2::bigint) ORDER BY tx, position LIMIT 1",
                    after.tx, after.position)
                return -1 if held_back else 0
            for projection, checkpoint in won:
                # Checkpoints differ after a rebuild's swap; each projection takes what lies past its own.
                pending = events if checkpoint == after else [e for e in events if e.log_position > checkpoint]
                if pending:
                    await apply_batch(conn, projection, LIVE, pending)
        now = datetime.now(timezone.utc)
        lags = [(now - e.occurred_at).total_seconds() for e in events]
        self.recent_lags.extend(lags)
        self.lag_seconds = max(0.0, lags[-1])
        self.applied += len(events)
        return len(events)

    async def catch_up(self) -> int:
        total = 0
        while (applied := await self.step()) != 0:
            if applied < 0:
                await asyncio.sleep(0.005)
            total += max(applied, 0)
        return total

    async def run(self) -> None:
        while True:
            started = self._requested
            try:
                applied = await self.step()
                if applied == self.batch_size:
                    continue
                if applied < 0:
                    await asyncio.sleep(0.005)  # the horizon moves as soon as that transaction ends
                    continue
                self._served = started
                self._passed.set()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError) as exc:
                log.warning("projection %s: %s; retrying", self.name, exc)
                await asyncio.sleep(1)
            except Exception:
                # A bug must not stop the projection for good: it is logged and the batch retried.
                log.exception("projection %s: batch failed; retrying", self.name)
                await asyncio.sleep(1)
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)
            except asyncio.TimeoutError:
                pass


