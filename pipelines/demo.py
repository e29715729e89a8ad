"""``lakehouse demo``: the whole job end to end on the embedded defaults.

Starts the embedded broker and the HTTP collector, sends synthetic clickstream (with a share of
bad events) through the tracking SDK, runs bronze -> silver -> sessions -> gold, snapshots,
trains and recommends, and summarises what landed where.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.bronze.job import run_bronze
from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.collector import BackgroundCollector
from pipelines.config import Settings, TriggerSettings
from pipelines.gold.job import run_gold
from pipelines.gold.tables import (
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_FEATURES_HISTORY,
    GOLD_USER_FEATURES,
    GOLD_USER_FEATURES_HISTORY,
)
from pipelines.lake.catalog import Catalog
from pipelines.lake.snapshots import Snapshots
from pipelines.monitoring.alerts import evaluate
from pipelines.monitoring.health import lake_health
from pipelines.monitoring.tables import MONITORING_QUERY_PROGRESS
from pipelines.quality.report import accounting_report, latest_results
from pipelines.runtime import Lakehouse
from pipelines.silver.job import run_silver
from pipelines.silver.sessions_job import run_sessions
from pipelines.silver.tables import SILVER_EVENTS, SILVER_QUARANTINE, SILVER_SESSIONS
from pipelines.streaming.kafka import embedded_broker
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.synthetic.publish import track_clickstream
from pipelines.training.sets import DEFAULT_SNAPSHOT_TABLES
from pipelines.training.sets import REQUIRED_TABLES as TRAINING_TABLES
from pipelines.training.train import champion_model, train

DEMO_SNAPSHOT = "demo"
DEMO_NEW_USER = "new-visitor"
# Only these folders under the storage root are reset; the root itself is never removed.
_DEMO_STATE = ("tables", "_checkpoints", "quality", "mlflow", "_spool")


@dataclass
class DemoHooks:
    """Progress callbacks, so the CLI can draw bars without the demo knowing about terminals."""

    stage: Callable[[str], None] = lambda _msg: None
    produced: Callable[[int], None] = lambda _n: None
    bronze_rows: Callable[[int], None] = lambda _n: None
    silver_rows: Callable[[int], None] = lambda _n: None


def reset_demo_state(settings: Settings) -> list[str]:
    """Remove the tables and checkpoints of a previous demo (local storage only)."""
    storage = settings.storage.resolved()
    removed = []
    if "://" in storage.root:
        raise ValueError("the demo runs on local storage; use --env local")
    for name in _DEMO_STATE:
        folder = Path(storage.root) / name
        if folder.exists():
            shutil.rmtree(folder)
            removed.append(str(folder))
    if storage.checkpoint_root and Path(storage.checkpoint_root).exists():
        shutil.rmtree(storage.checkpoint_root)
        removed.append(storage.checkpoint_root)
    return removed


@dataclass
class _Ingested:
    """What the edge and bronze did: SDK -> collector -> Kafka -> bronze.events_raw."""

    collector_url: str
    bootstrap_servers: str
    tracked: Any
    edge: dict[str, Any]
    produce_s: float
    bronze: Any
    bronze_s: float


@dataclass
class _Layers:
    silver: Any
    silver_s: float
    sessions: Any
    sessions_s: float
    gold: Any
    gold_s: float


def run_demo(lake: Lakehouse, hooks: DemoHooks | None = None) -> dict[str, Any]:
    """Run the demo and return its summary (the CLI prints it, ``--json`` as one object)."""
    hooks = hooks or DemoHooks()
    settings = lake.settings
    started = time.perf_counter()
    removed = reset_demo_state(settings)
    if removed:
        hooks.stage(f"reset previous demo data: {', '.join(removed)}")
    ingested = _ingest(lake, hooks)
    layers = _run_layers(lake, hooks)
    spark, catalog, demo = lake.spark, lake.catalog, settings.demo
    silver, sessions, gold = layers.silver, layers.sessions, layers.gold
    silver_s, sessions_s, gold_s = layers.silver_s, layers.sessions_s, layers.gold_s
    bronze, bronze_s = ingested.bronze, ingested.bronze_s
    tracked, edge, produce_s = ingested.tracked, ingested.edge, ingested.produce_s
    hooks.stage("creating snapshot 'demo' and a point-in-time training set")
    snapshot = Snapshots(catalog).create(
        DEMO_SNAPSHOT,
        DEFAULT_SNAPSHOT_TABLES,
        "created by lakehouse demo",
        lake.snapshot_validator(DEMO_SNAPSHOT, enabled=True),
        spark=spark,
    )
    hooks.stage("training the recommender from snapshot 'demo' (MLflow, registry, champion)")
    t0 = time.perf_counter()
    trained = train(spark, settings, snapshot=DEMO_SNAPSHOT, seed=settings.demo.seed)
    train_s = time.perf_counter() - t0
    model, _ = champion_model(settings)
    known = _most_active_user(spark, catalog)
    picks = model.predict(pd.DataFrame({"user_id": [known, DEMO_NEW_USER], "k": [5, 5]}))
    accounting = accounting_report(
        catalog, require_suites=settings.quality.great_expectations.enabled
    )
    quality = latest_results(catalog, settings, limit=1_000)
    suites = quality["suites"]

    produced_per_topic = {
        settings.kafka.topics.for_event_type(t): n for t, n in sorted(edge["accepted"].items())
    }
    recorded = catalog.read_arrow(MONITORING_QUERY_PROGRESS.name).to_pylist()
    batches_per_query: Counter[str] = Counter(r["query_name"] for r in recorded)
    health = lake_health(settings, catalog)
    info = catalog.info(BRONZE_EVENTS_RAW.name)
    per_topic = catalog.read(spark, BRONZE_EVENTS_RAW.name).groupBy("topic").count().collect()
    return {
        "env": settings.env,
        "storage_root": settings.storage.resolved().root,
        "ingest": {
            "path": "tracking SDK -> HTTP collector -> Kafka",
            "collector_url": ingested.collector_url,
            **tracked.to_dict(),
            "accepted": sum(edge["accepted"].values()),
            "rejected": sum(edge["rejected"].values()),
            "rejected_by_rule": dict(sorted(edge["rules"].items(), key=lambda kv: -kv[1])),
            "seconds": round(produce_s, 2),
            "events_per_second": round(demo.events / produce_s) if produce_s else None,
        },
        "kafka": {
            "bootstrap_servers": ingested.bootstrap_servers,
            "produced_per_topic": produced_per_topic,
            "produced": sum(produced_per_topic.values()),
            "dlq": sum(edge["rejected"].values()),
        },
        "bronze": {
            "table": BRONZE_EVENTS_RAW.name,
            "location": info.location,
            "rows": info.rows,
            "rows_per_topic": {row["topic"]: row["count"] for row in sorted(per_topic)},
            "table_version": info.version,
            "files": info.files,
            "batches": bronze.stats.batches_written,
            "replayed_batches_skipped": bronze.stats.batches_skipped,
            "seconds": round(bronze_s, 2),
            "rows_per_second": round((info.rows or 0) / bronze_s) if bronze_s else None,
            "query_id": bronze.query_id,
        },
        "silver": {
            **silver.stats.summary(),
            "rows": catalog.info(SILVER_EVENTS.name).rows,
            "quarantine_rows": catalog.info(SILVER_QUARANTINE.name).rows,
            "table_version": silver.silver_version,
            "seconds": round(silver_s, 2),
            "accounting_holds": accounting.ok,
        },
        "sessions": {
            "rows": catalog.info(SILVER_SESSIONS.name).rows,
            "converted": _count_where(spark, catalog, SILVER_SESSIONS.name, "converted"),
            "table_version": sessions.table_version,
            "batches": sessions.stats.batches_written,
            "seconds": round(sessions_s, 2),
        },
        "gold": {
            "user_features": catalog.info(GOLD_USER_FEATURES.name).rows,
            "item_features": catalog.info(GOLD_ITEM_FEATURES.name).rows,
            "user_features_history": catalog.info(GOLD_USER_FEATURES_HISTORY.name).rows,
            "item_features_history": catalog.info(GOLD_ITEM_FEATURES_HISTORY.name).rows,
            "batches_published": gold.stats.batches_published,
            "batches_rejected": gold.stats.batches_rejected,
            "feature_ts": [t.isoformat() for t in gold.stats.feature_ts],
            "seconds": round(gold_s, 2),
        },
        "snapshot": {"name": snapshot.name, "versions": snapshot.versions},
        "training_set": {
            "name": trained.training_set,
            "rows": trained.training_set_rows,
            "positives": trained.training_set_positives,
            "digest": trained.training_set_digest,
            "versions": {t: v for t, v in trained.versions.items() if t in TRAINING_TABLES},
        },
        "model": {
            "mlflow_run_id": trained.run_id,
            "registered_model": trained.model_name,
            "version": trained.model_version,
            "alias": trained.alias,
            "metrics": trained.metrics,
            "baseline_metrics": trained.baseline,
            "input_versions": trained.versions,
            "seconds": round(train_s, 2),
        },
        "recommendations": {
            user: {
                "items": picks[picks["user_id"] == user]["item_id"].tolist(),
                "cold_start": bool(picks[picks["user_id"] == user]["cold_start"].all()),
            }
            for user in (known, DEMO_NEW_USER)
        },
        "great_expectations": {
            "suites_run": len(suites),
            "suites_passed": sum(1 for r in suites if r["success"]),
            "data_docs": quality["data_docs"],
        },
        "monitoring": {
            "query_progress_rows": len(recorded),
            "batches_per_query": dict(sorted(batches_per_query.items())),
            "freshness_s": {t.name: t.freshness_s for t in health.tables},
            "hop_latency_p50_s": {hop: v["p50_s"] for hop, v in health.hops.items()},
            "alerts": [a.to_dict() for a in evaluate(health, settings.monitoring.alerts)],
        },
        "matches": info.rows == sum(produced_per_topic.values()),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _ingest(lake: Lakehouse, hooks: DemoHooks) -> _Ingested:
    """Track the demo's events through the SDK and the collector into Kafka, then run bronze."""
    settings, demo = lake.settings, lake.settings.demo
    with (
        embedded_broker(settings) as broker,
        BackgroundCollector(settings, broker.bootstrap_servers) as collector,
    ):
        hooks.stage(f"embedded Kafka broker on {broker.bootstrap_servers}")
        hooks.stage(f"collector on {collector.url} (SDK -> collector -> Kafka)")
        generator = ClickstreamGenerator(
            users=demo.users, items=demo.items, seed=demo.seed, bad_fraction=demo.bad_fraction
        )
        hooks.stage(
            f"tracking {demo.events:,} events through the SDK ({demo.bad_fraction:.0%} bad)"
        )
        t0 = time.perf_counter()
        tracked = track_clickstream(
            generator,
            demo.events,
            collector.url,
            settings.collector.first_write_key(),
            Path(settings.storage.resolved().root) / "_spool",
            on_progress=hooks.produced,
        )
        produce_s = time.perf_counter() - t0
        edge = collector.collector.metrics.event_totals()

        hooks.stage("starting Spark")
        spark = lake.spark
        hooks.stage("running bronze (Kafka -> bronze.events_raw, available-now)")
        t0 = time.perf_counter()
        seen = [0]

        def progress(_query: object, stats: Any) -> None:
            if stats.rows_written > seen[0]:
                hooks.bronze_rows(stats.rows_written - seen[0])
                seen[0] = stats.rows_written

        bronze = run_bronze(
            spark,
            settings,
            broker.bootstrap_servers,
            trigger=TriggerSettings(mode="available-now"),
            on_progress=progress,
            monitor=lake.monitor,
        )
        bronze_s = time.perf_counter() - t0
    return _Ingested(
        collector.url,
        broker.bootstrap_servers,
        tracked,
        edge,
        produce_s,
        bronze,
        bronze_s,
    )


