"""``lakehouse bench bronze``: bronze throughput against Spark's own read of the same topics.

All in one run, on the same pre-loaded topics of the embedded Apache Kafka broker and in the same
SparkSession:

(a) raw drain: one confluent-kafka consumer reads every message and touches key, value, offset
    and timestamp; nothing is written anywhere (the broker's own ceiling here).
(s) Spark read: ``readStream.format("kafka")`` with the bronze query's options into
    ``format("noop")``, available-now: what Spark costs before any sink.
(b) bronze: the real bronze query (``format("kafka")`` -> transform -> one idempotent delta-spark
    commit per micro-batch) into a fresh ``bronze.events_raw``, available-now.

Spark start-up is excluded: the session is built and a warm-up run of both queries over separate
topics completes before anything Spark-side is timed.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from pipelines.bronze.job import start_bronze
from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.config import Settings, StorageSettings, TriggerSettings
from pipelines.lake.catalog import Catalog
from pipelines.streaming.kafka import embedded_broker
from pipelines.streaming.queries import await_query
from pipelines.streaming.sinks import ensure_table
from pipelines.streaming.sources import kafka_stream
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.synthetic.publish import publish_clickstream
from pipelines.tables import LAKE_TABLES

AVAILABLE_NOW = TriggerSettings(mode="available-now")


def bench_bronze(
    settings: Settings,
    spark_factory: Callable[[Settings], SparkSession],
    events: int,
    stage: Callable[[str], None] = lambda _msg: None,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return its figures (events/s, ratios, per-batch breakdown)."""
    root = Path(workdir or tempfile.mkdtemp(prefix="lakehouse-bench-")).resolve()
    measured = _with_root(settings, root / "measured")
    warmup = _with_root(settings, root / "warmup")
    with embedded_broker(settings) as broker:
        bootstrap = broker.bootstrap_servers
        stage(f"pre-loading {events:,} events into the embedded broker")
        t0 = time.perf_counter()
        generator = ClickstreamGenerator(users=max(100, events // 50), items=2_000, seed=7)
        published = publish_clickstream(generator, events, settings.kafka, bootstrap)
        preload_s = time.perf_counter() - t0
        topics = settings.kafka.topics.event_topics

        stage("(a) raw drain: plain confluent-kafka consumer")
        raw_s = drain_raw(bootstrap, topics, published.delivery.total_delivered)

        stage("starting Spark and warming up (excluded from timings)")
        spark = spark_factory(settings)
        _warm_up(spark, warmup, bootstrap, root / "warmup-read")

        stage("(s) Spark's own read: format('kafka') -> noop")
        t0 = time.perf_counter()
        read_rows = spark_read(spark, measured, bootstrap, topics, root / "spark-read")
        read_s = time.perf_counter() - t0

        stage("(b) bronze query: format('kafka') -> bronze.events_raw (delta-spark)")
        # The table exists before the clock starts, as in a deployed lake: its one-time CREATE
        # is not ingest throughput (the Spark read has no table to create either).
        ensure_table(spark, Catalog(measured.storage, LAKE_TABLES), BRONZE_EVENTS_RAW)
        t0 = time.perf_counter()
        query, stats = start_bronze(spark, measured, bootstrap, AVAILABLE_NOW)
        await_query(query)
        bronze_s = time.perf_counter() - t0
        breakdown = batch_breakdown(query)

    rows = Catalog(measured.storage, LAKE_TABLES).info(BRONZE_EVENTS_RAW.name).rows or 0
    stage("measuring per-commit Delta overhead (1-row appends, with and without txnAppId)")
    commit_ms = delta_commit_overhead_ms(spark, root / "commit-overhead")
    plain_commit_ms = delta_commit_overhead_ms(spark, root / "commit-plain", idempotent=False)
    batches = stats.batches
    raw_eps = events / raw_s
    read_eps = read_rows / read_s
    bronze_eps = rows / bronze_s
    return {
        "benchmark": "bronze",
        "events": events,
        "bronze_rows": rows,
        "complete": rows == published.delivery.total_delivered == read_rows,
        "raw_drain_seconds": round(raw_s, 3),
        "raw_drain_events_per_s": round(raw_eps),
        "spark_read_seconds": round(read_s, 3),
        "spark_read_events_per_s": round(read_eps),
        "bronze_seconds": round(bronze_s, 3),
        "bronze_events_per_s": round(bronze_eps),
        "ratio_bronze_to_raw": round(bronze_eps / raw_eps, 3),
        "ratio_bronze_to_spark_read": round(bronze_eps / read_eps, 3),
        "micro_batches": len(batches),
        "max_offsets_per_trigger": settings.kafka.consumer.max_offsets_per_trigger,
        "delta_write_ms_per_batch": round(sum(b["write_ms"] for b in batches) / len(batches), 1)
        if batches
        else None,
        "batch_duration_ms": breakdown,
        "delta_commit_overhead_ms": round(commit_ms, 1),
        "delta_commit_without_txn_ms": round(plain_commit_ms, 1),
        "preload_seconds": round(preload_s, 2),
        "targets": {"bronze_events_per_s": 100_000, "ratio_bronze_to_spark_read": 0.6},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "workdir": str(root),
    }


def spark_read(
    spark: SparkSession, settings: Settings, bootstrap: str, topics: list[str], checkpoint: Path
) -> int:
    """Rows Spark's ``format("kafka")`` reads into ``format("noop")`` (bronze's options)."""
    query = (
        kafka_stream(spark, settings, bootstrap, topics)
        .writeStream.format("noop")
        .option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True)
        .start()
    )
    await_query(query)
    return sum(int(p["numInputRows"]) for p in query.recentProgress)


def batch_breakdown(query: StreamingQuery) -> list[dict[str, Any]]:
    """Each micro-batch's rows and Spark's ``durationMs`` per phase."""
    return [
        {"batch_id": p["batchId"], "rows": p["numInputRows"], **p.get("durationMs", {})}
        for p in query.recentProgress
        if p.get("numInputRows")
    ]


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


def delta_commit_overhead_ms(
    spark: SparkSession, location: Path, commits: int = 20, *, idempotent: bool = True
) -> float:
    """Mean milliseconds of a 1-row append: the fixed cost every micro-batch pays.

    ``idempotent``: with ``txnAppId``/``txnVersion``, as every lakehouse write is. Without, the
    same append with no app transaction, so the difference is what Delta's ``txnVersion`` check
    costs (it rebuilds the snapshot's state with a Spark job on every commit).
    """
    row = spark.range(1).localCheckpoint()

    def commit(batch_id: int) -> None:
        writer = row.write.format("delta").mode("append")
        if idempotent:
            writer = writer.option("txnAppId", "bench").option("txnVersion", str(batch_id))
        writer.save(str(location))

    commit(0)
    started = time.perf_counter()
    for batch_id in range(1, commits + 1):
        commit(batch_id)
    return (time.perf_counter() - started) * 1000 / commits


def _warm_up(
    spark: SparkSession,
    settings: Settings,
    bootstrap_servers: str,
    checkpoint: Path,
    events: int = 100_000,
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
    spark_read(spark, warm, bootstrap_servers, ["bench_warmup"], checkpoint)
    query, _ = start_bronze(spark, warm, bootstrap_servers, AVAILABLE_NOW)
    await_query(query)


def _with_root(settings: Settings, root: Path) -> Settings:
    return settings.model_copy(update={"storage": StorageSettings(root=str(root))})
