from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DoubleType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)
from pyspark.testing import assertDataFrameEqual

from pipelines.silver.sessions import (
    RECOMPUTE_WINDOWS_SCHEMA,
    SESSION_CHANGES_SCHEMA,
    SESSIONS_SCHEMA,
    recompute_windows,
    session_changes,
    sessions,
)

GAP = timedelta(minutes=30)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The silver event columns the sessions read (silver has more; they are ignored).
EVENTS_SCHEMA = StructType(
    [
        StructField("event_id", StringType(), True),
        StructField("user_id", StringType(), True),
        StructField("event_type", StringType(), True),
        StructField("event_ts", TimestampType(), True),
        StructField("item_id", StringType(), True),
        StructField("revenue", DoubleType(), True),
    ]
)

_COUNT_COLUMNS = {
    "page_view": "page_views",
    "click": "clicks",
    "search": "searches",
    "add_to_cart": "add_to_carts",
    "purchase": "purchases",
}


def event(
    event_id: str,
    at: timedelta,
    event_type: str = "page_view",
    *,
    user: str = "u1",
    item: str | None = None,
    revenue: float | None = None,
) -> tuple[Any, ...]:
    """One silver event ``at`` after ``T0``."""
    return (event_id, user, event_type, T0 + at, item, revenue)


def events(spark: SparkSession, *rows: tuple[Any, ...]) -> DataFrame:
    return spark.createDataFrame(list(rows), EVENTS_SCHEMA)


def session_id(user: str, start: datetime) -> str:
    """The documented id, computed independently of Spark."""
    micros = (start - EPOCH) // timedelta(microseconds=1)
    return hashlib.sha256(f"{user}|{micros}".encode()).hexdigest()


def session(
    start: timedelta,
    end: timedelta,
    *,
    user: str = "u1",
    items_viewed: int = 0,
    revenue: float = 0.0,
    **counts: int,
) -> tuple[Any, ...]:
    """One expected ``SESSIONS_SCHEMA`` row; ``counts`` by event type, e.g. ``click=2``."""
    unknown = set(counts) - set(_COUNT_COLUMNS)
    assert not unknown, f"unknown event types {sorted(unknown)}"
    per_type = [counts.get(event_type, 0) for event_type in _COUNT_COLUMNS]
    first, last = T0 + start, T0 + end
    return (
        session_id(user, first),
        user,
        first,
        last,
        (last - first).total_seconds(),
        sum(per_type),
        *per_type,
        items_viewed,
        counts.get("purchase", 0) > 0,
        revenue,
        first.date(),
    )


def assert_rows(actual: DataFrame, expected: list[tuple[Any, ...]], schema: StructType) -> None:
    """Full-row, order-free comparison, nullability included."""
    spark = actual.sparkSession
    assertDataFrameEqual(
        actual,
        spark.createDataFrame(expected, schema),
        checkRowOrder=False,
        ignoreNullable=False,
    )


def incremental_update(
    all_events: DataFrame, new_events: DataFrame, existing: DataFrame
) -> tuple[DataFrame, DataFrame]:
    """What the job does: the recompute windows and the changes to MERGE."""
    windows = recompute_windows(new_events, existing, GAP)
    window_start = F.col("window_start")
    affected_events = all_events.join(windows, "user_id").where(F.col("event_ts") >= window_start)
    existing_in_window = (
        existing.join(windows, "user_id")
        .where(F.col("session_start") >= window_start)
        .select(*SESSIONS_SCHEMA.fieldNames())
    )
    changes = session_changes(sessions(affected_events, GAP), existing_in_window)
    return windows, changes


def merged(existing: DataFrame, changes: DataFrame) -> DataFrame:
    """``existing`` after MERGE of ``changes`` on session_id (upsert, or delete if flagged)."""
    untouched = existing.join(changes.select("session_id"), "session_id", "left_anti")
    upserts = changes.where(~F.col("_delete")).drop("_delete")
    return untouched.select(*SESSIONS_SCHEMA.fieldNames()).unionByName(upserts)


