"""Server-side sessions of the silver events table, recomputable incrementally.

A session is a user's run of events in which no two consecutive events (ordered by
``(event_ts, event_id)``) are more than ``gap`` apart: a gap of exactly ``gap`` stays in the
session, anything longer starts a new one.

Incremental update, exact for any batch of new (possibly late) events. For each affected user,
let ``t`` be the earliest new event time. A session that ended before ``t - gap`` is followed by
more than ``gap`` of silence before any new event, so no new event can join it or bridge it to a
later session: it keeps its events and its boundaries. ``recompute_windows`` returns, per user,
``window_start``: the start of the earliest existing session that ends at or after ``t - gap``,
or ``t`` itself if that is earlier (or if no existing session qualifies). The last event before
``window_start`` is more than ``gap`` earlier, so ``window_start`` is a session boundary before and
after the new events. The job therefore:

1. reads the silver events of affected users with ``event_ts >= window_start`` (new ones included)
   and calls ``sessions`` on them: exactly the user's sessions that start at or after
   ``window_start``, in full;
2. selects the existing sessions of those users with ``session_start >= window_start``
   (``existing_in_window``): exactly the sessions that step 1 replaces;
3. MERGEs ``session_changes(recomputed, existing_in_window)`` on ``session_id``: upserting every
   recomputed session and deleting the rows flagged ``_delete`` (sessions absorbed into another,
   or whose first event moved).

``session_id`` depends only on the user and the session's first event time, so a session keeps
its id while its first event does. Nothing is accumulated: every affected session is rebuilt from
the silver events themselves, so replaying a batch (silver being unique by ``event_id``)
recomputes the same rows with the same ids, the MERGE rewrites identical values and deletes
nothing; the result equals ``sessions`` over all events.
"""

from __future__ import annotations

from datetime import timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BooleanType,
    DateType,
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

# Nullability is what Spark infers for the transform, so the constant and the DataFrames agree:
# aggregates, hashes and divisions are typed nullable (though never null here), while counts,
# flags and the coalesced revenue are not. ``user_id`` is as nullable as the input's.
SESSIONS_SCHEMA = StructType(
    [
        StructField("session_id", StringType(), True),
        StructField("user_id", StringType(), True),
        StructField("session_start", TimestampType(), True),
        StructField("session_end", TimestampType(), True),
        StructField("duration_s", DoubleType(), True),
        StructField("event_count", LongType(), False),
        StructField("page_views", LongType(), False),
        StructField("clicks", LongType(), False),
        StructField("searches", LongType(), False),
        StructField("add_to_carts", LongType(), False),
        StructField("purchases", LongType(), False),
        StructField("items_viewed", LongType(), False),
        StructField("converted", BooleanType(), False),
        StructField("revenue", DoubleType(), False),
        StructField("session_date", DateType(), True),
    ]
)

SESSION_CHANGES_SCHEMA = StructType(
    [*SESSIONS_SCHEMA.fields, StructField("_delete", BooleanType(), False)]
)

RECOMPUTE_WINDOWS_SCHEMA = StructType(
    [
        StructField("user_id", StringType(), True),
        StructField("window_start", TimestampType(), True),
    ]
)

_MICROS_PER_DAY = 86_400 * 1_000_000
_EVENT_COUNTS = {
    "page_views": "page_view",
    "clicks": "click",
    "searches": "search",
    "add_to_carts": "add_to_cart",
    "purchases": "purchase",
}


