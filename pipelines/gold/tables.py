"""The gold layer's tables: current and historical features per user and per item."""

from __future__ import annotations

from pyspark.sql.types import (
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.gold.features import (
    ITEM_BUCKETS_SCHEMA,
    ITEM_FEATURES_SCHEMA,
    USER_BUCKETS_SCHEMA,
    USER_FEATURES_SCHEMA,
)
from pipelines.lake.tables import TableSpec


def _gold_schema(kind: str) -> StructType:
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

# The gold job's state: per key and hour, the partial aggregates every feature needs. Internal
# (no change feed); each micro-batch MERGEs its events' contributions in one idempotent commit.
GOLD_USER_FEATURE_BUCKETS = TableSpec(
    name="gold.user_feature_buckets",
    schema=USER_BUCKETS_SCHEMA,
    change_data_feed=False,
    description="Gold state: per user and hour (bucket_end), partial aggregates of its events "
    "(counts per type, revenue, category scores, items, first/last event time); MERGEd per batch.",
)
GOLD_ITEM_FEATURE_BUCKETS = TableSpec(
    name="gold.item_feature_buckets",
    schema=ITEM_BUCKETS_SCHEMA,
    change_data_feed=False,
    description="Gold state: per item and hour (bucket_end), partial aggregates of its events "
    "(counts per type, latest categorized event, first/last event time); MERGEd per batch.",
)

TABLES = (
    GOLD_USER_FEATURES,
    GOLD_USER_FEATURES_HISTORY,
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_FEATURES_HISTORY,
    GOLD_USER_FEATURE_BUCKETS,
    GOLD_ITEM_FEATURE_BUCKETS,
)