def test_events_exactly_gap_apart_stay_in_one_session(spark: SparkSession) -> None:
    # Each step is exactly the gap: the gap is measured between consecutive events, not from
    # the session start, so the chain spans twice the gap.
    df = events(
        spark,
        event("e1", timedelta(0)),
        event("e2", GAP, "click"),
        event("e3", 2 * GAP, "search"),
    )

    assert_rows(
        sessions(df, GAP),
        [session(timedelta(0), 2 * GAP, page_view=1, click=1, search=1)],
        SESSIONS_SCHEMA,
    )


def test_one_millisecond_over_the_gap_starts_a_new_session(spark: SparkSession) -> None:
    later = GAP + timedelta(milliseconds=1)
    df = events(spark, event("e1", timedelta(0)), event("e2", later, "click"))

    assert_rows(
        sessions(df, GAP),
        [session(timedelta(0), timedelta(0), page_view=1), session(later, later, click=1)],
        SESSIONS_SCHEMA,
    )


def test_single_event_session(spark: SparkSession) -> None:
    df = events(spark, event("e1", timedelta(minutes=7), "search"))

    result = sessions(df, GAP)

    assert_rows(
        result,
        [session(timedelta(minutes=7), timedelta(minutes=7), search=1)],
        SESSIONS_SCHEMA,
    )
    row = result.first()
    assert row is not None
    assert (row.duration_s, row.event_count, row.converted, row.revenue) == (0.0, 1, False, 0.0)


def test_counts_items_viewed_conversion_and_revenue(spark: SparkSession) -> None:
    minute = timedelta(minutes=1)
    df = events(
        spark,
        event("e1", 0 * minute, "page_view", item="i1"),
        event("e2", 1 * minute, "page_view", item="i1"),  # same item again: one distinct
        event("e3", 2 * minute, "click", item="i2"),
        event("e4", 3 * minute, "click"),  # no item: not counted as viewed
        event("e5", 4 * minute, "search"),
        event("e6", 5 * minute, "add_to_cart", item="i3"),  # not a view
        event("e7", 6 * minute, "purchase", item="i4", revenue=20.0),  # not a view
        event("e8", 7 * minute, "purchase", item="i3", revenue=5.5),
        event("e9", 8 * minute, "purchase", item="i5"),  # no revenue recorded
        event("e10", 9 * minute, "click", item="i2", revenue=99.0),  # revenue only on purchases
    )

    assert_rows(
        sessions(df, GAP),
        [
            session(
                timedelta(0),
                9 * minute,
                page_view=2,
                click=3,
                search=1,
                add_to_cart=1,
                purchase=3,
                items_viewed=2,
                revenue=25.5,
            )
        ],
        SESSIONS_SCHEMA,
    )


def test_interleaved_users_are_sessionized_independently(spark: SparkSession) -> None:
    minute = timedelta(minutes=1)
    df = events(
        spark,
        event("a1", 0 * minute, user="alice", item="i1"),
        event("b1", 5 * minute, "search", user="bob"),
        event("a2", 20 * minute, "click", user="alice", item="i2"),
        event("c1", 25 * minute, user="carol", item="i1"),
        event("c2", 25 * minute, "click", user="carol", item="i1"),  # same instant
        event("b2", 40 * minute, "search", user="bob"),  # 35 min after b1: new session
        event("a3", 45 * minute, "purchase", user="alice", revenue=12.0),
        event("b3", 70 * minute, "click", user="bob", item="i9"),  # 30 min after b2: same
    )

    assert_rows(
        sessions(df, GAP),
        [
            session(
                0 * minute,
                45 * minute,
                user="alice",
                page_view=1,
                click=1,
                purchase=1,
                items_viewed=2,
                revenue=12.0,
            ),
            session(5 * minute, 5 * minute, user="bob", search=1),
            session(40 * minute, 70 * minute, user="bob", search=1, click=1, items_viewed=1),
            session(25 * minute, 25 * minute, user="carol", page_view=1, click=1, items_viewed=1),
        ],
        SESSIONS_SCHEMA,
    )


def test_session_date_is_the_utc_date_of_the_start(spark: SparkSession) -> None:
    before_midnight = datetime(2026, 3, 1, 23, 50, tzinfo=UTC) - T0
    df = events(spark, event("e1", before_midnight), event("e2", before_midnight + GAP))

    result = sessions(df, GAP)

    assert_rows(
        result, [session(before_midnight, before_midnight + GAP, page_view=2)], SESSIONS_SCHEMA
    )
    assert [row.session_date.isoformat() for row in result.collect()] == ["2026-03-01"]


