"""Signs a ledger digest periodically and publishes it on NATS."""

import asyncio
import logging

import asyncpg

from events.integrity import create_digest, load_signing_key
from events.publish import publish_digest
from service.natslink import NatsLink
from service.settings import Settings

log = logging.getLogger("linkledger.digest")


async def run_digest_worker(pool: asyncpg.Pool, link: NatsLink, settings: Settings) -> None:
    key = load_signing_key(settings.ledger_signing_key)
    while True:
        await asyncio.sleep(settings.digest_interval_seconds)
        try:
            async with pool.acquire() as conn:
                digest = await create_digest(conn, key)
            log.info("ledger digest %s signed over %s streams", digest.digest_id, digest.stream_count)
            if link.is_connected:
                await publish_digest(link.client, digest)
            else:
                log.warning("NATS unavailable: digest %s stored, not published", digest.digest_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ledger digest failed; retrying next interval")
