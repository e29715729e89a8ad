from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession

from pipelines.config import Settings
from pipelines.streaming.kafka import EmbeddedKafka
from pipelines.streaming.kafka_source import KafkaSourceError, KafkaSourceOptions, KafkaStreamReader
from pipelines.streaming.queries import StreamingJobError, await_query
from pipelines.streaming.sources import kafka_stream
from tests.conftest import make_settings
from tests.streaming.helpers import contiguous, produce

pytestmark = pytest.mark.streaming


def capped(settings: Settings, cap: int) -> Settings:
    consumer = settings.kafka.consumer.model_copy(
        update={"max_offsets_per_trigger": cap, "max_records_per_partition": 200}
    )
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"consumer": consumer})}
    )


def collecting_query(
    frame: DataFrame, checkpoint: Path, batches: dict[int, list[tuple[Any, ...]]], **trigger: Any
) -> Any:
    def keep(batch_df: DataFrame, batch_id: int) -> None:
        rows = [
            tuple(r)
            for r in batch_df.select("topic", "partition", "offset", "key", "value").collect()
        ]
        if batch_id in batches:  # a replayed batch must read exactly the same records
            assert sorted(batches[batch_id]) == sorted(rows)
        batches[batch_id] = rows

    return (
        frame.writeStream.foreachBatch(keep)
        .option("checkpointLocation", str(checkpoint))
        .trigger(**trigger)
        .start()
    )


def test_exact_counts_across_capped_micro_batches(
    spark: SparkSession, lake_settings: Settings, kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    settings = capped(lake_settings, 300)
    topics = [settings.kafka.topics.click, settings.kafka.topics.search]
    sent = produce(settings, kafka_broker.bootstrap_servers, topics[0], 1_600)
    sent += produce(settings, kafka_broker.bootstrap_servers, topics[1], 900)

    batches: dict[int, list[tuple[Any, ...]]] = {}
    frame = kafka_stream(spark, settings, kafka_broker.bootstrap_servers, topics)
    await_query(collecting_query(frame, tmp_path / "ckpt", batches, availableNow=True))

    sizes = [len(rows) for _, rows in sorted(batches.items())]
    assert all(0 < size <= 300 for size in sizes), sizes
    assert len(sizes) == math.ceil(2_500 / 300)
    rows = [row for rows in batches.values() for row in rows]
    per_partition = contiguous([(t, p, o) for t, p, o, _, _ in rows])
    assert sum(per_partition.values()) == 2_500
    assert sorted((k, v) for _, _, _, k, v in rows) == sorted(sent)


def test_stop_and_restart_mid_stream_loses_and_duplicates_nothing(
    spark: SparkSession, lake_settings: Settings, kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    settings = capped(lake_settings, 100)
    topic = settings.kafka.topics.page_view
    bootstrap = kafka_broker.bootstrap_servers
    sent = produce(settings, bootstrap, topic, 1_000)
    checkpoint = tmp_path / "ckpt"
    batches: dict[int, list[tuple[Any, ...]]] = {}

    first = collecting_query(
        kafka_stream(spark, settings, bootstrap, [topic]),
        checkpoint,
        batches,
        processingTime="0 seconds",
    )
    deadline = time.monotonic() + 60
    while len(batches) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.stop()  # mid-stream: some records are still unread
    read_before = sum(len(r) for r in batches.values())
    assert 0 < read_before < 1_000

    sent += produce(settings, bootstrap, topic, 500, start=1_000)  # more data while stopped
    second = collecting_query(
        kafka_stream(spark, settings, bootstrap, [topic]), checkpoint, batches, availableNow=True
    )
    await_query(second)

    rows = [row for rows in batches.values() for row in rows]
    assert sum(contiguous([(t, p, o) for t, p, o, _, _ in rows]).values()) == 1_500
    assert sorted((k, v) for _, _, _, k, v in rows) == sorted(sent)
    # The checkpoint's last committed source offsets are exactly the end of every partition.
    last = max(
        (checkpoint / "offsets").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1
    )
    source_offsets = json.loads(last.read_text().splitlines()[-1])
    ends: dict[str, int] = {}
    for _, p, o, _, _ in rows:
        ends[str(p)] = max(ends.get(str(p), 0), o + 1)
    assert source_offsets == {topic: ends}


def test_unreachable_broker_is_a_clear_error(spark: SparkSession, tmp_path: Path) -> None:
    options = KafkaSourceOptions.parse(
        {"kafka.bootstrap.servers": "127.0.0.1:9", "subscribe": "t", "metadataTimeoutMs": "1500"}
    )
    with pytest.raises(KafkaSourceError, match=r"127.0.0.1:9 did not answer within 2s"):
        KafkaStreamReader(options).initialOffset()

    settings = make_settings(
        tmp_path,
        kafka={"bootstrap_servers": "127.0.0.1:9", "consumer": {"metadata_timeout_s": 1.5}},
    )
    frame = kafka_stream(spark, settings, "127.0.0.1:9", ["t"])
    batches: dict[int, list[tuple[Any, ...]]] = {}
    with pytest.raises(StreamingJobError, match=r"Kafka brokers 127.0.0.1:9 did not answer"):
        await_query(collecting_query(frame, tmp_path / "ckpt", batches, availableNow=True))
    assert batches == {}
