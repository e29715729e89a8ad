"""delta-rs, kept only as a reader outside Spark, reads what delta-spark writes.

Every table kind the jobs write (partitioned appends, MERGEs with deletes, overwrites by
predicate, change data feed on) read back by ``Catalog.read_arrow`` / ``read_pandas`` and
compared with Spark's read; deletion vectors, which delta-rs 1.6 cannot apply, are kept off.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable as DeltaRsTable
from deltalake.exceptions import DeltaProtocolError
from pyspark.sql import SparkSession

from pipelines.lake.catalog import Catalog
from pipelines.lake.snapshots import read_pandas
from pipelines.lake.tables import BRONZE_EVENTS_RAW, LAKE_SNAPSHOTS
from pipelines.streaming.sinks import table_writer
from tests.conftest import make_settings

pytestmark = pytest.mark.streaming

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def snapshot_rows(names: list[str], note: str, delete: bool | None = None) -> pa.Table:
    data = pa.Table.from_pylist(
        [
            {"name": n, "table": "silver.events", "version": i, "created_at": T0, "note": note}
            for i, n in enumerate(names)
        ],
        schema=LAKE_SNAPSHOTS.arrow_schema,
    )
    if delete is not None:
        data = data.append_column("_delete", pa.array([delete] * len(names)))
    return data


def bronze_rows(n: int) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "key": f"u{i}",
                "value": f'{{"n": {i}}}',
                "topic": "t",
                "partition": i % 3,
                "offset": i,
                "kafka_timestamp": T0,
                "ingest_ts": T0 + timedelta(days=i % 2),
                "ingest_date": (T0 + timedelta(days=i % 2)).date(),
            }
            for i in range(n)
        ],
        schema=BRONZE_EVENTS_RAW.arrow_schema,
    )


def spark_rows(spark: SparkSession, catalog: Catalog, name: str) -> list[tuple[Any, ...]]:
    return sorted(tuple(r) for r in catalog.read(spark, name).collect())


def arrow_rows(catalog: Catalog, name: str) -> list[tuple[Any, ...]]:
    frame = catalog.read_arrow(name).to_pandas()
    return sorted(
        tuple(None if v is None else v for v in row)
        for row in frame.astype(object).where(frame.notna(), None).itertuples(index=False)
    )


def test_delta_rs_reads_appends_merges_and_overwrites_written_by_spark(
    spark: SparkSession, tmp_path: Path
) -> None:
    catalog = Catalog.for_settings(make_settings(tmp_path / "lake"))
    bronze = table_writer(catalog, BRONZE_EVENTS_RAW)
    bronze.append(bronze_rows(40), "app", 0, spark=spark)
    snapshots = table_writer(catalog, LAKE_SNAPSHOTS)
    snapshots.upsert(
        snapshot_rows(["a", "b", "c"], "first", False),
        "name",
        "m",
        0,
        spark=spark,
        delete_flag="_delete",
    )
    snapshots.upsert(
        snapshot_rows(["b"], "gone", True), "name", "m", 1, spark=spark, delete_flag="_delete"
    )

    assert len(arrow_rows(catalog, BRONZE_EVENTS_RAW.name)) == 40
    assert catalog.read_arrow(BRONZE_EVENTS_RAW.name).sort_by("offset").column(
        "offset"
    ).to_pylist() == list(range(40))
    spark_names = {r[0] for r in spark_rows(spark, catalog, LAKE_SNAPSHOTS.name)}
    assert spark_names == {"a", "c"}
    assert set(read_pandas(catalog, LAKE_SNAPSHOTS.name)["name"]) == spark_names
    assert catalog.info(BRONZE_EVENTS_RAW.name).rows == 40

    # Replace one day's partition (the rows written must all match the predicate).
    ten = bronze_rows(10)
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
    catalog = Catalog.for_settings(make_settings(tmp_path / "lake"))
    spark.conf.set("spark.databricks.delta.properties.defaults.enableDeletionVectors", "true")
    try:
        snapshots = table_writer(catalog, LAKE_SNAPSHOTS)
        snapshots.upsert(
            snapshot_rows(["a", "b", "c"], "x", False),
            "name",
            "m",
            0,
            spark=spark,
            delete_flag="_delete",
        )
        snapshots.upsert(
            snapshot_rows(["b"], "x", True), "name", "m", 1, spark=spark, delete_flag="_delete"
        )
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
