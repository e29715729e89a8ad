"""The silver layer's tables: valid events, quarantined rows and sessions."""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    DateType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.contracts import ContractRegistry
from pipelines.contracts.spark_schema import unified_event_schema
from pipelines.lake.tables import TableSpec
from pipelines.silver.sessions import SESSIONS_SCHEMA


def _silver_events_schema() -> StructType:
    # Typed event fields come from the event contract (every type and version, unified).
    event = {f.name: f for f in unified_event_schema(ContractRegistry()).fields}
    typed = [
        event["event_id"],
        event["event_type"],
        event["user_id"],
        event["session_id"],
        StructField("event_ts", TimestampType(), True),
        event["item_id"],
        event["context"],
        event["properties"],
        event["schema_version"],
        StructField("received_at", TimestampType(), True),
    ]
    lineage = [
        StructField("quality_warnings", ArrayType(StringType(), False), True),
        StructField("source_topic", StringType(), True),
        StructField("source_partition", IntegerType(), True),
        StructField("source_offset", LongType(), True),
        StructField("kafka_timestamp", TimestampType(), True),
        StructField("ingest_ts", TimestampType(), True),
        StructField("bronze_version", LongType(), True),
        StructField("load_id", StringType(), True),
        StructField("processed_at", TimestampType(), True),
        StructField("event_date", DateType(), True),
    ]
    return StructType([*typed, *lineage])


SILVER_EVENTS = TableSpec(
    name="silver.events",
    schema=_silver_events_schema(),
    partition_by=("event_date",),
    description="Valid events, typed and deduplicated by event_id; lineage back to bronze.",
)

SILVER_QUARANTINE = TableSpec(
    name="silver.quarantine",
    schema=StructType(
        [
            StructField("raw_key", StringType(), True),
            StructField("raw_value", StringType(), True),
            StructField("source_topic", StringType(), True),
            StructField("source_partition", IntegerType(), True),
            StructField("source_offset", LongType(), True),
            StructField("kafka_timestamp", TimestampType(), True),
            StructField("ingest_ts", TimestampType(), True),
            StructField("bronze_version", LongType(), True),
            StructField("event_id", StringType(), True),
            StructField("event_type", StringType(), True),
            StructField("failed_rules", ArrayType(StringType(), False), True),
            StructField("first_error", StringType(), True),
            StructField("load_id", StringType(), True),
            StructField("quarantined_at", TimestampType(), True),
            StructField("ingest_date", DateType(), True),
        ]
    ),
    partition_by=("ingest_date",),
    description="Rows that broke a rule: the raw message, where it came from, every failed rule.",
)


SILVER_SESSIONS = TableSpec(
    name="silver.sessions",
    schema=SESSIONS_SCHEMA,
    description="Per-user sessions split by an inactivity gap; recomputed incrementally and "
    "MERGEd by session_id when new or late events arrive.",
)

TABLES = (
    SILVER_EVENTS,
    SILVER_QUARANTINE,
    SILVER_SESSIONS,
)
