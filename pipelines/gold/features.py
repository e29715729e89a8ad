"""Gold feature definitions and the pure transforms that compute them as of a feature timestamp.

Every feature is declared once in ``FEATURES``; the table schemas, the column order and types of
the transforms' output and ``docs/FEATURES.md`` are all derived from it.

Semantics shared by every feature, for a feature timestamp ``T`` (``as_of``):

- only events with ``event_ts <= T`` and sessions with ``session_start <= T`` exist; anything
  later is ignored, so a row never sees its own future;
- a window ``w`` is the half-open interval ``(T - w, T]``: an event exactly at ``T - w`` is out,
  an event exactly at ``T`` is in. Windows are fixed durations (``7d`` is 168 hours);
- features without a window (the latest event, the item's category) and the existence of a row
  look back ``LOOKBACK`` (30 days): a key has a row as of ``T`` when it has an event in
  ``(T - 30d, T]``;
- ``feature_ts`` is ``T`` on every row.

Two ways compute the same rows. ``user_features_at`` / ``item_features_at`` recompute from the
events themselves (the definition, used by tests as the oracle). The gold job keeps per-key,
per-hour partial aggregates instead (``user_feature_buckets`` / ``item_feature_buckets``: counts,
sums, the latest categorized event, the set of items, category scores, and the first and last
event time of the bucket), merged batch by batch, and computes the features of a point from the
buckets in its lookback (``*_features_from_elements``). A bucket that straddles a window edge
(its first event before the edge, its last after) is replaced by its events, so every element is
wholly inside or wholly outside each window and the result equals the recomputation exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    DoubleType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.config import EVENT_TYPES

USER_FEATURES_TABLE = "gold.user_features"
ITEM_FEATURES_TABLE = "gold.item_features"

WINDOWS: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
ITEM_WINDOWS = ("1h", "24h", "7d")
LOOKBACK_WINDOW = "30d"  # how far every feature, and the existence of a row, look back
LOOKBACK = WINDOWS[LOOKBACK_WINDOW]
BUCKET_SPAN = timedelta(hours=1)  # the gold state's buckets: (end - 1h, end]

# How much one event says about interest in its category / item; searches say nothing.
INTERACTION_WEIGHTS: dict[str, int] = {"page_view": 1, "click": 2, "add_to_cart": 4, "purchase": 8}
TOP_CATEGORIES = 5
COLD_START_EVENTS = 5  # a user with fewer events than this in 30 days is cold

# Item count features: name prefix -> event type.
_ITEM_COUNTS = {
    "views": "page_view",
    "clicks": "click",
    "add_to_carts": "add_to_cart",
    "purchases": "purchase",
}


@dataclass(frozen=True)
class FeatureDefinition:
    """One gold feature column: where it lives, what it reads and what it means."""

    name: str  # column name, e.g. "page_view_count_1h"
    table: str  # USER_FEATURES_TABLE or ITEM_FEATURES_TABLE
    window: str | None  # a key of WINDOWS, or None when the feature is not windowed
    source: str  # the silver table (and how) the feature reads
    description: str
    dtype: str  # Spark DDL type of the column
    # Whether Spark types the column nullable. The schema constants must equal the transforms'
    # output, so this follows Spark: divisions and max() are typed nullable even when, as for
    # last_event_ts, recency_s and trending_score, the value is never null.
    nullable: bool = False


def _user(
    name: str,
    window: str | None,
    source: str,
    description: str,
    dtype: str,
    *,
    nullable: bool = False,
) -> FeatureDefinition:
    return FeatureDefinition(
        name, USER_FEATURES_TABLE, window, source, description, dtype, nullable
    )


def _item(
    name: str,
    window: str | None,
    source: str,
    description: str,
    dtype: str,
    *,
    nullable: bool = False,
) -> FeatureDefinition:
    return FeatureDefinition(
        name, ITEM_FEATURES_TABLE, window, source, description, dtype, nullable
    )


_TOP_CATEGORIES_DTYPE = "array<struct<category:string,weight:double>>"
_WEIGHTS_TEXT = ", ".join(f"{t} {w}" for t, w in INTERACTION_WEIGHTS.items())
_ITEM_SCORE_TEXT = " + ".join(
    f"{INTERACTION_WEIGHTS[t]}*{name}_w" for name, t in _ITEM_COUNTS.items()
)

FEATURES: tuple[FeatureDefinition, ...] = (
    *(
        _user(
            f"{event_type}_count_{window}",
            window,
            "silver.events",
            f"Number of the user's `{event_type}` events in the window (0 when none).",
            "bigint",
        )
        for event_type in EVENT_TYPES
        for window in WINDOWS
    ),
    _user(
        "distinct_items_30d",
        "30d",
        "silver.events",
        "Number of distinct non-null `item_id`s the user interacted with.",
        "bigint",
    ),
    _user(
        "top_categories",
        "30d",
        "silver.events",
        f"The user's top {TOP_CATEGORIES} categories (`properties.category`) by weighted "
        f"interactions ({_WEIGHTS_TEXT}; search 0). `weight` is the category's score over the "
        "score of all the user's categories (all weights sum to 1); sorted by weight descending, "
        "then category ascending; empty when none.",
        _TOP_CATEGORIES_DTYPE,
    ),
    _user(
        "last_event_ts",
        None,
        "silver.events (latest)",
        "Time of the user's latest event at or before `feature_ts`.",
        "timestamp",
        nullable=True,
    ),
    _user(
        "recency_s",
        None,
        "silver.events (latest)",
        "Seconds from `last_event_ts` to `feature_ts`.",
        "double",
        nullable=True,
    ),
    _user(
        "sessions_7d",
        "7d",
        "silver.sessions",
        "Number of the user's sessions whose `session_start` is in the window.",
        "bigint",
    ),
    _user(
        "mean_session_length_s_7d",
        "7d",
        "silver.sessions",
        "Mean `duration_s` of those sessions (0.0 when none).",
        "double",
    ),
    _user(
        "purchases_30d",
        "30d",
        "silver.events",
        "Number of the user's purchases.",
        "bigint",
    ),
    _user(
        "revenue_30d",
        "30d",
        "silver.events",
        "Sum of `properties.revenue` over the user's purchases (0.0 when none).",
        "double",
    ),
    _user(
        "is_cold_start",
        "30d",
        "silver.events",
        f"True when the user has fewer than {COLD_START_EVENTS} events (of any type).",
        "boolean",
    ),
    *(
        _item(
            f"{name}_{window}",
            window,
            "silver.events",
            f"Number of `{event_type}` events on the item in the window (0 when none).",
            "bigint",
        )
        for name, event_type in _ITEM_COUNTS.items()
        for window in ITEM_WINDOWS
    ),
    _item(
        "ctr_7d",
        "7d",
        "silver.events",
        "`clicks_7d / views_7d`, capped at 1.0; 0.0 when there are no views.",
        "double",
    ),
    _item(
        "conversion_rate_7d",
        "7d",
        "silver.events",
        "`purchases_7d / clicks_7d`, capped at 1.0; 0.0 when there are no clicks.",
        "double",
    ),
    _item(
        "trending_score",
        "7d",
        "silver.events",
        f"`(s_24h + 1) / (s_7d / 7 + 1)` where `s_w = {_ITEM_SCORE_TEXT}`: about 1 when the "
        "last day is a typical day of the week, above 1 when the item is rising.",
        "double",
        nullable=True,
    ),
    _item(
        "category",
        None,
        "silver.events (latest)",
        "`properties.category` of the item's latest event that has one (ties on `event_ts` "
        "broken by the greatest `event_id`); null when none.",
        "string",
        nullable=True,
    ),
)

# The Spark types a feature may declare, keyed by their DDL spelling.
_SPARK_TYPES: dict[str, DataType] = {
    t.simpleString(): t
    for t in (
        LongType(),
        DoubleType(),
        BooleanType(),
        StringType(),
        TimestampType(),
        ArrayType(
            StructType([StructField("category", StringType()), StructField("weight", DoubleType())])
        ),
    )
}

_KEYS = {USER_FEATURES_TABLE: "user_id", ITEM_FEATURES_TABLE: "item_id"}
AS_OF = "as_of"  # the column of an as-of point (key, as_of) in the *_at transforms


def spark_type(feature: FeatureDefinition) -> DataType:
    """The Spark type of a feature's column, from its DDL ``dtype``."""
    if feature.dtype not in _SPARK_TYPES:
        raise ValueError(
            f"feature {feature.name!r} declares dtype {feature.dtype!r}; "
            f"use one of: {', '.join(sorted(_SPARK_TYPES))}"
        )
    return _SPARK_TYPES[feature.dtype]


