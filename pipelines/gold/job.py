"""The gold job: new ``silver.events`` -> ``gold.user_features`` / ``gold.item_features``.

Per micro-batch of the silver change feed:

1. as-of points in event time — the clock training labels use: the batch's ``T`` is the latest
   event time seen so far (its newest event, or the last published ``T`` if later: ``T`` never
   goes back). A batch spanning several ``gold.publish_every`` slices (a backfill, a large batch)
   publishes each touched key as of the end of every slice it has events in (capped by ``T``, and
   always after the last published ``T``), so the history grows as it would have live;
2. the users and items the batch touches are recomputed at those points from silver (events of
   the 30 days before each point, partition-pruned by event date) and silver.sessions, in one
   Spark pass per table (``user_features_at`` / ``item_features_at``);
3. the candidate rows are validated by the gold suites (Great Expectations) **before** anything is
   published: a failing batch is recorded in ``quality.suite_results`` and never written; config
   (``gold.on_suite_failure``) says whether the query then stops or carries on;
4. the history tables get every published row and the current tables are MERGE-upserted with
   the latest row per key, each as one idempotent Delta commit keyed by (query id, batch id).

A replayed batch recomputes the same ``T`` and rows (``T`` only depends on the batch and on what
was published before it) and skips every commit that already landed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.config import Settings, TriggerSettings, parse_duration
from pipelines.gold.features import AS_OF, FEATURES, item_features_at, user_features_at
from pipelines.lake.catalog import Catalog
from pipelines.lake.tables import (
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_FEATURES_HISTORY,
    GOLD_USER_FEATURES,
    GOLD_USER_FEATURES_HISTORY,
    SILVER_EVENTS,
    SILVER_SESSIONS,
    TableSpec,
)
from pipelines.streaming.delta import BatchHandler, conform, query_id_from_checkpoint
from pipelines.streaming.queries import StepClock, await_query, start_table_stream
from pipelines.streaming.sinks import ensure_table, table_writer
from pipelines.streaming.sources import delta_stream

log = logging.getLogger(__name__)

LOOKBACK = timedelta(days=30)  # the longest feature window
RATE_FEATURES = ("ctr_7d", "conversion_rate_7d")


class GoldSuiteFailedError(RuntimeError):
    """A candidate gold batch broke its suite; it was not published."""


# (gold table, candidate rows, batch id, load id) -> failure messages (empty = publishable)
GoldGate = Callable[[str, DataFrame, int, str], list[str]]


@dataclass
class GoldStats:
    batches_published: int = 0
    batches_rejected: int = 0
    batches_skipped: int = 0
    users_published: int = 0
    items_published: int = 0
    history_rows: int = 0
    feature_ts: list[datetime] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)  # seconds per step per batch
    rejections: list[str] = field(default_factory=list)


@dataclass
class GoldRun:
    stats: GoldStats
    query_id: str
    versions: dict[str, int]


@dataclass(frozen=True)
class _Target:
    current: TableSpec
    history: TableSpec
    key: str


_TARGETS = {
    "users": _Target(GOLD_USER_FEATURES, GOLD_USER_FEATURES_HISTORY, "user_id"),
    "items": _Target(GOLD_ITEM_FEATURES, GOLD_ITEM_FEATURES_HISTORY, "item_id"),
}


def gold_batch_handler(
    catalog: Catalog,
    checkpoint: str,
    stats: GoldStats,
    *,
    gate: GoldGate | None = None,
    stop_on_failure: bool = True,
    publish_every: timedelta = timedelta(hours=1),
) -> BatchHandler:
    """The ``foreachBatch`` handler of the gold query (see the module docstring)."""
    appenders = {
        spec.name: table_writer(catalog, spec)
        for target in _TARGETS.values()
        for spec in (target.current, target.history)
    }
    query: list[str] = []
    last_published: list[datetime | None] = []

    def handle(batch_df: DataFrame, batch_id: int) -> None:
        if not query:
            query.append(query_id_from_checkpoint(checkpoint, batch_df.sparkSession))
            # Before this batch: a batch replayed after a crash between its user and item
            # commits already has its own T in the user history, and must not count it.
            last_published.append(_latest_feature_ts(catalog, f"{query[0]}:{batch_id}"))
        app = {name: f"{name}:{query[0]}" for name in appenders}
        if all(appenders[n].committed(app[n], batch_id) for n in appenders):
            stats.batches_skipped += 1
            return
        spark = batch_df.sparkSession
        clock = StepClock()
        new = batch_df.select("user_id", "item_id", "event_ts").cache()
        try:
            newest = new.agg(F.max("event_ts").alias("t")).first()
            if newest is None or newest.t is None:
                return
            as_of = _utc(newest.t)
            if last_published[0] is not None and last_published[0] > as_of:
                as_of = last_published[0]
            load_id = f"{query[0]}:{batch_id}"
            points = as_of_points(new, as_of, last_published[0], publish_every)
            history = _candidates(spark, catalog, new, points, load_id)
        finally:
            new.unpersist()
        clock.lap("features")
        candidates = {
            kind: latest_per_key(rows, _TARGETS[kind].key) for kind, rows in history.items()
        }
        failures = []
        for kind, rows in candidates.items():
            if gate is not None and rows.num_rows:
                table = _TARGETS[kind].current.name
                failures += gate(table, spark.createDataFrame(rows), batch_id, load_id)
        clock.lap("gate")
        if failures:
            stats.batches_rejected += 1
            stats.rejections.extend(failures)
            message = (
                f"gold batch {batch_id} (features as of {as_of.isoformat()}) failed its suite and "
                f"was not published: {'; '.join(failures)}"
            )
            if stop_on_failure:
                raise GoldSuiteFailedError(message + " (gold.on_suite_failure: stop)")
            log.error("%s; continuing (gold.on_suite_failure: continue)", message)
            return
        for kind, rows in candidates.items():
            target = _TARGETS[kind]
            current, past = target.current.name, target.history.name
            frame = spark.createDataFrame(rows, schema=target.current.schema)
            appenders[current].upsert(frame, target.key, app[current], batch_id)
            appenders[past].append(history[kind], app[past], batch_id, spark=spark)
        clock.lap("publish")
        stats.timings.append(clock.laps)
        stats.batches_published += 1
        stats.users_published += candidates["users"].num_rows
        stats.items_published += candidates["items"].num_rows
        stats.history_rows += history["users"].num_rows + history["items"].num_rows
        stats.feature_ts.append(as_of)
        last_published[0] = as_of

    return handle


def gold_suite_gate(settings: Settings, catalog: Catalog) -> GoldGate:
    """Great Expectations suites for the gold tables, recorded in ``quality.suite_results``."""
    from pipelines.quality.recording import SuiteRecorder
    from pipelines.quality.suites import gold_features_expectations

    recorder = SuiteRecorder(settings, catalog)
    staleness = parse_duration(settings.gold.max_staleness)
    numeric = {
        spec.name: [
            f.name for f in FEATURES if f.table == spec.name and f.dtype in ("bigint", "double")
        ]
        for spec in (GOLD_USER_FEATURES, GOLD_ITEM_FEATURES)
    }

    def check(table: str, rows: DataFrame, batch_id: int, load_id: str) -> list[str]:
        key = "user_id" if table == GOLD_USER_FEATURES.name else "item_id"
        rates = [c for c in RATE_FEATURES if c in numeric[table]]
        expectations = gold_features_expectations(key, numeric[table], rates, staleness)
        result = recorder.validate(table, expectations, rows, batch_id=batch_id, load_id=load_id)
        return [f"{table}: {failure}" for failure in result.failed]

    return check


def gold_snapshot_validator(
    spark: SparkSession, settings: Settings, catalog: Catalog, snapshot: str
) -> Callable[[str, int], list[str]]:
    """Validation for ``Snapshots.create``: each gold table at the version to be pinned must pass
    its suite (recorded in ``quality.suite_results`` as ``snapshot <name>``); other tables must
    simply be readable at that version."""
    from pipelines.quality.recording import SuiteRecorder
    from pipelines.quality.suites import gold_features_expectations

    recorder = SuiteRecorder(settings, catalog)
    staleness = parse_duration(settings.gold.max_staleness)
    keys = {GOLD_USER_FEATURES.name: "user_id", GOLD_ITEM_FEATURES.name: "item_id"}

    def validate(table: str, version: int) -> list[str]:
        frame = catalog.read(spark, table, version=version)
        if table not in keys:
            return []
        numeric = [f.name for f in FEATURES if f.table == table and f.dtype in ("bigint", "double")]
        rates = [c for c in RATE_FEATURES if c in numeric]
        expectations = gold_features_expectations(
            keys[table], numeric, rates, staleness, whole_table=True
        )
        result = recorder.validate(
            table, expectations, frame, batch_id=version, load_id=f"snapshot-{snapshot}:{version}"
        )
        return list(result.failed)

    return validate


def start_gold(
    spark: SparkSession,
    settings: Settings,
    *,
    trigger: TriggerSettings | None = None,
    gate: GoldGate | None = None,
) -> tuple[StreamingQuery, GoldStats]:
    """Start the gold query and return it without waiting (see ``run_gold``)."""
    catalog = Catalog.for_settings(settings)
    for spec in (SILVER_EVENTS, SILVER_SESSIONS, *_TABLES):
        ensure_table(spark, catalog, spec)
    stats = GoldStats()
    handler = gold_batch_handler(
        catalog,
        catalog.checkpoint(GOLD_USER_FEATURES.name),
        stats,
        gate=gate,
        stop_on_failure=settings.gold.on_suite_failure == "stop",
        publish_every=parse_duration(settings.gold.publish_every),
    )
    source = delta_stream(
        spark,
        catalog,
        SILVER_EVENTS.name,
        max_files_per_trigger=settings.gold.max_files_per_trigger,
        max_bytes_per_trigger=settings.gold.max_bytes_per_trigger,
    )
    query = start_table_stream(
        source,
        catalog=catalog,
        table=GOLD_USER_FEATURES.name,
        handler=handler,
        trigger=trigger or settings.streaming.trigger,
    )
    return query, stats


def run_gold(
    spark: SparkSession,
    settings: Settings,
    *,
    trigger: TriggerSettings | None = None,
    gate: GoldGate | None = None,
    on_progress: Callable[[StreamingQuery, GoldStats], None] | None = None,
    timeout_s: float | None = None,
) -> GoldRun:
    """Run the gold query over the silver change feed."""
    query, stats = start_gold(spark, settings, trigger=trigger, gate=gate)
    await_query(
        query,
        on_progress=(lambda q: on_progress(q, stats)) if on_progress else None,
        timeout_s=timeout_s,
    )
    catalog = Catalog.for_settings(settings)
    versions = {spec.name: catalog.delta_table(spec.name).version() for spec in _TABLES}
    return GoldRun(stats, str(query.id), versions)


_TABLES = (
    GOLD_USER_FEATURES,
    GOLD_USER_FEATURES_HISTORY,
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_FEATURES_HISTORY,
)


def as_of_points(
    new: DataFrame, as_of: datetime, last_published: datetime | None, every: timedelta
) -> DataFrame:
    """Each new event's as-of point: the end of its ``every`` slice, no earlier than the first
    slice boundary after ``last_published`` and no later than ``as_of``. Columns: user_id,
    item_id, as_of (one row per event)."""
    step = _micros(every)
    end = F.ceil(F.unix_micros("event_ts") / F.lit(step)).cast("long") * F.lit(step)
    if last_published is not None:
        first_allowed = (_micros_of(last_published) // step + 1) * step
        end = F.greatest(end, F.lit(first_allowed))
    point = F.least(end, F.lit(_micros_of(as_of)))
    return new.select("user_id", "item_id", F.timestamp_micros(point).alias(AS_OF))


def latest_per_key(rows: pa.Table, key: str) -> pa.Table:
    """The row with the latest ``feature_ts`` of each key (what the current table holds)."""
    if rows.num_rows == 0:
        return rows
    order = pc.sort_indices(rows, sort_keys=[(key, "ascending"), ("feature_ts", "descending")])
    ordered = rows.take(order)
    keys = ordered.column(key).combine_chunks()
    previous = pa.concat_arrays([pa.array([None], keys.type), keys.slice(0, len(keys) - 1)])
    return ordered.filter(pc.fill_null(pc.not_equal(keys, previous), True))


def _candidates(
    spark: SparkSession, catalog: Catalog, new: DataFrame, points: DataFrame, load_id: str
) -> dict[str, pa.Table]:
    """Feature rows of every (key, as-of point) the batch touches, as Arrow."""
    earliest = points.agg(F.min(AS_OF).alias("t")).first()
    assert earliest is not None and earliest.t is not None
    since = (_utc(earliest.t) - LOOKBACK).date().isoformat()
    recent = catalog.read(spark, SILVER_EVENTS.name, partitions=[("event_date", ">=", since)])
    user_points = points.where(F.col("user_id").isNotNull()).select("user_id", AS_OF).distinct()
    item_points = points.where(F.col("item_id").isNotNull()).select("item_id", AS_OF).distinct()
    users = F.broadcast(user_points.select("user_id").distinct())
    items = F.broadcast(item_points.select("item_id").distinct())
    sessions = catalog.read(spark, SILVER_SESSIONS.name).join(users, "user_id")
    published = datetime.now(tz=UTC)
    out = {}
    for kind, frame in (
        ("users", user_features_at(recent.join(users, "user_id"), sessions, user_points)),
        ("items", item_features_at(recent.join(items, "item_id"), item_points)),
    ):
        rows = pa.table(frame.toArrow())
        stamp = pa.array([published] * rows.num_rows, pa.timestamp("us", tz="UTC"))
        rows = rows.append_column("published_at", stamp)
        rows = rows.append_column("load_id", pa.array([load_id] * rows.num_rows, pa.string()))
        out[kind] = conform(rows, _TARGETS[kind].current.arrow_schema)
    return out


def _micros(span: timedelta) -> int:
    return (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds


def _micros_of(moment: datetime) -> int:
    return _micros(_utc(moment) - datetime(1970, 1, 1, tzinfo=UTC))


def _latest_feature_ts(catalog: Catalog, excluding_load_id: str) -> datetime | None:
    """The last ``T`` published by an earlier batch (from the user history, without the rows of
    ``excluding_load_id``), so ``T`` never goes back."""
    if not catalog.exists(GOLD_USER_FEATURES_HISTORY.name):
        return None
    rows = catalog.read_arrow(GOLD_USER_FEATURES_HISTORY.name, columns=["feature_ts", "load_id"])
    earlier = rows.filter(pc.not_equal(rows.column("load_id"), excluding_load_id))
    column = earlier.column("feature_ts")
    latest = pc.max(column).as_py() if len(column) else None
    return _utc(latest) if latest is not None else None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
