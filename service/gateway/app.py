"""The aiohttp application: resources as cleanup contexts, thin routes, one middleware (metrics, auth, errors)."""

import asyncio
import logging

import aiohttp
from aiohttp import web

from events.database import create_pool
from service.bootstrap import bootstrap, load_fingerprinter, load_keyring
from service.clock import clock_from_settings
from service.gateway import (
    routes_accounts,
    routes_audit,
    routes_health,
    routes_integrations,
    routes_ledger,
    routes_meta,
    routes_overrides,
    routes_webhooks,
)
from service.gateway.keys import (
    ACCESS_RECORDER,
    METRICS,
    NATS,
    POOL,
    PREVIEWS,
    PROJECTION_RUNNERS,
    REFRESHER,
    RELAY,
    SETTINGS,
    UOW,
)
from service.handlers.import_workers import ImportWorkers
from service.handlers.previews import PreviewRunner
from service.handlers.tokens import Refresher
from service.oauth.client import OAuthClient
from service.workers.access_log import AccessRecorder, run_access_flusher
from service.workers.refresher import run_refresh_worker
from service.gateway.metrics import Metrics
from service.gateway.middleware import gateway_middleware
from service.natslink import NatsLink
from service.settings import Settings
from service.workers.digest import run_digest_worker
from service.workers.projections import start_projection_runners

log = logging.getLogger("linkledger")


async def _postgres(app: web.Application):
    settings = app[SETTINGS]
    pool = await create_pool(settings.database_url, role=settings.database_role or None, max_size=settings.pool_size)
    app[POOL] = pool
    uow = bootstrap(settings, pool, clock=clock_from_settings(settings))
    app[UOW] = uow
    yield
    await pool.close()


async def _nats(app: web.Application):
    link = NatsLink(app[SETTINGS].nats_url)
    await link.start()
    app[NATS] = link
    yield
    await link.close()


async def _refresher(app: web.Application):
    session = aiohttp.ClientSession(headers={"User-Agent": "linkledger"})
    app[REFRESHER] = Refresher(app[UOW], OAuthClient(session, timeout=app[SETTINGS].oauth_timeout_seconds,
                                                     clock=app[UOW].clock))
    yield
    # Refreshes in flight finish before the session and pool close: a rotated token must land.
    await app[REFRESHER].drain(timeout=app[SETTINGS].oauth_timeout_seconds + 10)
    await session.close()


async def _refresh_worker(app: web.Application):
    task = asyncio.create_task(run_refresh_worker(app[REFRESHER])) if app[SETTINGS].refresh_worker else None
    yield
    if task:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _access_log(app: web.Application):
    recorder = AccessRecorder(app[UOW])
    app[ACCESS_RECORDER] = recorder
    task = asyncio.create_task(run_access_flusher(recorder))
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _relay(app: web.Application):
    """Publication to NATS JetStream: the relay (active in one process across replicas), woken by
    this process's appends and, through NOTIFY, by other processes' appends."""
    from service.workers.relay import AppendNotifier, make_relay, relay_pool

    settings = app[SETTINGS]
    store = app[UOW].store
    relay, pool = None, None
    if settings.relay:
        pool = await relay_pool(settings)
        relay = make_relay(settings, pool, app[NATS].wait_connected)
    notifier = AppendNotifier(app[POOL], needless=lambda: relay is not None and relay.stats.active)
    store.on_append(notifier.appended)
    tasks = [asyncio.create_task(notifier.run())]
    if relay is not None:
        store.on_append(relay.wake)
        app[METRICS].watch_relay(relay.stats)
        app[RELAY] = relay
        tasks.append(asyncio.create_task(relay.run()))
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if pool is not None:
        await pool.close()


async def _webhook_dispatcher(app: web.Application):
    from service.workers.webhooks import WebhookDispatcher

    settings = app[SETTINGS]
    task = None
    if settings.webhook_dispatcher:
        dispatcher = WebhookDispatcher(app[POOL], load_keyring(settings), app[NATS].wait_connected,
                                       stream=settings.nats_stream, prefix=settings.nats_subject_prefix,
                                       store=app[UOW].store, clock=app[UOW].clock)
        task = asyncio.create_task(dispatcher.run())
    yield
    if task:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _previews(app: web.Application):
    runner = PreviewRunner(app[SETTINGS].preview_concurrency)
    await runner.start()
    app[PREVIEWS] = runner
    yield
    runner.close()


async def _import_workers(app: web.Application):
    settings, uow = app[SETTINGS], app[UOW]
    workers = None
    if settings.import_workers:
        workers = ImportWorkers(uow.data_keys.keyring, uow.fingerprinter, settings.import_workers)
        await workers.start()
    uow.shared.import_workers = workers
    yield
    uow.shared.import_workers = None
    if workers:
        await workers.close()


async def _digest_worker(app: web.Application):
    settings = app[SETTINGS]
    task = None
    if settings.ledger_signing_key and settings.digest_interval_seconds > 0:
        task = asyncio.create_task(run_digest_worker(app[POOL], app[NATS], settings))
    yield
    if task:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _projection_runners(app: web.Application):
    runners, tasks = start_projection_runners(app[POOL], app[UOW].store, app[METRICS])
    app[PROJECTION_RUNNERS] = runners
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def create_app(settings: Settings) -> web.Application:
    # Refuse to start without what the handlers need, before anything is opened.
    load_keyring(settings)
    load_fingerprinter(settings)
    metrics = Metrics()
    app = web.Application(middlewares=[gateway_middleware(metrics)], client_max_size=64 * 1024 * 1024)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app.cleanup_ctx.extend([_postgres, _nats, _refresher, _refresh_worker, _access_log, _previews, _import_workers, _relay,
                            _webhook_dispatcher, _digest_worker, _projection_runners])
    for module in (routes_health, routes_meta, routes_integrations, routes_accounts, routes_overrides, routes_audit,
                   routes_ledger, routes_webhooks):
        app.add_routes(module.routes)
    return app
