from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)
from pyspark.testing import assertDataFrameEqual

from pipelines.gold.features import (
    FEATURES,
    ITEM_BUCKETS_SCHEMA,
    ITEM_FEATURES_SCHEMA,
    ITEM_FEATURES_TABLE,
    USER_BUCKETS_SCHEMA,
    USER_FEATURES_SCHEMA,
    USER_FEATURES_TABLE,
    bucket_elements,
    exact_elements,
    features_markdown,
    item_feature_buckets,
    item_features,
    item_features_at,
    item_features_from_elements,
    merged_bucket_columns,
    spark_type,
    user_feature_buckets,
    user_features,
    user_features_at,
    user_features_from_elements,
)
from pipelines.silver.sessions import SESSIONS_SCHEMA

AS_OF = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
TYPES = ("page_view", "click", "search", "add_to_cart", "purchase")
USER_WINDOWS = ("1h", "24h", "7d", "30d")
ITEM_WINDOWS = ("1h", "24h", "7d")
ITEM_COUNTS = ("views", "clicks", "add_to_carts", "purchases")

# The silver event columns the features read, all nullable as in silver.events.
EVENTS_SCHEMA = StructType(
    [
        StructField("event_id", StringType(), True),
        StructField("event_type", StringType(), True),
        StructField("user_id", StringType(), True),
        StructField("event_ts", TimestampType(), True),
        StructField("item_id", StringType(), True),
        StructField(
            "properties",
            StructType(
                [
                    StructField("category", StringType(), True),
                    StructField("revenue", DoubleType(), True),
                    StructField("quantity", LongType(), True),
                ]
            ),
            True,
        ),
    ]
)


