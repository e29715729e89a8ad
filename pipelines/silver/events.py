"""Silver transforms: bronze rows -> parsed events -> classified rows -> silver.events /
silver.quarantine rows, the duplicates and the accounting tallies.

Pure functions of DataFrames, evaluated by the executors; the job (``pipelines/silver/job.py``)
joins them to IO and collects only ``batch_tallies`` and the duplicates per kind.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StringType

from pipelines.contracts import ContractRegistry
from pipelines.contracts.registry import MAX_EVENT_TIME_MS, RFC3339_DATE_TIME
from pipelines.contracts.spark_schema import unified_event_schema
from pipelines.silver.tables import SILVER_EVENTS, SILVER_QUARANTINE

# Parses every event type and version; derived from the contract files, never retyped.
EVENT_SCHEMA = unified_event_schema(ContractRegistry())


def event_time(raw: Column) -> Column:
    """The contract's ``timestamp`` (its JSON text) as a Spark timestamp, NULL when it is not an
    event time: the definition of ``contracts.event_time_ms`` (integer epoch ms in
    ``0..MAX_EVENT_TIME_MS`` or an RFC 3339 date-time) in Spark SQL."""
    millis = raw.try_cast("bigint")
    return (
        F.when(
            raw.rlike(r"^[0-9]{1,15}$") & (millis <= F.lit(MAX_EVENT_TIME_MS)),
            F.timestamp_millis(millis),
        )
        .when(raw.rlike(f"^{RFC3339_DATE_TIME}$"), F.try_to_timestamp(F.upper(raw)))
        .otherwise(F.lit(None).cast("timestamp"))
    )


def parsed_events(bronze: DataFrame) -> DataFrame:
    """Bronze rows plus the event's typed fields (NULL where absent, unparseable or mistyped)."""
    parsed = bronze.select("*", F.from_json("value", EVENT_SCHEMA).alias("_event"))
    return (
        parsed.select("*", "_event.*")
        .drop("_event")
        .withColumns(
            {
                "event_ts": event_time(F.col("timestamp")),
                "received_at": F.try_to_timestamp(F.col("received_at")),
            }
        )
    )


def classified_events(evaluated: DataFrame, load_id: str) -> DataFrame:
    """Gate-evaluated rows with every column silver *and* quarantine need, plus the verdict.

    One projection, persisted once per micro-batch: the quarantine, the duplicates, silver and the
    tallies are all read from it.
    """
    columns = {
        "quality_warnings": F.col("warnings"),
        "source_topic": F.col("topic"),
        "source_partition": F.col("partition"),
        "source_offset": F.col("offset"),
        "bronze_version": F.col("_commit_version"),
        "load_id": F.lit(load_id),
        "processed_at": F.current_timestamp(),
        "quarantined_at": F.current_timestamp(),
        "event_date": F.to_date("event_ts"),
        # The raw message is only kept for rows that go to quarantine.
        "raw_key": F.when(F.col("disposition") != "ok", F.col("key")),
        "raw_value": F.when(F.col("disposition") != "ok", F.col("value")),
    }
    wanted = dict.fromkeys(
        [*SILVER_EVENTS.schema.fieldNames(), *SILVER_QUARANTINE.schema.fieldNames(), *_VERDICT]
    )
    return evaluated.withColumns(columns).select(*wanted)


_VERDICT = ("disposition", "failed_rules", "warnings")
_BRONZE_ORDER = ("bronze_version", "source_topic", "source_partition", "source_offset")
_NAMES = ArrayType(StringType())

# The routes of a valid row silver does not keep (``duplicate_events``).
DUPLICATE_IN_BATCH = "duplicate_in_batch"
DUPLICATE_EXISTING = "duplicate_existing"


def quarantined_events(classified: DataFrame) -> DataFrame:
    """The ``silver.quarantine`` rows of a classified batch: every row a quarantine rule stopped."""
    return classified.filter(F.col("disposition") == "quarantine").select(
        *SILVER_QUARANTINE.schema.fieldNames()
    )


def failing_events(classified: DataFrame) -> DataFrame:
    """The rows a ``fail`` rule stopped (the batch must not be written), with what the error
    message shows of them."""
    return classified.filter(F.col("disposition") == "fail").select(
        "failed_rules",
        "first_error",
        "source_topic",
        "source_partition",
        "source_offset",
        "raw_value",
    )


