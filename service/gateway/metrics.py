"""Prometheus metrics of one gateway process (its own registry, so tests can run several apps)."""

import bisect
import itertools

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class HttpMetrics:
    """Request counts and latencies, kept as plain numbers and turned into metric families when
    scraped. prometheus_client's own Counter and Histogram take a lock and check their labels on
    every observation, a noticeable share of a token read; requests are all handled on the event
    loop's one thread, which is also the one that scrapes."""

    def __init__(self, buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS):
        self._bounds = tuple(b for b in buckets if b != float("inf"))
        self._requests: dict[tuple[str, str, str], int] = {}
        self._latency: dict[tuple[str, str], tuple[list[int], list[float]]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        self._requests[key] = self._requests.get(key, 0) + 1
        histogram = self._latency.get((method, route))
        if histogram is None:
            histogram = self._latency[(method, route)] = ([0] * (len(self._bounds) + 1), [0.0])
        histogram[0][bisect.bisect_left(self._bounds, seconds)] += 1  # the first bucket whose bound >= seconds
        histogram[1][0] += seconds

    def collect(self):
        requests = CounterMetricFamily("linkledger_http_requests", "HTTP requests", labels=["method", "route", "status"])
        for labels, count in self._requests.items():
            requests.add_metric(list(labels), count)
        yield requests
        latency = HistogramMetricFamily("linkledger_http_request_seconds", "HTTP request latency",
                                        labels=["method", "route"])
        for labels, (counts, total) in self._latency.items():
            cumulative = list(itertools.accumulate(counts))
            buckets = [(floatToGoString(bound), cumulative[i]) for i, bound in enumerate(self._bounds)]
            latency.add_metric(list(labels), buckets + [("+Inf", cumulative[-1])], total[0])
        yield latency


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = HttpMetrics()
        self.registry.register(self.http)
        self.import_records = Counter("linkledger_import_records_total", "Imported records by outcome", ["outcome"],
                                      registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http.observe(method, route, status, seconds)

    def watch_relay(self, stats) -> None:
        """Relay figures, read from its RelayStats at each scrape."""
        from service.gateway.relay_metrics import RelayCollector

        self.registry.register(RelayCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)
