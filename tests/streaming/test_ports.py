"""Contract suites of the IO ports, run on the real connectors (no skips):

* Kafka source (``kafka_stream``): Spark's ``format("kafka")`` on the embedded Apache Kafka broker;
* Delta streaming source (``delta_stream``): delta-spark's change data feed;
* Delta append sink (``table_writer(...).append``, ``append_handler``);
* Delta MERGE sink (``table_writer(...).upsert``).
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql.types import (
    BinaryType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.bronze.events_raw import bronze_events_raw
from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.config import Settings, TriggerSettings
from pipelines.lake.catalog import Catalog
from pipelines.lake.tables import LAKE_SNAPSHOTS, TableSpec
from pipelines.spark import class_loadable, connector_status
from pipelines.streaming.delta import (
    TXN_APP_ID_CONF,
    TXN_VERSION_CONF,
    BatchWriteStats,
    idempotent_dml,
)
from pipelines.streaming.kafka_native import KAFKA_RECORDS_SCHEMA, kafka_records
from pipelines.streaming.queries import await_query, start_table_stream
from pipelines.streaming.sinks import append_handler, ensure_table, table_writer
from pipelines.streaming.sources import delta_stream, kafka_stream
from pipelines.tables import LAKE_TABLES
from tests.conftest import SharedBroker, make_settings
from tests.streaming.helpers import contiguous, forget_commit, produce

pytestmark = pytest.mark.streaming

AVAILABLE_NOW = TriggerSettings(mode="available-now")
CDF_FIELDS = [
    StructField("_change_type", StringType()),
    StructField("_commit_version", LongType()),
    StructField("_commit_timestamp", TimestampType()),
]


def capped(settings: Settings, cap: int) -> Settings:
    consumer = settings.kafka.consumer.model_copy(
        update={"max_offsets_per_trigger": cap, "max_records_per_partition": 200}
    )
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"consumer": consumer})}
    )


def lake(tmp_path: Path) -> Catalog:
    return Catalog.for_settings(make_settings(tmp_path / "lake"), LAKE_TABLES)


def fields(schema: StructType) -> list[tuple[str, Any]]:
    return [(f.name, f.dataType) for f in schema.fields]


def drain(frame: DataFrame, checkpoint: Path) -> dict[int, list[Row]]:
    """Run ``frame`` with availableNow into a collecting sink; rows per batch id."""
    batches: dict[int, list[Row]] = {}

    def keep(batch_df: DataFrame, batch_id: int) -> None:
        batches[batch_id] = batch_df.collect()

    query = (
        frame.writeStream.foreachBatch(keep)
        .option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True)
        .start()
    )
    await_query(query)
    return batches


def rows_of(batches: dict[int, list[Row]]) -> list[Row]:
    return [row for _, rows in sorted(batches.items()) for row in rows]


# -- row builders ---------------------------------------------------------------------------
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def snapshot_rows(*names: str, note: str | None = None, delete: bool | None = None) -> pa.Table:
    """``lake.snapshots`` rows keyed by ``name`` (plus a ``_delete`` flag when given)."""
    rows: list[dict[str, Any]] = [
        {
            "name": name,
            "table": "silver.events",
            "version": i,
            "created_at": T0 + timedelta(minutes=i),
            "note": note,
        }
        for i, name in enumerate(names)
    ]
    data = pa.Table.from_pylist(rows, schema=LAKE_SNAPSHOTS.arrow_schema)
    if delete is not None:
        data = data.append_column("_delete", pa.array([delete] * len(names), pa.bool_()))
    return data


def bronze_rows(first: int, n: int) -> pa.Table:
    rows = [
        {
            "key": f"user-{i}",
            "value": f'{{"n": {i}}}',
            "topic": "user_clicks",
            "partition": i % 2,
            "offset": i,
            "kafka_timestamp": T0,
            "ingest_ts": T0 + timedelta(days=i % 2),
            "ingest_date": (T0 + timedelta(days=i % 2)).date(),
        }
        for i in range(first, first + n)
    ]
    return pa.Table.from_pylist(rows, schema=BRONZE_EVENTS_RAW.arrow_schema)


def as_rows(spark: SparkSession, data: pa.Table, spec: TableSpec) -> list[tuple[Any, ...]]:
    """Arrow rows as Spark returns them (naive UTC datetimes), for full-row comparisons."""
    frame = spark.createDataFrame(data.select(spec.schema.fieldNames()), schema=spec.schema)
    return sorted(tuple(r) for r in frame.collect())


def table_rows(spark: SparkSession, catalog: Catalog, spec: TableSpec) -> list[tuple[Any, ...]]:
    return sorted(tuple(r) for r in catalog.read(spark, spec.name).collect())


# -- Kafka source -----------------------------------------------------------------------------
def test_kafka_source_yields_every_record_once_within_the_trigger_cap(
    spark: SparkSession,
    lake_settings: Settings,
    kafka_broker: SharedBroker,
    tmp_path: Path,
) -> None:
    settings = capped(lake_settings, 150)
    bootstrap = kafka_broker.bootstrap_servers
    topics = [settings.kafka.topics.click, settings.kafka.topics.search]
    sent = produce(settings, bootstrap, topics[0], 300) + produce(
        settings, bootstrap, topics[1], 200
    )
    checkpoint = tmp_path / "ckpt"

    frame = kafka_stream(spark, settings, bootstrap, topics)
    assert fields(frame.schema) == fields(KAFKA_RECORDS_SCHEMA)
    first = drain(frame, checkpoint)
    sizes = [len(rows) for _, rows in sorted(first.items()) if rows]
    assert all(size <= 150 for size in sizes), sizes
    assert len(sizes) >= math.ceil(500 / 150)
    rows = rows_of(first)
    assert sum(contiguous([(r.topic, r.partition, r.offset) for r in rows]).values()) == 500
    assert sorted((r.key, r.value) for r in rows) == sorted(sent)
    assert {r.topic for r in rows} == set(topics)
    assert all(isinstance(r.timestamp, datetime) for r in rows)

    replay = drain(kafka_stream(spark, settings, bootstrap, topics), checkpoint)
    assert rows_of(replay) == []  # the checkpoint holds every offset read: nothing again

    more = produce(settings, bootstrap, topics[0], 40, start=300)
    resumed = rows_of(drain(kafka_stream(spark, settings, bootstrap, topics), checkpoint))
    assert sorted((r.key, r.value) for r in resumed) == sorted(more)


def test_kafka_rows_are_utf8_strings_with_their_coordinates(
    spark: SparkSession,
) -> None:
    """The mapping from ``format("kafka")``'s binary columns, on rows shaped like them."""
    native_schema = StructType(
        [
            StructField("key", BinaryType()),
            StructField("value", BinaryType()),
            StructField("topic", StringType()),
            StructField("partition", IntegerType()),
            StructField("offset", LongType()),
            StructField("timestamp", TimestampType()),
            StructField("timestampType", IntegerType()),
        ]
    )
    stamp = datetime(2026, 11, 26, 12, 0)
    native = spark.createDataFrame(
        [
            (b"user-1", '{"n": "é"}'.encode(), "t", 3, 41, stamp, 0),
            (None, b"\xff\xfebad", "t", 0, 7, stamp, 0),
        ],
        native_schema,
    )
    mapped = kafka_records(native)
    assert fields(mapped.schema) == fields(KAFKA_RECORDS_SCHEMA)
    assert sorted((tuple(r) for r in mapped.collect()), key=lambda r: r[4]) == [
        (None, "\ufffd\ufffdbad", "t", 0, 7, stamp),  # invalid UTF-8 replaced, not dropped
        ("user-1", '{"n": "é"}', "t", 3, 41, stamp),
    ]