def table_features(table: str) -> tuple[FeatureDefinition, ...]:
    """The features of one gold table, in column order."""
    if table not in _KEYS:
        raise ValueError(f"unknown gold feature table {table!r} (known: {', '.join(_KEYS)})")
    return tuple(f for f in FEATURES if f.table == table)


def _table_schema(table: str) -> StructType:
    # The key is as nullable as the input's (silver's columns all are).
    return StructType(
        [
            StructField(_KEYS[table], StringType(), True),
            StructField("feature_ts", TimestampType(), False),
            *(StructField(f.name, spark_type(f), f.nullable) for f in table_features(table)),
        ]
    )


USER_FEATURES_SCHEMA = _table_schema(USER_FEATURES_TABLE)
ITEM_FEATURES_SCHEMA = _table_schema(ITEM_FEATURES_TABLE)


def user_features(events: DataFrame, sessions: DataFrame, as_of: datetime) -> DataFrame:
    """One row of user features as of ``as_of`` per user with an event at or before it.

    ``events`` are silver events, ``sessions`` silver sessions; rows after ``as_of`` (and events
    without a user or a time) are ignored, so a user whose only events are later gets no row.
    Columns: ``USER_FEATURES_SCHEMA``.
    """
    _check_as_of(as_of)
    points = (
        events.where(F.col("user_id").isNotNull() & (F.col("event_ts") <= F.lit(as_of)))
        .select("user_id")
        .distinct()
        .withColumn(AS_OF, F.lit(as_of))
    )
    return user_features_at(events, sessions, points)


