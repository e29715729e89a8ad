"""The source ports: one function per port, the adapter chosen by ``engines`` in config.

* ``kafka_stream``: the ``lakehouse-kafka`` Python data source (``engines.kafka: python``, the
  default) or Spark's ``format("kafka")`` (``native``).
* ``delta_stream``: the ``lakehouse-delta`` Python data source over the change data feed
  (``engines.delta: delta-rs``, the default) or ``format("delta")`` with ``readChangeFeed``
  (``delta-spark``).

Both adapters of a port yield the same columns and types and share one contract test suite
(``tests/streaming/test_ports.py``).
"""

from __future__ import annotations

import json
import logging

from pyspark.sql import DataFrame, SparkSession

from pipelines.config import Settings
from pipelines.lake.catalog import Catalog
from pipelines.streaming.delta_source import FORMAT as DELTA_FORMAT
from pipelines.streaming.delta_source import DeltaChangeFeedSource
from pipelines.streaming.delta_spark import delta_spark_change_feed
from pipelines.streaming.kafka import client_config
from pipelines.streaming.kafka_native import native_kafka_stream
from pipelines.streaming.kafka_source import FORMAT, KafkaSource

log = logging.getLogger(__name__)


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
    *,
    max_files_per_trigger: int | None = None,
    max_bytes_per_trigger: str | None = None,
) -> DataFrame:
    """A table's change data feed as a streaming DataFrame, through ``catalog.engine``'s adapter.

    Rows carry the table's columns plus ``_change_type``, ``_commit_version`` and
    ``_commit_timestamp``: inserts and update post-images, each commit read as its own changes.
    Offsets (table versions) live in the query's checkpoint.

    Args:
        max_rows_per_trigger: caps a micro-batch by rows added (whole versions); delta-rs only.
        starting_version: ``earliest`` (version 0), ``latest`` or a version number.
        max_files_per_trigger, max_bytes_per_trigger: Delta's own caps; delta-spark only
            (its default is 1000 files per micro-batch).
    """
    if catalog.engine == "delta-spark":
        if max_rows_per_trigger:
            log.info(
                "%s: delta-spark caps micro-batches by files/bytes, not rows; "
                "max_rows_per_trigger=%s does not apply",
                table,
                max_rows_per_trigger,
            )
        return delta_spark_change_feed(
            spark,
            catalog.location(table),
            starting_version=starting_version,
            max_files_per_trigger=max_files_per_trigger,
            max_bytes_per_trigger=max_bytes_per_trigger,
        )
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
    """Kafka records as a streaming DataFrame, through ``settings.engines.kafka``'s adapter.

    Columns (``KAFKA_SOURCE_SCHEMA``): key, value (UTF-8 strings), topic, partition, offset,
    timestamp. Offsets per partition live in the query's checkpoint; nothing is committed to
    Kafka.
    """
    if settings.engines.kafka == "native":
        return native_kafka_stream(
            spark, settings.kafka, bootstrap_servers, topics, starting_offsets
        )
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
