"""The bronze job: every event topic in Kafka -> ``bronze.events_raw``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from pipelines.bronze.data_loss import OffsetGap, check_data_loss
from pipelines.bronze.events_raw import bronze_events_raw
from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.config import Settings, TriggerSettings
from pipelines.lake.catalog import Catalog
from pipelines.streaming.delta import BatchWriteStats
from pipelines.streaming.kafka import check_reachable, client_config
from pipelines.streaming.queries import QueryMonitor, await_query, start_table_stream
from pipelines.streaming.sinks import append_handler, ensure_table
from pipelines.streaming.sources import kafka_stream
from pipelines.tables import LAKE_TABLES


@dataclass
class BronzeStats(BatchWriteStats):
    """The sink's figures plus the Kafka offsets skipped as lost when the query started."""

    data_loss: list[OffsetGap] = field(default_factory=list)

    @property
    def skipped_events(self) -> int:
        return sum(gap.skipped for gap in self.data_loss)


@dataclass
class BronzeRun:
    """The outcome of one run of the bronze query."""

    stats: BronzeStats
    table_version: int | None
    query_id: str
    run_id: str


def start_bronze(
    spark: SparkSession,
    settings: Settings,
    bootstrap_servers: str,
    trigger: TriggerSettings | None = None,
    monitor: QueryMonitor | None = None,
) -> tuple[StreamingQuery, BronzeStats]:
    """Start the bronze query and return it without waiting (see ``run_bronze``).

    Raises:
        KafkaUnavailableError: the brokers cannot be reached.
        DataLossError: Kafka deleted offsets bronze has not read and
            ``kafka.consumer.fail_on_data_loss`` is true (with false, they are logged and
            reported in ``stats.data_loss``).
    """
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    kafka_conf = client_config(settings.kafka, bootstrap_servers)
    check_reachable(kafka_conf, settings.kafka.consumer.metadata_timeout_s)
    checkpoint = catalog.checkpoint(BRONZE_EVENTS_RAW.name)
    gaps = check_data_loss(
        checkpoint,
        kafka_conf,
        fail_on_data_loss=settings.kafka.consumer.fail_on_data_loss,
        filesystem=catalog.filesystem(),
    )
    ensure_table(spark, catalog, BRONZE_EVENTS_RAW)
    records = kafka_stream(spark, settings, bootstrap_servers, settings.kafka.topics.event_topics)
    stats = BronzeStats(data_loss=gaps)
    handler = append_handler(catalog, BRONZE_EVENTS_RAW, checkpoint, stats)
    query = start_table_stream(
        bronze_events_raw(records),
        catalog=catalog,
        table=BRONZE_EVENTS_RAW.name,
        handler=handler,
        trigger=trigger or settings.streaming.trigger,
        monitor=monitor,
    )
    return query, stats


def run_bronze(
    spark: SparkSession,
    settings: Settings,
    bootstrap_servers: str,
    *,
    trigger: TriggerSettings | None = None,
    on_progress: Callable[[StreamingQuery, BatchWriteStats], None] | None = None,
    timeout_s: float | None = None,
    monitor: QueryMonitor | None = None,
) -> BronzeRun:
    """Run the bronze query: drain and return (available-now) or run until stopped.

    Raises:
        KafkaUnavailableError: the brokers cannot be reached (checked before Spark starts).
        DataLossError: Kafka lost unread offsets and ``fail_on_data_loss`` is true.
        StreamingJobError: the query failed.
    """
    query, stats = start_bronze(spark, settings, bootstrap_servers, trigger, monitor)
    await_query(
        query,
        on_progress=(lambda q: on_progress(q, stats)) if on_progress else None,
        timeout_s=timeout_s,
        monitor=monitor,
    )
    return BronzeRun(
        stats=stats,
        table_version=Catalog.for_settings(settings, LAKE_TABLES)
        .delta_table(BRONZE_EVENTS_RAW.name)
        .version(),
        query_id=str(query.id),
        run_id=str(query.runId),
    )
