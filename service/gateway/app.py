"""The aiohttp application: resources as cleanup contexts, thin routes, one error middleware."""

import asyncio
import logging

from aiohttp import web

from events.database import create_pool
from events.store import PostgresEventStore
from service.gateway import routes_health
from service.gateway.errors import problem_middleware
from service.gateway.keys import EVENT_STORE, NATS, POOL, SETTINGS
from service.natslink import NatsLink
from service.settings import Settings
from service.workers.digest import run_digest_worker

log = logging.getLogger("linkledger")


async def _postgres(app: web.Application):
    settings = app[SETTINGS]
    pool = await create_pool(settings.database_url, role=settings.database_role or None, max_size=settings.pool_size)
    app[POOL] = pool
    app[EVENT_STORE] = PostgresEventStore(pool)
    yield
    await pool.close()


async def _nats(app: web.Application):
    link = NatsLink(app[SETTINGS].nats_url)
    await link.start()
    app[NATS] = link
    yield
    await link.close()


async def _digest_worker(app: web.Application):
    settings = app[SETTINGS]
    task = None
    if settings.ledger_signing_key and settings.digest_interval_seconds > 0:
        task = asyncio.create_task(run_digest_worker(app[POOL], app[NATS], settings))
    yield
    if task:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[problem_middleware])
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([_postgres, _nats, _digest_worker])
    app.add_routes(routes_health.routes)
    return app