def test_every_connector_loads_in_the_projects_session(spark: SparkSession) -> None:
    """The pinned jars are on the session's classpath: nothing is skipped for want of them."""
    assert class_loadable(spark, "org.apache.spark.sql.SparkSession") is True
    assert class_loadable(spark, "org.example.NoSuchClass") is False
    status = connector_status(spark)
    assert set(status) == {"delta-spark", "spark-sql-kafka", "hadoop-aws"}
    assert all(s.available for s in status.values()), status


def test_native_kafka_source_logs_its_options_without_the_password(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    password = "pw-that-must-not-leak"
    settings = make_settings(
        tmp_path,
        kafka={
            "security": {
                "protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "svc",
                "sasl_password": password,
            }
        },
    )
    with caplog.at_level(logging.INFO, logger="pipelines.streaming.kafka_native"):
        frame = kafka_stream(spark, settings, "127.0.0.1:9", ["t"])
    assert fields(frame.schema) == fields(KAFKA_RECORDS_SCHEMA)
    assert "kafka.sasl.jaas.config" in caplog.text
    assert "kafka.sasl.mechanism': 'SCRAM-SHA-512'" in caplog.text
    assert password not in caplog.text


# -- Delta streaming source -------------------------------------------------------------------
def test_delta_source_yields_inserts_and_updates_with_versions_and_resumes(
    spark: SparkSession, tmp_path: Path
) -> None:
    catalog = lake(tmp_path)
    spec = LAKE_SNAPSHOTS
    ensure_table(spark, catalog, spec)
    writer = table_writer(catalog, spec)
    v1 = writer.append(snapshot_rows("a", "b"), "seed", 0, spark=spark).version
    v2 = writer.append(snapshot_rows("c"), "seed", 1, spark=spark).version
    assert v2 == v1 + 1
    checkpoint = tmp_path / "ckpt"

    frame = delta_stream(spark, catalog, spec.name)
    assert fields(frame.schema) == fields(spec.schema) + [(f.name, f.dataType) for f in CDF_FIELDS]
    first = rows_of(drain(frame, checkpoint))
    assert sorted((r.name, r._change_type, r._commit_version) for r in first) == [
        ("a", "insert", v1),
        ("b", "insert", v1),
        ("c", "insert", v2),
    ]
    assert all(isinstance(r._commit_timestamp, datetime) for r in first)
    columns = spec.schema.fieldNames()
    expected = as_rows(spark, pa.concat_tables([snapshot_rows("a", "b"), snapshot_rows("c")]), spec)
    assert sorted(tuple(r[c] for c in columns) for r in first) == expected

    # After the checkpoint: b updated, d inserted, c deleted, in one MERGE.
    changes = pa.concat_tables(
        [
            snapshot_rows("b", "d", note="changed", delete=False),
            snapshot_rows("c", delete=True),
        ]
    )
    v3 = writer.upsert(spark.createDataFrame(changes), "name", "merge", 0, delete_flag="_delete")
    resumed = rows_of(drain(delta_stream(spark, catalog, spec.name), checkpoint))
    # Only post-images and inserts: no pre-image, no delete, nothing read before.
    assert sorted((r.name, r._change_type, r._commit_version, r.note) for r in resumed) == [
        ("b", "update_postimage", v3, "changed"),
        ("d", "insert", v3, "changed"),
    ]
    assert rows_of(drain(delta_stream(spark, catalog, spec.name), checkpoint)) == []


# -- Delta append sink ------------------------------------------------------------------------
def test_append_sink_creates_the_table_and_commits_each_app_batch_once(
    spark: SparkSession, tmp_path: Path
) -> None:
    catalog = lake(tmp_path)
    spec = BRONZE_EVENTS_RAW
    ensure_table(spark, catalog, spec)
    ensure_table(spark, catalog, spec)  # idempotent
    detail = spark.sql(f"DESCRIBE DETAIL {spec.name}").first()
    assert detail is not None
    assert detail["partitionColumns"] == ["ingest_date"]
    assert detail["properties"]["delta.enableChangeDataFeed"] == "true"
    assert detail["location"].rstrip("/").endswith(catalog.location(spec.name))

    writer = table_writer(catalog, spec)
    assert not writer.committed("app", 0)
    first = writer.append(bronze_rows(0, 5), "app", 0, spark=spark)
    assert (first.skipped, first.rows) == (False, 5)
    replay = writer.append(bronze_rows(100, 3), "app", 0, spark=spark)  # other rows, same id
    assert (replay.skipped, replay.rows, replay.version) == (True, 0, first.version)
    assert writer.committed("app", 0)
    assert not writer.committed("app", 1)
    second = writer.append(bronze_rows(5, 2), "app", 1, spark=spark)
    other = writer.append(bronze_rows(7, 1), "other-app", 0, spark=spark)  # its own batch 0
    assert (second.rows, other.rows) == (2, 1)
    assert other.version == second.version + 1 == first.version + 2

    assert table_rows(spark, catalog, spec) == as_rows(spark, bronze_rows(0, 8), spec)
    partitions = {p.name for p in Path(catalog.location(spec.name)).glob("ingest_date=*")}
    assert partitions == {"ingest_date=2026-11-26", "ingest_date=2026-11-27"}


def test_append_handler_skips_a_batch_replayed_after_a_crash(
    spark: SparkSession,
    lake_settings: Settings,
    kafka_broker: SharedBroker,
) -> None:
    settings = capped(lake_settings, 100)
    bootstrap = kafka_broker.bootstrap_servers
    topic = settings.kafka.topics.click
    sent = produce(settings, bootstrap, topic, 250)
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    spec = BRONZE_EVENTS_RAW
    checkpoint = catalog.checkpoint(spec.name)
    ensure_table(spark, catalog, spec)

    def run() -> BatchWriteStats:
        stats = BatchWriteStats()
        records = kafka_stream(spark, settings, bootstrap, [topic])
        query = start_table_stream(
            bronze_events_raw(records),
            catalog=catalog,
            table=spec.name,
            handler=append_handler(catalog, spec, checkpoint, stats),
            trigger=AVAILABLE_NOW,
        )
        await_query(query)
        return stats

    first = run()
    assert (first.batches_written, first.rows_written) == (3, 250)
    forget_commit(checkpoint, 2)  # a crash after batch 2's Delta commit, before Spark's
    replay = run()
    assert (replay.batches_written, replay.batches_skipped, replay.rows_written) == (0, 1, 0)

    landed = catalog.read(spark, spec.name).collect()
    assert sum(contiguous([(r.topic, r.partition, r.offset) for r in landed]).values()) == 250
    assert sorted((r.key, r.value) for r in landed) == sorted(sent)


# -- Delta MERGE sink -------------------------------------------------------------------------
def test_merge_sink_upserts_by_key_and_skips_a_replayed_batch(
    spark: SparkSession, tmp_path: Path
) -> None:
    catalog = lake(tmp_path)
    spec = LAKE_SNAPSHOTS
    ensure_table(spark, catalog, spec)
    writer = table_writer(catalog, spec)

    def merge(data: pa.Table, batch_id: int, delete_flag: str | None = "_delete") -> int:
        frame = spark.createDataFrame(data)
        return writer.upsert(frame, "name", "app", batch_id, delete_flag=delete_flag)

    def content() -> list[tuple[Any, ...]]:
        return table_rows(spark, catalog, spec)

    def rows(*parts: pa.Table) -> list[tuple[Any, ...]]:
        return as_rows(
            spark, pa.concat_tables(p.select(spec.schema.fieldNames()) for p in parts), spec
        )

    v0 = merge(snapshot_rows("a", "b", "c", delete=False), 0)
    assert content() == rows(snapshot_rows("a", "b", "c"))

    upserts = snapshot_rows("b", "d", note="changed", delete=False)
    v1 = merge(pa.concat_tables([upserts, snapshot_rows("c", delete=True)]), 1)
    assert v1 == v0 + 1
    expected = rows(snapshot_rows("a"), upserts)  # b updated, d inserted, c deleted
    assert content() == expected

    assert writer.committed("app", 1)
    replayed = merge(snapshot_rows("a", "e", note="replay", delete=False), 1)
    assert (replayed, content()) == (v1, expected)  # same (app id, batch id): nothing changes

    v2 = merge(snapshot_rows("a", note="plain"), 2, delete_flag=None)  # no flag: update/insert all
    assert v2 == v1 + 1
    assert content() == rows(snapshot_rows("a", note="plain"), upserts)
    # The transaction identity must not outlive the MERGE (Delta would skip later writes).
    assert spark.conf.get(TXN_APP_ID_CONF, None) is None
    assert spark.conf.get(TXN_VERSION_CONF, None) is None


def test_merge_transaction_identity_is_set_only_while_the_merge_runs(
    spark: SparkSession,
) -> None:
    """delta-spark's MERGE takes its app transaction from session confs, which Delta leaves set;
    the adapter must clear them, also when the MERGE fails."""
    with idempotent_dml(spark, "gold.user_features:q1", 7, '{"lakehouse.batch_id": "7"}'):
        assert spark.conf.get(TXN_APP_ID_CONF) == "gold.user_features:q1"
        assert spark.conf.get(TXN_VERSION_CONF) == "7"
    assert spark.conf.get(TXN_APP_ID_CONF, None) is None
    with pytest.raises(RuntimeError, match="merge failed"), idempotent_dml(spark, "a", 8, ""):
        raise RuntimeError("merge failed")
    assert spark.conf.get(TXN_APP_ID_CONF, None) is None
    assert spark.conf.get(TXN_VERSION_CONF, None) is None
