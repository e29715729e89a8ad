from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)
from pyspark.testing import assertDataFrameEqual

from pipelines.training.point_in_time import (
    LeakageError,
    check_no_leakage,
    labels,
    point_in_time_join,
    sampled_negatives,
    training_set_digest,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)
HOUR = timedelta(hours=1)

EVENTS_SCHEMA = StructType(
    [
        StructField("event_id", StringType(), True),
        StructField("event_type", StringType(), True),
        StructField("user_id", StringType(), True),
        StructField("item_id", StringType(), True),
        StructField("event_ts", TimestampType(), True),
    ]
)
LABELS_SCHEMA = StructType(
    [
        StructField("user_id", StringType(), True),
        StructField("item_id", StringType(), True),
        StructField("label_ts", TimestampType(), True),
        StructField("label", IntegerType(), True),
        StructField("source", StringType(), True),
    ]
)
USER_HISTORY_SCHEMA = StructType(
    [
        StructField("user_id", StringType(), True),
        StructField("feature_ts", TimestampType(), True),
        StructField("views", LongType(), True),
        StructField("ctr", DoubleType(), True),
    ]
)
ITEM_HISTORY_SCHEMA = StructType(
    [
        StructField("item_id", StringType(), True),
        StructField("feature_ts", TimestampType(), True),
        StructField("popularity", DoubleType(), True),
        StructField("category", StringType(), True),
    ]
)
TRAINING_SCHEMA = StructType(
    [
        *LABELS_SCHEMA.fields,
        StructField("user_feature_ts", TimestampType(), True),
        StructField("user_views", LongType(), True),
        StructField("user_ctr", DoubleType(), True),
        StructField("item_feature_ts", TimestampType(), True),
        StructField("item_popularity", DoubleType(), True),
        StructField("item_category", StringType(), True),
    ]
)


def event(
    event_id: str, at: timedelta, event_type: str, user: str, item: str | None
) -> tuple[Any, ...]:
    """One silver event ``at`` after ``T0``."""
    return (event_id, event_type, user, item, T0 + at)


def events(spark: SparkSession, *rows: tuple[Any, ...]) -> DataFrame:
    return spark.createDataFrame(list(rows), EVENTS_SCHEMA)


def label_rows(spark: SparkSession, *rows: tuple[Any, ...]) -> DataFrame:
    return spark.createDataFrame(list(rows), LABELS_SCHEMA)


# --- labels -------------------------------------------------------------------------------------


def outcome_events(spark: SparkSession) -> DataFrame:
    zero = timedelta(0)
    return events(
        spark,
        # u1/i1: purchase exactly at label_ts + horizon -> 1 (a repeated view is one exposure).
        event("e01", zero, "page_view", "u1", "i1"),
        event("e02", zero, "page_view", "u1", "i1"),
        event("e03", HOUR, "purchase", "u1", "i1"),
        # u1/i2: purchase 1 ms after the window -> 0.
        event("e04", zero, "page_view", "u1", "i2"),
        event("e05", HOUR + MS, "purchase", "u1", "i2"),
        # u2/i1: purchase at the exposure's own instant is not after it -> 0.
        event("e06", zero, "page_view", "u2", "i1"),
        event("e07", zero, "purchase", "u2", "i1"),
        # u2/i2: a click, not a purchase -> 0 for purchases, 1 for clicks.
        event("e08", zero, "page_view", "u2", "i2"),
        event("e09", 10 * MS, "click", "u2", "i2"),
        # u3/i3: outcomes by another user, and on another item, do not count.
        event("e10", zero, "page_view", "u3", "i3"),
        event("e11", MS, "purchase", "u4", "i3"),
        event("e12", MS, "purchase", "u3", "i1"),
        # Not exposures: a page view without an item, a search on an item.
        event("e13", zero, "page_view", "u1", None),
        event("e14", zero, "search", "u5", "i1"),
        # The last complete window ends at max(event_ts) = T0 + 2h: a view at T0 + 1h stays,
        # a view 1 ms later is dropped.
        event("e15", HOUR, "page_view", "u5", "i5"),
        event("e16", HOUR + MS, "page_view", "u5", "i6"),
        event("e17", 2 * HOUR, "search", "u9", None),
    )