def user_features_at(events: DataFrame, sessions: DataFrame, points: DataFrame) -> DataFrame:
    """User features at many as-of points in one pass: ``points`` has ``user_id`` and ``as_of``
    (timestamp); one row per point whose user has an event at or before it, with
    ``feature_ts`` = the point's ``as_of``. Same semantics as ``user_features`` per point."""
    as_of = F.col(AS_OF)
    event_type = F.col("event_type")
    past = (
        events.where(F.col("user_id").isNotNull())
        .join(points, "user_id")
        .where(F.col("event_ts") <= as_of)
    )
    in_30d = _within(F.col("event_ts"), as_of, "30d")
    is_purchase = event_type == "purchase"
    per_user = past.groupBy("user_id", AS_OF).agg(
        *(
            F.count_if((event_type == t) & _within(F.col("event_ts"), as_of, w)).alias(
                f"{t}_count_{w}"
            )
            for t in EVENT_TYPES
            for w in WINDOWS
        ),
        F.count_distinct(F.when(in_30d, F.col("item_id"))).alias("distinct_items_30d"),
        F.max("event_ts").alias("last_event_ts"),
        F.count_if(is_purchase & in_30d).alias("purchases_30d"),
        F.sum(F.when(is_purchase & in_30d, F.col("properties.revenue"))).alias("_revenue"),
        F.count_if(in_30d).alias("_events_30d"),
    )
    top_categories = _top_categories(past.where(in_30d))
    joined = per_user.join(_session_features(sessions, points), ["user_id", AS_OF], "left").join(
        top_categories, ["user_id", AS_OF], "left"
    )
    return _feature_rows(joined, USER_FEATURES_TABLE, _user_columns())


def _user_columns() -> dict[str, Column]:
    """Each user feature's column over the per-(user, as-of) aggregates of either path."""
    top_categories_type = spark_type(_feature("top_categories"))
    as_of = F.col(AS_OF)
    return {
        **{f"{t}_count_{w}": F.col(f"{t}_count_{w}") for t in EVENT_TYPES for w in WINDOWS},
        "distinct_items_30d": F.col("distinct_items_30d"),
        "top_categories": F.coalesce(
            F.col("_top_categories").cast(top_categories_type),
            F.array().cast(top_categories_type),
        ),
        "last_event_ts": F.col("last_event_ts"),
        "recency_s": (F.unix_micros(as_of) - F.unix_micros(F.col("last_event_ts"))) / 1_000_000,
        "sessions_7d": F.coalesce(F.col("_sessions"), F.lit(0)),
        "mean_session_length_s_7d": F.coalesce(F.col("_mean_session_length"), F.lit(0.0)),
        "purchases_30d": F.col("purchases_30d"),
        "revenue_30d": F.coalesce(F.col("_revenue"), F.lit(0.0)),
        "is_cold_start": F.col("_events_30d") < COLD_START_EVENTS,
    }


