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
        # labels() takes a lock and validates the labels on every call; the children it returns
        # are stable, so each (method, route, status) looks them up once.
        self._children: dict[tuple[str, str, int], tuple] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        children = self._children.get((method, route, status))
        if children is None:
            children = (self.requests.labels(method, route, str(status)), self.latency.labels(method, route))
            self._children[(method, route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_middleware(metrics: Metrics):
    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            metrics.observe(request.method, resource.canonical if resource is not None else "unmatched", status,
                            time.perf_counter() - started)

    return middleware
