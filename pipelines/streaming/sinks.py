"""The Delta sink port: idempotent appends and MERGE upserts, the adapter chosen by the catalog's
engine (``engines.delta``).

* ``delta-rs`` (default): ``DeltaAppender`` / ``delta_rs_append``; batches are collected to the
  driver as Arrow and committed by delta-rs.
* ``delta-spark``: ``DeltaSparkWriter`` / ``delta_spark_append``; Spark writes through
  ``format("delta")`` and ``DeltaTable.merge``.

Every write carries the Delta app transaction ``(app id, batch id)``: a replayed batch whose commit
already landed is skipped, by both adapters. Jobs use only this module:

* ``ensure_table(spark, catalog, spec)`` creates a table (schema, partitioning, change data feed);
* ``table_writer(catalog, spec)`` returns a ``TableWriter`` for Arrow batches the job built;
* ``append_handler(catalog, spec, checkpoint, stats)`` is a ``foreachBatch`` handler appending
  each micro-batch as it is (bronze).
"""

from __future__ import annotations

from typing import Protocol

import pyarrow as pa
from pyspark.sql import SparkSession

from pipelines.lake.catalog import Catalog
from pipelines.lake.tables import TableSpec
from pipelines.streaming.delta_sink import (
    AppendResult,
    BatchHandler,
    BatchWriteStats,
    DeltaAppender,
    delta_rs_append,
)
from pipelines.streaming.delta_spark import (
    DeltaSparkWriter,
    delta_spark_append,
    ensure_delta_spark_table,
)


class TableWriter(Protocol):
    """Idempotent writes of Arrow batches to one table, keyed by ``(app id, batch id)``.

    ``spark`` is the micro-batch's session (``batch_df.sparkSession``): the delta-spark adapter
    writes through it (and sets MERGE's transaction confs on it only); delta-rs ignores it.
    """

    spec: TableSpec

    def committed(self, app_id: str, batch_id: int) -> bool:
        """Whether the table already holds the commit of ``(app_id, batch_id)`` (or a later one
        of the same app id)."""
        ...

    def append(
        self,
        data: pa.Table,
        app_id: str,
        batch_id: int,
        metadata: dict[str, str] | None = None,
        *,
        spark: SparkSession | None = None,
    ) -> AppendResult:
        """Append ``data`` (conformed to the table's schema) in one commit; a replay is skipped
        (``AppendResult.skipped``) and an empty batch commits nothing."""
        ...

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
        """MERGE ``data`` on ``key`` in one commit (update matched, insert new; with
        ``delete_flag``, delete matched rows flagged true); a replay is skipped. Returns the
        table version."""
        ...


def table_writer(catalog: Catalog, spec: TableSpec) -> TableWriter:
    """The writer of ``spec`` for the catalog's Delta engine."""
    if catalog.engine == "delta-spark":
        return DeltaSparkWriter(catalog, spec)
    return DeltaAppender(catalog, spec)


def ensure_table(spark: SparkSession, catalog: Catalog, spec: TableSpec) -> None:
    """Create ``spec``'s table if it does not exist: its schema, partitioning and properties
    (``delta.enableChangeDataFeed=true``)."""
    if catalog.engine == "delta-spark":
        ensure_delta_spark_table(spark, catalog, spec)
    else:
        catalog.ensure(spec)


def append_handler(
    catalog: Catalog,
    spec: TableSpec,
    checkpoint: str,
    stats: BatchWriteStats | None = None,
) -> BatchHandler:
    """A ``foreachBatch`` handler appending each micro-batch to ``spec`` in one idempotent
    commit; the app id is ``<table>:<query id from the checkpoint's metadata>``."""
    if catalog.engine == "delta-spark":
        return delta_spark_append(catalog, spec, checkpoint, stats)
    return delta_rs_append(catalog, spec, checkpoint, stats)
