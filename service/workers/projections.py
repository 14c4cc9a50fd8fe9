"""The projection runner of one process (one for all projections: a single short transaction per
batch holds the snapshot horizon back least), woken by its own appends, with its lag in /metrics."""

import asyncio

import asyncpg
from prometheus_client import Gauge

from events.store import PostgresEventStore
from projections import PROJECTIONS
from projections.runner import ProjectionRunner
from service.gateway.metrics import Metrics


def start_projection_runners(pool: asyncpg.Pool, store: PostgresEventStore, metrics: Metrics
                             ) -> tuple[dict[str, ProjectionRunner], list[asyncio.Task]]:
    runner = ProjectionRunner(pool, list(PROJECTIONS.values()))
    runners = {name: runner for name in PROJECTIONS}
    lag = Gauge("linkledger_projection_lag_seconds", "Age of the newest event a projection applied when it "
                "applied it (0 when caught up)", ["projection"], registry=metrics.registry)
    applied = Gauge("linkledger_projection_events_applied", "Events applied by this process's runner",
                    ["projection"], registry=metrics.registry)
    store.on_append(runner.wake)
    for name in runners:
        lag.labels(name).set_function(lambda: runner.lag_seconds)
        applied.labels(name).set_function(lambda: runner.applied)
    return runners, [asyncio.create_task(runner.run())]
