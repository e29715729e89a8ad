"""The gold job: new ``silver.events`` -> ``gold.user_features`` / ``gold.item_features``.

Per micro-batch of the silver change feed, all in Spark — the driver only collects a few
aggregates (the batch's newest event time and silver versions, the ends of the buckets that
straddle a window edge, row counts), never rows of the batch:

1. as-of points in event time — the clock training labels use: the batch's ``T`` is the latest
   event time seen so far (its newest event, or the last published ``T`` if later: ``T`` never
   goes back). A batch spanning several ``gold.publish_every`` slices (a backfill, a large batch)
   publishes each touched key as of the end of every slice it has events in (capped by ``T``, and
   always after the last published ``T``), so the history grows as it would have live;
2. the batch's events are folded into the gold state, per user and per item and hour
   (``gold.user_feature_buckets`` / ``gold.item_feature_buckets``: the partial aggregates of
   ``user_feature_buckets`` / ``item_feature_buckets``), one MERGE per table that adds the
   batch's contributions to its buckets — late events land in the hour they happened;
3. the touched keys' features at those points are computed from their buckets of the 30 days
   before each point (``bucket_elements``). A bucket whose events straddle a window edge is
   replaced by its events, read from silver *at the batch's version* (only those hours, only the
   touched keys), so each window is exact; session features read the touched users' sessions;
4. the latest row per key is validated by the gold suites (Great Expectations, one aggregation
   over the rows) **before** anything is published: a failing batch is recorded in
   ``quality.suite_results`` and never written; config (``gold.on_suite_failure``) says whether
   the query then stops or carries on;
5. the history tables get every published row and the current tables are MERGE-upserted with
   the latest row per key, written by the executors.

Every commit (the two state MERGEs and the four publications) is one idempotent Delta commit
keyed by (query id, batch id); about once a day of event time the state's dead buckets (too old
for any future point) are deleted, which is idempotent by itself. The state is exactly the
silver commits the query has folded: it starts, for a new query id, as the silver commits before
its first batch (empty for a query that reads silver from the start), and a batch's MERGE lands
once. A batch replayed after a crash between its state MERGE and its publication skips the MERGE
and computes from the state that already holds it — the same state, the same silver version, the
same ``T``, so the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.config import Settings, TriggerSettings, parse_duration
from pipelines.gold.features import (
    AS_OF,
    BUCKET_END,
    BUCKET_SPAN,
    FEATURES,
    ITEM_WINDOWS,
    LOOKBACK,
    LOOKBACK_WINDOW,
    STRADDLES,
    WINDOWS,
    bucket_elements,
    exact_elements,
    item_feature_buckets,
    item_features_from_elements,
    merged_bucket_columns,
    user_feature_buckets,
    user_features_from_elements,
)
from pipelines.gold.tables import (
    GOLD_ITEM_FEATURE_BUCKETS,
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_FEATURES_HISTORY,
    GOLD_USER_FEATURE_BUCKETS,
    GOLD_USER_FEATURES,
    GOLD_USER_FEATURES_HISTORY,
)
from pipelines.lake.catalog import Catalog
from pipelines.lake.tables import TableSpec
from pipelines.quality.recording import SuiteRecorder
from pipelines.quality.suites import gold_features_expectations
from pipelines.silver.tables import SILVER_EVENTS, SILVER_SESSIONS
from pipelines.streaming.delta import BatchHandler, query_id_from_checkpoint
from pipelines.streaming.queries import QueryMonitor, StepClock, await_query, start_table_stream
from pipelines.streaming.sinks import DeltaWriter, ensure_table, table_writer
from pipelines.streaming.sources import delta_stream
from pipelines.tables import LAKE_TABLES

log = logging.getLogger(__name__)

RATE_FEATURES = ("ctr_7d", "conversion_rate_7d")
PRUNE_EVERY = timedelta(days=1)  # how far T moves before the state's dead buckets are deleted
# The silver columns the features read.
EVENT_COLUMNS = ("event_id", "event_type", "user_id", "item_id", "event_ts", "properties")


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

    def published(
        self, counts: dict[str, tuple[int, int]], as_of: datetime, laps: dict[str, float]
    ) -> None:
        """Count a published batch: ``counts`` is (history rows, latest rows) per kind."""
        self.timings.append(laps)
        self.batches_published += 1
        self.users_published += counts["users"][1]
        self.items_published += counts["items"][1]
        self.history_rows += counts["users"][0] + counts["items"][0]
        self.feature_ts.append(as_of)


@dataclass
class GoldRun:
    stats: GoldStats
    query_id: str
    versions: dict[str, int]


@dataclass(frozen=True)
class _Target:
    current: TableSpec
    history: TableSpec
    state: TableSpec
    key: str
    buckets: Callable[..., DataFrame]  # events -> partial aggregates (``*_feature_buckets``)
    windows: tuple[str, ...]  # the windows whose edges a bucket must not straddle


_TARGETS = {
    "users": _Target(
        GOLD_USER_FEATURES,
        GOLD_USER_FEATURES_HISTORY,
        GOLD_USER_FEATURE_BUCKETS,
        "user_id",
        user_feature_buckets,
        tuple(WINDOWS),
    ),
    "items": _Target(
        GOLD_ITEM_FEATURES,
        GOLD_ITEM_FEATURES_HISTORY,
        GOLD_ITEM_FEATURE_BUCKETS,
        "item_id",
        item_feature_buckets,
        (*ITEM_WINDOWS, LOOKBACK_WINDOW),
    ),
}


@dataclass(frozen=True)
class _Batch:
    """What the driver knows of a micro-batch: a few aggregates, no rows."""

    spark: SparkSession
    batch_id: int
    load_id: str
    as_of: datetime  # T
    oldest_event: datetime
    first_version: int  # the silver commits the batch covers
    last_version: int
    earliest_point: datetime


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
    writers = {
        spec.name: table_writer(catalog, spec)
        for target in _TARGETS.values()
        for spec in (target.state, target.current, target.history)
    }
    query: list[str] = []
    last_published: list[datetime | None] = []
    pruned: list[datetime] = []  # the state's last pruning cutoff, in this process
    initialized: set[str] = set()  # the state tables known to belong to this query

    def handle(batch_df: DataFrame, batch_id: int) -> None:
        spark = batch_df.sparkSession
        if not query:
            query.append(query_id_from_checkpoint(checkpoint, spark))
            # Before this batch: a batch replayed after a crash between its user and item
            # commits already has its own T in the user history, and must not count it.
            last_published.append(_latest_feature_ts(spark, catalog, f"{query[0]}:{batch_id}"))
        app = {name: f"{name}:{query[0]}" for name in writers}
        if all(writers[n].committed(app[n], batch_id) for n in writers):
            stats.batches_skipped += 1
            return
        clock = StepClock()
        load_id = f"{query[0]}:{batch_id}"
        previous = last_published[0]
        new = batch_df.select(*EVENT_COLUMNS, "_commit_version").persist(
            StorageLevel.MEMORY_AND_DISK
        )
        frames: list[DataFrame] = [new]
        try:
            summary = new.agg(
                F.max(F.unix_micros("event_ts")).alias("newest"),
                F.min(F.unix_micros("event_ts")).alias("oldest"),
                F.min("_commit_version").alias("first_version"),
                F.max("_commit_version").alias("last_version"),
            ).first()
            if summary is None or summary["newest"] is None:
                return
            batch = _batch_of(
                summary,
                spark,
                batch_id=batch_id,
                load_id=load_id,
                previous=previous,
                publish_every=publish_every,
            )
            as_of = batch.as_of
            points = as_of_points(new, as_of, previous, publish_every).persist(
                StorageLevel.MEMORY_AND_DISK
            )
            frames.append(points)
            _update_state(
                catalog,
                writers,
                app,
                initialized=initialized,
                pruned=pruned,
                new=new,
                batch=batch,
                previous=previous,
            )
            clock.lap("state")
            history, latest, counts = _publication(catalog, points, batch, frames)
            clock.lap("features")
            failures = _gate_failures(gate, latest, counts, batch_id, load_id)
            clock.lap("gate")
            if failures:
                stats.batches_rejected += 1
                stats.rejections.extend(failures)
                message = (
                    f"gold batch {batch_id} (features as of {as_of.isoformat()}) failed its suite "
                    f"and was not published: {'; '.join(failures)}"
                )
                if stop_on_failure:
                    raise GoldSuiteFailedError(message + " (gold.on_suite_failure: stop)")
                log.error("%s; continuing (gold.on_suite_failure: continue)", message)
                return
            _publish(writers, app, history=history, latest=latest, counts=counts, batch_id=batch_id)
            clock.lap("publish")
        finally:
            for frame in frames:
                frame.unpersist()
        stats.published(counts, as_of, clock.laps)
        last_published[0] = as_of

    return handle


def _batch_of(
    summary: Any,
    spark: SparkSession,
    *,
    batch_id: int,
    load_id: str,
    previous: datetime | None,
    publish_every: timedelta,
) -> _Batch:
    """The batch's ``_Batch`` from its one-row summary: ``T`` is its newest event's time, or
    the last published ``T`` if later (``T`` never goes back)."""
    as_of = _instant(summary["newest"])
    if previous is not None and previous > as_of:
        as_of = previous
    oldest = _instant(summary["oldest"])
    return _Batch(
        spark,
        batch_id,
        load_id,
        as_of,
        oldest,
        int(summary["first_version"]),
        int(summary["last_version"]),
        # A point only grows with its event's time: the oldest event's is the earliest.
        _as_of_point(oldest, as_of, previous, publish_every),
    )


def _update_state(
    catalog: Catalog,
    writers: dict[str, DeltaWriter],
    app: dict[str, str],
    *,
    initialized: set[str],
    pruned: list[datetime],
    new: DataFrame,
    batch: _Batch,
    previous: datetime | None,
) -> None:
    """Fold the batch's events into each state table (initialised once per query), then prune
    buckets no window can read any more."""
    for target in _TARGETS.values():
        state = writers[target.state.name]
        if target.state.name not in initialized:
            _initialize_state(catalog, state, target, f"{app[state.spec.name]}:initial", batch)
            initialized.add(target.state.name)
        _fold_into_state(state, target, new, app[state.spec.name], batch)
    _prune_state(batch.spark, [writers[t.state.name] for t in _TARGETS.values()], previous, pruned)


def _publication(
    catalog: Catalog, points: DataFrame, batch: _Batch, frames: list[DataFrame]
) -> tuple[dict[str, DataFrame], dict[str, DataFrame], dict[str, tuple[int, int]]]:
    """Per kind: the history rows to append, the latest row per key to MERGE, and their counts
    (rows, latest); persisted frames are added to ``frames`` for the caller to release."""
    published_at = datetime.now(tz=UTC)
    history: dict[str, DataFrame] = {}
    latest: dict[str, DataFrame] = {}
    counts: dict[str, tuple[int, int]] = {}
    for kind, target in _TARGETS.items():
        rows = _candidates(catalog, target, points, batch, frames)
        flagged = _flag_latest(rows, target.key, published_at, batch.load_id).persist(
            StorageLevel.MEMORY_AND_DISK
        )
        frames.append(flagged)
        history[kind] = flagged.drop(_LATEST)
        latest[kind] = _latest_rows(flagged)
        tally = flagged.agg(
            F.count(F.lit(1)).alias("rows"), F.count_if(_LATEST).alias("latest")
        ).first()
        assert tally is not None
        counts[kind] = (int(tally["rows"]), int(tally["latest"]))
    return history, latest, counts


def _gate_failures(
    gate: GoldGate | None,
    latest: dict[str, DataFrame],
    counts: dict[str, tuple[int, int]],
    batch_id: int,
    load_id: str,
) -> list[str]:
    """What the gold suites say about each kind's latest rows (nothing without a gate)."""
    failures: list[str] = []
    for kind, rows in latest.items():
        if gate is not None and counts[kind][1]:
            failures += gate(_TARGETS[kind].current.name, rows, batch_id, load_id)
    return failures