def test_labels_purchase_window_is_left_open_right_closed(spark: SparkSession) -> None:
    result = labels(outcome_events(spark), label_event="purchase", horizon=HOUR)

    expected = label_rows(
        spark,
        ("u1", "i1", T0, 1, "exposure"),
        ("u1", "i2", T0, 0, "exposure"),
        ("u2", "i1", T0, 0, "exposure"),
        ("u2", "i2", T0, 0, "exposure"),
        ("u3", "i3", T0, 0, "exposure"),
        ("u5", "i5", T0 + HOUR, 0, "exposure"),
    )
    assertDataFrameEqual(result, expected, checkRowOrder=False)


def test_labels_on_clicks(spark: SparkSession) -> None:
    result = labels(outcome_events(spark), label_event="click", horizon=HOUR)

    expected = label_rows(
        spark,
        ("u1", "i1", T0, 0, "exposure"),
        ("u1", "i2", T0, 0, "exposure"),
        ("u2", "i1", T0, 0, "exposure"),
        ("u2", "i2", T0, 1, "exposure"),
        ("u3", "i3", T0, 0, "exposure"),
        ("u5", "i5", T0 + HOUR, 0, "exposure"),
    )
    assertDataFrameEqual(result, expected, checkRowOrder=False)


def test_labels_rejects_unknown_event_and_empty_horizon(spark: SparkSession) -> None:
    with pytest.raises(ValueError, match="label_event must be one of purchase, click"):
        labels(outcome_events(spark), label_event="search", horizon=HOUR)
    with pytest.raises(ValueError, match="horizon must be positive"):
        labels(outcome_events(spark), label_event="purchase", horizon=timedelta(0))


# --- point-in-time join -------------------------------------------------------------------------


def pit_inputs(spark: SparkSession) -> tuple[DataFrame, DataFrame, DataFrame]:
    label_df = label_rows(
        spark,
        ("u1", "i1", T0, 1, "exposure"),
        ("u2", "i2", T0, 0, "exposure"),
        ("u3", "i3", T0, 0, "sampled"),
        ("u1", "i2", T0 + HOUR, 0, "exposure"),
    )
    user_history = spark.createDataFrame(
        [
            ("u1", T0 - 2 * HOUR, 1, 0.1),
            ("u1", T0 - HOUR, 2, 0.2),  # the latest before T0
            ("u1", T0 + MS, 99, 0.99),  # one millisecond too late for T0; used at T0 + 1h
            ("u2", T0, 50, 0.5),  # exactly at the label: not known before it
        ],
        USER_HISTORY_SCHEMA,
    )
    item_history = spark.createDataFrame(
        [
            ("i1", T0 - MS, 0.5, "books"),  # the latest strictly before T0
            ("i1", T0, 0.9, "books"),  # exactly at the label
            ("i2", T0 - timedelta(days=1), 0.1, "toys"),
            ("i2", T0 + MS, 0.2, "games"),
        ],
        ITEM_HISTORY_SCHEMA,
    )
    return label_df, user_history, item_history


def test_point_in_time_join_takes_latest_rows_strictly_before_the_label(
    spark: SparkSession,
) -> None:
    label_df, user_history, item_history = pit_inputs(spark)

    result = point_in_time_join(label_df, user_history, item_history)

    expected = spark.createDataFrame(
        [
            ("u1", "i1", T0, 1, "exposure", T0 - HOUR, 2, 0.2, T0 - MS, 0.5, "books"),
            ("u2", "i2", T0, 0, "exposure", None, None, None, T0 - timedelta(days=1), 0.1, "toys"),
            ("u3", "i3", T0, 0, "sampled", None, None, None, None, None, None),
            ("u1", "i2", T0 + HOUR, 0, "exposure", T0 + MS, 99, 0.99, T0 + MS, 0.2, "games"),
        ],
        TRAINING_SCHEMA,
    )
    assertDataFrameEqual(result, expected, checkRowOrder=False)
    assert result.columns == TRAINING_SCHEMA.fieldNames()


