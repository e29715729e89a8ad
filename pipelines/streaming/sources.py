"""The source ports: Kafka topics and Delta change feeds as streaming DataFrames.

* ``kafka_stream``: Spark's ``format("kafka")``, options from ``settings.kafka``.
* ``delta_stream``: ``format("delta")`` with ``readChangeFeed``.

Offsets live in the query's checkpoint: Kafka offsets per partition, Delta versions per table.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from pipelines.config import Settings
from pipelines.lake.catalog import Catalog
from pipelines.streaming.delta import change_feed_stream
from pipelines.streaming.kafka_native import native_kafka_stream


def delta_stream(
    spark: SparkSession,
    catalog: Catalog,
    table: str,
    starting_version: str = "earliest",
    *,
    max_files_per_trigger: int | None = None,
    max_bytes_per_trigger: str | None = None,
) -> DataFrame:
    """A table's change data feed as a streaming DataFrame.

    Rows carry the table's columns plus ``_change_type``, ``_commit_version`` and
    ``_commit_timestamp``: inserts and update post-images, each commit read as its own changes.

    Args:
        starting_version: ``earliest`` (version 0), ``latest`` or a version number.
        max_files_per_trigger, max_bytes_per_trigger: Delta's caps on one micro-batch (its
            default is 1000 files).
    """
    catalog.bind(spark)
    return change_feed_stream(
        spark,
        catalog.location(table),
        starting_version=starting_version,
        max_files_per_trigger=max_files_per_trigger,
        max_bytes_per_trigger=max_bytes_per_trigger,
    )


def kafka_stream(
    spark: SparkSession,
    settings: Settings,
    bootstrap_servers: str,
    topics: list[str],
    starting_offsets: str | None = None,
) -> DataFrame:
    """Kafka records as a streaming DataFrame through ``format("kafka")``.

    Columns: key, value (UTF-8 strings), topic, partition, offset, timestamp. Offsets per
    partition live in the query's checkpoint; nothing is committed to Kafka.
    """
    return native_kafka_stream(spark, settings.kafka, bootstrap_servers, topics, starting_offsets)