def _publish(
    writers: dict[str, DeltaWriter],
    app: dict[str, str],
    *,
    history: dict[str, DataFrame],
    latest: dict[str, DataFrame],
    counts: dict[str, tuple[int, int]],
    batch_id: int,
) -> None:
    """MERGE the latest rows into each current table and append the history, each one
    idempotent commit; a kind with nothing to publish makes no commit."""
    for kind, target in _TARGETS.items():
        if not counts[kind][0]:
            continue
        current, past = target.current.name, target.history.name
        writers[current].upsert(latest[kind], target.key, app[current], batch_id)
        if not writers[past].committed(app[past], batch_id):
            writers[past].append_frame(history[kind], app[past], batch_id)


def gold_suite_gate(settings: Settings, catalog: Catalog) -> GoldGate:
    """Great Expectations suites for the gold tables, recorded in ``quality.suite_results``."""

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
    monitor: QueryMonitor | None = None,
) -> tuple[StreamingQuery, GoldStats]:
    """Start the gold query and return it without waiting (see ``run_gold``)."""
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    for spec in (SILVER_EVENTS, SILVER_SESSIONS, *_TABLES, *_STATE):
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
        monitor=monitor,
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
    monitor: QueryMonitor | None = None,
) -> GoldRun:
    """Run the gold query over the silver change feed."""
    query, stats = start_gold(spark, settings, trigger=trigger, gate=gate, monitor=monitor)
    await_query(
        query,
        on_progress=(lambda q: on_progress(q, stats)) if on_progress else None,
        timeout_s=timeout_s,
        monitor=monitor,
    )
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
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