def sessions(events: DataFrame, gap: timedelta) -> DataFrame:
    """All sessions of the given events (one row per session, ``SESSIONS_SCHEMA``).

    Events without a ``user_id`` or an ``event_ts`` belong to no session and are ignored.
    """
    gap_micros = _gap_micros(gap)
    by_user = Window.partitionBy("user_id").orderBy("event_ts", "event_id")
    since_previous = F.unix_micros("event_ts") - F.unix_micros(F.lag("event_ts").over(by_user))
    numbered = (
        events.where(F.col("user_id").isNotNull() & F.col("event_ts").isNotNull())
        .withColumn("_starts_session", F.coalesce(since_previous > gap_micros, F.lit(True)))
        .withColumn(
            "_session_seq",
            F.count_if("_starts_session").over(
                by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)
            ),
        )
    )
    event_type = F.col("event_type")
    viewed_item = F.when(event_type.isin("page_view", "click"), F.col("item_id"))
    purchase_revenue = F.when(event_type == "purchase", F.col("revenue"))
    per_session = numbered.groupBy("user_id", "_session_seq").agg(
        F.min("event_ts").alias("session_start"),
        F.max("event_ts").alias("session_end"),
        F.count(F.lit(1)).alias("event_count"),
        *(F.count_if(event_type == value).alias(name) for name, value in _EVENT_COUNTS.items()),
        F.count_distinct(viewed_item).alias("items_viewed"),
        F.coalesce(F.sum(purchase_revenue), F.lit(0.0)).alias("revenue"),
    )
    start_micros = F.unix_micros("session_start")
    session_key = F.concat("user_id", F.lit("|"), start_micros.cast("string"))
    return per_session.select(
        F.sha2(session_key, 256).alias("session_id"),
        "user_id",
        "session_start",
        "session_end",
        ((F.unix_micros("session_end") - start_micros) / 1_000_000).alias("duration_s"),
        "event_count",
        *_EVENT_COUNTS,
        "items_viewed",
        (F.col("purchases") > 0).alias("converted"),
        "revenue",
        _utc_date(start_micros).alias("session_date"),
    )


def recompute_windows(
    new_events: DataFrame, existing_sessions: DataFrame, gap: timedelta
) -> DataFrame:
    """Per user with new events, the earliest instant from which sessions must be recomputed.

    ``window_start`` is the earliest new event time, or the start of the user's earliest existing
    session that ends at or after ``earliest new event - gap`` if that is earlier: sessions that
    end before it cannot change. Columns: ``RECOMPUTE_WINDOWS_SCHEMA``.
    """
    gap_micros = _gap_micros(gap)
    earliest_new = (
        new_events.where(F.col("user_id").isNotNull() & F.col("event_ts").isNotNull())
        .groupBy("user_id")
        .agg(F.min("event_ts").alias("_earliest_new"))
    )
    existing = existing_sessions.select(
        "user_id", F.col("session_start").alias("_start"), F.col("session_end").alias("_end")
    )
    reachable = F.unix_micros("_end") >= F.unix_micros("_earliest_new") - gap_micros
    return (
        earliest_new.join(existing, "user_id", "left")
        .groupBy("user_id", "_earliest_new")
        .agg(F.min(F.when(reachable, F.col("_start"))).alias("_earliest_reachable"))
        .select("user_id", F.least("_earliest_new", "_earliest_reachable").alias("window_start"))
    )


def session_changes(recomputed: DataFrame, existing_in_window: DataFrame) -> DataFrame:
    """The rows to MERGE on ``session_id``: upserts, and deletions flagged ``_delete``.

    Every recomputed session comes with ``_delete = false``; every existing session of the window
    whose id is no longer recomputed (a late event merged it into another session, or moved its
    start) comes with ``_delete = true``. Columns: ``SESSION_CHANGES_SCHEMA``.
    """
    columns = SESSIONS_SCHEMA.fieldNames()
    upserts = recomputed.select(*columns, F.lit(False).alias("_delete"))
    deletes = existing_in_window.join(
        recomputed.select("session_id"), "session_id", "left_anti"
    ).select(*columns, F.lit(True).alias("_delete"))
    return upserts.unionByName(deletes)


def _gap_micros(gap: timedelta) -> int:
    if gap <= timedelta(0):
        raise ValueError(
            f"session gap must be positive, got {gap!r}; pass e.g. timedelta(minutes=30)"
        )
    return gap // timedelta(microseconds=1)


def _utc_date(epoch_micros: Column) -> Column:
    """The UTC calendar date of an instant, whatever the session time zone."""
    return F.date_from_unix_date(F.floor(epoch_micros / _MICROS_PER_DAY).cast("int"))
