"""Every table of the lake: logical name, schema, partitioning, description.

Schemas here are the single definition of each table; the Arrow schema (for reads outside Spark
and for batches built in Python) is derived from the Spark one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import pyarrow as pa
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)


@dataclass(frozen=True)
class TableSpec:
    """A Delta table the pipelines own."""

    name: str  # "<layer>.<table>", e.g. "bronze.events_raw"
    schema: StructType
    partition_by: tuple[str, ...] = ()
    description: str = ""
    change_data_feed: bool = True
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def layer(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def short_name(self) -> str:
        return self.name.split(".", 1)[1]

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        return to_arrow_schema(self.schema, timezone="UTC")

    @property
    def configuration(self) -> dict[str, str]:
        conf = {
            "delta.enableChangeDataFeed": str(self.change_data_feed).lower(),
            # delta-rs (the pandas/Arrow reader outside Spark) cannot read deletion vectors yet;
            # Databricks turns them on for new tables by default, so every lake table says no.
            "delta.enableDeletionVectors": "false",
        }
        conf.update(self.properties)
        return conf


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


def _silver_events_schema() -> StructType:
    # Typed event fields come from the event contract (every type and version, unified).
    from pipelines.contracts import ContractRegistry, unified_event_schema

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


def _sessions_schema() -> StructType:
    from pipelines.silver.sessions import SESSIONS_SCHEMA

    return SESSIONS_SCHEMA


SILVER_SESSIONS = TableSpec(
    name="silver.sessions",
    schema=_sessions_schema(),
    description="Per-user sessions split by an inactivity gap; recomputed incrementally and "
    "MERGEd by session_id when new or late events arrive.",
)


def _gold_schema(kind: str) -> StructType:
    from pipelines.gold.features import ITEM_FEATURES_SCHEMA, USER_FEATURES_SCHEMA

    features = USER_FEATURES_SCHEMA if kind == "user" else ITEM_FEATURES_SCHEMA
    return StructType(
        [
            *features.fields,
            StructField("published_at", TimestampType(), False),
            StructField("load_id", StringType(), False),
        ]
    )


GOLD_USER_FEATURES = TableSpec(
    name="gold.user_features",
    schema=_gold_schema("user"),
    description="Current features per user (as of feature_ts), MERGE-upserted by user_id.",
)
GOLD_USER_FEATURES_HISTORY = TableSpec(
    name="gold.user_features_history",
    schema=_gold_schema("user"),
    description="Every published user feature row with its feature_ts: the point-in-time source.",
)
GOLD_ITEM_FEATURES = TableSpec(
    name="gold.item_features",
    schema=_gold_schema("item"),
    description="Current features per item (as of feature_ts), MERGE-upserted by item_id.",
)
GOLD_ITEM_FEATURES_HISTORY = TableSpec(
    name="gold.item_features_history",
    schema=_gold_schema("item"),
    description="Every published item feature row with its feature_ts: the point-in-time source.",
)


def _bucket_schema(kind: str) -> StructType:
    from pipelines.gold.features import ITEM_BUCKETS_SCHEMA, USER_BUCKETS_SCHEMA

    return USER_BUCKETS_SCHEMA if kind == "user" else ITEM_BUCKETS_SCHEMA


# The gold job's state: per key and hour, the partial aggregates every feature needs. Internal
# (no change feed); each micro-batch MERGEs its events' contributions in one idempotent commit.
GOLD_USER_FEATURE_BUCKETS = TableSpec(
    name="gold.user_feature_buckets",
    schema=_bucket_schema("user"),
    change_data_feed=False,
    description="Gold state: per user and hour (bucket_end), partial aggregates of its events "
    "(counts per type, revenue, category scores, items, first/last event time); MERGEd per batch.",
)
GOLD_ITEM_FEATURE_BUCKETS = TableSpec(
    name="gold.item_feature_buckets",
    schema=_bucket_schema("item"),
    change_data_feed=False,
    description="Gold state: per item and hour (bucket_end), partial aggregates of its events "
    "(counts per type, latest categorized event, first/last event time); MERGEd per batch.",
)


def _training_set_schema() -> StructType:
    # The point-in-time join's output: label columns, then each side's feature_ts and features.
    from pipelines.gold.features import ITEM_FEATURES_SCHEMA, USER_FEATURES_SCHEMA

    def prefixed(schema: StructType, prefix: str, key: str) -> list[StructField]:
        return [
            StructField(f"{prefix}_{f.name}", f.dataType, True)
            for f in schema.fields
            if f.name not in (key, "feature_ts")
        ]

    return StructType(
        [
            StructField("user_id", StringType(), True),
            StructField("item_id", StringType(), True),
            StructField("label_ts", TimestampType(), True),
            StructField("label", IntegerType(), True),
            StructField("source", StringType(), True),
            StructField("user_feature_ts", TimestampType(), True),
            *prefixed(USER_FEATURES_SCHEMA, "user", "user_id"),
            StructField("item_feature_ts", TimestampType(), True),
            *prefixed(ITEM_FEATURES_SCHEMA, "item", "item_id"),
            StructField("training_set", StringType(), False),
        ]
    )


GOLD_TRAINING_SETS = TableSpec(
    name="gold.training_sets",
    schema=_training_set_schema(),
    partition_by=("training_set",),
    description="Point-in-time training sets, one partition per named set; features joined "
    "strictly before each label's timestamp.",
)

LAKE_TRAINING_SETS = TableSpec(
    name="lake.training_sets",
    schema=StructType(
        [
            StructField("name", StringType(), False),
            StructField("snapshot", StringType(), False),
            StructField("label_event", StringType(), False),
            StructField("horizon", StringType(), False),
            StructField("seed", LongType(), False),
            StructField("negatives_per_positive", LongType(), False),
            StructField("rows", LongType(), False),
            StructField("positives", LongType(), False),
            StructField("digest", StringType(), False),
            StructField("versions", MapType(StringType(), LongType(), False), False),
            StructField("table_version", LongType(), False),
            StructField("created_at", TimestampType(), False),
        ]
    ),
    description="Every built training set: its inputs (snapshot, versions, seed) and digest.",
)

GOLD_RECOMMENDATIONS = TableSpec(
    name="gold.recommendations",
    schema=StructType(
        [
            StructField("user_id", StringType(), False),
            StructField("rank", IntegerType(), False),
            StructField("item_id", StringType(), False),
            StructField("score", DoubleType(), True),
            StructField("cold_start", BooleanType(), False),
            StructField("model_name", StringType(), False),
            StructField("model_version", StringType(), False),
            StructField("generated_at", TimestampType(), False),
        ]
    ),
    description="Top-k recommendations per active user from the champion model (latest run "
    "replaces the previous one).",
)

QUALITY_DRIFT_RESULTS = TableSpec(
    name="quality.drift_results",
    schema=StructType(
        [
            StructField("checked_at", TimestampType(), False),
            StructField("feature", StringType(), False),
            StructField("psi", DoubleType(), False),
            StructField("status", StringType(), False),
            StructField("reference_snapshot", StringType(), False),
            StructField("reference_version", LongType(), False),
            StructField("current_version", LongType(), False),
            StructField("reference_rows", LongType(), False),
            StructField("current_rows", LongType(), False),
            StructField("reference_mean", DoubleType(), True),
            StructField("current_mean", DoubleType(), True),
            StructField("note", StringType(), True),
        ]
    ),
    description="Feature drift (PSI) of gold.user_features against the champion's snapshot.",
)

_COUNTS = MapType(StringType(), LongType(), False)

QUALITY_BATCH_RESULTS = TableSpec(
    name="quality.batch_results",
    schema=StructType(
        [
            StructField("table", StringType(), False),
            StructField("load_id", StringType(), False),
            StructField("query_id", StringType(), False),
            StructField("batch_id", LongType(), False),
            StructField("source_table", StringType(), True),
            StructField("source_start_version", LongType(), True),
            StructField("source_end_version", LongType(), True),
            StructField("input_rows", LongType(), False),
            StructField("written_rows", LongType(), False),
            StructField("quarantined_rows", LongType(), False),
            StructField("dropped_rows", LongType(), False),
            StructField("duplicates_in_batch", LongType(), False),
            StructField("duplicates_existing", LongType(), False),
            StructField("quarantined_by_rule", _COUNTS, True),
            StructField("dropped_by_rule", _COUNTS, True),
            StructField("warnings_by_rule", _COUNTS, True),
            StructField("invariant_holds", BooleanType(), False),
            StructField("processed_at", TimestampType(), False),
        ]
    ),
    description="One row per micro-batch of a gated table: what came in and where every row went.",
)

QUALITY_SUITE_RESULTS = TableSpec(
    name="quality.suite_results",
    schema=StructType(
        [
            StructField("table", StringType(), False),
            StructField("suite", StringType(), False),
            StructField("load_id", StringType(), True),
            StructField("batch_id", LongType(), True),
            StructField("batch_label", StringType(), False),
            StructField("success", BooleanType(), False),
            StructField("evaluated", LongType(), False),
            StructField("successful", LongType(), False),
            StructField("failed", ArrayType(StringType(), False), False),
            StructField("run_time", TimestampType(), False),
            StructField("data_docs_index", StringType(), True),
        ]
    ),
    description="Great Expectations suite results, one row per validated batch.",
)

LAKE_SNAPSHOTS = TableSpec(
    name="lake.snapshots",
    schema=StructType(
        [
            StructField("name", StringType(), False),
            StructField("table", StringType(), False),
            StructField("version", LongType(), False),
            StructField("created_at", TimestampType(), False),
            StructField("note", StringType(), True),
        ]
    ),
    description="Named snapshots: one row per (snapshot name, table) with the pinned Delta "
    "version. Maintenance keeps the files of every pinned version.",
)

MONITORING_QUERY_PROGRESS = TableSpec(
    name="monitoring.query_progress",
    schema=StructType(
        [
            StructField("query_id", StringType(), False),
            StructField("run_id", StringType(), False),
            StructField("query_name", StringType(), False),
            StructField("batch_id", LongType(), False),
            StructField("progress_ts", TimestampType(), False),
            StructField("num_input_rows", LongType(), False),
            StructField("input_rows_per_s", DoubleType(), True),
            StructField("processed_rows_per_s", DoubleType(), True),
            StructField("batch_duration_ms", LongType(), False),
            StructField("duration_ms", MapType(StringType(), LongType(), False), True),
            StructField("state_rows_total", LongType(), False),
            StructField("state_rows_updated", LongType(), False),
            StructField("state_memory_bytes", LongType(), False),
            StructField(
                "sources",
                ArrayType(
                    StructType(
                        [
                            StructField("description", StringType(), True),
                            StructField("start_offset", StringType(), True),
                            StructField("end_offset", StringType(), True),
                            StructField("latest_offset", StringType(), True),
                            StructField("num_input_rows", LongType(), True),
                            StructField("backlog", LongType(), True),
                        ]
                    ),
                    False,
                ),
                True,
            ),
            StructField("backlog", LongType(), True),
            StructField("sink", StringType(), True),
            StructField("num_output_rows", LongType(), True),
            StructField("recorded_at", TimestampType(), False),
            StructField("progress_date", DateType(), False),
        ]
    ),
    partition_by=("progress_date",),
    change_data_feed=False,
    description="One row per micro-batch per streaming query: rows, rates, duration breakdown, "
    "state, source offsets and backlog (StreamingQueryListener).",
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in [
        BRONZE_EVENTS_RAW,
        SILVER_EVENTS,
        SILVER_QUARANTINE,
        SILVER_SESSIONS,
        GOLD_USER_FEATURES,
        GOLD_USER_FEATURES_HISTORY,
        GOLD_ITEM_FEATURES,
        GOLD_ITEM_FEATURES_HISTORY,
        GOLD_USER_FEATURE_BUCKETS,
        GOLD_ITEM_FEATURE_BUCKETS,
        GOLD_TRAINING_SETS,
        GOLD_RECOMMENDATIONS,
        QUALITY_BATCH_RESULTS,
        QUALITY_DRIFT_RESULTS,
        QUALITY_SUITE_RESULTS,
        LAKE_SNAPSHOTS,
        LAKE_TRAINING_SETS,
        MONITORING_QUERY_PROGRESS,
    ]
}


class UnknownTableError(LookupError):
    """A table name that the catalog does not define."""

    def __str__(self) -> str:
        return str(self.args[0])


def table_spec(name: str) -> TableSpec:
    if name not in TABLES:
        raise UnknownTableError(f"unknown table {name!r} (known: {', '.join(sorted(TABLES))})")
    return TABLES[name]
