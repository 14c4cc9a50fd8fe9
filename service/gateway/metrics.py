"""Prometheus metrics of one gateway process (its own registry, so tests can run several apps)."""

import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("linkledger_http_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("linkledger_http_request_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry)
        self.import_records = Counter("linkledger_import_records_total", "Imported records by outcome", ["outcome"],
                                      registry=self.registry)

    def watch_relay(self, stats) -> None:
        """Relay figures, read from its RelayStats at each scrape."""
        from service.gateway.relay_metrics import RelayCollector

        self.registry.register(RelayCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_middleware(metrics: Metrics):
    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.requests.labels(request.method, route, str(status)).inc()
            metrics.latency.labels(request.method, route).observe(time.perf_counter() - started)

    return middleware
