"""Token reads are audited without an append on the hot path: each read is counted in memory per
(API key, account, time bucket), and a flusher appends one CredentialsAccessed event per group
every few seconds. A crash loses at most the reads of the last interval from the audit trail (the
reads themselves changed nothing)."""

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.domain import account as account_domain
from service.domain.commands import RecordCredentialsAccess
from service.domain.errors import DomainError
from service.domain.identity import account_stream
from service.handlers.accounts import AccountNotFound, load_existing_account
from service.handlers.commit import decide_and_append
from service.handlers.uow import UnitOfWork

log = logging.getLogger("linkledger.access")


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

    async def flush(self, *, everything: bool = False) -> int:
        """Append the tallies of closed buckets (all of them with everything=True, at shutdown), so
        each key, account and bucket gets one event; returns how many events were written."""
        if everything:
            tallies, self._tallies = self._tallies, {}
        else:
            current = int(self._uow.clock().timestamp()) // self._bucket
            tallies = {k: v for k, v in self._tallies.items() if k[2] < current}
            for key in tallies:
                del self._tallies[key]
        gate = asyncio.Semaphore(4)  # a few connections at most: token reads must not queue behind the audit

        async def bounded(key, account_id, tally):
            async with gate:
                return await self._append(key, account_id, tally)

        results = await asyncio.gather(*(bounded(key, account_id, tally)
                                         for (key, account_id, _), tally in tallies.items()), return_exceptions=True)
        written = 0
        for (key, account_id, bucket), result in zip(tallies, results):
            if result is True:
                written += 1
            elif isinstance(result, Exception):
                log.warning("could not record %s token reads of %s: %s", tallies[(key, account_id, bucket)].count,
                            account_id, type(result).__name__)
        return written

    async def _append(self, key_id: str, account_id: uuid.UUID, tally: _Tally) -> bool:
        uow = self._uow
        command = RecordCredentialsAccess(account_id=account_id, accessor=key_id, count=tally.count,
                                          first_at=tally.first_at, last_at=tally.last_at)
        try:
            _, events = await decide_and_append(
                uow, account_stream(account_id), load=lambda: load_existing_account(uow, account_id),
                decide=lambda state, now: account_domain.decide(state, command, now), evolve=account_domain.evolve,
            )
        except (AccountNotFound, DomainError):
            return False  # deleted meanwhile: nothing to attach the reads to
        return bool(events)


async def run_access_flusher(recorder: AccessRecorder, interval: float = 5.0) -> None:
    try:
        while True:
            await asyncio.sleep(interval)
            if recorder.pending:
                await recorder.flush()
    finally:
        if recorder.pending:  # on shutdown: write what was counted
            await asyncio.shield(recorder.flush(everything=True))
