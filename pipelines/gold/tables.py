"""The gold layer's tables: current and historical features per user and per item."""

from __future__ import annotations

from pyspark.sql.types import (
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.gold.features import ITEM_FEATURES_SCHEMA, USER_FEATURES_SCHEMA
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

TABLES = (
    GOLD_USER_FEATURES,
    GOLD_USER_FEATURES_HISTORY,
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_FEATURES_HISTORY,
)
