"""Every application key of the aiohttp app, typed, in one place."""

import asyncpg
from aiohttp import web

from events.store import PostgresEventStore
from service.natslink import NatsLink
from service.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
NATS = web.AppKey("nats", NatsLink)
EVENT_STORE = web.AppKey("event_store", PostgresEventStore)