def event(
    at: timedelta,
    event_type: str = "page_view",
    *,
    user: str | None = "u1",
    item: str | None = None,
    category: str | None = None,
    revenue: float | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """One silver event ``at`` relative to ``AS_OF`` (negative: before it)."""
    return {
        "event_id": event_id,
        "event_type": event_type,
        "user_id": user,
        "event_ts": AS_OF + at,
        "item_id": item,
        "properties": (category, revenue, None),
    }


def events(spark: SparkSession, *rows: dict[str, Any]) -> DataFrame:
    """Events with ids ``e0, e1, …`` by position unless given."""
    tuples = [
        tuple({**row, "event_id": row["event_id"] or f"e{i}"}[n] for n in EVENTS_SCHEMA.names)
        for i, row in enumerate(rows)
    ]
    return spark.createDataFrame(tuples, EVENTS_SCHEMA)


def session(start: timedelta, duration_s: float, *, user: str = "u1") -> tuple[Any, ...]:
    begin = AS_OF + start
    return (
        f"s-{user}-{start}",
        user,
        begin,
        begin + timedelta(seconds=duration_s),
        duration_s,
        1,
        1,
        0,
        0,
        0,
        0,
        0,
        False,
        0.0,
        begin.date(),
    )


def sessions(spark: SparkSession, *rows: tuple[Any, ...]) -> DataFrame:
    return spark.createDataFrame(list(rows), SESSIONS_SCHEMA)


def user_row(user: str, last_event: timedelta, **features: Any) -> dict[str, Any]:
    """The expected row of a user whose latest event is ``last_event`` from ``AS_OF``.

    Every feature not given has its "nothing happened" value.
    """
    row: dict[str, Any] = {
        "user_id": user,
        "feature_ts": AS_OF,
        **{f"{t}_count_{w}": 0 for t in TYPES for w in USER_WINDOWS},
        "distinct_items_30d": 0,
        "top_categories": [],
        "last_event_ts": AS_OF + last_event,
        "recency_s": -last_event.total_seconds(),
        "sessions_7d": 0,
        "mean_session_length_s_7d": 0.0,
        "purchases_30d": 0,
        "revenue_30d": 0.0,
        "is_cold_start": True,
    }
    return _override(row, features)


def item_row(item: str, **features: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "item_id": item,
        "feature_ts": AS_OF,
        **{f"{n}_{w}": 0 for n in ITEM_COUNTS for w in ITEM_WINDOWS},
        "ctr_7d": 0.0,
        "conversion_rate_7d": 0.0,
        "trending_score": 1.0,
        "category": None,
    }
    return _override(row, features)


def _override(row: dict[str, Any], features: dict[str, Any]) -> dict[str, Any]:
    unknown = set(features) - set(row)
    assert not unknown, f"not a feature: {unknown}"
    return {**row, **features}


def frame(spark: SparkSession, schema: StructType, *rows: dict[str, Any]) -> DataFrame:
    return spark.createDataFrame([tuple(r[n] for n in schema.names) for r in rows], schema)


def assert_rows(actual: DataFrame, expected: DataFrame) -> None:
    """Full rows, exact floats, and the schema including nullability."""
    assertDataFrameEqual(
        actual, expected, checkRowOrder=False, ignoreNullable=False, rtol=0.0, atol=0.0
    )


def no_sessions(spark: SparkSession) -> DataFrame:
    return sessions(spark)


# --- user features ---------------------------------------------------------------------------


def test_user_counts_apply_each_window_exactly(spark: SparkSession) -> None:
    history = events(
        spark,
        event(timedelta(0), item="i1"),  # exactly at as_of: in every window
        event(-HOUR, item="i1"),  # exactly at as_of - 1h: out of 1h, in 24h
        event(-HOUR + MS, "click", item="i2"),  # just inside 1h
        event(-DAY, "search"),  # exactly at as_of - 24h: out of 24h, in 7d
        event(-7 * DAY, "add_to_cart", item="i3"),  # out of 7d, in 30d
        event(-30 * DAY, "purchase", item="i4", revenue=50.0),  # out of 30d
        event(-30 * DAY + MS, "purchase", item="i3", revenue=20.0),  # just inside 30d
        event(-2 * DAY, "purchase", item="i3", revenue=None),  # no revenue: adds 0
        event(MS, "click", item="i9"),  # after as_of: ignored everywhere
        event(-MS, user=None),  # no user: ignored
    )
    expected = user_row(
        "u1",
        timedelta(0),
        page_view_count_1h=1,
        page_view_count_24h=2,
        page_view_count_7d=2,
        page_view_count_30d=2,
        click_count_1h=1,
        click_count_24h=1,
        click_count_7d=1,
        click_count_30d=1,
        search_count_7d=1,
        search_count_30d=1,
        add_to_cart_count_30d=1,
        purchase_count_7d=1,
        purchase_count_30d=2,
        distinct_items_30d=3,
        purchases_30d=2,
        revenue_30d=20.0,
        is_cold_start=False,
    )
    actual = user_features(history, no_sessions(spark), AS_OF)
    assert actual.schema == USER_FEATURES_SCHEMA
    assert_rows(actual, frame(spark, USER_FEATURES_SCHEMA, expected))


def test_top_categories_weights_order_and_ties(spark: SparkSession) -> None:
    history = events(
        spark,
        event(-HOUR, "purchase", category="books"),  # 8
        event(-HOUR, "add_to_cart", category="toys"),  # 4
        event(-2 * HOUR, "click", category="games"),  # 2 + 2 = 4, ties with toys
        event(-3 * HOUR, "click", category="games"),
        event(-DAY, "click", category="garden"),  # 2
        event(-2 * DAY, category="music"),  # 1, ties with art: art wins the 5th place
        event(-29 * DAY, category="art"),  # 1
        event(-DAY, "search", category="sports"),  # searches weigh 0: never a top category
        event(-DAY, "click"),  # no category
        event(-30 * DAY, "purchase", category="books"),  # out of 30d
        event(MS, "purchase", category="future"),  # after as_of
        event(-HOUR, "search", user="u2", category="sports"),
    )
    total = 8 + 4 + 4 + 2 + 1 + 1
    top = [
        ("books", 8 / total),
        ("games", 4 / total),
        ("toys", 4 / total),
        ("garden", 2 / total),
        ("art", 1 / total),
    ]
    expected = [
        user_row(
            "u1",
            -HOUR,
            page_view_count_7d=1,
            page_view_count_30d=2,
            click_count_24h=2,
            click_count_7d=4,
            click_count_30d=4,
            search_count_7d=1,
            search_count_30d=1,
            add_to_cart_count_24h=1,
            add_to_cart_count_7d=1,
            add_to_cart_count_30d=1,
            purchase_count_24h=1,
            purchase_count_7d=1,
            purchase_count_30d=1,
            top_categories=top,
            purchases_30d=1,
            is_cold_start=False,
        ),
        user_row(
            "u2",
            -HOUR,
            search_count_24h=1,
            search_count_7d=1,
            search_count_30d=1,
        ),
    ]
    assert [w for _, w in top] == [0.4, 0.2, 0.2, 0.1, 0.05]
    actual = user_features(history, no_sessions(spark), AS_OF)
    assert_rows(actual, frame(spark, USER_FEATURES_SCHEMA, *expected))


def test_recency_from_latest_event_up_to_as_of(spark: SparkSession) -> None:
    history = events(
        spark,
        event(-90 * HOUR, user="u1"),
        event(-timedelta(minutes=90, milliseconds=500), "search", user="u1"),
        event(MS, user="u1"),  # after as_of: not the latest
        event(-31 * DAY, user="u2"),  # only an old event: a row of zeros and its recency
        event(MS, user="u3"),  # only future events: no row
    )
    expected = [
        user_row(
            "u1",
            -timedelta(minutes=90, milliseconds=500),
            page_view_count_7d=1,
            page_view_count_30d=1,
            search_count_24h=1,
            search_count_7d=1,
            search_count_30d=1,
        ),
        user_row("u2", -31 * DAY),
    ]
    assert expected[0]["recency_s"] == 5400.5
    assert expected[1]["recency_s"] == 2_678_400.0
    actual = user_features(history, no_sessions(spark), AS_OF)
    assert_rows(actual, frame(spark, USER_FEATURES_SCHEMA, *expected))


def test_sessions_in_7d_by_session_start(spark: SparkSession) -> None:
    history = events(spark, event(-HOUR, user="u1"), event(-HOUR, user="u2"))
    user_sessions = sessions(
        spark,
        session(timedelta(0), 100.0),  # starts exactly at as_of: in
        session(-7 * DAY + MS, 300.0),  # just inside 7d
        session(-7 * DAY, 999.0),  # exactly at as_of - 7d: out
        session(MS, 999.0),  # starts after as_of: ignored
        session(-HOUR, 50.0, user="u9"),  # a user without events gets no row
    )
    expected = [
        user_row(
            "u1",
            -HOUR,
            page_view_count_24h=1,
            page_view_count_7d=1,
            page_view_count_30d=1,
            sessions_7d=2,
            mean_session_length_s_7d=200.0,
        ),
        user_row("u2", -HOUR, page_view_count_24h=1, page_view_count_7d=1, page_view_count_30d=1),
    ]
    actual = user_features(history, user_sessions, AS_OF)
    assert_rows(actual, frame(spark, USER_FEATURES_SCHEMA, *expected))


def test_cold_start_below_five_events_in_30d(spark: SparkSession) -> None:
    cold = [event(-n * DAY, "search", user="cold") for n in range(4)]
    warm = [event(-n * DAY, "search", user="warm") for n in range(5)]
    history = events(
        spark,
        *cold,
        *warm,
        event(-30 * DAY, "search", user="cold"),  # the 5th, but out of 30d
        event(MS, "search", user="cold"),  # the 6th, but after as_of
    )
    expected = [
        user_row(
            "cold",
            timedelta(0),
            search_count_1h=1,
            search_count_24h=1,
            search_count_7d=4,
            search_count_30d=4,
            is_cold_start=True,
        ),
        user_row(
            "warm",
            timedelta(0),
            search_count_1h=1,
            search_count_24h=1,
            search_count_7d=5,
            search_count_30d=5,
            is_cold_start=False,
        ),
    ]
    actual = user_features(history, no_sessions(spark), AS_OF)
    assert_rows(actual, frame(spark, USER_FEATURES_SCHEMA, *expected))


def test_as_of_must_be_timezone_aware(spark: SparkSession) -> None:
    naive = AS_OF.replace(tzinfo=None)
    history = events(spark, event(-HOUR))
    with pytest.raises(ValueError, match="as_of must be timezone-aware"):
        user_features(history, no_sessions(spark), naive)
    with pytest.raises(ValueError, match="as_of must be timezone-aware"):
        item_features(history, naive)


# --- item features ---------------------------------------------------------------------------


def test_item_counts_rates_capping_and_zero_division(spark: SparkSession) -> None:
    history = events(
        spark,
        # a: more clicks than views -> ctr capped at 1.0
        event(timedelta(0), item="a"),
        event(-HOUR, item="a"),  # out of 1h
        event(-HOUR + MS, "click", item="a"),
        event(-2 * DAY, "click", item="a"),
        event(-3 * DAY, "click", item="a"),
        event(-4 * DAY, "purchase", item="a"),
        event(-7 * DAY, "click", item="a"),  # out of 7d
        event(MS, "page_view", item="a"),  # after as_of
        # b: no views and no clicks -> both rates 0.0
        event(-2 * HOUR, "add_to_cart", item="b"),
        # c: more purchases than clicks -> conversion capped at 1.0
        *(event(-n * DAY - HOUR, item="c") for n in range(4)),
        event(-3 * HOUR, "click", item="c"),
        event(-5 * HOUR, "purchase", item="c"),
        event(-6 * HOUR, "purchase", item="c"),
        event(-MS, "search", item=None),  # no item: no row
    )
    expected = [
        item_row(
            "a",
            views_1h=1,
            views_24h=2,
            views_7d=2,
            clicks_1h=1,
            clicks_24h=1,
            clicks_7d=3,
            purchases_7d=1,
            ctr_7d=1.0,
            conversion_rate_7d=1 / 3,
            trending_score=(2 + 2 * 1 + 1) / ((2 + 2 * 3 + 8 * 1) / 7 + 1),
        ),
        item_row(
            "b",
            add_to_carts_24h=1,
            add_to_carts_7d=1,
            trending_score=(4 + 1) / (4 / 7 + 1),
        ),
        item_row(
            "c",
            views_24h=1,
            views_7d=4,
            clicks_24h=1,
            clicks_7d=1,
            purchases_24h=2,
            purchases_7d=2,
            ctr_7d=0.25,
            conversion_rate_7d=1.0,
            trending_score=(1 + 2 + 16 + 1) / ((4 + 2 + 16) / 7 + 1),
        ),
    ]
    actual = item_features(history, AS_OF)
    assert actual.schema == ITEM_FEATURES_SCHEMA
    assert_rows(actual, frame(spark, ITEM_FEATURES_SCHEMA, *expected))


def test_trending_score_exact_small_case(spark: SparkSession) -> None:
    history = events(
        spark,
        event(-2 * HOUR, item="t"),  # 24h and 7d: 1
        event(-DAY, "click", item="t"),  # exactly as_of - 24h: 7d only, 2
        event(-3 * DAY, "purchase", item="t"),  # 7d only, 8
    )
    expected = item_row(
        "t",
        views_24h=1,
        views_7d=1,
        clicks_7d=1,
        purchases_7d=1,
        conversion_rate_7d=1.0,
        ctr_7d=1.0,
        trending_score=(1 + 1) / ((1 + 2 + 8) / 7 + 1),
    )
    assert expected["trending_score"] == pytest.approx(7 / 9)  # 2 / (18 / 7): falling
    actual = item_features(history, AS_OF)
    assert_rows(actual, frame(spark, ITEM_FEATURES_SCHEMA, expected))


def test_item_category_from_latest_event_with_one(spark: SparkSession) -> None:
    history = events(
        spark,
        event(-2 * HOUR, item="x", category="a"),
        event(-HOUR, item="x", category="b"),  # the latest with a category
        event(-timedelta(minutes=10), item="x"),  # later, but no category
        event(MS, item="x", category="c"),  # after as_of
        event(-HOUR, "search", item="y"),  # never a category
        event(-HOUR, item="z", category="q", event_id="z2"),  # same time: greatest id wins
        event(-HOUR, item="z", category="p", event_id="z1"),
    )
    expected = [
        item_row(
            "x",
            views_1h=1,
            views_24h=3,
            views_7d=3,
            category="b",
            trending_score=(3 + 1) / (3 / 7 + 1),
        ),
        item_row("y"),
        item_row(
            "z",
            views_24h=2,
            views_7d=2,
            category="q",
            trending_score=(2 + 1) / (2 / 7 + 1),
        ),
    ]
    actual = item_features(history, AS_OF)
    assert_rows(actual, frame(spark, ITEM_FEATURES_SCHEMA, *expected))


# --- declarations ----------------------------------------------------------------------------


def test_schemas_follow_features_order_and_types() -> None:
    counts = [f"{t}_count_{w}" for t in TYPES for w in USER_WINDOWS]
    assert USER_FEATURES_SCHEMA.names == [
        "user_id",
        "feature_ts",
        *counts,
        "distinct_items_30d",
        "top_categories",
        "last_event_ts",
        "recency_s",
        "sessions_7d",
        "mean_session_length_s_7d",
        "purchases_30d",
        "revenue_30d",
        "is_cold_start",
    ]
    assert ITEM_FEATURES_SCHEMA.names == [
        "item_id",
        "feature_ts",
        *(f"{n}_{w}" for n in ITEM_COUNTS for w in ITEM_WINDOWS),
        "ctr_7d",
        "conversion_rate_7d",
        "trending_score",
        "category",
    ]
    for table, schema in (
        (USER_FEATURES_TABLE, USER_FEATURES_SCHEMA),
        (ITEM_FEATURES_TABLE, ITEM_FEATURES_SCHEMA),
    ):
        declared = [f for f in FEATURES if f.table == table]
        assert schema.names[2:] == [f.name for f in declared]
        assert [schema[f.name].dataType for f in declared] == [spark_type(f) for f in declared]
        assert [schema[f.name].dataType.simpleString() for f in declared] == [
            f.dtype for f in declared
        ]
    assert len(FEATURES) == len(USER_FEATURES_SCHEMA) + len(ITEM_FEATURES_SCHEMA) - 4
    assert USER_FEATURES_SCHEMA["top_categories"].dataType.simpleString() == (
        "array<struct<category:string,weight:double>>"
    )


def test_features_markdown_documents_every_feature() -> None:
    text = features_markdown()
    assert text.startswith("# ")
    assert "(T - w, T]" in text
    assert "`feature_ts`" in text
    for table in (USER_FEATURES_TABLE, ITEM_FEATURES_TABLE):
        assert f"## `{table}`" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(FEATURES)
    for feature, row in zip(FEATURES, rows, strict=True):
        assert row.startswith(
            f"| `{feature.name}` | `{feature.dtype}` | {feature.window or '—'} | "
            f"{feature.source} | "
        )
        assert feature.description in row
    user_section, item_section = text.split(f"## `{ITEM_FEATURES_TABLE}`")
    assert all(
        (f"| `{f.name}` |" in user_section) == (f.table == USER_FEATURES_TABLE) for f in FEATURES
    )
    assert "`item_id`" in item_section


# --- incremental: buckets -------------------------------------------------------------------


def edge_events(spark: SparkSession) -> DataFrame:
    """Every user's events just before, at and just after each window edge of ``AS_OF`` and of
    ``AS_OF - 30 min`` (so buckets straddle edges), with types, items, categories and revenue."""
    edges = [timedelta(0), -HOUR, -DAY, -7 * DAY, -30 * DAY]
    offsets = [
        edge + shift + nudge
        for edge in edges
        for shift in (timedelta(0), -HOUR / 2)
        for nudge in (-MS, timedelta(0), MS)
    ] + [-2 * HOUR, -40 * DAY]
    types = ("page_view", "click", "search", "add_to_cart", "purchase")
    categories = (None, "books", "music", "garden")  # an item's category, one per item
    rows = []
    for j, user in enumerate(("u0", "u1", "u2")):
        for i, at in enumerate(offsets):
            kind = types[(i + j) % 5]
            item = None if kind == "search" else (i + 2 * j) % 4
            rows.append(
                event(
                    at,
                    kind,
                    user=user,
                    item=None if item is None else f"i{item}",
                    category=None if item is None else categories[item],
                    revenue=2.5 * i if kind == "purchase" else None,
                )
            )
    # A user and an item whose only event is older than any point's 30 days.
    rows.append(event(-40 * DAY, "click", user="u3", item="i5", category="books"))
    return events(spark, *rows)


def points(spark: SparkSession, key: str, *at: timedelta) -> DataFrame:
    schema = StructType(
        [StructField(key, StringType(), True), StructField("as_of", TimestampType(), True)]
    )
    keys = ("u0", "u1", "u2", "u3", "u9") if key == "user_id" else ("i0", "i1", "i3", "i5", "i9")
    return spark.createDataFrame([(k, AS_OF + a) for k in keys for a in at], schema)


def merged(spark: SparkSession, key: str, a: DataFrame, b: DataFrame) -> DataFrame:
    """What the state's MERGE makes of bucket rows ``a`` and the contributions ``b``."""
    schema = USER_BUCKETS_SCHEMA if key == "user_id" else ITEM_BUCKETS_SCHEMA
    on = [key, "bucket_end"]
    joined = a.alias("t").join(
        b.alias("s"),
        (F.col(f"t.{key}") == F.col(f"s.{key}")) & (F.col("t.bucket_end") == F.col("s.bucket_end")),
        "full",
    )
    update = merged_bucket_columns(schema, "t", "s")
    only_t, only_s = F.col(f"s.{key}").isNull(), F.col(f"t.{key}").isNull()
    return joined.select(
        *(F.coalesce(F.col(f"t.{c}"), F.col(f"s.{c}")).alias(c) for c in on),
        *(
            F.when(only_t, F.col(f"t.{c}"))
            .when(only_s, F.col(f"s.{c}"))
            .otherwise(update[c])
            .cast(schema[c].dataType)
            .alias(c)
            for c in schema.fieldNames()
            if c not in on
        ),
    )


@pytest.mark.parametrize("kind", ["users", "items"])
def test_features_from_merged_buckets_equal_the_recomputation(
    spark: SparkSession, kind: str
) -> None:
    history = edge_events(spark).persist()
    key = "user_id" if kind == "users" else "item_id"
    at = points(spark, key, timedelta(0), -HOUR / 2, -2 * HOUR, -30 * DAY + HOUR / 2)
    buckets_of = user_feature_buckets if kind == "users" else item_feature_buckets
    early = history.where(F.col("event_id") < "e3")  # some events; the rest arrive later
    state = merged(spark, key, buckets_of(early), buckets_of(history.exceptAll(early)))
    # The MERGE writes into the table's schema: compare values (exactly), not nullability.
    assertDataFrameEqual(state, buckets_of(history), checkRowOrder=False, rtol=0.0, atol=0.0)

    windows = USER_WINDOWS if kind == "users" else (*ITEM_WINDOWS, "30d")
    elements = bucket_elements(state, at, key, windows)
    assert elements.where(F.col("_straddles")).count() > 3
    exact = exact_elements(elements, buckets_of(history, per_event=True), key)
    if kind == "users":
        sessions_at = sessions(spark, session(-HOUR, 120.0), session(-3 * DAY, 60.0, user="u2"))
        actual = user_features_from_elements(exact, sessions_at, at)
        expected = user_features_at(history, sessions_at, at)
    else:
        actual = item_features_from_elements(exact)
        expected = item_features_at(history, at)
    # Keys with no event in the 30 days before a point have no row (the recomputation keeps
    # one, of zeros); every other row is equal.
    within = (
        history.where(F.col(key).isNotNull())
        .join(at, key)
        .where(
            (F.col("event_ts") <= F.col("as_of"))
            & (F.col("event_ts") > F.col("as_of") - F.expr("INTERVAL 30 DAYS"))
        )
    )
    kept = expected.join(
        within.select(key, F.col("as_of").alias("feature_ts")).distinct(),
        [key, "feature_ts"],
        "semi",
    )
    assert kept.count() < expected.count()
    assert_rows(actual, kept)
