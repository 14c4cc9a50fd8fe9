"""The proactive refresh worker: claims due accounts with FOR UPDATE SKIP LOCKED, so any number of
worker processes share the work without refreshing an account twice, and refreshes them."""

import asyncio
import logging
from datetime import timedelta

from service.handlers.accounts import AccountNotFound, load_existing_account
from service.handlers.tokens import PROACTIVE_MARGIN, NotRefreshable, RefreshInProgress, Refresher, validate
from service.oauth.errors import OAuthError

log = logging.getLogger("linkledger.refresher")

# A claimed row is pushed this far ahead, so other workers skip it while it is being refreshed;
# the refresh's outcome then sets the real next due time.
CLAIM_SECONDS = 120


async def claim_due(refresher: Refresher, limit: int) -> list:
    now = refresher.uow.clock()
    async with refresher.uow.pool.acquire() as conn:
        async with conn.transaction():
            rows = await conn.fetch(
                "SELECT account_id FROM refresh_schedule WHERE due_at <= $1 ORDER BY due_at LIMIT $2"
                " FOR UPDATE SKIP LOCKED", now, limit)
            ids = [r["account_id"] for r in rows]
            if ids:
                await conn.execute("UPDATE refresh_schedule SET due_at = $1 WHERE account_id = ANY($2::uuid[])",
                                   now + timedelta(seconds=CLAIM_SECONDS), ids)
    return ids


async def refresh_due_once(refresher: Refresher, *, limit: int = 100, concurrency: int = 16) -> int:
    """Claim and refresh what is due now; returns how many were claimed."""
    ids = await claim_due(refresher, limit)
    gate = asyncio.Semaphore(concurrency)

    async def one(account_id) -> None:
        async with gate:
            try:
                state = await load_existing_account(refresher.uow, account_id)
                if state.status == "connecting":
                    await validate(refresher, account_id)
                else:
                    await refresher.refresh(account_id, if_expiring_within=PROACTIVE_MARGIN)
            except RefreshInProgress:
                pass  # an on-demand refresh elsewhere has it
            except OAuthError:
                pass  # a provider hiccup during a health check: claimed rows come back due later
            except (NotRefreshable, AccountNotFound):
                await refresher.uow.pool.execute("DELETE FROM refresh_schedule WHERE account_id = $1", account_id)
            except Exception:
                log.exception("proactive refresh of %s failed unexpectedly; it stays scheduled", account_id)

    await asyncio.gather(*(one(i) for i in ids))
    return len(ids)


async def run_refresh_worker(refresher: Refresher, *, idle_seconds: float = 1.0) -> None:
    while True:
        try:
            claimed = await refresh_due_once(refresher)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("refresh worker round failed; retrying")
            claimed = 0
        if not claimed:
            await asyncio.sleep(idle_seconds)
