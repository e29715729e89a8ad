"""The sessions job: new ``silver.events`` rows -> ``silver.sessions``, recomputed incrementally.

Chosen approach: incremental recomputation of affected users (see ``pipelines/silver/sessions.py``
for why it is exact). Per micro-batch of new silver events (the table's change feed):

1. ``recompute_windows``: per affected user, the instant from which sessions can change;
2. the silver events of those users from that instant on (partition-pruned by event date) are
   sessionized again, and compared with the existing sessions of the same window;
3. ``session_changes`` is applied as one MERGE on ``session_id`` (upsert, delete absorbed
   sessions) carrying the Delta app transaction (query id, batch id): a replayed batch whose
   MERGE landed is skipped, one that did not is recomputed from silver identically.

All of it runs in Spark: the changes are persisted once and are the MERGE's source, written by
the executors; the driver only collects the earliest window start and two counts (changes,
deletions).

Late events within the allowed lateness therefore land in, extend, or merge the right sessions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.config import Settings, TriggerSettings, parse_duration
from pipelines.lake.catalog import Catalog
from pipelines.silver.sessions import recompute_windows, session_changes, sessions
from pipelines.silver.tables import SILVER_EVENTS, SILVER_SESSIONS
from pipelines.streaming.delta import BatchHandler, query_id_from_checkpoint
from pipelines.streaming.queries import QueryMonitor, await_query, start_table_stream
from pipelines.streaming.sinks import ensure_table, table_writer
from pipelines.streaming.sources import delta_stream
from pipelines.tables import LAKE_TABLES

log = logging.getLogger(__name__)


@dataclass
class SessionStats:
    batches_written: int = 0
    batches_skipped: int = 0
    events_read: int = 0
    sessions_upserted: int = 0
    sessions_deleted: int = 0


@dataclass
class SessionsRun:
    stats: SessionStats
    query_id: str
    table_version: int | None


def session_events(silver_rows: DataFrame) -> DataFrame:
    """The columns sessionization needs, from silver.events rows."""
    return silver_rows.select(
        "event_id",
        "user_id",
        "event_type",
        "event_ts",
        "item_id",
        F.col("properties.revenue").alias("revenue"),
    )


def sessions_batch_handler(
    catalog: Catalog, checkpoint: str, gap_s: float, stats: SessionStats
) -> BatchHandler:
    """The ``foreachBatch`` handler of the sessions query (see the module docstring)."""
    appender = table_writer(catalog, SILVER_SESSIONS)
    query: list[str] = []
    gap = parse_duration(f"{gap_s} seconds")

    def handle(batch_df: DataFrame, batch_id: int) -> None:
        if not query:
            query.append(query_id_from_checkpoint(checkpoint, batch_df.sparkSession))
        app_id = f"{SILVER_SESSIONS.name}:{query[0]}"
        if appender.committed(app_id, batch_id):
            stats.batches_skipped += 1
            log.warning("sessions: batch %s already merged; skipping replay", batch_id)
            return
        spark = batch_df.sparkSession
        new = session_events(batch_df)
        affected = new.select("user_id").distinct()
        existing = catalog.read(spark, SILVER_SESSIONS.name).join(affected, "user_id")
        windows = recompute_windows(new, existing, gap).persist(StorageLevel.MEMORY_AND_DISK)
        changes: DataFrame | None = None
        try:
            first = windows.agg(F.min("window_start").alias("start")).first()
            if first is None or first.start is None:
                return
            in_window = _silver_events_since(spark, catalog, first.start.date().isoformat())
            events = in_window.join(windows, "user_id").filter(
                F.col("event_ts") >= F.col("window_start")
            )
            recomputed = sessions(events.drop("window_start"), gap)
            existing_in_window = (
                existing.join(windows, "user_id")
                .filter(F.col("session_start") >= F.col("window_start"))
                .drop("window_start")
            )
            # Computed once, before the MERGE rewrites the sessions it was derived from.
            changes = session_changes(recomputed, existing_in_window).persist(
                StorageLevel.MEMORY_AND_DISK
            )
            counts = changes.agg(
                F.count(F.lit(1)).alias("rows"), F.count_if("_delete").alias("deletes")
            ).first()
            assert counts is not None
            rows, deletes = int(counts["rows"]), int(counts["deletes"])
            if rows:  # an empty change set makes no commit
                appender.upsert(changes, "session_id", app_id, batch_id, delete_flag="_delete")
        finally:
            windows.unpersist()
            if changes is not None:
                changes.unpersist()
        stats.batches_written += 1
        stats.events_read += batch_df.count()
        stats.sessions_deleted += deletes
        stats.sessions_upserted += rows - deletes

    return handle


def start_sessions(
    spark: SparkSession,
    settings: Settings,
    *,
    trigger: TriggerSettings | None = None,
    monitor: QueryMonitor | None = None,
) -> tuple[StreamingQuery, SessionStats]:
    """Start the sessions query and return it without waiting (see ``run_sessions``)."""
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    ensure_table(spark, catalog, SILVER_EVENTS)
    ensure_table(spark, catalog, SILVER_SESSIONS)
    stats = SessionStats()
    checkpoint = catalog.checkpoint(SILVER_SESSIONS.name)
    handler = sessions_batch_handler(
        catalog, checkpoint, parse_duration(settings.silver.session_gap).total_seconds(), stats
    )
    source = delta_stream(
        spark,
        catalog,
        SILVER_EVENTS.name,
        max_files_per_trigger=settings.silver.max_files_per_trigger,
        max_bytes_per_trigger=settings.silver.max_bytes_per_trigger,
    )
    query = start_table_stream(
        source,
        catalog=catalog,
        table=SILVER_SESSIONS.name,
        handler=handler,
        trigger=trigger or settings.streaming.trigger,
        monitor=monitor,
    )
    return query, stats


def run_sessions(
    spark: SparkSession,
    settings: Settings,
    *,
    trigger: TriggerSettings | None = None,
    on_progress: Callable[[StreamingQuery, SessionStats], None] | None = None,
    timeout_s: float | None = None,
    monitor: QueryMonitor | None = None,
) -> SessionsRun:
    """Run the sessions query over the silver change feed."""
    query, stats = start_sessions(spark, settings, trigger=trigger, monitor=monitor)
    await_query(
        query,
        on_progress=(lambda q: on_progress(q, stats)) if on_progress else None,
        timeout_s=timeout_s,
        monitor=monitor,
    )
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    return SessionsRun(stats, str(query.id), catalog.delta_table(SILVER_SESSIONS.name).version())


def _silver_events_since(spark: SparkSession, catalog: Catalog, first_date: str) -> DataFrame:
    frame = catalog.read(spark, SILVER_EVENTS.name, partitions=[("event_date", ">=", first_date)])
    return session_events(frame)