def test_point_in_time_join_is_deterministic_with_tied_and_shuffled_history(
    spark: SparkSession,
) -> None:
    label_df, user_history, item_history = pit_inputs(spark)
    # Two rows of u1 published at the same instant: the rule picks the greater JSON encoding.
    tied = user_history.unionByName(
        spark.createDataFrame([("u1", T0 - HOUR, 3, 0.3)], USER_HISTORY_SCHEMA)
    )

    first = point_in_time_join(label_df, tied, item_history)
    second = point_in_time_join(
        label_df.repartition(3),
        tied.orderBy(F.desc("views")).repartition(4),
        item_history.repartition(2),
    )

    first_rows = first.collect()
    assertDataFrameEqual(second, first_rows, checkRowOrder=False)
    picked = [r for r in first_rows if r.user_id == "u1" and r.item_id == "i1"]
    assert [(r.user_views, r.user_ctr) for r in picked] == [(3, 0.3)]


def test_point_in_time_join_keeps_duplicate_labels_and_rejects_clashing_names(
    spark: SparkSession,
) -> None:
    label_df, user_history, item_history = pit_inputs(spark)
    doubled = label_df.unionByName(label_df)

    assert point_in_time_join(doubled, user_history, item_history).count() == 8
    with pytest.raises(ValueError, match=r"duplicate columns \['user_id'\]"):
        point_in_time_join(label_df, user_history.withColumn("id", F.lit(1)), item_history)


# --- leakage ------------------------------------------------------------------------------------


def naive_join(label_df: DataFrame, user_history: DataFrame, item_history: DataFrame) -> DataFrame:
    """The classic mistake: each key's latest feature row, whenever it was computed."""

    def latest(history: DataFrame, key: str, prefix: str) -> DataFrame:
        newest = history.groupBy(key).agg(F.max("feature_ts").alias("feature_ts"))
        rows = history.join(newest, [key, "feature_ts"])
        return rows.select(key, *(F.col(c).alias(prefix + c) for c in rows.columns if c != key))

    return label_df.join(latest(user_history, "user_id", "user_"), "user_id", "left").join(
        latest(item_history, "item_id", "item_"), "item_id", "left"
    )


def test_check_no_leakage_passes_on_point_in_time_join(spark: SparkSession) -> None:
    check_no_leakage(point_in_time_join(*pit_inputs(spark)))


def test_check_no_leakage_catches_a_naive_join(spark: SparkSession) -> None:
    leaky = naive_join(*pit_inputs(spark))

    with pytest.raises(LeakageError) as caught:
        check_no_leakage(leaky)

    message = str(caught.value)
    # user: u1 at T0 sees T0 + 1ms, u2 at T0 sees T0 (u1 at T0 + 1h is fine).
    # item: i1 at T0 sees T0, i2 at T0 sees T0 + 1ms (i2 at T0 + 1h is fine).
    assert caught.value.leaking_rows == {"user_feature_ts": 2, "item_feature_ts": 2}
    assert "2 row(s) have user_feature_ts >= label_ts" in message
    assert "2 row(s) have item_feature_ts >= label_ts" in message
    assert (
        "(user_id=u1, item_id=i1, label_ts=2026-03-01T12:00:00+00:00, "
        "user_feature_ts=2026-03-01T12:00:00.001000+00:00); "
        "(user_id=u2, item_id=i2, label_ts=2026-03-01T12:00:00+00:00, "
        "user_feature_ts=2026-03-01T12:00:00+00:00)" in message
    )
    assert "point_in_time_join" in message


def test_check_no_leakage_requires_a_feature_timestamp(spark: SparkSession) -> None:
    with pytest.raises(ValueError, match="neither user_feature_ts nor item_feature_ts"):
        check_no_leakage(label_rows(spark, ("u1", "i1", T0, 1, "exposure")))


# --- sampled negatives --------------------------------------------------------------------------

ITEMS = [f"i{n:02d}" for n in range(20)]


def catalog_events(spark: SparkSession) -> DataFrame:
    """20 items; u1 touched i00..i02 (any event type), u2 touched all but i18 and i19."""
    rows = [event(f"c-{item}", timedelta(0), "page_view", "u0", item) for item in ITEMS]
    rows += [
        event("u1-a", timedelta(0), "page_view", "u1", "i00"),
        event("u1-b", MS, "click", "u1", "i01"),
        event("u1-c", HOUR, "add_to_cart", "u1", "i02"),
    ]
    rows += [event(f"u2-{item}", MS, "search", "u2", item) for item in ITEMS[:18]]
    return events(spark, *rows)