def item_features(events: DataFrame, as_of: datetime) -> DataFrame:
    """One row of item features as of ``as_of`` per non-null ``item_id`` with an event by then.

    Events after ``as_of`` or without an item are ignored. Columns: ``ITEM_FEATURES_SCHEMA``.
    """
    _check_as_of(as_of)
    points = (
        events.where(F.col("item_id").isNotNull() & (F.col("event_ts") <= F.lit(as_of)))
        .select("item_id")
        .distinct()
        .withColumn(AS_OF, F.lit(as_of))
    )
    return item_features_at(events, points)


def item_features_at(events: DataFrame, points: DataFrame) -> DataFrame:
    """Item features at many as-of points in one pass (``points``: ``item_id``, ``as_of``)."""
    as_of = F.col(AS_OF)
    event_type = F.col("event_type")
    category = F.col("properties.category")
    past = (
        events.where(F.col("item_id").isNotNull())
        .join(points, "item_id")
        .where(F.col("event_ts") <= as_of)
    )
    per_item = past.groupBy("item_id", AS_OF).agg(
        *(
            F.count_if((event_type == t) & _within(F.col("event_ts"), as_of, w)).alias(
                f"{name}_{w}"
            )
            for name, t in _ITEM_COUNTS.items()
            for w in ITEM_WINDOWS
        ),
        # max_by skips rows whose ordering is null: the latest event that has a category.
        F.max_by(category, F.when(category.isNotNull(), F.struct("event_ts", "event_id"))).alias(
            "category"
        ),
    )

    return _feature_rows(per_item, ITEM_FEATURES_TABLE, _item_columns())


def _item_columns() -> dict[str, Column]:
    """Each item feature's column over the per-(item, as-of) aggregates of either path."""

    def score(window: str) -> Column:
        return sum(
            (
                INTERACTION_WEIGHTS[t] * F.col(f"{name}_{window}")
                for name, t in _ITEM_COUNTS.items()
            ),
            F.lit(0),
        )

    return {
        **{f"{n}_{w}": F.col(f"{n}_{w}") for n in _ITEM_COUNTS for w in ITEM_WINDOWS},
        "ctr_7d": _capped_ratio(F.col("clicks_7d"), F.col("views_7d")),
        "conversion_rate_7d": _capped_ratio(F.col("purchases_7d"), F.col("clicks_7d")),
        "trending_score": (score("24h") + 1) / (score("7d") / 7 + 1),
        "category": F.col("category"),
    }


# -- incremental: per-key, per-bucket partial aggregates ------------------------------------------

BUCKET_END = "bucket_end"
FIRST_TS, LAST_TS = "first_ts", "last_ts"
STRADDLES = "_straddles"  # an element's flag: its events lie on both sides of a window edge
_CATEGORY_SCORES_TYPE = MapType(StringType(), LongType(), True)
_LATEST_CATEGORY_TYPE = StructType(
    [
        StructField("event_ts", TimestampType(), True),
        StructField("event_id", StringType(), True),
        StructField("category", StringType(), True),
    ]
)


def _bucket_schema(key: str, partials: list[StructField]) -> StructType:
    return StructType(
        [
            StructField(key, StringType(), True),
            StructField(BUCKET_END, TimestampType(), True),
            StructField(FIRST_TS, TimestampType(), True),
            StructField(LAST_TS, TimestampType(), True),
            StructField("events", LongType(), False),
            *partials,
        ]
    )


