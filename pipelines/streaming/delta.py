"""The Delta port's adapter: delta-spark writes and reads every table.

Idempotency is Delta's app transaction: every commit carries ``(app id, batch id)`` and Delta
skips a commit whose app id has already recorded that batch id (or a later one). The app id of a
streaming sink is ``<table>:<query id>``, the query id read from the checkpoint's ``metadata``
file, so it is stable across restarts of the same checkpoint and new when the checkpoint is
reset. A batch replayed after a crash between the Delta commit and the checkpoint's commit log is
skipped.

* Appends pass ``txnAppId``/``txnVersion`` as DataFrameWriter options ("Idempotent table writes
  in foreachBatch", Delta's streaming docs).
* MERGE has no writer options; it reads the same identity from the session confs
  ``spark.databricks.delta.write.txnAppId``/``txnVersion`` (delta-io/delta PR #1555). Delta leaves
  both set after the commit (``write.txnVersion.autoReset.enabled`` defaults to false), so they are
  set on the micro-batch's own session and always unset around one ``execute()``.
* ``committed`` reads the table's latest ``SetTransaction`` for the app id from the Delta log
  (read-only, with delta-rs), so a replayed batch is skipped before any Spark work.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from delta.tables import DeltaTable
from deltalake import DeltaTable as DeltaRsTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from pipelines.lake.catalog import Catalog
from pipelines.lake.tables import TableSpec

log = logging.getLogger(__name__)

BatchHandler = Callable[[DataFrame, int], None]


@dataclass
class BatchWriteStats:
    """What a sink did, batch by batch (read by jobs, the demo and the benchmark)."""

    batches_written: int = 0
    batches_skipped: int = 0
    rows_written: int = 0
    write_s: float = 0.0
    last_version: int | None = None
    batches: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AppendResult:
    skipped: bool  # the (app id, batch id) commit already existed: a replay
    rows: int
    version: int
    seconds: float


TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
# The changes a change-feed stream emits: new rows and the new values of updated rows.
EMITTED_CHANGE_TYPES = ("insert", "update_postimage")


def change_feed_stream(
    spark: SparkSession,
    location: str,
    *,
    starting_version: str = "earliest",
    max_files_per_trigger: int | None = None,
    max_bytes_per_trigger: str | None = None,
) -> DataFrame:
    """A table's change data feed through ``readStream.format("delta")``.

    Rows: the table's columns plus ``_change_type``, ``_commit_version`` and
    ``_commit_timestamp``, inserts and update post-images only. ``earliest`` is version 0, so
    every commit is read as its own changes (not as one initial snapshot).
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


def ensure_table(spark: SparkSession, catalog: Catalog, spec: TableSpec) -> None:
    """Create the table if missing and register it under its logical name (``Catalog.ensure``)."""
    catalog.ensure(spark, spec)


