"""Point-in-time training sets: labels, sampled negatives, as-of feature joins, leakage checks.

A training row pairs a label observed at ``label_ts`` with the features that were *known* before
it. The gold history tables hold every published feature row with its ``feature_ts`` (features
computed from events with ``event_ts <= feature_ts``), so the features of a label are the latest
row of its user, and of its item, with ``feature_ts`` strictly before ``label_ts``. A row
published at the label's instant may already reflect the labelled event itself, which is why the
bound is strict.

Everything here except ``check_no_leakage`` and ``training_set_digest`` (which must look at the
data) is a lazy DataFrame transform: no reads, writes or actions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DataType,
    DateType,
    DoubleType,
    FloatType,
    MapType,
    StructType,
    TimestampNTZType,
    TimestampType,
)

LABEL_EVENTS = ("purchase", "click")
"""The event types that can count as a positive outcome of an exposure."""

EXPOSURE_EVENT = "page_view"
LABEL_KEY = ("user_id", "item_id", "label_ts")
"""One training example per key: who saw what, when."""

SOURCE_EXPOSURE = "exposure"
SOURCE_SAMPLED = "sampled"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LEAK_SAMPLE_SIZE = 5


class LeakageError(AssertionError):
    """A training set holds features computed at or after the label they are paired with."""

    def __init__(self, message: str, leaking_rows: dict[str, int]) -> None:
        super().__init__(message)
        self.leaking_rows = leaking_rows
        """Per feature timestamp column, how many rows leak."""


def labels(events: DataFrame, *, label_event: str, horizon: timedelta) -> DataFrame:
    """Exposures and their outcome, one row per distinct ``(user_id, item_id, label_ts)``.

    An exposure is a ``page_view`` with a user and an item; ``label_ts`` is its ``event_ts``.
    ``label`` is 1 when the same user has a ``label_event`` on the same item in
    ``(label_ts, label_ts + horizon]`` (an outcome at the exposure's own instant does not count),
    else 0. Exposures with ``label_ts > max(event_ts) - horizon`` are dropped: their outcome
    window is not complete in ``events``, so a 0 there would be a guess.

    Returns:
        ``user_id, item_id, label_ts, label (int), source ('exposure')``.
    """
    if label_event not in LABEL_EVENTS:
        raise ValueError(
            f"label_event must be one of {', '.join(LABEL_EVENTS)}, got {label_event!r}"
        )
    if horizon <= timedelta(0):
        raise ValueError(f"horizon must be positive, got {horizon!r}; e.g. timedelta(days=1)")
    horizon_micros = horizon // timedelta(microseconds=1)
    last_complete = events.agg((F.max("event_ts") - F.lit(horizon)).alias("_last_complete"))
    # One pass over the user's events on the item, in time order: an exposure's outcome is any
    # label event from 1 microsecond (the timestamp resolution) up to the horizon after it. A
    # range window needs no join, however many views and outcomes a (user, item) pair has.
    outcome_window = (
        Window.partitionBy("user_id", "item_id")
        .orderBy(F.unix_micros("event_ts"))
        .rangeBetween(1, horizon_micros)
    )
    is_outcome = F.col("event_type") == label_event
    return (
        events.where(
            F.col("event_type").isin(EXPOSURE_EVENT, label_event)
            & F.col("user_id").isNotNull()
            & F.col("item_id").isNotNull()
            & F.col("event_ts").isNotNull()
        )
        .select(
            "user_id",
            "item_id",
            "event_type",
            F.col("event_ts").alias("label_ts"),
            (F.count_if(is_outcome).over(outcome_window) > 0).cast("int").alias("label"),
        )
        .where(F.col("event_type") == EXPOSURE_EVENT)
        .join(F.broadcast(last_complete), F.col("label_ts") <= F.col("_last_complete"))
        .select(*LABEL_KEY, "label", F.lit(SOURCE_EXPOSURE).alias("source"))
        .distinct()
    )


def sampled_negatives(
    labels: DataFrame, events: DataFrame, *, per_positive: int, seed: int
) -> DataFrame:
    """Reproducible negatives: items the user of each positive label never interacted with.

    Candidates are all distinct non-null ``item_id`` of ``events`` minus every item the user has
    an event on (any type, any time). For a positive at ``(user_id, label_ts)`` they are ranked
    by ``xxhash64(seed as BIGINT, user_id, label_ts, item_id)`` (ties by ``item_id``) and the
    lowest ``per_positive`` are kept; fewer when fewer candidates exist. The ranking is a pure
    function of the values, so the rows do not depend on partitioning or row order.

    Rows are unique per ``(user_id, item_id, label_ts)``: when a user has ``n`` positives at the
    same instant (different items), they share one ranking and get its lowest
    ``n * per_positive`` items, still ``per_positive`` per positive.

    Returns:
        ``user_id, item_id, label_ts, label (int, 0), source ('sampled')``.
    """
    if per_positive < 1:
        raise ValueError(f"per_positive must be >= 1, got {per_positive}")
    positives = (
        labels.where((F.col("label") == 1) & F.col("user_id").isNotNull())
        .groupBy("user_id", "label_ts")
        .agg(F.count_distinct("item_id").alias("_positives"))
    )
    all_items = events.where(F.col("item_id").isNotNull()).agg(
        F.collect_set("item_id").alias("_all_items")
    )
    seen = (
        events.where(F.col("user_id").isNotNull() & F.col("item_id").isNotNull())
        .groupBy("user_id")
        .agg(F.collect_set("item_id").alias("_seen"))
    )
    # Per positive, the ranking runs over an array (one broadcast item list, minus the user's
    # items) instead of a positives x items cross join, so nothing of that size is shuffled.
    hashed_seed = F.lit(seed).cast("bigint")
    candidates = F.when(F.col("_seen").isNull(), F.col("_all_items")).otherwise(
        F.array_except("_all_items", "_seen")
    )
    ranked = F.sort_array(
        F.transform(
            candidates,
            lambda item: F.struct(
                F.xxhash64(hashed_seed, F.col("user_id"), F.col("label_ts"), item).alias("rank"),
                item.alias("item_id"),
            ),
        )
    )
    chosen = F.slice(ranked, 1, F.col("_positives") * per_positive)
    return (
        positives.join(seen, "user_id", "left")
        .crossJoin(F.broadcast(all_items))
        .select("user_id", "label_ts", F.explode(chosen).alias("_chosen"))
        .select(
            "user_id",
            F.col("_chosen.item_id").alias("item_id"),
            "label_ts",
            F.lit(0).alias("label"),
            F.lit(SOURCE_SAMPLED).alias("source"),
        )
    )


def point_in_time_join(
    labels: DataFrame, user_history: DataFrame, item_history: DataFrame
) -> DataFrame:
    """Each label with the user and item features known strictly before its ``label_ts``.

    For every label row: the latest ``user_history`` row of its ``user_id`` with
    ``feature_ts < label_ts`` and the latest ``item_history`` row of its ``item_id`` with
    ``feature_ts < label_ts``; left joins, so a key without such a row (cold start) gets nulls.
    Two history rows of one key with the same ``feature_ts`` should not exist; if they do, the
    one with the greatest JSON encoding (``to_json``) wins, so the result is still deterministic.

    Returns:
        The label columns, ``user_feature_ts``, the user features prefixed ``user_`` (all
        ``user_history`` columns but ``user_id`` and ``feature_ts``), ``item_feature_ts`` and the
        item features prefixed ``item_``. Label rows are kept as they are, one output row each.

    The plan reads ``labels`` three times (the rows, and their distinct user and item instants);
    cache it when it is expensive to recompute.
    """
    _require_columns(labels, "labels", LABEL_KEY)
    _require_columns(user_history, "user_history", ("user_id", "feature_ts"))
    _require_columns(item_history, "item_history", ("item_id", "feature_ts"))
    user_features = _as_of(labels, user_history, key="user_id", prefix="user_")
    item_features = _as_of(labels, item_history, key="item_id", prefix="item_")
    user_columns = user_features.columns[2:]
    item_columns = item_features.columns[2:]
    output = [*labels.columns, *user_columns, *item_columns]
    lowered = [c.lower() for c in output]
    clashes = sorted({c for c in output if lowered.count(c.lower()) > 1})
    if clashes:
        raise ValueError(
            f"point_in_time_join would produce duplicate columns {clashes}; rename the label "
            "or feature columns so that label columns and prefixed features differ"
        )
    label = labels.alias("_label")
    user = user_features.alias("_user")
    item = item_features.alias("_item")
    return (
        label.join(
            user,
            (F.col("_label.user_id") == F.col("_user._key"))
            & (F.col("_label.label_ts") == F.col("_user._label_ts")),
            "left",
        )
        .join(
            item,
            (F.col("_label.item_id") == F.col("_item._key"))
            & (F.col("_label.label_ts") == F.col("_item._label_ts")),
            "left",
        )
        .select(
            *(F.col(f"_label.`{c}`") for c in labels.columns),
            *(F.col(f"_user.`{c}`") for c in user_columns),
            *(F.col(f"_item.`{c}`") for c in item_columns),
        )
    )


def check_no_leakage(training_set: DataFrame) -> None:
    """Raise ``LeakageError`` unless every non-null feature timestamp is before ``label_ts``.

    Checks ``user_feature_ts`` and ``item_feature_ts`` (whichever are present, at least one must
    be). A feature timestamp on a row without ``label_ts`` cannot be proven safe and counts as a
    leak.
    """
    _require_columns(training_set, "training_set", ("label_ts",))
    ts_columns: list[str] = [
        c for c in ("user_feature_ts", "item_feature_ts") if c in training_set.columns
    ]
    if not ts_columns:
        raise ValueError(
            "training_set has neither user_feature_ts nor item_feature_ts; build it with "
            f"point_in_time_join (columns: {', '.join(training_set.columns)})"
        )
    leaks = {c: _leaks(c) for c in ts_columns}
    counts = training_set.agg(*(F.count_if(leak).alias(c) for c, leak in leaks.items())).first()
    leaking = {c: int(counts[c]) for c in ts_columns if counts is not None and counts[c]}
    if not leaking:
        return
    key = [c for c in LABEL_KEY if c in training_set.columns]
    samples = [
        training_set.where(leaks[column])
        .select(
            F.lit(column).alias("_column"),
            *(_instants_as_micros(F.col(c), training_set.schema[c].dataType).alias(c) for c in key),
            F.unix_micros(column).alias("_feature_ts"),
        )
        .orderBy(*key, "_feature_ts")
        .limit(_LEAK_SAMPLE_SIZE)
        for column in leaking
    ]
    sampled = reduce(DataFrame.unionAll, samples).orderBy("_column", *key, "_feature_ts").collect()
    parts = []
    for column, count in leaking.items():
        shown = "; ".join(
            "("
            + ", ".join(
                f"{name}={_show(row[i + 1], training_set.schema[name].dataType)}"
                for i, name in enumerate(key)
            )
            + f", {column}={_show(row['_feature_ts'], TimestampType())})"
            for row in sampled
            if row["_column"] == column
        )
        parts.append(f"{count} row(s) have {column} >= label_ts (or no label_ts), e.g. {shown}")
    raise LeakageError(
        "training set leaks the future: "
        + " | ".join(parts)
        + ". Join features with point_in_time_join, which takes only rows with "
        "feature_ts strictly before label_ts.",
        leaking,
    )


def training_set_digest(training_set: DataFrame) -> str:
    """SHA-256 (hex) of a training set's content, independent of row order and partitioning.

    The content is the column names and types, in order, and the multiset of rows. Each row is
    encoded canonically (floats by ``repr``, timestamps as ISO-8601 UTC with microseconds,
    map entries sorted, strings JSON-quoted, nulls distinct from every value) and hashed; the
    sorted row hashes are hashed with the header. Rows are streamed to the driver one partition
    at a time, so memory grows with 32 bytes per row, not the row size.
    """
    schema = training_set.schema
    header = json.dumps([[f.name, f.dataType.simpleString()] for f in schema.fields])
    canonical = training_set.select(
        *(_instants_as_micros(F.col(f"`{f.name}`"), f.dataType).alias(f.name) for f in schema)
    )
    row_type = StructType(schema.fields)
    row_digests = sorted(
        hashlib.sha256(_encode(row, row_type).encode()).digest()
        for row in canonical.toLocalIterator(prefetchPartitions=True)
    )
    digest = hashlib.sha256(header.encode())
    for row_digest in row_digests:
        digest.update(row_digest)
    return digest.hexdigest()


def _as_of(labels: DataFrame, history: DataFrame, *, key: str, prefix: str) -> DataFrame:
    """Per distinct ``(key, label_ts)`` of ``labels``, the latest history row strictly before.

    Columns: ``_key``, ``_label_ts``, then ``feature_ts`` and the features, prefixed.

    Label instants and history rows of a key are sorted together by time, labels before
    history rows of the same instant; the last history row at or before a label's position is
    then the latest one strictly before it. This is linear in the rows of a key, where a range
    join (``feature_ts < label_ts``) would pair every label with every earlier history row.
    """
    feature_columns = [c for c in history.columns if c not in (key, "feature_ts")]
    snapshot = F.struct(*(F.col(f"`{c}`") for c in ["feature_ts", *feature_columns]))
    published = history.where(F.col(key).isNotNull() & F.col("feature_ts").isNotNull()).select(
        key,
        F.col("feature_ts").alias("_ts"),
        F.lit(1).alias("_kind"),
        F.to_json(snapshot).alias("_tiebreak"),
        snapshot.alias("_row"),
    )
    row_type = published.schema["_row"].dataType
    wanted = (
        labels.where(F.col(key).isNotNull() & F.col("label_ts").isNotNull())
        .select(key, "label_ts")
        .distinct()
        .select(
            key,
            F.col("label_ts").alias("_ts"),
            F.lit(0).alias("_kind"),
            F.lit(None).cast("string").alias("_tiebreak"),
            F.lit(None).cast(row_type).alias("_row"),
        )
    )
    up_to_here = (
        Window.partitionBy(key)
        .orderBy("_ts", "_kind", "_tiebreak")
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    latest = F.last("_row", ignorenulls=True).over(up_to_here)
    return (
        wanted.unionByName(published)
        .withColumn("_latest", latest)
        .where(F.col("_kind") == 0)
        .select(
            F.col(key).alias("_key"),
            F.col("_ts").alias("_label_ts"),
            *(
                F.col("_latest").getField(c).alias(prefix + c)
                for c in ["feature_ts", *feature_columns]
            ),
        )
    )


def _leaks(ts_column: str) -> Column:
    before_label = F.col(ts_column) < F.col("label_ts")
    return F.col(ts_column).isNotNull() & ~F.coalesce(before_label, F.lit(False))


def _require_columns(df: DataFrame, name: str, required: Iterable[str]) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"{name} is missing column(s) {', '.join(missing)} (has: {', '.join(df.columns)})"
        )


def _show(value: Any, data_type: DataType) -> str:
    """A value for an error message; instants (given as epoch micros) in ISO-8601 UTC."""
    if value is not None and isinstance(data_type, TimestampType):
        return (_EPOCH + timedelta(microseconds=value)).isoformat()
    return str(value)


def _has_instants(data_type: DataType) -> bool:
    if isinstance(data_type, TimestampType):
        return True
    if isinstance(data_type, ArrayType):
        return _has_instants(data_type.elementType)
    if isinstance(data_type, MapType):
        return _has_instants(data_type.keyType) or _has_instants(data_type.valueType)
    if isinstance(data_type, StructType):
        return any(_has_instants(f.dataType) for f in data_type.fields)
    return False


def _instants_as_micros(column: Column, data_type: DataType) -> Column:
    """``column`` with every TIMESTAMP (at any depth) as microseconds since the epoch.

    PySpark turns timestamps into naive datetimes in the driver's local time zone, which is
    ambiguous around DST changes; epoch microseconds are exact.
    """
    if not _has_instants(data_type):
        return column
    if isinstance(data_type, TimestampType):
        return F.unix_micros(column)
    if isinstance(data_type, ArrayType):
        element = data_type.elementType
        return F.transform(column, lambda x: _instants_as_micros(x, element))
    if isinstance(data_type, MapType):
        keys, values = data_type.keyType, data_type.valueType
        return F.transform_values(
            F.transform_keys(column, lambda k, _: _instants_as_micros(k, keys)),
            lambda _, v: _instants_as_micros(v, values),
        )
    assert isinstance(data_type, StructType)
    fields = [
        _instants_as_micros(column.getField(f.name), f.dataType).alias(f.name)
        for f in data_type.fields
    ]
    return F.when(column.isNull(), F.lit(None)).otherwise(F.struct(*fields))


def _encode(value: Any, data_type: DataType) -> str:
    """A canonical text for ``value`` of ``data_type`` (timestamps given as epoch micros)."""
    if value is None:
        return "null"
    if isinstance(data_type, TimestampType):
        return json.dumps((_EPOCH + timedelta(microseconds=value)).isoformat())
    if isinstance(data_type, TimestampNTZType | DateType):
        return json.dumps(value.isoformat())
    if isinstance(data_type, BooleanType):
        return "true" if value else "false"
    if isinstance(data_type, DoubleType | FloatType):
        return repr(float(value))
    if isinstance(data_type, BinaryType):
        return json.dumps("0x" + bytes(value).hex())
    if isinstance(data_type, ArrayType):
        return "[" + ",".join(_encode(v, data_type.elementType) for v in value) + "]"
    if isinstance(data_type, MapType):
        entries = sorted(
            f"{_encode(k, data_type.keyType)}:{_encode(v, data_type.valueType)}"
            for k, v in value.items()
        )
        return "{" + ",".join(entries) + "}"
    if isinstance(data_type, StructType):
        return (
            "{"
            + ",".join(
                f"{json.dumps(f.name)}:{_encode(v, f.dataType)}"
                for f, v in zip(data_type.fields, value, strict=True)
            )
            + "}"
        )
    if isinstance(value, str):
        return json.dumps(value)
    # Integers, decimals (fixed scale per type) and intervals print exactly and canonically.
    return str(value)
