"""Publish generated clickstream to Kafka: one topic per event type, keyed by user id."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipelines.config import KafkaSettings
from pipelines.streaming.kafka import DeliveryReport, EventProducer
from pipelines.synthetic.clickstream import ClickstreamGenerator, GenerationReport


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
