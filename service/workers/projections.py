"""The projection runners of one process, woken by its own appends, with their lag in /metrics."""

import asyncio

import asyncpg
from prometheus_client import Gauge

from events.store import PostgresEventStore
from projections import PROJECTIONS
from projections.runner import ProjectionRunner
from service.gateway.metrics import Metrics


def start_projection_runners(pool: asyncpg.Pool, store: PostgresEventStore, metrics: Metrics
                             ) -> tuple[dict[str, ProjectionRunner], list[asyncio.Task]]:
    runners = {name: ProjectionRunner(pool, projection) for name, projection in PROJECTIONS.items()}
    lag = Gauge("linkledger_projection_lag_seconds", "Age of the newest event a projection applied when it "
                "applied it (0 when caught up)", ["projection"], registry=metrics.registry)
    applied = Gauge("linkledger_projection_events_applied", "Events applied by this process's runner",
                    ["projection"], registry=metrics.registry)
    for name, runner in runners.items():
        store.on_append(runner.wake)
        lag.labels(name).set_function(lambda runner=runner: runner.lag_seconds)
        applied.labels(name).set_function(lambda runner=runner: runner.applied)
    return runners, [asyncio.create_task(runner.run()) for runner in runners.values()]