def sampling_labels(spark: SparkSession) -> DataFrame:
    return label_rows(
        spark,
        ("u1", "i00", T0, 1, "exposure"),
        ("u1", "i01", T0 + HOUR, 1, "exposure"),
        ("u1", "i02", T0 + HOUR, 0, "exposure"),  # a negative: samples nothing
        ("u2", "i00", T0, 1, "exposure"),
    )


def expected_negatives(
    spark: SparkSession, positives: list[tuple[str, datetime]], untouched: dict[str, list[str]]
) -> list[tuple[Any, ...]]:
    """The documented choice, ranking every candidate with Spark's xxhash64 as the oracle."""
    pairs = spark.createDataFrame(
        [(n, u, ts, item) for n, (u, ts) in enumerate(positives) for item in untouched[u]],
        "positive int, user_id string, label_ts timestamp, item_id string",
    )
    hash_of = F.xxhash64(F.lit(7).cast("bigint"), "user_id", "label_ts", "item_id")
    ranked = pairs.select("positive", hash_of.alias("h"), "item_id").collect()
    chosen = []
    for n, (user, ts) in enumerate(positives):
        mine = sorted((r.h, r.item_id) for r in ranked if r.positive == n)
        chosen += [(user, item, ts, 0, "sampled") for _, item in mine[:3]]
    return chosen


def test_sampled_negatives_follow_the_documented_ranking(spark: SparkSession) -> None:
    result = sampled_negatives(
        sampling_labels(spark), catalog_events(spark), per_positive=3, seed=7
    ).collect()

    untouched = {"u1": ITEMS[3:], "u2": ITEMS[18:]}
    positives = [("u1", T0), ("u1", T0 + HOUR), ("u2", T0)]
    expected = expected_negatives(spark, positives, untouched)
    assertDataFrameEqual(result, label_rows(spark, *expected), checkRowOrder=False)
    # Exactly 3 per positive of u1; u2 has only two untouched items: both, and no more.
    per_positive = Counter((r.user_id, r.label_ts) for r in result)
    assert sorted(per_positive.values()) == [2, 3, 3]
    assert sorted(r.item_id for r in result if r.user_id == "u2") == ["i18", "i19"]


def test_sampled_negatives_are_reproducible_and_seeded(spark: SparkSession) -> None:
    label_df, event_df = sampling_labels(spark), catalog_events(spark)

    first = sampled_negatives(label_df, event_df, per_positive=3, seed=7).collect()
    reshuffled = sampled_negatives(
        label_df.orderBy(F.desc("label_ts")).repartition(3),
        event_df.orderBy(F.desc("event_id")).repartition(5),
        per_positive=3,
        seed=7,
    )
    other_seed = sampled_negatives(label_df, event_df, per_positive=3, seed=8).collect()

    assertDataFrameEqual(reshuffled, first, checkRowOrder=False)
    u1_items = {(r.label_ts, r.item_id) for r in first if r.user_id == "u1"}
    u1_other = {(r.label_ts, r.item_id) for r in other_seed if r.user_id == "u1"}
    assert len(u1_items) == len(u1_other) == 6
    assert u1_items != u1_other
    touched = {(r.user_id, r.item_id) for r in event_df.collect()}
    assert not {(r.user_id, r.item_id) for r in [*first, *other_seed]} & touched


def test_sampled_negatives_share_one_ranking_for_simultaneous_positives(
    spark: SparkSession,
) -> None:
    label_df = label_rows(spark, ("u1", "i00", T0, 1, "exposure"), ("u1", "i01", T0, 1, "exposure"))

    result = sampled_negatives(label_df, catalog_events(spark), per_positive=3, seed=7).collect()

    assert len(result) == len(set(result)) == 6


# --- digest -------------------------------------------------------------------------------------

