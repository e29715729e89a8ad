"""``lakehouse bench freshness``: end-to-end freshness, event time -> visible in gold.user_features.

A separate process offers live clickstream (timestamps = now) at ``rate`` events/s to the
embedded broker. In one Spark session the bronze, silver and gold queries run concurrently,
each with a ``trigger`` processing-time trigger (2 s by default); gold is gated by its GX suites
as in production, silver's per-batch GX suite is off (it is configurable every N batches).
After a warm-up (Python workers, JIT) the measured window starts; afterwards, for every silver
event of the window, freshness = the first ``published_at`` of a ``gold.user_features_history``
row of that user whose ``feature_ts`` covers the event, minus the event time. Gold update time
per micro-batch comes from the gold query's progress reports.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.bronze.job import start_bronze
from pipelines.config import Settings, StorageSettings, TriggerSettings
from pipelines.gold.job import gold_suite_gate, start_gold
from pipelines.gold.tables import GOLD_USER_FEATURES_HISTORY
from pipelines.lake.catalog import Catalog
from pipelines.silver.job import start_silver
from pipelines.silver.tables import SILVER_EVENTS
from pipelines.streaming.kafka import EventProducer, embedded_broker
from pipelines.streaming.queries import stop_gracefully
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.tables import LAKE_TABLES


def produce_live(settings: Settings, bootstrap: str, rate: int, seconds: float) -> None:
    """Offer ``rate`` events/s for ``seconds``, each stamped with the wall clock as it is sent."""
    producer = EventProducer(settings.kafka, bootstrap)
    events = ClickstreamGenerator(users=5_000, items=2_000, seed=23).events(
        int(rate * seconds) + rate
    )
    tick = 0.05
    per_tick = max(1, int(rate * tick))
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        for _ in range(per_tick):
            event = next(events)
            body = orjson.loads(event.value)
            body["timestamp"] = int(time.time() * 1000)
            producer.produce(
                settings.kafka.topics.for_event_type(event.event_type),
                orjson.dumps(body),
                event.key,
            )
            sent += 1
        ahead = started + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    producer.flush(60)


def bench_freshness(
    settings: Settings,
    spark_factory: Callable[[Settings], SparkSession],
    *,
    rate: int = 5_000,
    seconds: float = 60,
    warmup_s: float = 30,
    trigger: str = "2 seconds",
    stage: Callable[[str], None] = lambda _msg: None,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return freshness percentiles and per-hop batch durations."""
    root = Path(workdir or tempfile.mkdtemp(prefix="lakehouse-bench-freshness-")).resolve()
    lake = settings.model_copy(update={"storage": StorageSettings(root=str(root))})
    every = TriggerSettings(mode="processing-time", interval=trigger)
    with embedded_broker(lake) as broker:
        spark = spark_factory(lake)
        stage(f"offering {rate:,} events/s for {warmup_s + seconds:.0f}s ({warmup_s:.0f}s warm-up)")
        producer = multiprocessing.get_context("spawn").Process(
            target=produce_live, args=(lake, broker.bootstrap_servers, rate, warmup_s + seconds)
        )
        producer.start()
        stage(f"bronze, silver and gold running with {trigger} triggers")
        queries = {
            "bronze": start_bronze(spark, lake, broker.bootstrap_servers, every)[0],
            "silver": start_silver(spark, lake, trigger=every)[0],
        }
        queries["gold"], gold_stats = start_gold(
            spark,
            lake,
            trigger=every,
            gate=gold_suite_gate(lake, Catalog(lake.storage, LAKE_TABLES)),
        )
        measured_from = datetime.now(tz=UTC).timestamp() + warmup_s
        producer.join()
        stage("load finished; letting the last events reach gold")
        time.sleep(max(15.0, 4 * float(trigger.split(maxsplit=1)[0])))
        for query in queries.values():
            stop_gracefully(query)
        durations = {name: _batch_seconds(q.recentProgress) for name, q in queries.items()}
        gold_steps = gold_stats.timings

    catalog = Catalog(lake.storage, LAKE_TABLES)
    events = (
        catalog.read(spark, SILVER_EVENTS.name)
        .where(F.unix_micros("event_ts") >= int(measured_from * 1_000_000))
        .select("user_id", "event_ts")
    )
    history = catalog.read(spark, GOLD_USER_FEATURES_HISTORY.name).select(
        "user_id", "feature_ts", "published_at"
    )
    visible = (
        events.join(history, "user_id", "left")
        .where(F.col("feature_ts").isNull() | (F.col("feature_ts") >= F.col("event_ts")))
        .groupBy("user_id", "event_ts")
        .agg(F.min("published_at").alias("published_at"))
        .select(
            ((F.unix_micros("published_at") - F.unix_micros("event_ts")) / 1e6).alias("latency_s")
        )
    )
    latencies = sorted(r.latency_s for r in visible.collect() if r.latency_s is not None)
    total = events.count()
    return {
        "benchmark": "freshness",
        "offered_events_per_s": rate,
        "measured_seconds": seconds,
        "trigger": trigger,
        "events_measured": total,
        "events_visible_in_gold": len(latencies),
        "freshness_p50_s": _pct(latencies, 50),
        "freshness_p95_s": _pct(latencies, 95),
        "freshness_max_s": round(latencies[-1], 2) if latencies else None,
        "batch_seconds": {
            name: {"batches": len(d), "p50": _pct(d, 50), "p95": _pct(d, 95), "mean": _mean(d)}
            for name, d in durations.items()
        },
        "gold_step_seconds": gold_steps,
        "target": {"freshness_p95_s": 10},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "workdir": str(root),
    }


def _batch_seconds(progress: Sequence[Any]) -> list[float]:
    return sorted(
        p["durationMs"]["triggerExecution"] / 1000
        for p in progress
        if p.get("numInputRows", 0) > 0 and "triggerExecution" in p.get("durationMs", {})
    )


def _pct(values: list[float], pct: int) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(pct / 100 * len(values)) - 1))
    return round(sorted(values)[index], 2)


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 2) if values else None