def _as_of_point(
    event_ts: datetime, as_of: datetime, last_published: datetime | None, every: timedelta
) -> datetime:
    """``as_of_points`` of one event time, in Python."""
    step = _micros(every)
    end = -(-_micros_of(event_ts) // step) * step
    if last_published is not None:
        end = max(end, (_micros_of(last_published) // step + 1) * step)
    return _instant(min(end, _micros_of(as_of)))


_STATE = (GOLD_USER_FEATURE_BUCKETS, GOLD_ITEM_FEATURE_BUCKETS)
_LATEST = "_latest"  # flags each key's row with the latest feature_ts: the current table's


def _initialize_state(
    catalog: Catalog, state: DeltaWriter, target: _Target, app_id: str, batch: _Batch
) -> None:
    """Make the state hold exactly the silver commits before the query's first batch, once per
    query id: empty for a query reading silver from the start; rebuilt from silver for a new
    checkpoint over an existing lake or a lost state table (the state would otherwise count
    events twice, or miss some)."""
    if state.committed(app_id, 0):
        return
    spark = batch.spark
    before = batch.first_version - 1
    source = catalog.read(spark, SILVER_EVENTS.name, version=before if before >= 0 else None)
    if before < 0:
        source = source.limit(0)
    log.info("%s: state built from silver version %s", target.state.name, before)
    state.append_frame(
        target.buckets(source.select(*EVENT_COLUMNS)), app_id, 0, replace_where="true"
    )


def _fold_into_state(
    state: DeltaWriter, target: _Target, new: DataFrame, app_id: str, batch: _Batch
) -> None:
    """MERGE the batch's contributions into its buckets (one idempotent commit)."""
    # Only the files that can hold the batch's buckets are scanned: a literal range on the end.
    ends = " AND ".join(
        f"t.{BUCKET_END} {op} TIMESTAMP '{_bucket_end_of(moment).isoformat()}'"
        for op, moment in ((">=", batch.oldest_event), ("<=", batch.as_of))
    )
    state.upsert(
        target.buckets(new),
        [target.key, BUCKET_END],
        app_id,
        batch.batch_id,
        target_filter=ends,
        update=merged_bucket_columns(target.state.schema, "t", "s"),
    )


def _prune_state(
    spark: SparkSession,
    states: list[DeltaWriter],
    previous: datetime | None,
    pruned: list[datetime],
) -> None:
    """Delete the buckets no point can read any more, about once a day of event time.

    Every future point (a replay of this batch included) is at or after ``previous``, the ``T``
    published before this batch, and reads buckets ending after ``point - LOOKBACK``.
    """
    if previous is None:
        return
    cutoff = _bucket_end_of(previous - LOOKBACK) - BUCKET_SPAN
    if pruned and cutoff - pruned[0] < PRUNE_EVERY:
        return
    for state in states:
        state.delete(spark, f"{BUCKET_END} <= TIMESTAMP '{cutoff.isoformat()}'")
    pruned[:] = [cutoff]


def _candidates(
    catalog: Catalog, target: _Target, points: DataFrame, batch: _Batch, frames: list[DataFrame]
) -> DataFrame:
    """Feature rows of every (key, as-of point) the batch touches, from the state."""
    spark, key = batch.spark, target.key
    key_points = points.where(F.col(key).isNotNull()).select(key, AS_OF).distinct()
    keys = F.broadcast(key_points.select(key).distinct())
    horizon = batch.earliest_point - LOOKBACK
    buckets = (
        catalog.read(spark, target.state.name)
        .where(F.col(BUCKET_END) > F.lit(horizon))
        .join(keys, key)
    )
    elements = bucket_elements(buckets, key_points, key, target.windows).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    frames.append(elements)
    # The ends of the buckets that straddle a window edge: a few hours, not rows of the batch.
    edges = [
        _instant(r["end"])
        for r in elements.where(F.col(STRADDLES))
        .select(F.unix_micros(BUCKET_END).alias("end"))
        .distinct()
        .collect()
    ]
    event_elements = None
    if edges:
        events = _silver_events_in(catalog, spark, batch.last_version, edges).join(keys, key)
        event_elements = target.buckets(events, per_event=True)
    exact = exact_elements(elements, event_elements, key)
    if target.key == "user_id":
        sessions = (
            catalog.read(spark, SILVER_SESSIONS.name)
            .where(F.col("session_start") > F.lit(batch.earliest_point - WINDOWS["7d"]))
            .join(keys, "user_id")
        )
        return user_features_from_elements(exact, sessions, key_points)
    return item_features_from_elements(exact)


def _silver_events_in(
    catalog: Catalog, spark: SparkSession, version: int, ends: list[datetime]
) -> DataFrame:
    """Silver's events (at ``version``: what the state holds) in the buckets ending at ``ends``,
    read from those days' partitions only."""
    days = sorted({d.isoformat() for end in ends for d in ((end - BUCKET_SPAN).date(), end.date())})
    events = catalog.read(
        spark, SILVER_EVENTS.name, version=version, partitions=[("event_date", "in", days)]
    )
    ts = F.col("event_ts")
    in_buckets: Column = F.lit(False)
    for end in ends:
        in_buckets = in_buckets | ((ts > F.lit(end - BUCKET_SPAN)) & (ts <= F.lit(end)))
    return events.where(in_buckets).select(*EVENT_COLUMNS)


def _flag_latest(rows: DataFrame, key: str, published_at: datetime, load_id: str) -> DataFrame:
    """The history rows of a batch, stamped, with each key's latest row flagged."""
    newest_first = Window.partitionBy(key).orderBy(F.col("feature_ts").desc())
    return rows.select(
        "*",
        F.lit(published_at).alias("published_at"),
        F.lit(load_id).alias("load_id"),
        (F.row_number().over(newest_first) == 1).alias(_LATEST),
    )


def _latest_rows(flagged: DataFrame) -> DataFrame:
    """The row with the latest ``feature_ts`` of each key (what the current table holds)."""
    return flagged.where(F.col(_LATEST)).drop(_LATEST)


def _micros(span: timedelta) -> int:
    return (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds


def _micros_of(moment: datetime) -> int:
    return _micros(_utc(moment) - datetime(1970, 1, 1, tzinfo=UTC))


def _bucket_end_of(moment: datetime) -> datetime:
    step = _micros(BUCKET_SPAN)
    return _instant(-(-_micros_of(moment) // step) * step)


def _instant(epoch_micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(epoch_micros))


def _latest_feature_ts(
    spark: SparkSession, catalog: Catalog, excluding_load_id: str
) -> datetime | None:
    """The last ``T`` published by an earlier batch (from the user history, without the rows of
    ``excluding_load_id``), so ``T`` never goes back."""
    if not catalog.exists(GOLD_USER_FEATURES_HISTORY.name):
        return None
    row = (
        catalog.read(spark, GOLD_USER_FEATURES_HISTORY.name)
        .where(F.col("load_id") != excluding_load_id)
        .agg(F.max(F.unix_micros("feature_ts")).alias("t"))
        .first()
    )
    return None if row is None or row["t"] is None else _instant(row["t"])


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