# The partials every user feature needs: counts per type, purchase revenue, weighted category
# scores and the distinct items (a set: with elements wholly in or out of a window, the set of
# the elements inside is the window's).
USER_BUCKETS_SCHEMA = _bucket_schema(
    "user_id",
    [
        *(StructField(f"{t}_count", LongType(), False) for t in EVENT_TYPES),
        StructField("revenue", DoubleType(), True),
        StructField("category_scores", _CATEGORY_SCORES_TYPE, False),
        StructField("items", ArrayType(StringType(), False), False),
    ],
)
ITEM_BUCKETS_SCHEMA = _bucket_schema(
    "item_id",
    [
        *(StructField(name, LongType(), False) for name in _ITEM_COUNTS),
        StructField("latest_category", _LATEST_CATEGORY_TYPE, True),
    ],
)


def bucket_end(ts: Column, span: timedelta = BUCKET_SPAN) -> Column:
    """The end of the bucket ``(end - span, end]`` holding ``ts`` (ends are multiples of span)."""
    step = _micros(span)
    return F.timestamp_micros(F.ceil(F.unix_micros(ts) / F.lit(step)).cast("long") * F.lit(step))


def user_feature_buckets(events: DataFrame, *, per_event: bool = False) -> DataFrame:
    """Partial aggregates of silver events per user and bucket (``USER_BUCKETS_SCHEMA``).

    With ``per_event``, one row per user and distinct event time instead (``first_ts`` =
    ``last_ts``): the elements that replace a bucket straddling a window edge.
    """
    events = _with_bucket(events.where(F.col("user_id").isNotNull()), per_event)
    groups = ["user_id", BUCKET_END, *(["_ts"] if per_event else [])]
    event_type = F.col("event_type")
    counts = events.groupBy(*groups).agg(
        F.min("event_ts").alias(FIRST_TS),
        F.max("event_ts").alias(LAST_TS),
        F.count(F.lit(1)).alias("events"),
        *(F.count_if(event_type == t).alias(f"{t}_count") for t in EVENT_TYPES),
        F.sum(F.when(event_type == "purchase", F.col("properties.revenue"))).alias("revenue"),
        F.array_sort(F.collect_set("item_id")).alias("items"),
    )
    category = F.col("properties.category")
    scores = (
        events.where(category.isNotNull())
        .groupBy(*groups, category.alias("_category"))
        .agg(F.sum(_interaction_weight()).alias("_score"))
        .groupBy(*groups)
        .agg(F.map_from_entries(F.collect_list(F.struct("_category", "_score"))).alias("_scores"))
    )
    empty = F.create_map().cast(_CATEGORY_SCORES_TYPE)
    joined = counts.join(scores, groups, "left").withColumn(
        "category_scores", F.coalesce(F.col("_scores").cast(_CATEGORY_SCORES_TYPE), empty)
    )
    return _conformed(joined, USER_BUCKETS_SCHEMA)


def item_feature_buckets(events: DataFrame, *, per_event: bool = False) -> DataFrame:
    """Partial aggregates of silver events per item and bucket (``ITEM_BUCKETS_SCHEMA``); see
    ``user_feature_buckets`` for ``per_event``."""
    events = _with_bucket(events.where(F.col("item_id").isNotNull()), per_event)
    groups = ["item_id", BUCKET_END, *(["_ts"] if per_event else [])]
    category = F.col("properties.category")
    latest = F.struct(
        F.col("event_ts").alias("event_ts"),
        F.col("event_id").alias("event_id"),
        category.alias("category"),
    )
    buckets = events.groupBy(*groups).agg(
        F.min("event_ts").alias(FIRST_TS),
        F.max("event_ts").alias(LAST_TS),
        F.count(F.lit(1)).alias("events"),
        *(F.count_if(F.col("event_type") == t).alias(n) for n, t in _ITEM_COUNTS.items()),
        # Structs order by their fields in turn: the latest (event_ts, event_id) wins.
        F.max(F.when(category.isNotNull(), latest)).alias("latest_category"),
    )
    return _conformed(buckets, ITEM_BUCKETS_SCHEMA)


