"""Refresh leases and the refresh schedule, as the refresh path writes them: batched.

Taking a lease and reading the account's head (state and current secrets) is one statement; the
lease is released by the append of the refresh's outcome (its event id is named in the lease, see
migration 0060), so the common path costs no release statement. The lease takes and schedule
updates of concurrent refreshes are coalesced into one statement (service.handlers.batching).
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from events.batching import Coalescer

# One statement for a batch of lease takes and schedule updates (a data-modifying WITH runs whether
# or not the query reads it). Schedule rows, then lease rows, are locked in account order, so two
# processes' batches cannot deadlock. A lease is free when
# it has expired, is this holder's own, or its outcome event has been appended. The head is read in
# the same snapshot that found the previous outcome appended, so it includes that outcome; its
# snapshot and latest secret only when the version differs from the one the caller holds parsed.
# The outcome and the head are looked up per row, never joined (see the note on lookups in
# events.store): an EXISTS here may be planned as a hash of every event id in the log.
_BOOKKEEPING = """
WITH scheduled AS (
  INSERT INTO refresh_schedule (account_id, due_at, attempt)
  SELECT * FROM unnest($6::uuid[], $7::timestamptz[], $8::int[]) ORDER BY 1
  ON CONFLICT (account_id) DO UPDATE SET due_at = excluded.due_at, attempt = excluded.attempt
), wanted AS (
  SELECT * FROM unnest($1::uuid[], $2::uuid[], $5::int[]) AS w(account_id, outcome_event_id, held_version)
   ORDER BY account_id
), taken AS (
  INSERT INTO refresh_leases AS l (account_id, holder, expires_at, outcome_event_id)
  SELECT account_id, $3, now() + make_interval(secs => $4), outcome_event_id FROM wanted
  ON CONFLICT (account_id) DO UPDATE
     SET holder = excluded.holder, expires_at = excluded.expires_at, outcome_event_id = excluded.outcome_event_id
   WHERE l.expires_at < now() OR l.holder = excluded.holder
      OR (SELECT true FROM events e WHERE e.event_id = l.outcome_event_id)
  RETURNING account_id
)
SELECT t.account_id, h.version, h.snapshot_version,
       CASE WHEN h.version = w.held_version THEN NULL ELSE h.snapshot END AS snapshot, s.event_id, s.secret
  FROM taken t
  JOIN wanted w ON w.account_id = t.account_id
  LEFT JOIN LATERAL (SELECT * FROM stream_heads WHERE stream_id = 'account-' || t.account_id::text LIMIT 1) h ON true
  LEFT JOIN LATERAL (SELECT event_id, secret FROM events
                      WHERE h.version <> w.held_version AND stream_id = h.stream_id AND secret IS NOT NULL
                      ORDER BY version DESC LIMIT 1) s ON true
"""

@dataclass(frozen=True)
class Lease:
    """A held lease and what was read under it: the head row (None if the account has no stream)."""

    account_id: uuid.UUID
    outcome_event_id: uuid.UUID
    head: asyncpg.Record | None


class RefreshLeases:
    def __init__(self, pool: asyncpg.Pool, holder: str, lease_seconds: float):
        self._pool = pool
        self.holder = holder
        self._seconds = float(lease_seconds)
        self._batches = Coalescer(self._send)

    async def take(self, account_id: uuid.UUID, outcome_event_id: uuid.UUID, held_version: int = -1) -> Lease | None:
        """The lease, with the head read under it; None when another holder has it. The head's
        snapshot and secret are left out when its version is `held_version`."""
        row = await self._batches.submit(("take", account_id), ("take", account_id, outcome_event_id, held_version))
        if row is None:
            return None
        return Lease(account_id, outcome_event_id, row if row["version"] is not None else None)

    async def release(self, lease: Lease) -> None:
        """For outcomes that appended nothing (the outcome event releases the others)."""
        await self._pool.execute(
            "DELETE FROM refresh_leases WHERE account_id = $1 AND holder = $2 AND outcome_event_id = $3",
            lease.account_id, self.holder, lease.outcome_event_id)

    async def schedule(self, account_id: uuid.UUID, due_at: datetime, attempt: int = 0) -> None:
        await self._batches.submit(("schedule", account_id), ("schedule", account_id, due_at, attempt))

    async def _send(self, items: list[tuple]) -> dict[tuple[str, uuid.UUID], Any]:
        takes = [item[1:] for item in items if item[0] == "take"]
        schedules = [item[1:] for item in items if item[0] == "schedule"]
        rows = await self._pool.fetch(
            _BOOKKEEPING, [t[0] for t in takes], [t[1] for t in takes], self.holder, self._seconds,
            [t[2] for t in takes], [s[0] for s in schedules], [s[1] for s in schedules], [s[2] for s in schedules])
        results: dict[tuple[str, uuid.UUID], Any] = {("take", row["account_id"]): row for row in rows}
        results.update({("schedule", s[0]): True for s in schedules})
        return results
