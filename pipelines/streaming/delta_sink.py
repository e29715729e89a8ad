"""Delta sink on delta-rs (the default adapter of the sink port, ``pipelines.streaming.sinks``):
one idempotent commit per micro-batch, from ``foreachBatch``.

Each commit carries a Delta app transaction ``(app id, batch id)``. The app id is the streaming
query's id, read from the checkpoint's ``metadata`` file, so it is stable across restarts of the
same checkpoint and new when the checkpoint is reset. If Spark replays a batch whose commit
already landed (a crash after the Delta commit but before the checkpoint's commit log), the
handler sees ``transaction_version(app id) >= batch id`` and skips it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from pyspark.sql import DataFrame, SparkSession

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
    collect_s: float = 0.0
    write_s: float = 0.0
    last_version: int | None = None
    batches: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AppendResult:
    skipped: bool  # the (app id, batch id) commit already existed: a replay
    rows: int
    version: int
    seconds: float


class DeltaAppender:
    """Idempotent appends to one table: one commit per (app id, batch id), replays skipped.

    Keeps one table handle, refreshed incrementally, instead of re-reading the log each batch.
    """

    def __init__(self, catalog: Catalog, spec: TableSpec) -> None:
        self.catalog = catalog
        self.spec = spec
        self._table: DeltaTable | None = None

    @property
    def table(self) -> DeltaTable:
        if self._table is None:
            self._table = self.catalog.ensure(self.spec)
        else:
            self._table.update_incremental()
        return self._table

    def committed(self, app_id: str, batch_id: int) -> bool:
        return batch_committed(self.table, app_id, batch_id)

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

        ``spark`` is part of the sink port's signature; delta-rs writes without Spark.
        """
        started = time.perf_counter()
        table = self.table
        if self.committed(app_id, batch_id):
            log.warning(
                "%s: batch %s of %s already committed; skipping replay",
                self.spec.name,
                batch_id,
                app_id,
            )
            return AppendResult(True, 0, table.version(), 0.0)
        data = conform(data, self.spec.arrow_schema)
        if data.num_rows:
            write_deltalake(
                table,
                data,
                mode="append",
                partition_by=list(self.spec.partition_by) or None,
                storage_options=self.catalog.storage_options,
                commit_properties=CommitProperties(
                    app_transactions=[Transaction(app_id, batch_id)],
                    custom_metadata={
                        "lakehouse.batch_id": str(batch_id),
                        "lakehouse.app_id": app_id,
                        **(metadata or {}),
                    },
                ),
            )
            table.update_incremental()
        return AppendResult(False, data.num_rows, table.version(), time.perf_counter() - started)

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
        """MERGE ``data`` on ``key`` in one idempotent commit (see ``upsert``)."""
        return upsert(self, data, key, app_id, batch_id, delete_flag=delete_flag)


def upsert(
    appender: DeltaAppender,
    data: pa.Table,
    key: str,
    app_id: str,
    batch_id: int,
    *,
    delete_flag: str | None = None,
) -> int:
    """MERGE ``data`` into the appender's table on ``key`` in one idempotent commit.

    Matched rows are updated, new rows inserted; with ``delete_flag`` (a boolean column of
    ``data``), matched rows flagged true are deleted instead. Returns the table version.
    """
    table = appender.table
    if appender.committed(app_id, batch_id):
        log.warning(
            "%s: merge %s of %s already committed; skipping", appender.spec.name, batch_id, app_id
        )
        return int(table.version())
    columns = [c for c in data.column_names if c != delete_flag]
    source = conform(data.select(columns), appender.spec.arrow_schema)
    if delete_flag is not None:
        source = source.append_column(delete_flag, data.column(delete_flag))
    if source.num_rows == 0:
        return int(table.version())
    except_cols = [delete_flag] if delete_flag else None
    keep = f"NOT s.{delete_flag}" if delete_flag else None
    merger = table.merge(
        source=source,
        predicate=f"t.{key} = s.{key}",
        source_alias="s",
        target_alias="t",
        commit_properties=CommitProperties(
            app_transactions=[Transaction(app_id, batch_id)],
            custom_metadata={"lakehouse.batch_id": str(batch_id), "lakehouse.app_id": app_id},
        ),
    )
    if delete_flag is not None:
        merger = merger.when_matched_delete(predicate=f"s.{delete_flag}")
    merger.when_matched_update_all(
        predicate=keep, except_cols=except_cols
    ).when_not_matched_insert_all(predicate=keep, except_cols=except_cols).execute()
    table.update_incremental()
    return int(table.version())


def delta_rs_append(
    catalog: Catalog,
    spec: TableSpec,
    checkpoint: str,
    stats: BatchWriteStats | None = None,
) -> BatchHandler:
    """A ``foreachBatch`` handler appending each micro-batch to ``spec`` in one idempotent commit.

    Args:
        catalog: resolves the table location and storage options.
        spec: the target table; the batch is conformed to its schema.
        checkpoint: the query's checkpoint folder (its ``metadata`` file names the query id).
        stats: filled in as batches are written or skipped.
    """
    stats = stats if stats is not None else BatchWriteStats()
    appender = DeltaAppender(catalog, spec)
    app_id: list[str] = []  # resolved on the first batch, once Spark has written the metadata

    def write_batch(batch_df: DataFrame, batch_id: int) -> None:
        if not app_id:
            app_id.append(f"{spec.name}:{query_id_from_checkpoint(checkpoint)}")
        if appender.committed(app_id[0], batch_id):
            stats.batches_skipped += 1
            log.warning(
                "%s: batch %s already committed (app %s); skipping replay",
                spec.name,
                batch_id,
                app_id[0],
            )
            return
        started = time.perf_counter()
        data = pa.table(batch_df.toArrow())
        collected = time.perf_counter()
        result = appender.append(data, app_id[0], batch_id)
        stats.batches_written += 1
        stats.rows_written += result.rows
        stats.collect_s += collected - started
        stats.write_s += result.seconds
        stats.last_version = result.version
        stats.batches.append(
            {
                "batch_id": batch_id,
                "rows": result.rows,
                "collect_ms": round((collected - started) * 1000, 1),
                "write_ms": round(result.seconds * 1000, 1),
                "version": result.version,
            }
        )

    return write_batch


def collect_arrow(frame: DataFrame, spec: TableSpec) -> pa.Table:
    """A (small, per-batch) DataFrame collected to the driver as Arrow, in ``spec``'s schema."""
    return conform(pa.table(frame.toArrow()), spec.arrow_schema)


def conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select the table's columns in order and cast to its exact Arrow types."""
    missing = [name for name in schema.names if name not in data.column_names]
    if missing:
        raise ValueError(f"batch is missing columns {missing} of the target table")
    return data.select(schema.names).cast(schema)


def batch_committed(table: DeltaTable, app_id: str, batch_id: int) -> bool:
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
