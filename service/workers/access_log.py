"""Token reads are audited without an append on the hot path: each read is counted in memory per
(API key, account, time bucket), and a flusher appends one CredentialsAccessed event per group
every few seconds, paced so that a closed bucket's tallies go out over the next bucket's time. A
crash loses at most the reads of the last two buckets from the audit trail (the reads themselves
changed nothing)."""

import asyncio
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service.domain import account as account_domain
from service.domain.account import AccountState
from service.domain.commands import RecordCredentialsAccess
from service.domain.errors import DomainError
from service.domain.identity import account_stream
from service.handlers.accounts import AccountNotFound, load_existing_account
from service.handlers.commit import decide_and_append
from service.handlers.uow import UnitOfWork

log = logging.getLogger("linkledger.access")

PACED_MINIMUM = 64  # tallies a paced flush writes at least, so small backlogs go at once
# Failures that mean the append was not committed (PostgreSQL refused a statement or the
# connection, or none was had in time): those tallies are kept and written by a later flush. A
# lost connection could have lost a commit's answer rather than the commit: those are dropped.
_NOT_WRITTEN = (asyncpg.PostgresError, asyncio.TimeoutError)


# The current snapshots of several accounts' heads, a probe per head (see the note on lookups in
# events.store).
_SNAPSHOTS = (
    "SELECT h.snapshot FROM unnest($1::text[]) AS k(stream_id) CROSS JOIN LATERAL (SELECT snapshot"
    " FROM stream_heads WHERE stream_id = k.stream_id AND snapshot_version = version LIMIT 1) AS h"
)


@dataclass
class _Tally:
    count: int
    first_at: datetime
    last_at: datetime


class AccessRecorder:
    def __init__(self, uow: UnitOfWork, bucket_seconds: int = 60):
        self._uow = uow.acting_as("system:access-log")
        self._bucket = bucket_seconds
        self._tallies: dict[tuple[str, uuid.UUID, int], _Tally] = {}

    def record(self, key_id: str, account_id: uuid.UUID, at: datetime) -> None:
        bucket = int(at.timestamp()) // self._bucket
        tally = self._tallies.get((key_id, account_id, bucket))
        if tally is None:
            self._tallies[(key_id, account_id, bucket)] = _Tally(1, at, at)
        else:
            tally.count += 1
            tally.last_at = max(tally.last_at, at)

    @property
    def pending(self) -> int:
        return len(self._tallies)

    async def flush(self, *, everything: bool = False, paced_over: float | None = None) -> int:
        """Append the tallies of closed buckets (all of them with everything=True, at shutdown), so
        each key, account and bucket gets one event; returns how many events were written.

        paced_over: the seconds until the next flush. Then only the oldest share of the closed
        tallies is written, so that a bucket's tallies go out over the next bucket's time rather
        than in one burst when it closes (a burst of thousands of appends would hold token reads up)."""
        if everything:
            tallies, self._tallies = self._tallies, {}
        else:
            current = int(self._uow.clock().timestamp()) // self._bucket
            closed = sorted((k for k in self._tallies if k[2] < current), key=lambda k: k[2])
            if paced_over is not None:
                closed = closed[:max(PACED_MINIMUM, math.ceil(len(closed) * paced_over / self._bucket))]
            tallies = {k: self._tallies.pop(k) for k in closed}
        try:
            states = await self._load_states({account_id for _, account_id, _ in tallies})
        except BaseException:
            self._keep(tallies)
            raise
        # Appends of different streams are group-committed by the store (one statement per batch,
        # two at most in flight), so this takes few connections whatever the concurrency.
        gate = asyncio.Semaphore(64)

        async def bounded(key, account_id, tally):
            async with gate:
                return await self._append(key, account_id, tally, states.get(account_id))

        results = await asyncio.gather(*(bounded(key, account_id, tally)
                                         for (key, account_id, _), tally in tallies.items()), return_exceptions=True)
        written = 0
        unwritten = {}
        for (key, account_id, bucket), result in zip(tallies, results):
            if result is True:
                written += 1
            elif isinstance(result, _NOT_WRITTEN):
                unwritten[(key, account_id, bucket)] = tallies[(key, account_id, bucket)]
            elif isinstance(result, BaseException):
                log.warning("could not record %s token reads of %s: %s", tallies[(key, account_id, bucket)].count,
                            account_id, type(result).__name__)
        if unwritten:
            log.warning("could not record the token reads of %s accounts yet (%s); kept for the next flush",
                        len({account_id for _, account_id, _ in unwritten}),
                        ", ".join(sorted({type(r).__name__ for r in results if isinstance(r, _NOT_WRITTEN)})))
            self._keep(unwritten)
        return written

    def _keep(self, tallies: dict[tuple[str, uuid.UUID, int], _Tally]) -> None:
        """Put tallies that were not written back, merged with any counted meanwhile."""
        for group, tally in tallies.items():
            held = self._tallies.get(group)
            if held is None:
                self._tallies[group] = tally
            else:
                held.count += tally.count
                held.first_at = min(held.first_at, tally.first_at)
                held.last_at = max(held.last_at, tally.last_at)

    async def _load_states(self, account_ids: set[uuid.UUID]) -> dict[uuid.UUID, AccountState]:
        """The accounts' states from their head snapshots, in one query (those whose snapshot is
        behind are left out: their append loads them the ordinary way)."""
        if not account_ids:
            return {}
        rows = await self._uow.pool.fetch(_SNAPSHOTS, [account_stream(account_id) for account_id in account_ids])
        states = (AccountState.model_validate_json(row["snapshot"]) for row in rows)
        return {state.account_id: state for state in states}

    async def _append(self, key_id: str, account_id: uuid.UUID, tally: _Tally, state: AccountState | None) -> bool:
        """One key's reads of one account in one bucket. Several keys' tallies of one account meet
        a version conflict after the first: decide_and_append then loads and decides again."""
        uow = self._uow
        command = RecordCredentialsAccess(account_id=account_id, accessor=key_id, count=tally.count,
                                          first_at=tally.first_at, last_at=tally.last_at)
        try:
            _, events = await decide_and_append(
                uow, account_stream(account_id), load=lambda: load_existing_account(uow, account_id),
                decide=lambda state, now: account_domain.decide(state, command, now), evolve=account_domain.evolve,
                initial=state,
            )
        except (AccountNotFound, DomainError):
            return False  # deleted meanwhile: nothing to attach the reads to
        return bool(events)


async def run_access_flusher(recorder: AccessRecorder, interval: float = 5.0, *, final_attempts: int = 3) -> None:
    try:
        while True:
            await asyncio.sleep(interval)
            if recorder.pending:
                try:
                    await recorder.flush(paced_over=interval)
                except Exception as exc:  # e.g. no connection to be had: the tallies were kept, try again later
                    log.warning("access log flush failed: %s; retrying at the next flush", type(exc).__name__)
    finally:
        # On shutdown: write what was counted, a few times over if the database refuses for a moment.
        for attempt in range(final_attempts):
            if not recorder.pending:
                break
            if attempt:
                await asyncio.shield(asyncio.sleep(1.0))
            try:
                await asyncio.shield(recorder.flush(everything=True))
            except Exception as exc:
                log.warning("access log flush at shutdown failed: %s", type(exc).__name__)
        if recorder.pending:
            log.error("%s tallies of token reads could not be recorded at shutdown", recorder.pending)