def earlier_event_ids(silver: DataFrame, event_dates: list[str], load_id: str) -> DataFrame:
    """``event_id`` of the silver rows on ``event_dates`` written by batches other than
    ``load_id``'s: the ids a batch's valid rows may repeat.

    Excluding the batch's own rows makes a replay split exactly as the first run did, even when
    its silver commit had already landed. The date filter is on silver's partition column, so
    only those partitions are read.
    """
    return silver.filter(
        F.col("event_date").isin(event_dates) & (F.col("load_id") != F.lit(load_id))
    ).select("event_id")


def duplicate_events(classified: DataFrame, earlier_ids: DataFrame) -> DataFrame:
    """The valid rows of a classified batch that silver does not keep: exact dedup by
    ``event_id``, on the narrow key columns only.

    Columns: the row's bronze position (``bronze_version``, ``source_topic``,
    ``source_partition``, ``source_offset`` — one row of the bronze change feed each),
    ``event_id`` and ``route``:

    * ``duplicate_in_batch``: a later copy, in bronze order, of an id of this batch (the earliest
      copy is the one silver keeps);
    * ``duplicate_existing``: the earliest copy of an id in ``earlier_ids``.

    As many rows as duplicates, so ``silver_events`` removes them without moving the wide rows
    across the cluster. Deterministic: a replayed batch finds the same duplicates.
    """
    first_copy = F.row_number().over(Window.partitionBy("event_id").orderBy(*_BRONZE_ORDER)) == 1
    known = earlier_ids.select("event_id").distinct().withColumn("_known", F.lit(True))
    return (
        classified.filter(F.col("disposition") == "ok")
        .select("event_id", *_BRONZE_ORDER)
        .withColumn("_first", first_copy)
        .join(known, "event_id", "left")
        .select(
            *_BRONZE_ORDER,
            "event_id",
            F.when(~F.col("_first"), F.lit(DUPLICATE_IN_BATCH))
            .when(F.col("_known"), F.lit(DUPLICATE_EXISTING))
            .alias("route"),
        )
        .filter(F.col("route").isNotNull())
    )


def silver_events(classified: DataFrame, duplicates: DataFrame) -> DataFrame:
    """The ``silver.events`` rows of a classified batch: its valid rows but ``duplicates``."""
    return (
        classified.filter(F.col("disposition") == "ok")
        .join(duplicates.select(*_BRONZE_ORDER), list(_BRONZE_ORDER), "left_anti")
        .select(*SILVER_EVENTS.schema.fieldNames())
    )


def batch_tallies(classified: DataFrame) -> DataFrame:
    """What the accounting needs of a classified batch, in one aggregation of a few rows.

    Columns ``tally``, ``name``, ``rows``, ``first_version``, ``last_version`` (bronze versions of
    the tallied rows). Tallies: ``disposition`` (rows per ``ok``/``quarantine``/``drop``/
    ``fail``), ``event_date`` (valid rows per event date, ISO), and rows per rule name in
    ``quarantined_by_rule``, ``dropped_by_rule`` and ``warnings_by_rule`` (warnings of every
    row, whatever its disposition).
    """
    disposition = F.col("disposition")

    def entries(tally: str, names: Column) -> Column:
        return F.transform(
            names, lambda name: F.struct(F.lit(tally).alias("tally"), name.alias("name"))
        )

    def when(wanted: str, names: Column) -> Column:
        return F.when(disposition == wanted, names).otherwise(F.array().cast(_NAMES))

    every = F.concat(
        entries("disposition", F.array(disposition)),
        entries("event_date", when("ok", F.array(F.col("event_date").cast("string")))),
        entries("quarantined_by_rule", when("quarantine", F.col("failed_rules"))),
        entries("dropped_by_rule", when("drop", F.col("failed_rules"))),
        entries("warnings_by_rule", F.col("warnings")),
    )
    return (
        classified.select(F.inline(every), "bronze_version")
        .groupBy("tally", "name")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.min("bronze_version").alias("first_version"),
            F.max("bronze_version").alias("last_version"),
        )
    )