def merged_bucket_columns(schema: StructType, target: str, source: str) -> dict[str, Column]:
    """How a bucket row of ``target`` absorbs the partials of the same bucket in ``source``
    (the MERGE's update assignments): counts and sums add up, times widen, sets unite, category
    scores add up per category, the later categorized event wins."""
    t, s = (lambda name: F.col(f"{target}.{name}")), (lambda name: F.col(f"{source}.{name}"))
    merged: dict[str, Column] = {}
    for field in schema.fields:
        name = field.name
        if name in (schema.fields[0].name, BUCKET_END):
            continue
        if name == FIRST_TS:
            merged[name] = F.least(t(name), s(name))
        elif name in (LAST_TS, "latest_category"):
            merged[name] = F.greatest(t(name), s(name))
        elif name == "items":
            merged[name] = F.array_sort(F.array_union(t(name), s(name)))
        elif name == "category_scores":
            merged[name] = F.map_zip_with(
                t(name), s(name), lambda _k, a, b: F.coalesce(a, F.lit(0)) + F.coalesce(b, F.lit(0))
            )
        elif name == "revenue":
            merged[name] = F.coalesce(t(name) + s(name), t(name), s(name))
        else:
            merged[name] = t(name) + s(name)
    return merged


def bucket_elements(
    buckets: DataFrame, points: DataFrame, key: str, windows: tuple[str, ...]
) -> DataFrame:
    """The buckets each as-of point reads: those with an event in ``(as_of - LOOKBACK, as_of]``,
    with ``as_of`` and a ``_straddles`` flag — true when the bucket's events lie on both sides
    of ``as_of`` or of the start of one of ``windows`` (such a bucket must be replaced by its
    events, see ``exact_elements``)."""
    as_of = F.col(AS_OF)
    first, last = F.col(FIRST_TS), F.col(LAST_TS)
    span = _micros(BUCKET_SPAN)
    # The buckets that can hold an event in the lookback, by their end (prunes by statistics).
    reachable = (F.unix_micros(BUCKET_END) > F.unix_micros(as_of) - _micros(LOOKBACK)) & (
        F.unix_micros(BUCKET_END) < F.unix_micros(as_of) + span
    )
    edges = [as_of, *(_window_start(as_of, w) for w in windows)]
    straddles = F.lit(False)
    for edge in edges:
        straddles = straddles | ((first <= edge) & (last > edge))
    return (
        buckets.join(points, key)
        .where(reachable & (last > _window_start(as_of, LOOKBACK_WINDOW)) & (first <= as_of))
        .withColumn(STRADDLES, straddles)
    )


def exact_elements(elements: DataFrame, event_elements: DataFrame | None, key: str) -> DataFrame:
    """``elements`` (``bucket_elements``) with every straddling bucket replaced by its events:
    ``event_elements`` are the per-event partials (``*_feature_buckets(..., per_event=True)``)
    of at least the straddling buckets' events (None when nothing straddles). Every element is
    then wholly inside or wholly outside each window of its point."""
    columns = [c for c in elements.columns if c != STRADDLES]
    kept = elements.where(~F.col(STRADDLES)).select(*columns)
    if event_elements is None:  # nothing straddles
        return kept
    straddling = elements.where(F.col(STRADDLES)).select(key, BUCKET_END, AS_OF)
    replaced = (
        event_elements.join(straddling, [key, BUCKET_END])
        .where(F.col(FIRST_TS) <= F.col(AS_OF))
        .select(*columns)
    )
    return kept.unionByName(replaced)


def user_features_from_elements(
    elements: DataFrame, sessions: DataFrame, points: DataFrame
) -> DataFrame:
    """User features at ``points`` from exact elements (``exact_elements``): equal to
    ``user_features_at`` over the same events. Columns: ``USER_FEATURES_SCHEMA``."""
    inside = {w: _element_within(w) for w in WINDOWS}
    in_lookback = inside[LOOKBACK_WINDOW]
    per_user = (
        elements.groupBy("user_id", AS_OF)
        .agg(
            *(
                _total(F.when(inside[w], F.col(f"{t}_count"))).alias(f"{t}_count_{w}")
                for t in EVENT_TYPES
                for w in WINDOWS
            ),
            F.max(F.when(in_lookback, F.col(LAST_TS))).alias("last_event_ts"),
            F.sum(F.when(in_lookback, F.col("revenue"))).alias("_revenue"),
            _total(F.when(in_lookback, F.col("events"))).alias("_events_30d"),
        )
        .where(F.col("_events_30d") > 0)
    )
    in_window = elements.where(in_lookback)
    distinct_items = (
        in_window.select("user_id", AS_OF, F.explode("items").alias("_item"))
        .groupBy("user_id", AS_OF)
        .agg(F.count_distinct("_item").alias("_distinct_items"))
    )
    scores = (
        in_window.select(
            "user_id", AS_OF, F.explode("category_scores").alias("_category", "_score")
        )
        .groupBy("user_id", AS_OF, "_category")
        .agg(F.sum("_score").alias("_score"))
    )
    joined = (
        per_user.join(distinct_items, ["user_id", AS_OF], "left")
        .join(_session_features(sessions, points), ["user_id", AS_OF], "left")
        .join(_ranked_categories(scores), ["user_id", AS_OF], "left")
        .withColumn("distinct_items_30d", F.coalesce(F.col("_distinct_items"), F.lit(0)))
        .withColumn("purchases_30d", F.col(f"purchase_count_{LOOKBACK_WINDOW}"))
    )
    return _feature_rows(joined, USER_FEATURES_TABLE, _user_columns())


