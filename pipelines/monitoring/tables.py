"""Monitoring's tables: streaming query progress and feature drift."""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    DateType,
    DoubleType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.lake.tables import TableSpec

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

TABLES = (
    MONITORING_QUERY_PROGRESS,
    QUALITY_DRIFT_RESULTS,
)
