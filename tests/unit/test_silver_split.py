"""The silver split as pure DataFrame transforms: quarantine, exact dedup, accounting tallies."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType
from pyspark.testing import assertDataFrameEqual

from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.config import QualitySettings
from pipelines.quality.expectations import load_rule_set
from pipelines.quality.gate import Gate
from pipelines.silver.events import (
    batch_tallies,
    classified_events,
    duplicate_events,
    earlier_event_ids,
    parsed_events,
    quarantined_events,
    silver_events,
)
from pipelines.silver.tables import SILVER_EVENTS, SILVER_QUARANTINE

REPO = Path(__file__).resolve().parents[2]
DAY = date(2026, 11, 20)
AT = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
LOAD_ID = "query-1:7"

# The columns classified_events projects: silver's, quarantine's (failed_rules included), then
# the rest of the gate's verdict.
CLASSIFIED_SCHEMA = StructType(
    [
        *SILVER_EVENTS.schema.fields,
        *(f for f in SILVER_QUARANTINE.schema.fields if f.name not in SILVER_EVENTS.schema.names),
        StructField("disposition", StringType(), False),
        StructField("warnings", ArrayType(StringType(), False), True),
    ]
)


def classified(spark: SparkSession, *rows: dict[str, Any]) -> DataFrame:
    """Classified rows: a valid click on ``DAY`` unless a row says otherwise."""
    full = []
    for offset, changes in enumerate(rows):
        row: dict[str, Any] = {name: None for name in CLASSIFIED_SCHEMA.names}
        row |= {
            "event_id": f"e{offset}",
            "event_type": "click",
            "user_id": "user-1",
            "event_ts": AT,
            "quality_warnings": [],
            "source_topic": "click",
            "source_partition": 0,
            "source_offset": offset,
            "bronze_version": 1,
            "load_id": LOAD_ID,
            "processed_at": AT,
            "event_date": DAY,
            "disposition": "ok",
            "failed_rules": [],
            "warnings": [],
        }
        row |= changes
        full.append(row)
    return spark.createDataFrame(full, CLASSIFIED_SCHEMA)


def keyed(duplicates: DataFrame) -> DataFrame:
    return duplicates.select(
        "event_id", "bronze_version", "source_partition", "source_offset", "route"
    )


DUPLICATES_SCHEMA = "event_id string, bronze_version bigint, source_partition int, "
DUPLICATES_SCHEMA += "source_offset bigint, route string"


def test_the_earliest_copy_in_bronze_order_wins_and_ids_of_earlier_batches_are_duplicates(
    spark: SparkSession,
) -> None:
    batch = classified(  # source_offset: the row's index
        spark,
        {"event_id": "a", "bronze_version": 2},
        {"event_id": "a", "bronze_version": 1},  # an earlier bronze version: wins
        {"event_id": "b", "source_partition": 1},
        {"event_id": "b", "source_partition": 0},  # a lower partition: wins over a lower offset
        {"event_id": "c"},  # already in silver
        {"event_id": "d"},  # already in silver, and twice here
        {"event_id": "d"},
        {"event_id": "a", "disposition": "quarantine", "failed_rules": ["type:user_id"]},
        {"event_id": "f", "disposition": "drop", "failed_rules": ["bot"]},
        {"event_id": "g", "warnings": ["search_query_not_empty"]},  # a warning never drops
    )
    earlier = spark.createDataFrame([("c",), ("d",), ("d",), ("x",)], "event_id string")

    duplicates = duplicate_events(batch, earlier)

    expected = spark.createDataFrame(
        [
            ("a", 2, 0, 0, "duplicate_in_batch"),
            ("b", 1, 1, 2, "duplicate_in_batch"),
            ("c", 1, 0, 4, "duplicate_existing"),
            ("d", 1, 0, 5, "duplicate_existing"),
            ("d", 1, 0, 6, "duplicate_in_batch"),
        ],
        DUPLICATES_SCHEMA,
    )
    assertDataFrameEqual(keyed(duplicates), expected, checkRowOrder=False)
    kept = batch.filter(F.col("source_offset").isin(1, 3, 9)).select(*SILVER_EVENTS.schema.names)
    assertDataFrameEqual(silver_events(batch, duplicates), kept, checkRowOrder=False)
    assert silver_events(batch, duplicates).schema == SILVER_EVENTS.schema


def test_without_earlier_ids_one_copy_per_id_is_kept(spark: SparkSession) -> None:
    batch = classified(spark, {"event_id": "a"}, {"event_id": "a"}, {"event_id": "b"})
    none = spark.createDataFrame([], "event_id string")

    duplicates = duplicate_events(batch, none)

    expected = spark.createDataFrame([("a", 1, 0, 1, "duplicate_in_batch")], DUPLICATES_SCHEMA)
    assertDataFrameEqual(keyed(duplicates), expected)
    kept = batch.filter(F.col("source_offset").isin(0, 2)).select(*SILVER_EVENTS.schema.names)
    assertDataFrameEqual(silver_events(batch, duplicates), kept, checkRowOrder=False)


def test_quarantine_holds_the_quarantined_rows_only_in_its_table_schema(
    spark: SparkSession,
) -> None:
    bad = {
        "event_id": "q",
        "disposition": "quarantine",
        "failed_rules": ["required:user_id", "timestamp_in_future"],
        "first_error": "required:user_id: missing",
        "raw_key": "k",
        "raw_value": '{"event_id": "q"}',
        "quarantined_at": AT,
        "ingest_date": DAY,
    }
    batch = classified(
        spark,
        {"event_id": "ok"},
        bad,
        {"event_id": "d", "disposition": "drop", "failed_rules": ["bot"]},
        {"event_id": "f", "disposition": "fail", "failed_rules": ["no_test_users"]},
    )

    quarantine = quarantined_events(batch)

    assert quarantine.schema == SILVER_QUARANTINE.schema
    expected = {name: bad.get(name) for name in SILVER_QUARANTINE.schema.names}
    expected |= {"source_topic": "click", "source_partition": 0, "source_offset": 1}
    expected |= {"bronze_version": 1, "event_type": "click", "load_id": LOAD_ID}
    assertDataFrameEqual(quarantine, spark.createDataFrame([expected], SILVER_QUARANTINE.schema))


def test_earlier_ids_are_those_of_other_batches_on_the_batchs_event_dates(
    spark: SparkSession,
) -> None:
    silver = spark.createDataFrame(
        [
            ("a", date(2026, 11, 20), "query-1:6"),
            ("b", date(2026, 11, 21), "query-0:3"),
            ("c", date(2026, 11, 20), LOAD_ID),  # written by this very batch (a replay)
            ("d", date(2026, 11, 19), "query-1:2"),  # another date
        ],
        "event_id string, event_date date, load_id string",
    )

    ids = earlier_event_ids(silver, ["2026-11-20", "2026-11-21"], LOAD_ID)

    assertDataFrameEqual(
        ids, spark.createDataFrame([("a",), ("b",)], "event_id string"), checkRowOrder=False
    )
    assert earlier_event_ids(silver, [], LOAD_ID).isEmpty()


def test_tallies_count_rows_per_disposition_event_date_and_rule(spark: SparkSession) -> None:
    batch = classified(
        spark,
        {"bronze_version": 3},
        {"bronze_version": 4, "event_date": date(2026, 11, 21), "warnings": ["w1"]},
        {
            "bronze_version": 5,
            "event_date": None,
            "disposition": "quarantine",
            "failed_rules": ["r1", "r2"],
            "warnings": ["w1", "w2"],
        },
        {"bronze_version": 3, "disposition": "quarantine", "failed_rules": ["r1"]},
        {"bronze_version": 4, "disposition": "drop", "failed_rules": ["r3"]},
    )

    tallies = batch_tallies(batch)

    expected = spark.createDataFrame(
        [
            ("disposition", "ok", 2, 3, 4),
            ("disposition", "quarantine", 2, 3, 5),
            ("disposition", "drop", 1, 4, 4),
            ("event_date", "2026-11-20", 1, 3, 3),
            ("event_date", "2026-11-21", 1, 4, 4),
            ("quarantined_by_rule", "r1", 2, 3, 5),
            ("quarantined_by_rule", "r2", 1, 5, 5),
            ("dropped_by_rule", "r3", 1, 4, 4),
            ("warnings_by_rule", "w1", 2, 4, 5),
            ("warnings_by_rule", "w2", 1, 5, 5),
        ],
        StructType(
            [
                StructField("tally", StringType(), False),
                StructField("name", StringType(), True),
                StructField("rows", LongType(), False),
                StructField("first_version", LongType(), True),
                StructField("last_version", LongType(), True),
            ]
        ),
    )
    assertDataFrameEqual(tallies, expected, checkRowOrder=False)


def test_bronze_rows_are_parsed_gated_and_split_in_one_plan(spark: SparkSession) -> None:
    a, b, c = (f"00000000-0000-4000-8000-00000000000{n}" for n in "abc")

    def click(event_id: str, **changes: Any) -> str:
        body = {
            "event_id": event_id,
            "event_type": "click",
            "user_id": "user-1",
            "timestamp": "2026-11-20T10:00:00Z",
            "schema_version": 1,
            "item_id": "item-1",
            "properties": {"position": 1},
        }
        return json.dumps(body | changes)

    values = [click(a), click(a), click(b, user_id=7), "{broken", click(c)]
    bronze = spark.createDataFrame(
        [("k", value, "click", 0, offset, AT, AT, DAY) for offset, value in enumerate(values)],
        BRONZE_EVENTS_RAW.schema,
    ).withColumn("_commit_version", F.lit(4).cast("bigint"))
    gate = Gate(load_rule_set(SILVER_EVENTS.name, REPO / "conf" / "quality", QualitySettings()))
    batch = classified_events(gate.evaluate(parsed_events(bronze)), LOAD_ID)
    earlier = spark.createDataFrame([(c,)], "event_id string")

    duplicates = duplicate_events(batch, earlier)

    assertDataFrameEqual(
        keyed(duplicates),
        spark.createDataFrame(
            [
                (a, 4, 0, 1, "duplicate_in_batch"),
                (c, 4, 0, 4, "duplicate_existing"),
            ],
            DUPLICATES_SCHEMA,
        ),
        checkRowOrder=False,
    )
    quarantine = quarantined_events(batch).select(
        "source_offset", "event_id", "failed_rules", "raw_key", "raw_value"
    )
    assertDataFrameEqual(
        quarantine,
        spark.createDataFrame(
            [(2, b, ["type:user_id"], "k", values[2]), (3, None, ["json_parse"], "k", "{broken")],
            "source_offset bigint, event_id string, failed_rules array<string>, raw_key string, "
            "raw_value string",
        ),
        checkRowOrder=False,
    )
    expected = spark.createDataFrame(
        [
            (
                a,
                "click",
                "user-1",
                datetime(2026, 11, 20, 10, 0),
                "item-1",
                1,
                [],
                0,
                4,
                LOAD_ID,
                DAY,
            )
        ],
        "event_id string, event_type string, user_id string, event_ts timestamp, item_id string, "
        "schema_version bigint, quality_warnings array<string>, source_offset bigint, "
        "bronze_version bigint, load_id string, event_date date",
    )
    assertDataFrameEqual(silver_events(batch, duplicates).select(*expected.columns), expected)