def _run_layers(lake: Lakehouse, hooks: DemoHooks) -> _Layers:
    """Silver, sessions and gold, each drained once (available-now)."""
    spark, settings = lake.spark, lake.settings
    hooks.stage("running silver (gate, quarantine, dedup, accounting, Great Expectations)")
    t0 = time.perf_counter()
    seen_silver = [0]

    def silver_progress(_query: object, stats: Any) -> None:
        done = stats.total("input_rows")
        if done > seen_silver[0]:
            hooks.silver_rows(done - seen_silver[0])
            seen_silver[0] = done

    available_now = TriggerSettings(mode="available-now")
    silver = run_silver(
        spark,
        settings,
        trigger=available_now,
        validator=lake.silver_validator(),
        on_progress=silver_progress,
        monitor=lake.monitor,
    )
    silver_s = time.perf_counter() - t0
    hooks.stage("running sessions (30-minute inactivity gap, incremental MERGE)")
    t0 = time.perf_counter()
    sessions = run_sessions(spark, settings, trigger=available_now, monitor=lake.monitor)
    sessions_s = time.perf_counter() - t0
    hooks.stage("running gold (user and item features, gated by their suites)")
    t0 = time.perf_counter()
    gold = run_gold(
        spark, settings, trigger=available_now, gate=lake.gold_gate(), monitor=lake.monitor
    )
    gold_s = time.perf_counter() - t0
    return _Layers(silver, silver_s, sessions, sessions_s, gold, gold_s)


def _most_active_user(spark: SparkSession, catalog: Catalog) -> str:
    top = (
        catalog.read(spark, SILVER_EVENTS.name)
        .groupBy("user_id")
        .count()
        .orderBy(F.desc("count"), "user_id")
        .first()
    )
    assert top is not None
    return str(top.user_id)


def _count_where(spark: SparkSession, catalog: Catalog, table: str, condition: str) -> int:
    return int(catalog.read(spark, table).filter(condition).count())
