"""Running the relay (events/relay.py) in linkledger: in `serve` beside the gateway, or alone
(`linkledger relay`); and the catalog as subscribers see it (`linkledger events catalog`)."""

import asyncio
import logging
import signal

import nats

from events.catalog import schemas
from events.database import create_pool
from events.publish import SUBJECT_PREFIX
from events.relay import CLOUDEVENTS_TYPE_PREFIX, RELAY_ROLE, AppendNotifier, Relay
from service.settings import Settings

log = logging.getLogger("linkledger.relay")

SUBJECTS = {
    "account": "{prefix}.<environment>.<integration>.{type}",
    "integration": "{prefix}.<environment>._integration.<integration>.{type}",
    "environment": "{prefix}.<environment>._environment.{type}",
}


def catalog_with_subjects(prefix: str = SUBJECT_PREFIX) -> list[dict]:
    out = []
    for entry in schemas():
        pattern = SUBJECTS.get(entry["family"], "{prefix}._other.{type}")
        out.append({
            **entry,
            "subject": pattern.format(prefix=prefix, type=entry["type"]),
            "cloudevents_type": f"{CLOUDEVENTS_TYPE_PREFIX}{entry['type']}.v{entry['schema_version']}",
        })
    return out


async def relay_pool(settings: Settings, max_size: int = 4):
    """The relay's own connections, acting as the role that cannot read the secret column."""
    return await create_pool(settings.database_url, role=RELAY_ROLE if settings.database_role else None,
                             min_size=1, max_size=max_size)


def make_relay(settings: Settings, pool, nats_client, **overrides) -> Relay:
    return Relay(pool, nats_client, stream=overrides.pop("stream", None) or settings.nats_stream,
                 prefix=overrides.pop("prefix", None) or settings.nats_subject_prefix, **overrides)


async def run_standalone_relay(settings: Settings, *, stream: str | None = None, prefix: str | None = None,
                               name: str = "default") -> None:
    pool = await relay_pool(settings)
    nc = None

    async def error(exc):
        log.debug("NATS: %s", type(exc).__name__)

    async def client():
        nonlocal nc
        while nc is None:
            try:
                nc = await nats.connect(settings.nats_url, name="linkledger-relay", allow_reconnect=True,
                                        max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2,
                                        error_cb=error)
            except Exception as exc:  # noqa: BLE001 - NATS not up yet: keep trying
                log.warning("NATS not reachable yet (%s)", type(exc).__name__)
                await asyncio.sleep(1)
        return nc

    relay = make_relay(settings, pool, client, stream=stream, prefix=prefix, name=name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(relay.run())
    try:
        await stop.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if nc is not None:
            await nc.close()
        await pool.close()


__all__ = ["AppendNotifier", "catalog_with_subjects", "make_relay", "relay_pool", "run_standalone_relay"]
