"""Relay figures in /metrics: lag, published, duplicates, retries, whether this process is the active one."""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class RelayCollector:
    def __init__(self, stats):
        self._stats = stats

    def collect(self):
        s = self._stats
        yield CounterMetricFamily("linkledger_relay_published", "events JetStream acknowledged as new", value=s.published)
        yield CounterMetricFamily("linkledger_relay_duplicates", "publications JetStream acknowledged as duplicates",
                                  value=s.duplicates)
        yield CounterMetricFamily("linkledger_relay_retries", "publish attempts that timed out or failed",
                                  value=s.retries)
        yield GaugeMetricFamily("linkledger_relay_lag_events", "log positions handed out beyond the relay checkpoint",
                                value=s.lag_events)
        yield GaugeMetricFamily("linkledger_relay_lag_seconds", "age of the oldest event read but not yet acknowledged",
                                value=s.lag_seconds)
        yield GaugeMetricFamily("linkledger_relay_active", "1 when this process holds the relay lock",
                                value=1 if s.active else 0)
        yield GaugeMetricFamily("linkledger_relay_checkpoint_position", "log position of the relay checkpoint",
                                value=s.checkpoint.position)
