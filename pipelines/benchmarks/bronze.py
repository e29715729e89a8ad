"""``lakehouse bench bronze``: bronze throughput against a plain Kafka drain of the same data.

Both sides read the same pre-loaded topics from the embedded broker in one run:

(a) raw drain: one confluent-kafka consumer reads every message and touches key, value, offset
    and timestamp; nothing is written anywhere.
(b) bronze: the real bronze query (Python Kafka source -> transform -> delta-rs commit per
    micro-batch) drains the same messages into a fresh Delta table, available-now.

Spark start-up is excluded: the session is built and a warm-up run of the same query over
separate topics (Python workers spawned, modules imported, JVM code JIT-compiled) completes
before (b) is timed.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from confluent_kafka import Consumer, TopicPartition
from deltalake import CommitProperties, Transaction, write_deltalake
from pyspark.sql import SparkSession

from pipelines.bronze.job import run_bronze
from pipelines.config import Settings, StorageSettings, TriggerSettings
from pipelines.lake.catalog import Catalog
from pipelines.lake.tables import BRONZE_EVENTS_RAW
from pipelines.streaming.kafka import embedded_broker
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.synthetic.publish import publish_clickstream


def bench_bronze(
    settings: Settings,
    spark_factory: Callable[[Settings], SparkSession],
    events: int,
    stage: Callable[[str], None] = lambda _msg: None,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return its figures (events/s, ratio, Delta commit overhead)."""
    root = Path(workdir or tempfile.mkdtemp(prefix="lakehouse-bench-")).resolve()
    measured = _with_root(settings, root / "measured")
    warmup = _with_root(settings, root / "warmup")
    with embedded_broker(settings) as broker:
        stage(f"pre-loading {events:,} events into the embedded broker")
        t0 = time.perf_counter()
        generator = ClickstreamGenerator(users=max(100, events // 50), items=2_000, seed=7)
        published = publish_clickstream(generator, events, settings.kafka, broker.bootstrap_servers)
        preload_s = time.perf_counter() - t0
        topics = settings.kafka.topics.event_topics

        stage("(a) raw drain: plain confluent-kafka consumer")
        raw_s = drain_raw(broker.bootstrap_servers, topics, published.delivery.total_delivered)

        stage("starting Spark and warming up (excluded from timings)")
        spark = spark_factory(settings)
        _warm_up(spark, warmup, broker.bootstrap_servers)

        stage("(b) bronze query: Kafka -> bronze.events_raw")
        t0 = time.perf_counter()
        run = run_bronze(
            spark, measured, broker.bootstrap_servers, trigger=TriggerSettings(mode="available-now")
        )
        bronze_s = time.perf_counter() - t0

    rows = Catalog(measured.storage).info(BRONZE_EVENTS_RAW.name).rows or 0
    stage("measuring per-commit Delta overhead (1-row appends)")
    commit_ms = delta_commit_overhead_ms(root / "commit-overhead")
    batches = run.stats.batches
    raw_eps = events / raw_s
    bronze_eps = rows / bronze_s
    return {
        "benchmark": "bronze",
        "events": events,
        "bronze_rows": rows,
        "complete": rows == published.delivery.total_delivered,
        "raw_drain_seconds": round(raw_s, 3),
        "raw_drain_events_per_s": round(raw_eps),
        "bronze_seconds": round(bronze_s, 3),
        "bronze_events_per_s": round(bronze_eps),
        "ratio_bronze_to_raw": round(bronze_eps / raw_eps, 3),
        "micro_batches": len(batches),
        "max_offsets_per_trigger": settings.kafka.consumer.max_offsets_per_trigger,
        "delta_write_ms_per_batch": round(sum(b["write_ms"] for b in batches) / len(batches), 1)
        if batches
        else None,
        "collect_ms_per_batch": round(sum(b["collect_ms"] for b in batches) / len(batches), 1)
        if batches
        else None,
        "delta_commit_overhead_ms": round(commit_ms, 1),
        "preload_seconds": round(preload_s, 2),
        "targets": {"bronze_events_per_s": 50_000, "ratio_bronze_to_raw": 0.4},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "workdir": str(root),
    }


def drain_raw(
    bootstrap_servers: str, topics: list[str], expected: int, timeout_s: float = 120
) -> float:
    """Seconds for one plain consumer to read ``expected`` messages from offset 0."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "lakehouse-bench-raw",
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    metadata = consumer.list_topics(timeout=10)
    assignment = [
        TopicPartition(t, p, 0)
        for t in topics
        if t in metadata.topics
        for p in metadata.topics[t].partitions
    ]
    started = time.perf_counter()
    consumer.assign(assignment)
    seen = 0
    checksum = 0
    while seen < expected:
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"raw drain read {seen} of {expected} messages in {timeout_s}s")
        for msg in consumer.consume(10_000, timeout=1.0):
            if msg.error():
                continue
            key, value = msg.key(), msg.value()
            checksum += (
                (msg.offset() or 0) + msg.timestamp()[1] + len(value or b"") + len(key or b"")
            )
            seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def delta_commit_overhead_ms(location: Path, commits: int = 20) -> float:
    """Mean milliseconds of a 1-row idempotent append: the fixed cost every micro-batch pays."""
    row = pa.table({"batch_id": pa.array([0], pa.int64())})
    write_deltalake(str(location), row, mode="append")
    started = time.perf_counter()
    for batch_id in range(1, commits + 1):
        write_deltalake(
            str(location),
            pa.table({"batch_id": pa.array([batch_id], pa.int64())}),
            mode="append",
            commit_properties=CommitProperties(app_transactions=[Transaction("bench", batch_id)]),
        )
    return (time.perf_counter() - started) * 1000 / commits


def _warm_up(
    spark: SparkSession, settings: Settings, bootstrap_servers: str, events: int = 100_000
) -> None:
    warm_topics = settings.kafka.topics.model_copy(
        update={
            t: "bench_warmup" for t in ("page_view", "click", "search", "add_to_cart", "purchase")
        }
    )
    warm = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"topics": warm_topics})}
    )
    generator = ClickstreamGenerator(users=1_000, items=500, seed=1)
    publish_clickstream(generator, events, warm.kafka, bootstrap_servers)
    run_bronze(spark, warm, bootstrap_servers, trigger=TriggerSettings(mode="available-now"))


def _with_root(settings: Settings, root: Path) -> Settings:
    return settings.model_copy(update={"storage": StorageSettings(root=str(root))})
