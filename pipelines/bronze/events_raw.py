"""The bronze transform: Kafka records -> ``bronze.events_raw`` rows."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.bronze.tables import BRONZE_EVENTS_RAW


def bronze_events_raw(kafka_records: DataFrame) -> DataFrame:
    """Keep each record as received, with its coordinates, broker time and ingest time.

    ``ingest_ts`` is the micro-batch's timestamp (one value per batch), and ``ingest_date`` its
    UTC date, which partitions the table.
    """
    out = kafka_records.select(
        F.col("key"),
        F.col("value"),
        F.col("topic"),
        F.col("partition").cast("int").alias("partition"),
        F.col("offset").cast("long").alias("offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        F.current_timestamp().alias("ingest_ts"),
    ).withColumn("ingest_date", F.to_date("ingest_ts"))
    return out.select(*BRONZE_EVENTS_RAW.schema.fieldNames())
