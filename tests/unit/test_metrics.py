"""The gateway's request metrics, as Prometheus scrapes them."""

from prometheus_client.parser import text_string_to_metric_families

from service.gateway.metrics import Metrics


def samples(metrics: Metrics) -> dict:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_requests_are_counted_and_latencies_bucketed_cumulatively():
    metrics = Metrics()
    route = "/v1/accounts/{id}/token"
    for seconds in (0.004, 0.005, 0.2, 20.0):
        metrics.observe("GET", route, 200, seconds)
    metrics.observe("GET", route, 404, 0.001)
    seen = samples(metrics)
    labels = (("method", "GET"), ("route", route))
    assert seen[("linkledger_http_requests_total", labels + (("status", "200"),))] == 4
    assert seen[("linkledger_http_requests_total", labels + (("status", "404"),))] == 1
    bucket = lambda le: seen[("linkledger_http_request_seconds_bucket", (("le", le),) + labels)]
    assert (bucket("0.005"), bucket("0.25"), bucket("10.0"), bucket("+Inf")) == (3, 4, 4, 5)
    assert seen[("linkledger_http_request_seconds_count", labels)] == 5
    assert abs(seen[("linkledger_http_request_seconds_sum", labels)] - 20.21) < 1e-9