def test_session_id_is_deterministic_and_documented(spark: SparkSession) -> None:
    df = events(
        spark,
        event("e1", timedelta(0), user="u1"),
        event("e2", timedelta(0), user="u2"),
        event("e3", timedelta(minutes=10), user="u1"),
    )

    first = {r.user_id: r.session_id for r in sessions(df, GAP).collect()}
    again = {r.user_id: r.session_id for r in sessions(df, GAP).collect()}

    t0_micros = 1_772_366_400_000_000  # 2026-03-01T12:00:00Z
    assert (T0 - EPOCH) // timedelta(microseconds=1) == t0_micros
    assert first == again
    assert first == {
        "u1": hashlib.sha256(f"u1|{t0_micros}".encode()).hexdigest(),
        "u2": hashlib.sha256(f"u2|{t0_micros}".encode()).hexdigest(),
    }


def test_events_without_user_or_time_belong_to_no_session(spark: SparkSession) -> None:
    df = events(
        spark,
        event("e1", timedelta(0)),
        ("e2", None, "click", T0, "i1", None),
        ("e3", "u1", "click", None, "i1", None),
    )

    assert_rows(
        sessions(df, GAP), [session(timedelta(0), timedelta(0), page_view=1)], SESSIONS_SCHEMA
    )


@pytest.mark.parametrize("gap", [timedelta(0), timedelta(minutes=-5)])
def test_gap_must_be_positive(spark: SparkSession, gap: timedelta) -> None:
    df = events(spark, event("e1", timedelta(0)))

    with pytest.raises(ValueError, match="session gap must be positive"):
        sessions(df, gap)
    with pytest.raises(ValueError, match="session gap must be positive"):
        recompute_windows(df, sessions(df, GAP), gap)


def test_late_event_bridging_two_sessions_merges_them(spark: SparkSession) -> None:
    old_rows = [
        event("e1", timedelta(0), item="i1"),
        event("e2", timedelta(minutes=50), "click", item="i2"),
        event("x1", timedelta(minutes=25), user="other"),  # no new events: untouched
    ]
    late = event("e3", timedelta(minutes=25), "purchase", item="i1", revenue=10.0)
    existing = sessions(events(spark, *old_rows), GAP)
    assert_rows(
        existing,
        [
            session(timedelta(0), timedelta(0), page_view=1, items_viewed=1),
            session(timedelta(minutes=50), timedelta(minutes=50), click=1, items_viewed=1),
            session(timedelta(minutes=25), timedelta(minutes=25), user="other", page_view=1),
        ],
        SESSIONS_SCHEMA,
    )
    all_events = events(spark, *old_rows, late)

    windows, changes = incremental_update(all_events, events(spark, late), existing)

    assert_rows(windows, [("u1", T0)], RECOMPUTE_WINDOWS_SCHEMA)
    bridged = session(
        timedelta(0),
        timedelta(minutes=50),
        page_view=1,
        click=1,
        purchase=1,
        items_viewed=2,
        revenue=10.0,
    )
    absorbed = session(timedelta(minutes=50), timedelta(minutes=50), click=1, items_viewed=1)
    assert_rows(changes, [(*bridged, False), (*absorbed, True)], SESSION_CHANGES_SCHEMA)
    old_first_id = existing.where(F.col("session_start") == T0).first()
    assert old_first_id is not None
    assert bridged[0] == old_first_id.session_id
    assertDataFrameEqual(merged(existing, changes), sessions(all_events, GAP), checkRowOrder=False)


def test_replaying_a_batch_changes_nothing(spark: SparkSession) -> None:
    rows = [
        event("e1", timedelta(0)),
        event("e3", timedelta(minutes=25), "purchase", revenue=10.0),
        event("e2", timedelta(minutes=50), "click"),
    ]
    all_events = events(spark, *rows)
    current = sessions(all_events, GAP)

    windows, changes = incremental_update(all_events, events(spark, rows[1]), current)

    assert_rows(windows, [("u1", T0)], RECOMPUTE_WINDOWS_SCHEMA)
    assert_rows(
        changes,
        [
            (
                *session(
                    timedelta(0),
                    timedelta(minutes=50),
                    page_view=1,
                    click=1,
                    purchase=1,
                    revenue=10.0,
                ),
                False,
            )
        ],
        SESSION_CHANGES_SCHEMA,
    )
    assertDataFrameEqual(merged(current, changes), current, checkRowOrder=False)


