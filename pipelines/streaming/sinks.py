"""The Delta sink port: idempotent appends and MERGE upserts through delta-spark.

Every write carries the Delta app transaction ``(app id, batch id)``: a replayed batch whose commit
already landed is skipped. Jobs use only this module:

* ``ensure_table(spark, catalog, spec)`` creates a table (schema, partitioning, change data feed)
  and registers it in the Spark catalog under its logical name;
* ``table_writer(catalog, spec)`` returns the ``DeltaWriter`` of a table: ``append_frame``
  writes a DataFrame from the executors (a job's batch data never goes through the driver);
  ``append`` takes an Arrow table, for the few rows a job builds on the driver itself (an
  accounting row, a suite result);
* ``append_handler(catalog, spec, checkpoint, stats)`` is a ``foreachBatch`` handler appending
  each micro-batch as it is (bronze).
"""

from __future__ import annotations

from pipelines.lake.catalog import Catalog
from pipelines.lake.tables import TableSpec
from pipelines.streaming.delta import (
    AppendResult,
    BatchHandler,
    BatchWriteStats,
    DeltaWriter,
    append_handler,
    ensure_table,
)

__all__ = [
    "AppendResult",
    "BatchHandler",
    "BatchWriteStats",
    "DeltaWriter",
    "append_handler",
    "ensure_table",
    "table_writer",
]


def table_writer(catalog: Catalog, spec: TableSpec) -> DeltaWriter:
    """The writer of ``spec``'s table."""
    return DeltaWriter(catalog, spec)
