"""The collector's Prometheus metrics (one registry per collector, served on ``/metrics``)."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class CollectorMetrics:
    """Requests by endpoint and status, events by type and outcome, rejections by rule,
    produce and request latency, Kafka readiness."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "lakehouse_collector_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.events = Counter(
            "lakehouse_collector_events",
            "Events by contract type and outcome (accepted: in its topic; rejected: in the DLQ).",
            ["event_type", "outcome"],
            registry=r,
        )
        self.rejections = Counter(
            "lakehouse_collector_rejections",
            "Rejected events by the contract rule they broke (an event can break several).",
            ["rule"],
            registry=r,
        )
        self.identities = Counter(
            "lakehouse_collector_identities", "Identify calls published.", registry=r
        )
        self.produce_seconds = Histogram(
            "lakehouse_collector_produce_seconds",
            "Time from producing a request's messages to Kafka acknowledging all of them.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "lakehouse_collector_request_seconds",
            "Request handling time by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "lakehouse_collector_in_flight_requests", "Requests being handled.", registry=r
        )
        self.kafka_ready = Gauge(
            "lakehouse_collector_kafka_ready",
            "1 when the last readiness check reached Kafka, else 0.",
            registry=r,
        )

    def count_events(self, outcomes: Tally[tuple[str, str]], rules: Tally[str]) -> None:
        """Add one request's tallies (one increment per label set, not per event)."""
        for (event_type, outcome), n in outcomes.items():
            self.events.labels(event_type, outcome).inc(n)
        for rule, n in rules.items():
            self.rejections.labels(rule).inc(n)

    def event_totals(self) -> dict[str, dict[str, int]]:
        """Accepted and rejected events by type, and rejections by rule, so far."""
        totals: dict[str, dict[str, int]] = {"accepted": {}, "rejected": {}, "rules": {}}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == "lakehouse_collector_events_total":
                    by_type = totals[sample.labels["outcome"]]
                    by_type[sample.labels["event_type"]] = int(sample.value)
                elif sample.name == "lakehouse_collector_rejections_total":
                    totals["rules"][sample.labels["rule"]] = int(sample.value)
        return totals

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
