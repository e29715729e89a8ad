from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import OFFSET_END, TopicPartition
from confluent_kafka.admin import AdminClient
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from pipelines.bronze.data_loss import DataLossError
from pipelines.bronze.job import run_bronze
from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.config import Settings, TriggerSettings
from pipelines.lake.catalog import Catalog
from pipelines.streaming.delta import BatchWriteStats
from pipelines.streaming.kafka import KafkaUnavailableError
from pipelines.tables import LAKE_TABLES
from tests.conftest import SharedBroker
from tests.streaming.helpers import contiguous, forget_commit, produce

pytestmark = pytest.mark.streaming


def small_batches(settings: Settings, cap: int = 250) -> Settings:
    consumer = settings.kafka.consumer.model_copy(update={"max_offsets_per_trigger": cap})
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"consumer": consumer})}
    )


def test_bronze_lands_every_record_once_and_a_rerun_adds_nothing(
    spark: SparkSession, lake_settings: Settings, kafka_broker: SharedBroker
) -> None:
    settings = small_batches(lake_settings)
    bootstrap = kafka_broker.bootstrap_servers
    topics = settings.kafka.topics
    sent = [(k, v, topics.click) for k, v in produce(settings, bootstrap, topics.click, 700)]
    sent += [(k, v, topics.purchase) for k, v in produce(settings, bootstrap, topics.purchase, 300)]
    started = datetime.now(tz=UTC)

    first = run_bronze(spark, settings, bootstrap)
    assert first.stats.rows_written == 1_000
    # maxOffsetsPerTrigger caps every batch; Spark splits it across partitions by their lag.
    assert first.stats.batches_written >= 4
    assert all(0 < b["rows"] <= 250 for b in first.stats.batches)
    catalog = Catalog(settings.storage, LAKE_TABLES)
    bronze = catalog.read(spark, BRONZE_EVENTS_RAW.name)
    assertDataFrameEqual(
        bronze.select("key", "value", "topic"),
        spark.createDataFrame(sent, "key string, value string, topic string"),
        checkRowOrder=False,
    )
    rows = bronze.collect()
    assert sum(contiguous([(r.topic, r.partition, r.offset) for r in rows]).values()) == 1_000
    assert all(r.ingest_ts >= started.replace(tzinfo=None) for r in rows)
    assert {r.ingest_date for r in rows} == {r.ingest_ts.date() for r in rows}
    assert all(r.kafka_timestamp is not None for r in rows)

    version = catalog.info(BRONZE_EVENTS_RAW.name).version
    again = run_bronze(spark, settings, bootstrap)
    assert again.stats.rows_written == 0
    assert catalog.info(BRONZE_EVENTS_RAW.name).version == version
    assert catalog.read(spark, BRONZE_EVENTS_RAW.name).count() == 1_000

    produce(settings, bootstrap, topics.search, 120)
    more = run_bronze(spark, settings, bootstrap)
    assert more.stats.rows_written == 120
    assert catalog.info(BRONZE_EVENTS_RAW.name).rows == 1_120
    # Time travel: the version of the first run still reads exactly its 1,000 rows.
    assert catalog.read(spark, BRONZE_EVENTS_RAW.name, version=version).count() == 1_000
    commits = catalog.history(BRONZE_EVENTS_RAW.name)
    # One commit per micro-batch that read data (none for the idle rerun), newest first, each
    # stamped with its batch id; the batch ids go on across runs of the same checkpoint.
    batches = [*first.stats.batches, *more.stats.batches]
    assert [c["lakehouse.batch_id"] for c in commits if "lakehouse.batch_id" in c] == [
        str(b["batch_id"]) for b in reversed(batches)
    ]
    assert [b["batch_id"] for b in batches] == list(range(len(batches)))


