"""``lakehouse metrics serve``: the health snapshot as Prometheus metrics on ``/metrics``.

Values are read from the lake's tables at scrape time (cached for ``cache_s``, so a dashboard
refreshing every few seconds costs one read). Every metric name is listed in ``METRICS`` — the
Grafana dashboard and the docs are checked against it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pipelines.config import AlertSettings
from pipelines.monitoring.alerts import evaluate
from pipelines.monitoring.health import Health

# name -> (type, help, labels). Counters are exposed with a "_total" suffix.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "lakehouse_query_input_rows_per_second": (
        "gauge",
        "Input rate of the last micro-batch.",
        ("query",),
    ),
    "lakehouse_query_processed_rows_per_second": (
        "gauge",
        "Processing rate of the last micro-batch.",
        ("query",),
    ),
    "lakehouse_query_batch_duration_seconds": (
        "gauge",
        "Duration of the last micro-batch.",
        ("query",),
    ),
    "lakehouse_query_input_rows": ("gauge", "Rows in the last micro-batch.", ("query",)),
    "lakehouse_query_backlog": (
        "gauge",
        "Records (or versions) available but not yet read.",
        ("query",),
    ),
    "lakehouse_query_seconds_since_progress": (
        "gauge",
        "Seconds since the query's last progress.",
        ("query",),
    ),
    "lakehouse_query_state_rows": ("gauge", "Rows held in the query's state stores.", ("query",)),
    "lakehouse_query_batches": ("counter", "Micro-batches recorded.", ("query",)),
    "lakehouse_table_rows": ("gauge", "Rows in the table's latest version.", ("table",)),
    "lakehouse_table_version": ("gauge", "The table's latest Delta version.", ("table",)),
    "lakehouse_table_freshness_seconds": (
        "gauge",
        "Last commit time minus newest event time.",
        ("table",),
    ),
    "lakehouse_table_seconds_since_commit": (
        "gauge",
        "Seconds since the table's last commit.",
        ("table",),
    ),
    "lakehouse_hop_latency_seconds": (
        "gauge",
        "Per-hop latency of recent silver rows.",
        ("hop", "quantile"),
    ),
    "lakehouse_quarantine_rate": ("gauge", "Quarantined share of input over recent batches.", ()),
    "lakehouse_quarantined_rows": (
        "counter",
        "Quarantined rows by rule (a row can break several).",
        ("rule",),
    ),
    "lakehouse_gate_input_rows": ("counter", "Rows the silver gate has seen.", ()),
    "lakehouse_suite_failures_24h": ("gauge", "Failed Great Expectations suite runs in 24 h.", ()),
    "lakehouse_feature_drift_psi": ("gauge", "Latest PSI per drift feature.", ("feature",)),
    "lakehouse_alerts_firing": (
        "gauge",
        "1 per alert rule and subject that fires now.",
        ("rule", "subject"),
    ),
    "lakehouse_health_scrape_seconds": ("gauge", "Time to compute the health snapshot.", ()),
}


class HealthCollector(Collector):
    """A Prometheus collector over ``collect_health`` (cached)."""

    def __init__(
        self,
        snapshot: Callable[[], Health],
        thresholds: AlertSettings,
        cache_s: float = 5.0,
    ) -> None:
        self._snapshot = snapshot
        self._thresholds = thresholds
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, Health, float] | None = None

    def health(self) -> tuple[Health, float]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self._cache_s:
                started = time.perf_counter()
                health = self._snapshot()
                self._cached = (now, health, time.perf_counter() - started)
            return self._cached[1], self._cached[2]

    def collect(self) -> Iterator[Any]:
        health, took = self.health()
        families = {name: _family(name) for name in METRICS}
        for q in health.queries:
            families["lakehouse_query_input_rows_per_second"].add_metric(
                [q.name], q.input_rows_per_s or 0.0
            )
            families["lakehouse_query_processed_rows_per_second"].add_metric(
                [q.name], q.processed_rows_per_s or 0.0
            )
            families["lakehouse_query_batch_duration_seconds"].add_metric(
                [q.name], q.batch_duration_ms / 1000
            )
            families["lakehouse_query_input_rows"].add_metric([q.name], q.input_rows)
            if q.backlog is not None:
                families["lakehouse_query_backlog"].add_metric([q.name], q.backlog)
            families["lakehouse_query_seconds_since_progress"].add_metric(
                [q.name], q.seconds_since_progress
            )
            families["lakehouse_query_state_rows"].add_metric([q.name], q.state_rows)
            families["lakehouse_query_batches"].add_metric([q.name], q.batches)
        for t in health.tables:
            families["lakehouse_table_rows"].add_metric([t.name], t.rows)
            families["lakehouse_table_version"].add_metric([t.name], t.version)
            if t.freshness_s is not None:
                families["lakehouse_table_freshness_seconds"].add_metric([t.name], t.freshness_s)
            if t.seconds_since_commit is not None:
                families["lakehouse_table_seconds_since_commit"].add_metric(
                    [t.name], t.seconds_since_commit
                )
        for hop, stats in health.hops.items():
            families["lakehouse_hop_latency_seconds"].add_metric([hop, "0.5"], stats["p50_s"])
            families["lakehouse_hop_latency_seconds"].add_metric([hop, "0.95"], stats["p95_s"])
        quarantine = health.quarantine
        if quarantine:
            families["lakehouse_quarantine_rate"].add_metric([], quarantine["recent_rate"])
            families["lakehouse_gate_input_rows"].add_metric([], quarantine["total_input"])
            for rule, count in quarantine["by_rule"].items():
                families["lakehouse_quarantined_rows"].add_metric([rule], count)
        families["lakehouse_suite_failures_24h"].add_metric(
            [], health.suites.get("recent_failures", 0)
        )
        for feature in health.drift:
            families["lakehouse_feature_drift_psi"].add_metric([feature["feature"]], feature["psi"])
        for alert in evaluate(health, self._thresholds):
            families["lakehouse_alerts_firing"].add_metric([alert.rule, alert.subject], 1)
        families["lakehouse_health_scrape_seconds"].add_metric([], took)
        yield from families.values()


def registry_for(collector: HealthCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def serve_metrics(collector: HealthCollector, host: str, port: int) -> tuple[Any, int]:
    """Serve ``/metrics`` on a background thread; returns (server, bound port)."""
    server, _thread = start_http_server(port, addr=host, registry=registry_for(collector))
    return server, int(server.server_port)


def _family(name: str) -> Any:
    kind, help_text, labels = METRICS[name]
    if kind == "counter":
        return CounterMetricFamily(name, help_text, labels=list(labels))
    return GaugeMetricFamily(name, help_text, labels=list(labels))