def item_features_from_elements(elements: DataFrame) -> DataFrame:
    """Item features from exact elements (``exact_elements``): equal to ``item_features_at``
    over the same events. Columns: ``ITEM_FEATURES_SCHEMA``."""
    inside = {w: _element_within(w) for w in (*ITEM_WINDOWS, LOOKBACK_WINDOW)}
    per_item = (
        elements.groupBy("item_id", AS_OF)
        .agg(
            *(
                _total(F.when(inside[w], F.col(name))).alias(f"{name}_{w}")
                for name in _ITEM_COUNTS
                for w in ITEM_WINDOWS
            ),
            F.max(F.when(inside[LOOKBACK_WINDOW], F.col("latest_category"))).alias("_latest"),
            _total(F.when(inside[LOOKBACK_WINDOW], F.col("events"))).alias("_events"),
        )
        .where(F.col("_events") > 0)
        .withColumn("category", F.col("_latest.category"))
    )
    return _feature_rows(per_item, ITEM_FEATURES_TABLE, _item_columns())


def _total(counts: Column) -> Column:
    """The sum of counts, 0 (not null) when there are none: typed as the definition's counts."""
    return F.coalesce(F.sum(counts), F.lit(0).cast("long"))


def _with_bucket(events: DataFrame, per_event: bool) -> DataFrame:
    events = events.where(F.col("event_ts").isNotNull()).withColumn(
        BUCKET_END, bucket_end(F.col("event_ts"))
    )
    return events.withColumn("_ts", F.col("event_ts")) if per_event else events


def _conformed(frame: DataFrame, schema: StructType) -> DataFrame:
    return frame.select(*(F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields))


def _window_start(as_of: Column, window: str) -> Column:
    return F.timestamp_micros(F.unix_micros(as_of) - _micros(WINDOWS[window]))


def _element_within(window: str) -> Column:
    """An (exact) element lies in ``(as_of - window, as_of]``."""
    as_of = F.col(AS_OF)
    return (F.col(FIRST_TS) > _window_start(as_of, window)) & (F.col(LAST_TS) <= as_of)


def _session_features(sessions: DataFrame, points: DataFrame) -> DataFrame:
    return (
        sessions.where(F.col("user_id").isNotNull())
        .join(points, "user_id")
        .where(_within(F.col("session_start"), F.col(AS_OF), "7d"))
        .groupBy("user_id", AS_OF)
        .agg(
            F.count(F.lit(1)).alias("_sessions"),
            F.avg("duration_s").alias("_mean_session_length"),
        )
    )


