"""Topic inspection: each topic's partitions and how many messages it holds."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipelines.config import Settings
from pipelines.streaming.kafka import KafkaUnavailableError


@dataclass(frozen=True)
class TopicCount:
    topic: str
    partitions: int
    messages: int  # high - low watermark, summed over partitions


def topic_counts(settings: Settings, servers: str) -> list[TopicCount]:
    """Every topic of the brokers at ``servers`` but Kafka's internal ones, by name.

    Raises:
        KafkaUnavailableError: the brokers did not answer within the metadata timeout.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": "lakehouse-cli",
            "log_level": 3,
            **settings.kafka.security.client_config(),
        }
    )
    try:
        metadata = consumer.list_topics(timeout=settings.kafka.consumer.metadata_timeout_s)
        counts = []
        for name in sorted(metadata.topics):
            if name.startswith("__"):
                continue
            parts = metadata.topics[name].partitions
            marks = [
                consumer.get_watermark_offsets(TopicPartition(name, p), timeout=5) for p in parts
            ]
            counts.append(TopicCount(name, len(parts), sum(high - low for low, high in marks)))
    except KafkaException as exc:
        raise KafkaUnavailableError(f"Kafka brokers {servers} did not answer: {exc}") from None
    finally:
        consumer.close()
    return counts
