"""The bronze layer's table: raw Kafka records as received."""

from __future__ import annotations

from pyspark.sql.types import (
    DateType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.lake.tables import TableSpec

BRONZE_EVENTS_RAW = TableSpec(
    name="bronze.events_raw",
    schema=StructType(
        [
            StructField("key", StringType(), True),
            StructField("value", StringType(), True),
            StructField("topic", StringType(), False),
            StructField("partition", IntegerType(), False),
            StructField("offset", LongType(), False),
            StructField("kafka_timestamp", TimestampType(), True),
            StructField("ingest_ts", TimestampType(), False),
            StructField("ingest_date", DateType(), False),
        ]
    ),
    partition_by=("ingest_date",),
    # Statistics on the coordinates and times only: min/max of long raw payloads cost every
    # write and skip nothing. No Parquet dictionaries: raw payloads are unique, so each file's
    # dictionary was built and thrown away (Delta hands table properties to the Parquet writer);
    # measured in docs/BENCHMARKS.md.
    properties={
        "delta.dataSkippingStatsColumns": "topic,partition,offset,kafka_timestamp,ingest_ts",
        "parquet.enable.dictionary": "false",
    },
    description="Raw Kafka records, append-only: key, value as received, topic/partition/offset, "
    "broker timestamp and ingest time.",
)

TABLES = (BRONZE_EVENTS_RAW,)