def features_markdown() -> str:
    """The full text of ``docs/FEATURES.md``, generated from ``FEATURES``."""
    windows = ", ".join(f"`{w}`" for w in WINDOWS)
    lines = [
        "# Gold features",
        "",
        "Generated from `pipelines.gold.features.FEATURES` by `features_markdown()`; "
        "do not edit by hand.",
        "",
        "Every gold row holds the features of one key **as of** its feature timestamp "
        "`feature_ts` (T):",
        "",
        "- only events with `event_ts <= T` and sessions with `session_start <= T` count; "
        "later data is ignored, so a row never sees its future and training sets can join "
        "features as of a label's time;",
        "- a window `w` is the interval `(T - w, T]`: an event exactly at `T - w` is outside, "
        f"an event exactly at `T` is inside. Windows ({windows}) are fixed durations in event "
        "time (`7d` is 168 hours);",
        "- features without a window (`—`) look back 30 days, `(T - 30d, T]`, and a key has a "
        "row as of T when it has an event in those 30 days;",
        "- the current tables hold one row per key, MERGE-upserted when a micro-batch brings new "
        "events for it; the `_history` tables keep every published row with its `feature_ts`.",
        "",
    ]
    for table, key in _KEYS.items():
        lines += [
            f"## `{table}`",
            "",
            f"Key: `{key}` (string), one row per {key.removesuffix('_id')} with an event at or "
            "before T; `feature_ts` (timestamp) is T.",
            "",
            "| name | type | window | source | description |",
            "|---|---|---|---|---|",
            *(
                f"| `{f.name}` | `{f.dtype}` | {f.window or '—'} | {f.source} | "
                f"{_cell(f.description)} |"
                for f in table_features(table)
            ),
            "",
        ]
    return "\n".join(lines)


def _check_as_of(as_of: datetime) -> None:
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise ValueError(
            f"as_of must be timezone-aware, got naive {as_of.isoformat()}; "
            "pass e.g. as_of.replace(tzinfo=UTC)"
        )


def _within(ts: Column, as_of: Column, window: str) -> Column:
    """``ts`` in ``(as_of - window, as_of]``."""
    start = F.timestamp_micros(F.unix_micros(as_of) - _micros(WINDOWS[window]))
    return (ts > start) & (ts <= as_of)


def _micros(span: timedelta) -> int:
    return (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds


def _interaction_weight() -> Column:
    return F.coalesce(
        *(F.when(F.col("event_type") == t, F.lit(w)) for t, w in INTERACTION_WEIGHTS.items()),
        F.lit(0),
    )


def _top_categories(events: DataFrame) -> DataFrame:
    """Per user, the top categories by weighted interactions with their share of the score."""
    scores = (
        events.where(F.col("properties.category").isNotNull())
        .groupBy("user_id", AS_OF, F.col("properties.category").alias("_category"))
        .agg(F.sum(_interaction_weight()).alias("_score"))
    )
    return _ranked_categories(scores)


def _ranked_categories(scores: DataFrame) -> DataFrame:
    """``_top_categories`` of per (user, as-of, ``_category``) ``_score`` rows."""
    scores = scores.where(F.col("_score") > 0)
    # Sorting structs orders by their first field, then the next: score desc, category asc.
    ranked = F.sort_array(
        F.collect_list(
            F.struct(
                (-F.col("_score")).alias("neg_score"),
                F.col("_category").alias("category"),
                F.col("_score").alias("score"),
            )
        )
    )
    per_user = scores.groupBy("user_id", AS_OF).agg(
        F.slice(ranked, 1, TOP_CATEGORIES).alias("_ranked"),
        F.sum("_score").alias("_total"),
    )
    return per_user.select(
        "user_id",
        AS_OF,
        F.transform(
            "_ranked",
            lambda c: F.struct(
                c["category"].alias("category"), (c["score"] / F.col("_total")).alias("weight")
            ),
        ).alias("_top_categories"),
    )


def _capped_ratio(numerator: Column, denominator: Column) -> Column:
    """``numerator / denominator`` capped at 1.0, and 0.0 when the denominator is 0."""
    return F.when(denominator == 0, F.lit(0.0)).otherwise(
        F.least(numerator / denominator, F.lit(1.0))
    )


def _feature(name: str) -> FeatureDefinition:
    return next(f for f in FEATURES if f.name == name)


def _feature_rows(frame: DataFrame, table: str, columns: Mapping[str, Column]) -> DataFrame:
    """The key, ``feature_ts`` and every feature of ``table`` in ``FEATURES`` order and types."""
    features = table_features(table)
    undefined = sorted({f.name for f in features} ^ set(columns))
    if undefined:
        raise ValueError(f"{table}: features without a definition or a column: {undefined}")
    return frame.select(
        F.col(_KEYS[table]),
        F.col(AS_OF).alias("feature_ts"),
        *(columns[f.name].cast(spark_type(f)).alias(f.name) for f in features),
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