def test_event_far_after_existing_sessions_only_adds_a_session(spark: SparkSession) -> None:
    old_rows = [event("e1", timedelta(0)), event("e2", timedelta(minutes=10), "click")]
    far = timedelta(hours=3)
    new = event("e3", far, "search")
    existing = sessions(events(spark, *old_rows), GAP)
    all_events = events(spark, *old_rows, new)

    windows, changes = incremental_update(all_events, events(spark, new), existing)

    assert_rows(windows, [("u1", T0 + far)], RECOMPUTE_WINDOWS_SCHEMA)
    assert_rows(changes, [(*session(far, far, search=1), False)], SESSION_CHANGES_SCHEMA)
    assertDataFrameEqual(merged(existing, changes), sessions(all_events, GAP), checkRowOrder=False)


def test_event_within_gap_of_the_last_session_extends_it(spark: SparkSession) -> None:
    old_rows = [event("e1", timedelta(0)), event("e2", timedelta(minutes=10), "click")]
    new = event("e3", timedelta(minutes=40), "search")  # exactly GAP after e2
    existing = sessions(events(spark, *old_rows), GAP)
    all_events = events(spark, *old_rows, new)

    windows, changes = incremental_update(all_events, events(spark, new), existing)

    assert_rows(windows, [("u1", T0)], RECOMPUTE_WINDOWS_SCHEMA)
    extended = session(timedelta(0), timedelta(minutes=40), page_view=1, click=1, search=1)
    assert_rows(changes, [(*extended, False)], SESSION_CHANGES_SCHEMA)
    assertDataFrameEqual(merged(existing, changes), sessions(all_events, GAP), checkRowOrder=False)


def test_late_event_before_a_session_moves_its_start(spark: SparkSession) -> None:
    old_rows = [
        event("e0", timedelta(hours=-2)),  # ends long before: cannot change
        event("e1", timedelta(minutes=20)),
        event("e2", timedelta(minutes=30), "click"),
    ]
    new = event("e3", timedelta(0), "search")
    existing = sessions(events(spark, *old_rows), GAP)
    all_events = events(spark, *old_rows, new)

    windows, changes = incremental_update(all_events, events(spark, new), existing)

    assert_rows(windows, [("u1", T0)], RECOMPUTE_WINDOWS_SCHEMA)
    moved = session(timedelta(0), timedelta(minutes=30), page_view=1, click=1, search=1)
    old = session(timedelta(minutes=20), timedelta(minutes=30), page_view=1, click=1)
    assert_rows(changes, [(*moved, False), (*old, True)], SESSION_CHANGES_SCHEMA)
    assertDataFrameEqual(merged(existing, changes), sessions(all_events, GAP), checkRowOrder=False)


def test_recompute_window_starts_at_the_earliest_session_within_reach(
    spark: SparkSession,
) -> None:
    # u1 has sessions [0, 0] and [40, 60] (minutes); its earliest new event, at 95, reaches back
    # to 65: neither session ends that late, so the window starts at the new event. u2's new event
    # at 55 reaches back to 25, exactly where its session [10, 25] ends: that session can grow.
    minute = timedelta(minutes=1)
    existing = sessions(
        events(
            spark,
            event("a1", 0 * minute),
            event("a2", 40 * minute),
            event("a3", 60 * minute),
            event("b1", 10 * minute, user="u2"),
            event("b2", 25 * minute, user="u2"),
            event("c1", 0 * minute, user="u3"),
        ),
        GAP,
    )
    new = events(
        spark,
        event("a4", 95 * minute),
        event("a5", 200 * minute),
        event("b3", 55 * minute, user="u2"),
        event("d1", 5 * minute, user="u4"),  # a new user: no sessions yet
    )

    assert_rows(
        recompute_windows(new, existing, GAP),
        [("u1", T0 + 95 * minute), ("u2", T0 + 10 * minute), ("u4", T0 + 5 * minute)],
        RECOMPUTE_WINDOWS_SCHEMA,
    )
