"""Named snapshots, time-travel reads and maintenance that spares pinned versions."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from pipelines.lake.catalog import Catalog
from pipelines.lake.maintenance import MaintenanceError, maintain
from pipelines.lake.snapshots import (
    SnapshotError,
    Snapshots,
    read_pandas,
    read_table,
    resolve_version,
    snapshots_location,
)
from pipelines.lake.tables import BRONZE_EVENTS_RAW, SILVER_EVENTS, SILVER_QUARANTINE
from pipelines.streaming.delta_sink import DeltaAppender, conform
from tests.conftest import make_settings

pytestmark = pytest.mark.streaming

BRONZE = BRONZE_EVENTS_RAW.name


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(make_settings(tmp_path / "lake").storage)


def raw_events(batch: int, n: int = 3) -> pa.Table:
    """``n`` bronze rows for batch ``batch``; offsets are unique across batches."""
    offsets = range(batch * 100, batch * 100 + n)
    at = datetime(2026, 11, 26, 12, tzinfo=UTC)
    return conform(
        pa.table(
            {
                "key": [f"user-{o % 7}" for o in offsets],
                "value": [f'{{"n": {o}}}' for o in offsets],
                "topic": ["user_clicks"] * n,
                "partition": [0] * n,
                "offset": list(offsets),
                "kafka_timestamp": [at + timedelta(seconds=o) for o in offsets],
                "ingest_ts": [at + timedelta(seconds=o, milliseconds=5) for o in offsets],
                "ingest_date": [date(2026, 11, 26)] * n,
            }
        ),
        BRONZE_EVENTS_RAW.arrow_schema,
    )


def append(catalog: Catalog, batch: int, n: int = 3) -> int:
    """Append batch ``batch`` to bronze.events_raw in one commit; returns the new version."""
    result = DeltaAppender(catalog, BRONZE_EVENTS_RAW).append(
        raw_events(batch, n), app_id="test-snapshots", batch_id=batch
    )
    assert not result.skipped
    return result.version


def expected(spark: SparkSession, *batches: int) -> DataFrame:
    rows = pa.concat_tables([raw_events(b) for b in batches]).to_pylist()
    return spark.createDataFrame(rows, BRONZE_EVENTS_RAW.schema)


def commit_time(catalog: Catalog, version: int) -> datetime:
    (commit,) = [c for c in catalog.history(BRONZE) if c["version"] == version]
    return datetime.fromtimestamp(commit["timestamp"] / 1000, tz=UTC)


def snapshots_version(catalog: Catalog) -> int:
    return DeltaTable(snapshots_location(catalog)).version()


def test_snapshot_and_timestamp_reads_equal_time_travel(
    spark: SparkSession, catalog: Catalog
) -> None:
    for batch in range(3):
        assert append(catalog, batch) == batch + 1  # version 0 is the empty table
        time.sleep(0.02)  # distinct commit timestamps (milliseconds)
    Snapshots(catalog).create("train-2026-11", [BRONZE], note="first training set")
    append(catalog, 3)

    pinned = read_table(spark, catalog, BRONZE, snapshot="train-2026-11")
    assertDataFrameEqual(pinned, read_table(spark, catalog, BRONZE, version=3))
    assertDataFrameEqual(pinned, expected(spark, 0, 1, 2), checkRowOrder=False)
    assertDataFrameEqual(
        read_table(spark, catalog, BRONZE), expected(spark, 0, 1, 2, 3), checkRowOrder=False
    )

    v2, v3 = commit_time(catalog, 2), commit_time(catalog, 3)
    between = v2 + (v3 - v2) / 2
    assertDataFrameEqual(
        read_table(spark, catalog, BRONZE, timestamp=between),
        read_table(spark, catalog, BRONZE, version=2),
    )
    assertDataFrameEqual(
        read_table(spark, catalog, BRONZE, timestamp=between.isoformat()),
        expected(spark, 0, 1),
        checkRowOrder=False,
    )
    assert resolve_version(catalog, BRONZE, timestamp=v2) == 2
    assert resolve_version(catalog, BRONZE, timestamp=v3 - timedelta(microseconds=1)) == 2
    assert resolve_version(catalog, BRONZE, timestamp=v3.replace(tzinfo=None)) == 3
    assert resolve_version(catalog, BRONZE, timestamp=datetime.now(tz=UTC)) == 4
    assert resolve_version(catalog, BRONZE) == 4

    with pytest.raises(ValueError, match=r"no version at or before .*earliest available commit"):
        resolve_version(catalog, BRONZE, timestamp=commit_time(catalog, 0) - timedelta(hours=1))
    with pytest.raises(ValueError, match="is not ISO 8601"):
        resolve_version(catalog, BRONZE, timestamp="yesterday")
    with pytest.raises(ValueError, match="not version and snapshot"):
        read_table(spark, catalog, BRONZE, version=1, snapshot="train-2026-11")
    with pytest.raises(ValueError, match=r"has no version 9 \(versions 0\.\.4\)"):
        resolve_version(catalog, BRONZE, version=9)
    with pytest.raises(SnapshotError, match=r"does not pin table silver.events"):
        resolve_version(catalog, SILVER_EVENTS.name, snapshot="train-2026-11")


def test_create_get_list_delete_and_pins(catalog: Catalog) -> None:
    snapshots = Snapshots(catalog)
    assert snapshots.list() == []
    assert snapshots.pinned_versions() == {}
    append(catalog, 0)
    catalog.ensure(SILVER_QUARANTINE)  # exists, empty, version 0
    tables = [BRONZE, SILVER_QUARANTINE.name]

    first = snapshots.create("demo", tables, note="for the demo")
    assert first.versions == {BRONZE: 1, SILVER_QUARANTINE.name: 0}
    assert snapshots.get("demo") == first
    created = snapshots_version(catalog)
    append(catalog, 1)
    second = snapshots.create("train-2026-10", tables)
    assert snapshots_version(catalog) == created + 1  # one commit for both tables
    assert second.versions == {BRONZE: 2, SILVER_QUARANTINE.name: 0}
    assert [s.name for s in snapshots.list()] == ["train-2026-10", "demo"]
    assert snapshots.pinned_versions() == {BRONZE: {1, 2}, SILVER_QUARANTINE.name: {0}}

    with pytest.raises(SnapshotError, match=r"'demo' already exists.*\.delete\('demo'\)"):
        snapshots.create("demo", [BRONZE])
    with pytest.raises(SnapshotError, match=r"unknown table 'gold.nope' \(known: .*bronze"):
        snapshots.create("other", [BRONZE, "gold.nope"])
    with pytest.raises(SnapshotError, match=r"silver\.events has not been written yet"):
        snapshots.create("other", [SILVER_EVENTS.name])
    with pytest.raises(SnapshotError, match="not allowed"):
        snapshots.create("bad name'", [BRONZE])

    checked: list[tuple[str, int]] = []

    def no_empty_tables(table: str, version: int) -> list[str]:
        checked.append((table, version))
        rows = len(read_pandas(catalog, table, version=version, columns=["ingest_date"]))
        return [] if rows else [f"{rows} rows"]

    with pytest.raises(SnapshotError, match=r"validation failed: silver.quarantine@v0: 0 rows"):
        snapshots.create("train-2026-11", tables, validate=no_empty_tables)
    assert checked == [(BRONZE, 2), (SILVER_QUARANTINE.name, 0)]
    assert snapshots_version(catalog) == created + 1  # nothing recorded
    assert [s.name for s in snapshots.list()] == ["train-2026-10", "demo"]
    passed = snapshots.create("train-2026-11", [BRONZE], validate=no_empty_tables)
    assert passed.versions == {BRONZE: 2}

    snapshots.delete("demo")
    assert snapshots_version(catalog) == created + 3  # the passed create, then the delete
    assert [s.name for s in snapshots.list()] == ["train-2026-11", "train-2026-10"]
    assert snapshots.pinned_versions() == {BRONZE: {2}, SILVER_QUARANTINE.name: {0}}
    with pytest.raises(SnapshotError, match=r"no snapshot 'demo' \(known: train-2026-10, train"):
        snapshots.get("demo")
    with pytest.raises(SnapshotError, match="no snapshot 'demo'"):
        snapshots.delete("demo")


def test_maintenance_keeps_pinned_versions_and_vacuums_the_rest(
    spark: SparkSession, catalog: Catalog
) -> None:
    append(catalog, 0)
    append(catalog, 1)
    Snapshots(catalog).create("pinned", [BRONZE])  # version 2
    append(catalog, 2)
    append(catalog, 3)
    pinned_files = set(catalog.delta_table(BRONZE, 2).file_uris())
    unpinned_only = set(catalog.delta_table(BRONZE, 4).file_uris()) - pinned_files
    assert len(pinned_files) == 2
    assert len(unpinned_only) == 2
    before = read_table(spark, catalog, BRONZE, snapshot="pinned").collect()

    dry = maintain(catalog, [BRONZE], retention_hours=0, enforce_retention=False, dry_run=True)
    assert dry.table(BRONZE)["compaction"] is None
    assert dry.table(BRONZE)["vacuumed"] == 0  # nothing was removed from the log yet
    assert catalog.delta_table(BRONZE).version() == 4

    report = maintain(catalog, [BRONZE], retention_hours=0, enforce_retention=False)
    entry = report.table(BRONZE)
    assert entry["compaction"]["files_removed"] == 4
    assert entry["compaction"]["files_added"] == 1
    assert entry["pinned_versions"] == [2]
    assert entry["protected_files"] == 2
    root = catalog.location(BRONZE)
    assert {f"{root}/{f}" for f in entry["vacuumed_files"]} == unpinned_only
    assert entry["vacuumed"] == 2
    assert entry["bytes_freed"] > 0
    assert entry["version_before"] == 4
    assert entry["version_after"] > 5  # OPTIMIZE, then VACUUM START/END

    assert all(Path(f).exists() for f in pinned_files)
    assert not any(Path(f).exists() for f in unpinned_only)
    pinned = read_table(spark, catalog, BRONZE, snapshot="pinned")
    assertDataFrameEqual(pinned, before)
    assertDataFrameEqual(pinned, expected(spark, 0, 1), checkRowOrder=False)
    with pytest.raises(AnalysisException, match="PATH_NOT_FOUND"):
        read_table(spark, catalog, BRONZE, version=3).collect()
    current = read_table(spark, catalog, BRONZE)
    assertDataFrameEqual(current, expected(spark, 0, 1, 2, 3), checkRowOrder=False)
    assert len(catalog.delta_table(BRONZE).file_uris()) == 1

    # The pins are what saved those files: without keep_versions, VACUUM would take them too
    # (it also re-lists the tombstones of files already deleted).
    unprotected = DeltaTable(root).vacuum(
        retention_hours=0, dry_run=True, enforce_retention_duration=False
    )
    assert {f"{root}/{f}" for f in unprotected} == pinned_files | unpinned_only

    again = maintain(catalog, [BRONZE], retention_hours=0, enforce_retention=False).table(BRONZE)
    assert again["compaction"]["files_removed"] == 0
    assert again["vacuumed"] == 0
    assert again["version_after"] == entry["version_after"]  # nothing to do, no commits


def test_maintenance_refuses_to_vacuum_pinned_files_if_keep_versions_is_ignored(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    append(catalog, 0)
    Snapshots(catalog).create("pinned", [BRONZE])
    append(catalog, 1)
    pinned_files = catalog.delta_table(BRONZE, 1).file_uris()
    vacuum = DeltaTable.vacuum

    def ignoring_keep_versions(self: DeltaTable, *args: Any, **kwargs: Any) -> list[str]:
        kwargs.pop("keep_versions", None)
        return vacuum(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "vacuum", ignoring_keep_versions)
    with pytest.raises(
        MaintenanceError, match=r"would delete 1 of the files snapshot versions \[1\]"
    ):
        maintain(catalog, [BRONZE], retention_hours=0, enforce_retention=False)
    assert all(Path(f).exists() for f in pinned_files)
    assert len(catalog.delta_table(BRONZE).file_uris()) == 1  # compacted, nothing vacuumed


def test_read_pandas_matches_the_version_and_refuses_large_reads(catalog: Catalog) -> None:
    append(catalog, 0)
    append(catalog, 1)
    Snapshots(catalog).create("small", [BRONZE])
    append(catalog, 2)

    def frame(table: pa.Table) -> pd.DataFrame:
        return table.to_pandas().sort_values("offset").reset_index(drop=True)

    pinned = read_pandas(catalog, BRONZE, snapshot="small")
    truth = pa.concat_tables([raw_events(0), raw_events(1)])
    pd.testing.assert_frame_equal(pinned.sort_values("offset").reset_index(drop=True), frame(truth))
    pd.testing.assert_frame_equal(read_pandas(catalog, BRONZE, version=2), pinned)
    latest = read_pandas(catalog, BRONZE, columns=["offset", "value"], max_rows=9)
    pd.testing.assert_frame_equal(
        latest.sort_values("offset").reset_index(drop=True),
        frame(pa.concat_tables([raw_events(b) for b in range(3)]).select(["offset", "value"])),
    )

    with pytest.raises(ValueError, match=r"bronze.events_raw@v3 has 9 rows, more than max_rows=8"):
        read_pandas(catalog, BRONZE, max_rows=8)
    assert len(read_pandas(catalog, BRONZE, snapshot="small", max_rows=6)) == 6
    with pytest.raises(ValueError, match=r"no columns \['nope'\]"):
        read_pandas(catalog, BRONZE, columns=["offset", "nope"])
