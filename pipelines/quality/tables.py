"""Data quality's tables: per-batch accounting and Great Expectations suite results."""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.lake.tables import TableSpec

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

TABLES = (
    QUALITY_BATCH_RESULTS,
    QUALITY_SUITE_RESULTS,
)