class DeltaWriter:
    """Idempotent appends and MERGEs to one table (the sink port)."""

    def __init__(self, catalog: Catalog, spec: TableSpec) -> None:
        self.catalog = catalog
        self.spec = spec
        self.location = catalog.location(spec.name)
        self._log: DeltaRsTable | None = None
        self._ensured = False

    def ensure(self, spark: SparkSession) -> None:
        if not self._ensured:
            ensure_table(spark, self.catalog, self.spec)
            self._ensured = True

    def committed(self, app_id: str, batch_id: int) -> bool:
        """Whether the table already holds the commit of ``(app_id, batch_id)``."""
        log = self._delta_log()
        return log is not None and batch_committed(log, app_id, batch_id)

    def _delta_log(self) -> DeltaRsTable | None:
        """The table's log, refreshed (read-only, without Spark jobs); None before it exists."""
        if self._log is None:
            options = self.catalog.storage_options
            if not DeltaRsTable.is_deltatable(self.location, storage_options=options):
                return None
            self._log = DeltaRsTable(self.location, storage_options=options)
        else:
            self._log.update_incremental()
        return self._log

    def append(
        self,
        data: pa.Table,
        app_id: str,
        batch_id: int,
        metadata: dict[str, str] | None = None,
        *,
        spark: SparkSession | None = None,
        replace_where: str | None = None,
    ) -> AppendResult:
        """Append ``data`` (conformed to the table's schema) unless this batch already landed.

        ``spark`` should be the micro-batch's session (``batch_df.sparkSession``). With
        ``replace_where`` (a predicate on partition columns), the rows matching it are replaced
        by ``data`` in the same commit (Delta's ``replaceWhere``).
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
            return AppendResult(True, 0, self.version(), 0.0)
        data = conform(data, self.spec.arrow_schema)
        if data.num_rows == 0 and replace_where is None:  # an empty batch makes no commit
            return AppendResult(False, 0, self.version(), time.perf_counter() - started)
        frame = session.createDataFrame(data, schema=self.spec.schema)
        return self.append_frame(
            frame, app_id, batch_id, metadata, started=started, replace_where=replace_where
        )

    def append_frame(
        self,
        frame: DataFrame,
        app_id: str,
        batch_id: int,
        metadata: dict[str, str] | None = None,
        *,
        started: float | None = None,
        replace_where: str | None = None,
    ) -> AppendResult:
        """Append a DataFrame in one idempotent commit, written by the executors (no collect).

        With ``replace_where`` the commit replaces the rows matching that predicate (``"true"``
        replaces the whole table).
        """
        started = time.perf_counter() if started is None else started
        session = frame.sparkSession
        self.ensure(session)
        stamp = _commit_stamp(app_id, batch_id, metadata)
        writer = (
            frame.select(*self.spec.schema.fieldNames())
            .write.format("delta")
            .option("txnAppId", app_id)
            .option("txnVersion", str(batch_id))
            .option("userMetadata", stamp)
        )
        if replace_where is None:
            writer = writer.mode("append")
        elif replace_where == "true":
            writer = writer.mode("overwrite")
        else:
            writer = writer.mode("overwrite").option("replaceWhere", replace_where)
        writer.save(self.location)
        version, rows, ours = self._last_commit(stamp)
        if not ours:  # Delta skipped it: the (app id, batch id) landed meanwhile
            return AppendResult(True, 0, version, time.perf_counter() - started)
        return AppendResult(False, rows, version, time.perf_counter() - started)

    def upsert(
        self,
        frame: DataFrame,
        key: str | Sequence[str],
        app_id: str,
        batch_id: int,
        *,
        delete_flag: str | None = None,
        target_filter: str | None = None,
        update: Mapping[str, Column] | None = None,
    ) -> int:
        """MERGE ``frame`` on ``key`` in one idempotent commit; returns the table version.

        The MERGE source is the DataFrame itself, built by the executors (nothing goes through
        the driver). Its columns are selected and cast to the table's; matched rows are updated,
        new rows inserted. With ``delete_flag`` (a boolean column of ``frame``), matched rows
        flagged true are deleted and flagged rows are never inserted. ``key`` may name several
        columns. ``target_filter`` (SQL on the target's columns, prefixed ``t.``) is added to the
        merge condition so Delta only scans the files that can match. The source is not
        counted: a caller with nothing to merge should not call (an empty source still commits).
        ``update`` replaces "update every column" for matched rows with these assignments (over
        the target ``t`` and the source ``s``), e.g. to add the source's counts to the target's.
        """
        if update is not None and delete_flag is not None:
            raise ValueError("upsert takes update assignments or a delete flag, not both")
        session = frame.sparkSession
        self.ensure(session)
        if self.committed(app_id, batch_id):
            log.warning(
                "%s: merge %s of %s already committed; skipping", self.spec.name, batch_id, app_id
            )
            return self.version()
        columns = conform_columns(frame, self.spec.schema)
        if delete_flag is not None:
            columns.append(F.col(delete_flag).cast("boolean").alias(delete_flag))
        keys = [key] if isinstance(key, str) else list(key)
        condition = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        if target_filter:
            condition = f"({condition}) AND ({target_filter})"
        target = DeltaTable.forPath(session, self.location).alias("t")
        merger = target.merge(frame.select(*columns).alias("s"), condition)
        if update is not None:
            merger = merger.whenMatchedUpdate(set=dict(update)).whenNotMatchedInsertAll()
        elif delete_flag is None:
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
        return self.version()

    def delete(self, spark: SparkSession, condition: str) -> None:
        """Delete the rows matching ``condition`` (SQL on the table's columns). Not keyed by a
        batch: deleting what matches a fixed predicate is idempotent by itself."""
        self.ensure(spark)
        DeltaTable.forPath(spark, self.location).delete(condition)

    def version(self) -> int:
        """The table's latest version (-1 before it exists)."""
        log = self._delta_log()
        return -1 if log is None else int(log.version())

    def _last_commit(self, stamp: str) -> tuple[int, int, bool]:
        """(version, rows written, whether it is the commit stamped ``stamp``)."""
        log = self._delta_log()
        if log is None:
            return -1, 0, False
        last = log.history(1)[0]
        metrics = last.get("operationMetrics") or {}
        return (
            int(last["version"]),
            int(metrics.get("numOutputRows", 0)),
            last.get("userMetadata") == stamp,
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


def append_handler(
    catalog: Catalog,
    spec: TableSpec,
    checkpoint: str,
    stats: BatchWriteStats | None = None,
) -> BatchHandler:
    """A ``foreachBatch`` handler appending each micro-batch to ``spec`` in one idempotent
    commit, written by the executors."""
    stats = stats if stats is not None else BatchWriteStats()
    writer = DeltaWriter(catalog, spec)
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
        # One task per core instead of one per Kafka partition: fewer, larger files per commit.
        parallelism = int(batch_df.sparkSession.conf.get("spark.sql.shuffle.partitions") or 1)
        result = writer.append_frame(batch_df.coalesce(parallelism), app_id[0], batch_id)
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
                "write_ms": round(result.seconds * 1000, 1),
                "version": result.version,
            }
        )

    return write_batch


def _commit_stamp(app_id: str, batch_id: int, metadata: dict[str, str] | None) -> str:
    """The commit's ``userMetadata``: app id, batch id and the caller's metadata, as JSON."""
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


def conform_columns(frame: DataFrame, schema: StructType) -> list[Column]:
    """``frame``'s columns for a table of ``schema``: its fields in order, cast to its types."""
    missing = [name for name in schema.fieldNames() if name not in frame.columns]
    if missing:
        raise ValueError(f"batch is missing columns {missing} of the target table")
    return [F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields]


def conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select the table's columns in order and cast to its exact Arrow types."""
    missing = [name for name in schema.names if name not in data.column_names]
    if missing:
        raise ValueError(f"batch is missing columns {missing} of the target table")
    return data.select(schema.names).cast(schema)


def batch_committed(table: DeltaRsTable, app_id: str, batch_id: int) -> bool:
    """Whether ``table``'s log holds the app transaction ``(app_id, batch_id)`` or a later one."""
    done = table.transaction_version(app_id)
    return done is not None and done >= batch_id


def query_id_from_checkpoint(checkpoint: str, spark: SparkSession | None = None) -> str:
    """The streaming query id Spark stores in ``<checkpoint>/metadata`` (``{"id": "…"}``).

    Read with pyarrow; a checkpoint on a filesystem only Spark's Hadoop layer knows (``dbfs:``,
    ``abfss:`` …) is read through ``spark`` when one is given.
    """
    try:
        fs, path = pafs.FileSystem.from_uri(
            checkpoint if "://" in checkpoint else f"file://{checkpoint}"
        )
        with fs.open_input_stream(f"{path.rstrip('/')}/metadata") as stream:
            first_line = stream.read().decode().splitlines()[0]
    except (pa.ArrowException, OSError):
        if spark is None:
            raise
        row = spark.read.text(f"{checkpoint.rstrip('/')}/metadata").first()
        if row is None:
            raise ValueError(f"checkpoint {checkpoint} has an empty metadata file") from None
        first_line = str(row[0])
    return str(json.loads(first_line)["id"])
