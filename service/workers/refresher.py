"""The proactive refresh worker: claims due accounts with FOR UPDATE SKIP LOCKED, so any number of
worker processes share the work without refreshing an account twice, and refreshes them."""

import asyncio
import logging
from datetime import timedelta

from service.handlers.accounts import AccountNotFound, load_existing_account
from service.domain.integration import health_check_at_first_use
from service.handlers.repositories import load_integration
from service.handlers.tokens import PROACTIVE_MARGIN, NotRefreshable, RefreshInProgress, Refresher
from service.oauth.errors import OAuthError

log = logging.getLogger("linkledger.refresher")

# A claimed row is pushed this far ahead, so other workers skip it while it is being refreshed;
# the refresh's outcome then sets the real next due time.
CLAIM_SECONDS = 120
PRUNE_SECONDS = 300  # real seconds
FIRST_USE_RECHECK_SECONDS = 3600


# One statement: the due rows are locked (skipping those another worker holds), pushed ahead and
# returned with the account's status from its head snapshot, so no account needs loading to know
# whether it awaits its health check.
_CLAIM = """
WITH due AS (
  SELECT account_id FROM refresh_schedule WHERE due_at <= $1 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED
), claimed AS (
  UPDATE refresh_schedule s SET due_at = $3 WHERE s.account_id = ANY(ARRAY(SELECT account_id FROM due))
  RETURNING s.account_id
)
SELECT c.account_id, h.version,
       CASE WHEN h.snapshot_version = h.version THEN h.snapshot->>'status' END AS status
  FROM claimed c
  LEFT JOIN LATERAL (SELECT * FROM stream_heads WHERE stream_id = 'account-' || c.account_id::text LIMIT 1) h ON true
"""


async def claim_due(refresher: Refresher, limit: int) -> list[tuple]:
    """(account id, exists, status) of the accounts due now, claimed for CLAIM_SECONDS; the status
    is None when the head snapshot is behind."""
    now = refresher.uow.clock()
    rows = await refresher.uow.pool.fetch(_CLAIM, now, limit, now + timedelta(seconds=CLAIM_SECONDS))
    return [(r["account_id"], r["version"] is not None, r["status"]) for r in rows]


async def check_at_import(refresher: Refresher, account_id) -> None:
    """A connecting account's health check, unless its integration runs it at first use: then the
    account is left untouched (its tokens too) and looked at again in FIRST_USE_RECHECK_SECONDS, in
    case the setting changes."""
    state = await load_existing_account(refresher.uow, account_id)
    integration = await load_integration(refresher.uow.store, state.environment, state.integration)
    if health_check_at_first_use(integration):
        await set_due(refresher, account_id, refresher.uow.clock() + timedelta(seconds=FIRST_USE_RECHECK_SECONDS))
        return
    await refresher.validate(account_id)


async def set_due(refresher: Refresher, account_id, due_at) -> None:
    await refresher.uow.pool.execute("UPDATE refresh_schedule SET due_at = $2 WHERE account_id = $1", account_id, due_at)


async def refresh_due_once(refresher: Refresher, *, limit: int = 100, concurrency: int = 16) -> int:
    """Claim and refresh what is due now; returns how many were claimed."""
    claimed = await claim_due(refresher, limit)
    gate = asyncio.Semaphore(concurrency)

    async def one(account_id, exists, status) -> None:
        async with gate:
            try:
                if not exists:
                    raise AccountNotFound(f"account {account_id} does not exist")
                if status is None:
                    status = (await load_existing_account(refresher.uow, account_id)).status
                if status == "connecting":
                    await check_at_import(refresher, account_id)
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

    await asyncio.gather(*(one(*c) for c in claimed))
    return len(claimed)


async def prune_leases(refresher: Refresher) -> int:
    """Drop lease rows that expired a while ago (held or released, they bind no one any more)."""
    status = await refresher.uow.pool.execute(
        "DELETE FROM refresh_leases WHERE expires_at < now() - make_interval(secs => $1)", float(PRUNE_SECONDS))
    return int(status.split()[-1])


async def run_refresh_worker(refresher: Refresher, *, idle_seconds: float = 1.0) -> None:
    loop = asyncio.get_running_loop()
    next_prune = loop.time() + PRUNE_SECONDS
    while True:
        try:
            if loop.time() >= next_prune:
                next_prune = loop.time() + PRUNE_SECONDS
                await prune_leases(refresher)
            claimed = await refresh_due_once(refresher)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("refresh worker round failed; retrying")
            claimed = 0
        if not claimed:
            await asyncio.sleep(idle_seconds)
