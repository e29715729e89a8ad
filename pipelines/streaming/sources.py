"""Streaming sources behind one interface per port, chosen by ``engines`` in config."""

from __future__ import annotations

import json

from pyspark.sql import DataFrame, SparkSession

from pipelines.config import Settings
from pipelines.lake.catalog import Catalog
from pipelines.streaming.delta_source import FORMAT as DELTA_FORMAT
from pipelines.streaming.delta_source import DeltaChangeFeedSource
from pipelines.streaming.kafka import client_config
from pipelines.streaming.kafka_source import FORMAT, KafkaSource


def register_sources(spark: SparkSession) -> None:
    """Register the Python data sources with the session (idempotent)."""
    spark.dataSource.register(KafkaSource)
    spark.dataSource.register(DeltaChangeFeedSource)


def delta_stream(
    spark: SparkSession,
    catalog: Catalog,
    table: str,
    max_rows_per_trigger: int | None = None,
    starting_version: str = "earliest",
) -> DataFrame:
    """A table's change data feed as a streaming DataFrame (offsets are table versions).

    Rows carry the table's columns plus ``_change_type``, ``_commit_version`` and
    ``_commit_timestamp``.
    """
    register_sources(spark)
    reader = (
        spark.readStream.format(DELTA_FORMAT)
        .option("path", catalog.location(table))
        .option("storageOptions", json.dumps(catalog.storage_options))
        .option("startingVersion", starting_version)
    )
    if max_rows_per_trigger:
        reader = reader.option("maxRowsPerTrigger", str(max_rows_per_trigger))
    return reader.load()


def kafka_stream(
    spark: SparkSession,
    settings: Settings,
    bootstrap_servers: str,
    topics: list[str],
    starting_offsets: str | None = None,
) -> DataFrame:
    """Kafka records as a streaming DataFrame: key, value, topic, partition, offset, timestamp."""
    consumer = settings.kafka.consumer
    register_sources(spark)
    reader = (
        spark.readStream.format(FORMAT)
        .option("subscribe", ",".join(topics))
        .option("startingOffsets", starting_offsets or consumer.starting_offsets)
        .option("minPartitions", str(consumer.min_partitions))
        .option("maxRecordsPerPartition", str(consumer.max_records_per_partition))
        .option("pollTimeoutMs", str(int(consumer.poll_timeout_s * 1000)))
        .option("metadataTimeoutMs", str(int(consumer.metadata_timeout_s * 1000)))
        .option("failOnDataLoss", str(consumer.fail_on_data_loss).lower())
    )
    if consumer.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(consumer.max_offsets_per_trigger))
    for key, value in client_config(settings.kafka, bootstrap_servers).items():
        reader = reader.option(f"kafka.{key}", str(value))
    return reader.load()
