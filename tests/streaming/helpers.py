"""Builders shared by the streaming tests."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pyspark.sql import DataFrame, Row, SparkSession

from pipelines.config import Settings
from pipelines.lake.catalog import Catalog
from pipelines.streaming.kafka import EventProducer


def produce(
    settings: Settings, bootstrap: str, topic: str, n: int, start: int = 0
) -> list[tuple[str, str]]:
    """Produce ``n`` messages ``(key, value)`` to ``topic``; returns what was sent."""
    sent = []
    producer = EventProducer(settings.kafka, bootstrap)
    for i in range(start, start + n):
        key, value = f"user-{i % 37}", f'{{"n": {i}, "topic": "{topic}"}}'
        producer.produce(topic, value.encode(), key=key)
        sent.append((key, value))
    report = producer.flush(30)
    assert report.total_failed == 0, report.errors
    assert report.delivered[topic] == n
    return sent


def contiguous(offsets: list[tuple[str, int, int]]) -> Counter[tuple[str, int]]:
    """Records per topic-partition, after checking offsets are 0..n-1 without gaps or repeats."""
    per_partition: dict[tuple[str, int], list[int]] = {}
    for topic, partition, offset in offsets:
        per_partition.setdefault((topic, partition), []).append(offset)
    for key, values in per_partition.items():
        assert sorted(values) == list(range(len(values))), f"gap or duplicate in {key}"
    return Counter({k: len(v) for k, v in per_partition.items()})


def forget_commit(checkpoint: str, batch_id: int) -> None:
    """Simulate a crash after a batch's Delta commits but before Spark recorded it as done:
    remove the batch's entry (and checksum) from the checkpoint's commit log."""

    commits = Path(checkpoint) / "commits"
    (commits / str(batch_id)).unlink()
    (commits / f".{batch_id}.crc").unlink(missing_ok=True)


def forget_last_commit(spark: SparkSession, catalog: Catalog, table: str) -> None:
    """Undo a table's latest Delta commit, as if the process died before making it."""
    log = Path(catalog.location(table)) / "_delta_log"
    last = catalog.delta_table(table).version()
    # The commit file, its Delta checksum and Hadoop's hidden .crc of each.
    for entry in [*log.glob(f"{last:020d}.*"), *log.glob(f".{last:020d}.*")]:
        entry.unlink()
    assert spark._jvm is not None
    spark._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()  # as a restarted process would


def read_topic(
    bootstrap: str, topic: str, timeout_s: float = 30.0
) -> list[tuple[str | None, bytes]]:
    """Every message in ``topic`` right now, as ``(key, value)``, read to the high watermarks."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"read-{topic}", "enable.auto.commit": False}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return []
        ends = {}
        for p in metadata.partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > 0:
                ends[p] = high
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        out: list[tuple[str | None, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            key = msg.key()
            out.append((key.decode() if key is not None else None, msg.value()))
            partition, offset = msg.partition(), msg.offset()
            if (
                partition is not None
                and offset is not None
                and offset + 1 >= ends.get(partition, 0)
            ):
                ends.pop(partition, None)
        assert not ends, f"timed out reading {topic}: partitions {sorted(ends)} not drained"
        return out
    finally:
        consumer.close()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text parsed by the official parser: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# DataFrame methods that bring rows to the driver; a batch path must call none of them on its
# batch data (``collect`` is allowed, and counted, for small aggregates).
ROWS_TO_DRIVER = ("toArrow", "toPandas", "toLocalIterator", "tail", "_collect_as_arrow")


@dataclass
class DriverTransfers:
    """What a spied code path brought to the driver: ``(rows, columns)`` per ``collect``, and
    the names of refused calls."""

    collected: list[tuple[int, list[str]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@contextmanager
def spy_on_driver_transfers(spark: SparkSession, who: str) -> Iterator[DriverTransfers]:
    """Count every ``DataFrame.collect`` (``first``, ``head`` and ``take`` go through it) and
    refuse the calls in ``ROWS_TO_DRIVER`` while the block runs."""
    frame_class = type(spark.range(1))
    transfers = DriverTransfers()
    collect = frame_class.collect

    def counted_collect(self: DataFrame) -> list[Row]:
        found = collect(self)
        transfers.collected.append((len(found), list(self.columns)))
        return found

    def refused(name: str) -> Any:
        def call(self: DataFrame, *args: Any, **kwargs: Any) -> Any:
            transfers.refused.append(name)
            raise AssertionError(f"{who} called DataFrame.{name}: batch rows to the driver")

        return call

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(frame_class, "collect", counted_collect)
        for name in ROWS_TO_DRIVER:
            patch.setattr(frame_class, name, refused(name))
        yield transfers
