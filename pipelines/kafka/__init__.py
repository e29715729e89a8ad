"""Kafka itself, for local runs and tests: the embedded Apache Kafka broker (``broker``)."""

from pipelines.kafka.broker import EmbeddedKafka, EmbeddedKafkaError

__all__ = ["EmbeddedKafka", "EmbeddedKafkaError"]
