"""Every application key of the aiohttp app, typed, in one place."""

import asyncpg
from aiohttp import web

from events.relay import Relay
from service.gateway.metrics import Metrics
from service.handlers.previews import PreviewRunner
from service.handlers.tokens import Refresher
from service.handlers.uow import UnitOfWork
from service.workers.access_log import AccessRecorder
from service.natslink import NatsLink
from service.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
NATS = web.AppKey("nats", NatsLink)
UOW = web.AppKey("uow", UnitOfWork)
METRICS = web.AppKey("metrics", Metrics)
REFRESHER = web.AppKey("refresher", Refresher)
ACCESS_RECORDER = web.AppKey("access_recorder", AccessRecorder)
PROJECTION_RUNNERS = web.AppKey("projection_runners", dict)  # projection name -> ProjectionRunner
RELAY = web.AppKey("relay", Relay)
PREVIEWS = web.AppKey("previews", PreviewRunner)
