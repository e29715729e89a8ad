"""Training's tables: point-in-time training sets, their register, and batch recommendations."""

from __future__ import annotations

from pyspark.sql.types import (
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.gold.features import ITEM_FEATURES_SCHEMA, USER_FEATURES_SCHEMA
from pipelines.lake.tables import TableSpec


def _training_set_schema() -> StructType:
    # The point-in-time join's output: label columns, then each side's feature_ts and features.
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

TABLES = (
    GOLD_TRAINING_SETS,
    LAKE_TRAINING_SETS,
    GOLD_RECOMMENDATIONS,
)
