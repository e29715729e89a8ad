"""delta-rs, kept only as a reader outside Spark, reads what delta-spark writes.

Every table kind the jobs write (partitioned appends, MERGEs with deletes, overwrites by
predicate, change data feed on) read back by ``Catalog.read_arrow`` / ``read_pandas`` and
compared with Spark's read; deletion vectors, which delta-rs 1.6 cannot apply, are kept off.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable as DeltaRsTable
from deltalake.exceptions import DeltaProtocolError
from pyspark.sql import SparkSession

from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.lake.catalog import Catalog
from pipelines.lake.snapshots import read_pandas
from pipelines.lake.tables import LAKE_SNAPSHOTS
from pipelines.streaming.sinks import table_writer
from pipelines.tables import LAKE_TABLES
from tests.conftest import make_settings
from tests.streaming.test_ports import T0, bronze_rows, snapshot_rows

pytestmark = pytest.mark.streaming


def merge_a_b_c_then_delete_b(spark: SparkSession, catalog: Catalog) -> None:
    """Two MERGEs into ``lake.snapshots``: insert a, b, c; then delete b."""
    writer = table_writer(catalog, LAKE_SNAPSHOTS)
    for batch_id, rows in enumerate(
        [snapshot_rows("a", "b", "c", delete=False), snapshot_rows("b", delete=True)]
    ):
        writer.upsert(spark.createDataFrame(rows), "name", "m", batch_id, delete_flag="_delete")


def test_delta_rs_reads_appends_merges_and_overwrites_written_by_spark(
    spark: SparkSession, tmp_path: Path
) -> None:
    catalog = Catalog.for_settings(make_settings(tmp_path / "lake"), LAKE_TABLES)
    bronze = table_writer(catalog, BRONZE_EVENTS_RAW)
    bronze.append(bronze_rows(0, 40), "app", 0, spark=spark)
    merge_a_b_c_then_delete_b(spark, catalog)

    assert catalog.read_arrow(BRONZE_EVENTS_RAW.name).num_rows == 40
    assert catalog.read_arrow(BRONZE_EVENTS_RAW.name).sort_by("offset").column(
        "offset"
    ).to_pylist() == list(range(40))
    spark_names = {r.name for r in catalog.read(spark, LAKE_SNAPSHOTS.name).collect()}
    assert spark_names == {"a", "c"}
    assert set(read_pandas(catalog, LAKE_SNAPSHOTS.name)["name"]) == spark_names
    assert catalog.info(BRONZE_EVENTS_RAW.name).rows == 40

    # Replace one day's partition (the rows written must all match the predicate).
    ten = bronze_rows(0, 10)
    first_day = ten.filter(pc.equal(ten.column("ingest_date"), pa.scalar(T0.date())))
    bronze.append(first_day, "app", 1, spark=spark, replace_where="ingest_date = '2026-11-26'")
    spark_count = catalog.read(spark, BRONZE_EVENTS_RAW.name).count()
    assert catalog.read_arrow(BRONZE_EVENTS_RAW.name).num_rows == spark_count == 20 + 5


def test_lake_tables_keep_deletion_vectors_off_and_the_reader_refuses_them_loudly(
    spark: SparkSession, tmp_path: Path
) -> None:
    """delta-rs 1.6 cannot apply deletion vectors: every lake table is created without them
    (even where the platform turns them on by default), and a table that has them is refused,
    never read with its deleted rows."""
    catalog = Catalog.for_settings(make_settings(tmp_path / "lake"), LAKE_TABLES)
    spark.conf.set("spark.databricks.delta.properties.defaults.enableDeletionVectors", "true")
    try:
        merge_a_b_c_then_delete_b(spark, catalog)
    finally:
        spark.conf.unset("spark.databricks.delta.properties.defaults.enableDeletionVectors")
    detail = spark.sql(f"DESCRIBE DETAIL {LAKE_SNAPSHOTS.name}").first()
    assert detail is not None
    assert detail["properties"]["delta.enableDeletionVectors"] == "false"
    assert set(read_pandas(catalog, LAKE_SNAPSHOTS.name)["name"]) == {"a", "c"}

    location = str(tmp_path / "dv")
    spark.range(100).selectExpr("id", "id % 7 AS bucket").coalesce(1).write.format("delta").option(
        "delta.enableDeletionVectors", "true"
    ).save(location)
    spark.sql(f"DELETE FROM delta.`{location}` WHERE bucket = 3")
    history = spark.sql(f"DESCRIBE HISTORY delta.`{location}`").collect()
    assert history[0]["operationMetrics"]["numDeletionVectorsAdded"] == "1"  # not a rewrite
    with pytest.raises(DeltaProtocolError, match="deletionVectors"):
        DeltaRsTable(location).to_pyarrow_table()