def test_continuous_trigger_picks_up_new_data_until_stopped(
    spark: SparkSession, lake_settings: Settings, kafka_broker: SharedBroker
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = lake_settings.kafka.topics.add_to_cart
    produce(lake_settings, bootstrap, topic, 200)
    produced_more: list[bool] = []

    def produce_more_once(query: object, stats: BatchWriteStats) -> None:
        # After the first 200 landed, 50 more arrive while the query keeps running.
        if stats.rows_written >= 200 and not produced_more:
            produced_more.append(True)
            produce(lake_settings, bootstrap, topic, 50, start=200)

    run = run_bronze(
        spark,
        lake_settings,
        bootstrap,
        trigger=TriggerSettings(mode="processing-time", interval="1 second"),
        on_progress=produce_more_once,
        timeout_s=12,
    )
    assert produced_more == [True]
    assert run.stats.rows_written == 250
    assert run.stats.batches_written >= 2
    assert spark.streams.active == []


def test_batch_already_committed_before_a_crash_is_skipped_on_replay(
    spark: SparkSession, lake_settings: Settings, kafka_broker: SharedBroker
) -> None:
    settings = small_batches(lake_settings)
    bootstrap = kafka_broker.bootstrap_servers
    produce(settings, bootstrap, settings.kafka.topics.page_view, 600)
    catalog = Catalog(settings.storage, LAKE_TABLES)

    first = run_bronze(spark, settings, bootstrap)
    assert first.stats.batches_written == 3
    info = catalog.info(BRONZE_EVENTS_RAW.name)
    last_batch = first.stats.batches[-1]["batch_id"]
    # Simulate a crash after the Delta commit but before Spark recorded the batch as done.
    forget_commit(catalog.checkpoint(BRONZE_EVENTS_RAW.name), last_batch)
    commits = Path(catalog.checkpoint(BRONZE_EVENTS_RAW.name)) / "commits"

    replay = run_bronze(spark, settings, bootstrap)
    assert replay.stats.batches_skipped == 1
    assert replay.stats.rows_written == 0
    after = catalog.info(BRONZE_EVENTS_RAW.name)
    assert (after.version, after.rows) == (info.version, 600)
    assert (commits / str(last_batch)).exists()  # the replay completed the batch in the checkpoint
    stamp = json.loads(catalog.delta_table(BRONZE_EVENTS_RAW.name).history(1)[0]["userMetadata"])
    app_id = stamp["lakehouse.app_id"]
    assert stamp["lakehouse.batch_id"] == str(last_batch)
    assert catalog.delta_table(BRONZE_EVENTS_RAW.name).transaction_version(app_id) == last_batch


def test_bronze_table_has_the_declared_schema_and_partitioning(
    spark: SparkSession, lake_settings: Settings, kafka_broker: SharedBroker
) -> None:
    produce(lake_settings, kafka_broker.bootstrap_servers, lake_settings.kafka.topics.search, 10)
    run_bronze(spark, lake_settings, kafka_broker.bootstrap_servers)
    table = Catalog(lake_settings.storage, LAKE_TABLES).delta_table(BRONZE_EVENTS_RAW.name)
    assert pa.schema(table.schema().to_arrow()) == BRONZE_EVENTS_RAW.arrow_schema
    assert table.metadata().partition_columns == ["ingest_date"]
    assert table.metadata().configuration["delta.enableChangeDataFeed"] == "true"
    assert all("ingest_date=" in uri for uri in table.file_uris())
    # No dictionary pages: unique raw payloads made every file build one and throw it away.
    metadata = pq.ParquetFile(table.file_uris()[0].removeprefix("file://")).metadata
    encodings = {
        metadata.row_group(0).column(i).path_in_schema: metadata.row_group(0).column(i).encodings
        for i in range(metadata.num_columns)
    }
    assert not any("DICTIONARY" in e for codes in encodings.values() for e in codes), encodings


def test_unreachable_broker_fails_before_spark_starts_a_query(
    spark: SparkSession, lake_settings: Settings
) -> None:
    consumer = lake_settings.kafka.consumer.model_copy(update={"metadata_timeout_s": 1.0})
    settings = lake_settings.model_copy(
        update={"kafka": lake_settings.kafka.model_copy(update={"consumer": consumer})}
    )
    with pytest.raises(KafkaUnavailableError, match=r"127.0.0.1:9 did not answer within 1s"):
        run_bronze(spark, settings, "127.0.0.1:9")
    assert spark.streams.active == []


def delete_all_records(bootstrap: str, topic: str) -> None:
    """What retention does to old segments: every record of ``topic`` deleted from Kafka."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    futures = admin.delete_records([TopicPartition(topic, p, OFFSET_END) for p in partitions])
    for future in futures.values():
        future.result(timeout=30)


def test_offsets_deleted_before_bronze_read_them_stop_it_or_are_reported_loudly(
    spark: SparkSession, lake_settings: Settings, kafka_broker: SharedBroker
) -> None:
    # Once: with fail_on_data_loss false, bronze said "+0 rows" while Kafka had dropped events
    # below its checkpoint; with true, Spark failed deep inside the query.
    bootstrap = kafka_broker.bootstrap_servers
    topic = lake_settings.kafka.topics.search
    produce(lake_settings, bootstrap, topic, 100)
    assert run_bronze(spark, lake_settings, bootstrap).stats.rows_written == 100
    produce(lake_settings, bootstrap, topic, 40, start=100)
    delete_all_records(bootstrap, topic)  # the 40 unread events are gone from Kafka
    produce(lake_settings, bootstrap, topic, 10, start=140)

    with pytest.raises(DataLossError, match=r"40 events .*fail_on_data_loss: false"):
        run_bronze(spark, lake_settings, bootstrap)

    consumer = lake_settings.kafka.consumer.model_copy(update={"fail_on_data_loss": False})
    lenient = lake_settings.model_copy(
        update={"kafka": lake_settings.kafka.model_copy(update={"consumer": consumer})}
    )
    run = run_bronze(spark, lenient, bootstrap)
    assert run.stats.skipped_events == 40
    assert {(g.topic, g.skipped > 0) for g in run.stats.data_loss} == {(topic, True)}
    assert run.stats.rows_written == 10
    assert Catalog(lenient.storage, LAKE_TABLES).read(spark, BRONZE_EVENTS_RAW.name).count() == 110
    # Once skipped, the checkpoint is past the gap: the next run reports nothing.
    assert run_bronze(spark, lenient, bootstrap).stats.data_loss == []
