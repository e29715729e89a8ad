"""The gold job: new ``silver.events`` -> ``gold.user_features`` / ``gold.item_features``.

Per micro-batch of the silver change feed:

1. the batch's feature timestamp ``T`` = the latest event time seen so far (the batch's newest
   event, or the last published ``T`` if that is later: ``T`` never goes back), so every feature
   is "as of T" with windows ``(T - w, T]`` — in event time, the clock labels use;
2. the users and items the batch touches are recomputed from silver (events of the last 30 days
   before ``T``, partition-pruned by event date) and silver.sessions;
3. the candidate rows are validated by the gold suites (Great Expectations) **before** anything is
   published: a failing batch is recorded in ``quality.suite_results`` and never written; config
   (``gold.on_suite_failure``) says whether the query then stops or carries on;
4. the current tables are MERGE-upserted by key and the history tables get every published row,
   each as one idempotent Delta commit keyed by (query id, batch id).

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
from pipelines.gold.features import FEATURES, item_features, user_features
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
from pipelines.streaming.delta_sink import (
    BatchHandler,
    DeltaAppender,
    conform,
    query_id_from_checkpoint,
    upsert,
)
from pipelines.streaming.queries import await_query, start_table_stream
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
    feature_ts: list[datetime] = field(default_factory=list)
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
) -> BatchHandler:
    """The ``foreachBatch`` handler of the gold query (see the module docstring)."""
    appenders = {
        spec.name: DeltaAppender(catalog, spec)
        for target in _TARGETS.values()
        for spec in (target.current, target.history)
    }
    query: list[str] = []
    last_published: list[datetime | None] = []

    def handle(batch_df: DataFrame, batch_id: int) -> None:
        if not query:
            query.append(query_id_from_checkpoint(checkpoint))
            last_published.append(_latest_feature_ts(catalog))
        app = {name: f"{name}:{query[0]}" for name in appenders}
        if all(appenders[n].committed(app[n], batch_id) for n in appenders):
            stats.batches_skipped += 1
            return
        spark = batch_df.sparkSession
        new = batch_df.select("user_id", "item_id", "event_ts").cache()
        try:
            newest = new.agg(F.max("event_ts").alias("t")).first()
            if newest is None or newest.t is None:
                return
            as_of = _utc(newest.t)
            if last_published[0] is not None and last_published[0] > as_of:
                as_of = last_published[0]
            load_id = f"{query[0]}:{batch_id}"
            candidates = _candidates(spark, catalog, new, as_of, load_id)
        finally:
            new.unpersist()
        failures = []
        for kind, rows in candidates.items():
            if gate is not None and rows.num_rows:
                table = _TARGETS[kind].current.name
                failures += gate(table, spark.createDataFrame(rows), batch_id, load_id)
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
            current, history = target.current.name, target.history.name
            upsert(appenders[current], rows, target.key, app[current], batch_id)
            appenders[history].append(rows, app[history], batch_id)
        stats.batches_published += 1
        stats.users_published += candidates["users"].num_rows
        stats.items_published += candidates["items"].num_rows
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
    catalog = Catalog(settings.storage)
    for spec in (SILVER_EVENTS, SILVER_SESSIONS, *_TABLES):
        catalog.ensure(spec)
    stats = GoldStats()
    checkpoint = catalog.checkpoint(GOLD_USER_FEATURES.name)
    handler = gold_batch_handler(
        catalog,
        checkpoint,
        stats,
        gate=gate,
        stop_on_failure=settings.gold.on_suite_failure == "stop",
    )
    source = delta_stream(
        spark, catalog, SILVER_EVENTS.name, max_rows_per_trigger=settings.gold.max_rows_per_trigger
    )
    query = start_table_stream(
        source,
        catalog=catalog,
        table=GOLD_USER_FEATURES.name,
        handler=handler,
        trigger=trigger or settings.streaming.trigger,
    )
    await_query(
        query,
        on_progress=(lambda q: on_progress(q, stats)) if on_progress else None,
        timeout_s=timeout_s,
    )
    versions = {spec.name: catalog.delta_table(spec.name).version() for spec in _TABLES}
    return GoldRun(stats, str(query.id), versions)


_TABLES = (
    GOLD_USER_FEATURES,
    GOLD_USER_FEATURES_HISTORY,
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_FEATURES_HISTORY,
)


def _candidates(
    spark: SparkSession, catalog: Catalog, new: DataFrame, as_of: datetime, load_id: str
) -> dict[str, pa.Table]:
    """Feature rows of every user and item the batch touches, as of ``as_of``."""
    since = (as_of - LOOKBACK).date().isoformat()
    recent = catalog.read(spark, SILVER_EVENTS.name, partitions=[("event_date", ">=", since)])
    users = F.broadcast(new.select("user_id").distinct())
    items = F.broadcast(new.filter(F.col("item_id").isNotNull()).select("item_id").distinct())
    sessions = catalog.read(spark, SILVER_SESSIONS.name).join(users, "user_id")
    published = datetime.now(tz=UTC)
    out = {}
    for kind, frame in (
        ("users", user_features(recent.join(users, "user_id"), sessions, as_of)),
        ("items", item_features(recent.join(items, "item_id"), as_of)),
    ):
        rows = pa.table(frame.toArrow())
        rows = rows.append_column(
            "published_at", pa.array([published] * rows.num_rows, pa.timestamp("us", tz="UTC"))
        )
        rows = rows.append_column("load_id", pa.array([load_id] * rows.num_rows, pa.string()))
        out[kind] = conform(rows, _TARGETS[kind].current.arrow_schema)
    return out


def _latest_feature_ts(catalog: Catalog) -> datetime | None:
    """The last published ``T`` (from the user history), so ``T`` never goes back."""
    if not catalog.exists(GOLD_USER_FEATURES_HISTORY.name):
        return None
    table = catalog.delta_table(GOLD_USER_FEATURES_HISTORY.name)
    column = table.to_pyarrow_dataset().to_table(columns=["feature_ts"]).column("feature_ts")
    latest = pc.max(column).as_py() if len(column) else None
    return _utc(latest) if latest is not None else None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
