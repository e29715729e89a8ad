"""Generated clickstream into Kafka: produced directly (one topic per event type, keyed by user
id), or sent the way apps send it — through the tracking SDK to the HTTP collector."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from pipelines.config import KafkaSettings
from pipelines.streaming.kafka import DeliveryReport, EventProducer
from pipelines.synthetic.clickstream import ClickstreamGenerator, GenerationReport
from pipelines.tracking import Tracker, TrackerStats


@dataclass
class PublishResult:
    generation: GenerationReport
    delivery: DeliveryReport

    def to_dict(self) -> dict[str, object]:
        return {
            "generated": self.generation.to_dict(),
            "produced_per_topic": dict(sorted(self.delivery.delivered.items())),
            "produced": self.delivery.total_delivered,
            "failed": self.delivery.total_failed,
        }


def publish_clickstream(
    generator: ClickstreamGenerator,
    events: int,
    kafka: KafkaSettings,
    bootstrap_servers: str,
    *,
    on_progress: Callable[[int], None] | None = None,
    flush_timeout_s: float = 120.0,
) -> PublishResult:
    """Generate ``events`` events and produce each to its event type's topic.

    Raises:
        KafkaUnavailableError: messages were not acknowledged within ``flush_timeout_s``.
    """
    producer = EventProducer(kafka, bootstrap_servers)
    step = max(1, events // 100)
    for i, event in enumerate(generator.events(events), start=1):
        producer.produce(kafka.topics.for_event_type(event.event_type), event.value, key=event.key)
        if on_progress is not None and i % step == 0:
            on_progress(step)
    if on_progress is not None and events % step:
        on_progress(events % step)
    delivery = producer.flush(flush_timeout_s)
    return PublishResult(generation=generator.report, delivery=delivery)


@dataclass
class TrackResult:
    generation: GenerationReport
    sdk: TrackerStats
    delivered: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated": self.generation.to_dict(),
            "sdk": asdict(self.sdk),
            "delivered": self.delivered,
        }


def track_clickstream(
    generator: ClickstreamGenerator,
    events: int,
    endpoint: str,
    write_key: str,
    spool_dir: Path,
    *,
    on_progress: Callable[[int], None] | None = None,
    flush_timeout_s: float = 120.0,
) -> TrackResult:
    """Send ``events`` generated events through the SDK to the collector at ``endpoint``.

    Events go out exactly as generated (bad ones included), so the collector decides: a
    malformed payload travels as a JSON string and is rejected as ``not_an_object``, the other
    bad kinds fail the contract and land in the DLQ, duplicates are accepted (same event_id)
    and removed in silver.
    """
    step = max(1, events // 100)
    # The generator produces far faster than any app: a queue that holds the whole run keeps
    # the demo on the steady-state path instead of the (lossless) memory-full spool path.
    queue = max(10_000, events + 1)
    with Tracker(
        endpoint, write_key, spool_dir=spool_dir, batch_size=500, max_queue=queue
    ) as tracker:
        for i, event in enumerate(generator.events(events), start=1):
            try:
                parsed = orjson.loads(event.value)
            except orjson.JSONDecodeError:
                parsed = event.value.decode()
            tracker.enqueue(parsed, complete=False)
            if on_progress is not None and i % step == 0:
                on_progress(step)
        if on_progress is not None and events % step:
            on_progress(events % step)
        delivered = tracker.flush(flush_timeout_s)
        stats = tracker.stats
    return TrackResult(generation=generator.report, sdk=stats, delivered=delivered)