DIGEST_SCHEMA = StructType(
    [
        StructField("user_id", StringType(), True),
        StructField("label_ts", TimestampType(), True),
        StructField("label", IntegerType(), True),
        StructField("score", DoubleType(), True),
        StructField("tags", ArrayType(StringType()), True),
        StructField("weights", MapType(StringType(), DoubleType()), True),
        StructField(
            "last",
            StructType(
                [
                    StructField("at", TimestampType(), True),
                    StructField("what", StringType(), True),
                ]
            ),
            True,
        ),
    ]
)
DIGEST_ROWS: list[tuple[Any, ...]] = [
    ("u1", T0, 1, 0.5, ["a", "b"], {"x": 1.0, "y": 2.0}, (T0 - MS, "view")),
    ("u2", T0 + MS, 0, None, [], {}, None),
    ("u3", None, 0, 1e-300, None, None, (None, None)),
    ("u3", T0, 0, -0.25, ["b", "a"], {"y": 2.0}, (T0, "click")),
]


def test_digest_ignores_row_order_partitioning_and_map_entry_order(spark: SparkSession) -> None:
    df = spark.createDataFrame(DIGEST_ROWS, DIGEST_SCHEMA)
    reordered_maps = [
        (*row[:5], dict(reversed(list((row[5] or {}).items()))), row[6]) for row in DIGEST_ROWS
    ]
    reordered_maps[2] = DIGEST_ROWS[2]  # keep its null map null
    shuffled = spark.createDataFrame(list(reversed(reordered_maps)), DIGEST_SCHEMA).repartition(3)

    digest = training_set_digest(df)

    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert training_set_digest(shuffled) == digest
    assert training_set_digest(df.orderBy(F.desc("user_id")).coalesce(1)) == digest


@pytest.mark.parametrize(
    ("row", "change"),
    [
        (0, lambda r: (*r[:3], 0.5000000001, *r[4:])),
        (1, lambda r: (r[0], r[1] + timedelta(microseconds=1), *r[2:])),
        (0, lambda r: (*r[:4], ["b", "a"], *r[5:])),
        (3, lambda r: (*r[:5], {"y": 2.5}, r[6])),
        (2, lambda r: (*r[:6], None)),
        (1, lambda r: (*r[:3], 0.0, *r[4:])),
    ],
    ids=["float", "timestamp", "array-order", "map-value", "null-struct", "null-to-value"],
)
def test_digest_changes_with_any_value(spark: SparkSession, row: int, change: Any) -> None:
    changed = list(DIGEST_ROWS)
    changed[row] = change(DIGEST_ROWS[row])

    original = training_set_digest(spark.createDataFrame(DIGEST_ROWS, DIGEST_SCHEMA))

    assert training_set_digest(spark.createDataFrame(changed, DIGEST_SCHEMA)) != original


def test_digest_counts_duplicates_and_names(spark: SparkSession) -> None:
    df = spark.createDataFrame(DIGEST_ROWS, DIGEST_SCHEMA)

    assert training_set_digest(df.unionByName(df.limit(1))) != training_set_digest(df)
    assert training_set_digest(df.withColumnRenamed("score", "p")) != training_set_digest(df)


# --- end to end ---------------------------------------------------------------------------------


def test_labels_negatives_and_join_compose_into_a_leak_free_set(spark: SparkSession) -> None:
    event_df = outcome_events(spark)
    exposures = labels(event_df, label_event="purchase", horizon=HOUR)
    negatives = sampled_negatives(exposures, event_df, per_positive=2, seed=1)
    _, user_history, item_history = pit_inputs(spark)

    training = point_in_time_join(exposures.unionByName(negatives), user_history, item_history)

    check_no_leakage(training)
    rows = training.collect()
    assert sorted((r.source, r.label) for r in rows) == [
        *[("exposure", 0)] * 5,
        ("exposure", 1),
        ("sampled", 0),
        ("sampled", 0),
    ]
    # The one positive (u1 saw i1 at T0) gets features known strictly before T0.
    positive = next(r for r in rows if r.label == 1)
    assert (positive.user_feature_ts, positive.item_feature_ts) == (
        (T0 - HOUR).astimezone().replace(tzinfo=None),
        (T0 - MS).astimezone().replace(tzinfo=None),
    )
