"""The cluster adapter of the Delta ports: Spark's own Delta reader and writer (delta-spark).

Selected by ``engines.delta: delta-spark``. It needs the delta-spark jars (built into Databricks,
or fetched from Maven by a local session: see ``pipelines.spark``); the ``delta`` Python package
it calls is always installed.

Idempotency is Delta's app transaction, as on the default adapter: every commit carries
``(app id, batch id)`` and Delta skips a commit whose app id has already recorded that batch id
(or a later one).

* Appends pass ``txnAppId``/``txnVersion`` as DataFrameWriter options ("Idempotent table writes
  in foreachBatch", docs.delta.io/latest/delta-streaming.html).
* MERGE has no writer options; it reads the same identity from the session confs
  ``spark.databricks.delta.write.txnAppId``/``txnVersion`` (delta-io/delta PR #1555: idempotent
  INSERT/DELETE/UPDATE/MERGE through SQL confs; the pair is named by Delta's error class
  ``DELTA_INVALID_IDEMPOTENT_WRITES_OPTIONS.MISSING_SESSION_CONFS``). Delta leaves both set after
  the commit (``write.txnVersion.autoReset.enabled`` defaults to false), so they are set on the
  micro-batch's own session (a per-query clone) and always unset around one ``execute()``.
* ``committed`` reads the table's latest ``SetTransaction`` for the app id from the Delta log
  (open protocol, read with delta-rs like the catalog's other metadata reads), so a replayed
  batch is skipped before any Spark work, exactly as on the default adapter.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
from delta.tables import DeltaTable
from deltalake import DeltaTable as DeltaRsTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.lake.catalog import Catalog
from pipelines.lake.tables import TableSpec
from pipelines.streaming.delta_sink import (
    AppendResult,
    BatchHandler,
    BatchWriteStats,
    batch_committed,
    conform,
    query_id_from_checkpoint,
)

log = logging.getLogger(__name__)

TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
# What the default change-feed source emits (``lakehouse-delta``'s ``changeTypes`` default).
EMITTED_CHANGE_TYPES = ("insert", "update_postimage")


def delta_spark_change_feed(
    spark: SparkSession,
    location: str,
    *,
    starting_version: str = "earliest",
    max_files_per_trigger: int | None = None,
    max_bytes_per_trigger: str | None = None,
) -> DataFrame:
    """A table's change data feed through ``readStream.format("delta")``.

    Yields the rows the default source yields: the table's columns plus ``_change_type``,
    ``_commit_version`` and ``_commit_timestamp``, inserts and update post-images only.
    ``earliest`` is version 0, so every commit is read as its own changes (not an initial
    snapshot), as the default source does.
    """
    start = "0" if starting_version == "earliest" else starting_version
    reader = (
        spark.readStream.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", start)
    )
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", str(max_files_per_trigger))
    if max_bytes_per_trigger:
        reader = reader.option("maxBytesPerTrigger", max_bytes_per_trigger)
    changes = reader.load(location)
    return changes.where(F.col("_change_type").isin(*EMITTED_CHANGE_TYPES))


def ensure_delta_spark_table(spark: SparkSession, catalog: Catalog, spec: TableSpec) -> None:
    """Create the table at its catalog location if missing: schema, partitioning, properties
    (change data feed on), as ``Catalog.ensure`` does with delta-rs."""
    builder = (
        DeltaTable.createIfNotExists(spark)
        .location(catalog.location(spec.name))
        .addColumns(spec.schema)
    )
    if spec.description:
        builder = builder.comment(spec.description)
    if spec.partition_by:
        builder = builder.partitionedBy(*spec.partition_by)
    for key, value in spec.configuration.items():
        builder = builder.property(key, value)
    builder.execute()


class DeltaSparkWriter:
    """Idempotent appends and MERGEs to one table through delta-spark (the sink port's cluster
    adapter; ``DeltaAppender`` is the default one)."""

    def __init__(self, catalog: Catalog, spec: TableSpec) -> None:
        self.catalog = catalog
        self.spec = spec
        self.location = catalog.location(spec.name)
        self._log: DeltaRsTable | None = None
        self._ensured = False

    def ensure(self, spark: SparkSession) -> None:
        if not self._ensured:
            ensure_delta_spark_table(spark, self.catalog, self.spec)
            self._ensured = True

    def committed(self, app_id: str, batch_id: int) -> bool:
        """Whether the table already holds the commit of ``(app_id, batch_id)``."""
        if self._log is None:
            options = self.catalog.storage_options
            if not DeltaRsTable.is_deltatable(self.location, storage_options=options):
                return False
            self._log = DeltaRsTable(self.location, storage_options=options)
        else:
            self._log.update_incremental()
        return batch_committed(self._log, app_id, batch_id)

    def append(
        self,
        data: pa.Table,
        app_id: str,
        batch_id: int,
        metadata: dict[str, str] | None = None,
        *,
        spark: SparkSession | None = None,
    ) -> AppendResult:
        """Append ``data`` (conformed to the table's schema) unless this batch already landed.

        ``spark`` should be the micro-batch's session (``batch_df.sparkSession``).
        """
        started = time.perf_counter()
        session = _session(spark)
        self.ensure(session)
        if self.committed(app_id, batch_id):
            log.warning(
                "%s: batch %s of %s already committed; skipping replay",
                self.spec.name,
                batch_id,
                app_id,
            )
            return AppendResult(True, 0, self.version(session), 0.0)
        data = conform(data, self.spec.arrow_schema)
        if data.num_rows == 0:  # like delta-rs: an empty batch makes no commit
            return AppendResult(False, 0, self.version(session), time.perf_counter() - started)
        frame = session.createDataFrame(data, schema=self.spec.schema)
        return self.append_frame(frame, app_id, batch_id, metadata, started=started)

    def append_frame(
        self,
        frame: DataFrame,
        app_id: str,
        batch_id: int,
        metadata: dict[str, str] | None = None,
        *,
        started: float | None = None,
    ) -> AppendResult:
        """Append a DataFrame in one idempotent commit, written by the executors (no collect)."""
        started = time.perf_counter() if started is None else started
        session = frame.sparkSession
        self.ensure(session)
        stamp = _commit_stamp(app_id, batch_id, metadata)
        (
            frame.select(*self.spec.schema.fieldNames())
            .write.format("delta")
            .mode("append")
            .option("txnAppId", app_id)
            .option("txnVersion", str(batch_id))
            .option("userMetadata", stamp)
            .save(self.location)
        )
        version, rows, ours = self._last_commit(session, stamp)
        if not ours:  # Delta skipped it: the (app id, batch id) landed meanwhile
            return AppendResult(True, 0, version, time.perf_counter() - started)
        return AppendResult(False, rows, version, time.perf_counter() - started)

    def upsert(
        self,
        data: pa.Table,
        key: str,
        app_id: str,
        batch_id: int,
        *,
        delete_flag: str | None = None,
        spark: SparkSession | None = None,
    ) -> int:
        """MERGE ``data`` on ``key`` in one idempotent commit; returns the table version.

        Matched rows are updated, new rows inserted; with ``delete_flag`` (a boolean column of
        ``data``), matched rows flagged true are deleted and flagged rows are never inserted.
        """
        session = _session(spark)
        self.ensure(session)
        if self.committed(app_id, batch_id):
            log.warning(
                "%s: merge %s of %s already committed; skipping", self.spec.name, batch_id, app_id
            )
            return self.version(session)
        columns = [c for c in data.column_names if c != delete_flag]
        source = conform(data.select(columns), self.spec.arrow_schema)
        if delete_flag is not None:
            source = source.append_column(delete_flag, data.column(delete_flag))
        if source.num_rows == 0:
            return self.version(session)
        target = DeltaTable.forPath(session, self.location).alias("t")
        merger = target.merge(session.createDataFrame(source).alias("s"), f"t.{key} = s.{key}")
        if delete_flag is None:
            merger = merger.whenMatchedUpdateAll().whenNotMatchedInsertAll()
        else:
            # The flag is not a table column, so the assignments are spelled out.
            keep = f"NOT s.{delete_flag}"
            assignments: dict[str, str | Column] = {
                name: f"s.{name}" for name in self.spec.schema.fieldNames()
            }
            merger = (
                merger.whenMatchedDelete(condition=f"s.{delete_flag}")
                .whenMatchedUpdate(condition=keep, set=assignments)
                .whenNotMatchedInsert(condition=keep, values=assignments)
            )
        with idempotent_dml(session, app_id, batch_id, _commit_stamp(app_id, batch_id, None)):
            merger.execute()
        return self.version(session)

    def version(self, spark: SparkSession) -> int:
        row = DeltaTable.forPath(spark, self.location).history(1).select("version").first()
        return -1 if row is None else int(row[0])

    def _last_commit(self, spark: SparkSession, stamp: str) -> tuple[int, int, bool]:
        """(version, rows written, whether it is the commit stamped ``stamp``)."""
        row = (
            DeltaTable.forPath(spark, self.location)
            .history(1)
            .select("version", "operationMetrics", "userMetadata")
            .first()
        )
        if row is None:
            return -1, 0, False
        metrics = row["operationMetrics"] or {}
        return (
            int(row["version"]),
            int(metrics.get("numOutputRows", 0)),
            row["userMetadata"] == stamp,
        )


@contextmanager
def idempotent_dml(
    spark: SparkSession, app_id: str, batch_id: int, user_metadata: str
) -> Iterator[None]:
    """Run Delta DML (MERGE) under the app transaction ``(app_id, batch_id)``.

    The confs are unset afterwards whatever happens: Delta would otherwise apply them to the
    session's next write, silently skipping it.
    """
    conf = spark.conf
    conf.set(TXN_APP_ID_CONF, app_id)
    conf.set(TXN_VERSION_CONF, str(batch_id))
    conf.set(USER_METADATA_CONF, user_metadata)
    try:
        yield
    finally:
        for key in (TXN_APP_ID_CONF, TXN_VERSION_CONF, USER_METADATA_CONF):
            conf.unset(key)


def delta_spark_append(
    catalog: Catalog,
    spec: TableSpec,
    checkpoint: str,
    stats: BatchWriteStats | None = None,
) -> BatchHandler:
    """A ``foreachBatch`` handler appending each micro-batch to ``spec`` in one idempotent
    commit, written by the executors (the counterpart of ``delta_rs_append``)."""
    stats = stats if stats is not None else BatchWriteStats()
    writer = DeltaSparkWriter(catalog, spec)
    app_id: list[str] = []  # resolved on the first batch, once Spark has written the metadata

    def write_batch(batch_df: DataFrame, batch_id: int) -> None:
        if not app_id:
            query = query_id_from_checkpoint(checkpoint, batch_df.sparkSession)
            app_id.append(f"{spec.name}:{query}")
        if writer.committed(app_id[0], batch_id):
            stats.batches_skipped += 1
            log.warning(
                "%s: batch %s already committed (app %s); skipping replay",
                spec.name,
                batch_id,
                app_id[0],
            )
            return
        result = writer.append_frame(batch_df, app_id[0], batch_id)
        if result.skipped:
            stats.batches_skipped += 1
            return
        stats.batches_written += 1
        stats.rows_written += result.rows
        stats.write_s += result.seconds
        stats.last_version = result.version
        stats.batches.append(
            {
                "batch_id": batch_id,
                "rows": result.rows,
                "collect_ms": 0.0,
                "write_ms": round(result.seconds * 1000, 1),
                "version": result.version,
            }
        )

    return write_batch


def _commit_stamp(app_id: str, batch_id: int, metadata: dict[str, str] | None) -> str:
    """The commit's ``userMetadata``: the keys delta-rs commits carry as custom metadata."""
    return json.dumps(
        {"lakehouse.batch_id": str(batch_id), "lakehouse.app_id": app_id, **(metadata or {})},
        sort_keys=True,
    )


def _session(spark: SparkSession | None) -> SparkSession:
    session = spark if spark is not None else SparkSession.getActiveSession()
    if session is None:
        raise RuntimeError(
            "the delta-spark writer needs a SparkSession: pass spark=batch_df.sparkSession"
        )
    return session
