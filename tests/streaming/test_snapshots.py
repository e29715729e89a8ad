"""Named snapshots, time-travel reads and maintenance that spares pinned versions."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pytest
from delta.tables import DeltaTable as SparkDeltaTable
from deltalake import DeltaTable
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.lake.catalog import Catalog
from pipelines.lake.maintenance import (
    RETENTION_CHECK_CONF,
    RETENTION_WINDOW_IGNORE_CONF,
    MaintenanceError,
    maintain,
    vacuum_hours,
)
from pipelines.lake.snapshots import (
    SnapshotError,
    Snapshots,
    read_pandas,
    read_table,
    resolve_version,
    snapshots_location,
)
from pipelines.silver.tables import SILVER_EVENTS, SILVER_QUARANTINE
from pipelines.streaming.delta import conform
from pipelines.streaming.sinks import ensure_table, table_writer
from pipelines.tables import LAKE_TABLES
from tests.conftest import make_settings

pytestmark = pytest.mark.streaming

BRONZE = BRONZE_EVENTS_RAW.name


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(make_settings(tmp_path / "lake").storage, LAKE_TABLES)


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


def append(spark: SparkSession, catalog: Catalog, batch: int, n: int = 3) -> int:
    """Append batch ``batch`` to bronze.events_raw in one commit; returns the new version."""
    result = table_writer(catalog, BRONZE_EVENTS_RAW).append(
        raw_events(batch, n), app_id="test-snapshots", batch_id=batch, spark=spark
    )
    assert not result.skipped
    assert result.rows == n
    return result.version


def compact(spark: SparkSession, catalog: Catalog) -> None:
    """OPTIMIZE bronze.events_raw (one commit removing its small files)."""
    SparkDeltaTable.forPath(spark, catalog.location(BRONZE)).optimize().executeCompaction()


def expected(spark: SparkSession, *batches: int) -> DataFrame:
    rows = pa.concat_tables([raw_events(b) for b in batches]).to_pylist()
    return spark.createDataFrame(rows, BRONZE_EVENTS_RAW.schema)


def commit_time(catalog: Catalog, version: int) -> datetime:
    (commit,) = [c for c in catalog.history(BRONZE) if c["version"] == version]
    return datetime.fromtimestamp(commit["timestamp"] / 1000, tz=UTC)


def snapshots_version(catalog: Catalog) -> int:
    return DeltaTable(snapshots_location(catalog)).version()


def files(catalog: Catalog, version: int) -> set[Path]:
    """The data files bronze.events_raw@``version`` reads."""
    return {Path(unquote(uri)) for uri in catalog.delta_table(BRONZE, version).file_uris()}


def relative(catalog: Catalog, paths: Iterable[Path]) -> list[str]:
    root = Path(catalog.location(BRONZE))
    return sorted(str(p.relative_to(root)) for p in paths)


def backdate(spark: SparkSession, catalog: Catalog, versions: Iterable[int], hours: float) -> None:
    """Move bronze commits ``versions`` ``hours`` into the past, as if they had been made then.

    Shifts the commit, add and remove timestamps in the log, and the modification times of the
    commit files and of the data files they add; drops the commits' checksums (the log and
    Hadoop's) and delta-spark's cached snapshots, so that both engines read the rewritten log.
    """
    root = Path(catalog.location(BRONZE))
    log = root / "_delta_log"
    shift_ms = round(hours * 3_600_000)

    def shift_mtime(path: Path) -> None:
        mtime = path.stat().st_mtime - hours * 3600
        os.utime(path, (mtime, mtime))

    for version in versions:
        commit = log / f"{version:020d}.json"
        actions = [json.loads(line) for line in commit.read_text().splitlines() if line]
        for action in actions:
            if "commitInfo" in action:
                action["commitInfo"]["timestamp"] -= shift_ms
            if "add" in action:
                action["add"]["modificationTime"] -= shift_ms
                shift_mtime(root / unquote(action["add"]["path"]))
            if "remove" in action and "deletionTimestamp" in action["remove"]:
                action["remove"]["deletionTimestamp"] -= shift_ms
        commit.write_text("".join(json.dumps(action) + "\n" for action in actions))
        shift_mtime(commit)
        for checksum in (f".{commit.name}.crc", f"{version:020d}.crc", f".{version:020d}.crc.crc"):
            (log / checksum).unlink(missing_ok=True)
    spark._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()


def test_snapshot_and_timestamp_reads_equal_time_travel(
    spark: SparkSession, catalog: Catalog
) -> None:
    for batch in range(3):
        assert append(spark, catalog, batch) == batch + 1  # version 0 is the empty table
        time.sleep(0.02)  # distinct commit timestamps (milliseconds)
    Snapshots(catalog).create("train-2026-11", [BRONZE], note="first training set", spark=spark)
    append(spark, catalog, 3)

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


def test_create_get_list_delete_and_pins(spark: SparkSession, catalog: Catalog) -> None:
    snapshots = Snapshots(catalog)
    assert snapshots.list() == []
    assert snapshots.pinned_versions() == {}
    append(spark, catalog, 0)
    ensure_table(spark, catalog, SILVER_QUARANTINE)  # exists, empty, version 0
    tables = [BRONZE, SILVER_QUARANTINE.name]

    first = snapshots.create("demo", tables, note="for the demo", spark=spark)
    assert first.versions == {BRONZE: 1, SILVER_QUARANTINE.name: 0}
    assert snapshots.get("demo") == first
    created = snapshots_version(catalog)
    append(spark, catalog, 1)
    second = snapshots.create("train-2026-10", tables, spark=spark)
    assert snapshots_version(catalog) == created + 1  # one commit for both tables
    assert second.versions == {BRONZE: 2, SILVER_QUARANTINE.name: 0}
    assert [s.name for s in snapshots.list()] == ["train-2026-10", "demo"]
    assert snapshots.pinned_versions() == {BRONZE: {1, 2}, SILVER_QUARANTINE.name: {0}}

    with pytest.raises(SnapshotError, match=r"'demo' already exists.*\.delete\('demo'\)"):
        snapshots.create("demo", [BRONZE], spark=spark)
    with pytest.raises(SnapshotError, match=r"unknown table 'gold.nope' \(known: .*bronze"):
        snapshots.create("other", [BRONZE, "gold.nope"], spark=spark)
    with pytest.raises(SnapshotError, match=r"silver\.events has not been written yet"):
        snapshots.create("other", [SILVER_EVENTS.name], spark=spark)
    with pytest.raises(SnapshotError, match="not allowed"):
        snapshots.create("bad name'", [BRONZE], spark=spark)

    checked: list[tuple[str, int]] = []

    def no_empty_tables(table: str, version: int) -> list[str]:
        checked.append((table, version))
        rows = len(read_pandas(catalog, table, version=version, columns=["ingest_date"]))
        return [] if rows else [f"{rows} rows"]

    with pytest.raises(SnapshotError, match=r"validation failed: silver.quarantine@v0: 0 rows"):
        snapshots.create("train-2026-11", tables, validate=no_empty_tables, spark=spark)
    assert checked == [(BRONZE, 2), (SILVER_QUARANTINE.name, 0)]
    assert snapshots_version(catalog) == created + 1  # nothing recorded
    assert [s.name for s in snapshots.list()] == ["train-2026-10", "demo"]
    passed = snapshots.create("train-2026-11", [BRONZE], validate=no_empty_tables, spark=spark)
    assert passed.versions == {BRONZE: 2}

    snapshots.delete("demo", spark=spark)
    assert snapshots_version(catalog) == created + 3  # the passed create, then the delete
    assert [s.name for s in snapshots.list()] == ["train-2026-11", "train-2026-10"]
    assert snapshots.pinned_versions() == {BRONZE: {2}, SILVER_QUARANTINE.name: {0}}
    with pytest.raises(SnapshotError, match=r"no snapshot 'demo' \(known: train-2026-10, train"):
        snapshots.get("demo")
    with pytest.raises(SnapshotError, match="no snapshot 'demo'"):
        snapshots.delete("demo", spark=spark)


def test_vacuum_hours_reach_back_past_the_oldest_pin() -> None:
    # With the one-hour PIN_MARGIN.
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    assert vacuum_hours(0, None, now) == 0
    assert vacuum_hours(0.2, None, now) == 1  # Delta counts whole hours: round up, keep more
    assert vacuum_hours(168, None, now) == 168
    assert vacuum_hours(0, now - timedelta(minutes=5), now) == 2  # 1h05 -> 2 whole hours
    assert vacuum_hours(0, now - timedelta(hours=30), now) == 31
    assert vacuum_hours(168, now - timedelta(hours=30), now) == 168  # the longer one wins
    assert vacuum_hours(168, now - timedelta(days=10), now) == 241


def pinned_lake(spark: SparkSession, catalog: Catalog) -> tuple[set[Path], set[Path], set[Path]]:
    """bronze.events_raw at version 5 with version 4 pinned as ``pinned``; returns the files
    compacted away a day before the pin, the files the pin reads (the compacted file and batch
    2's), and the files added after it (batch 3's)."""
    append(spark, catalog, 0)
    append(spark, catalog, 1)
    compact(spark, catalog)  # version 3 replaces the small files of batches 0 and 1 by one
    backdate(spark, catalog, range(4), hours=30)  # a day and more ago
    removed_before_pin, compacted = files(catalog, 2), files(catalog, 3)
    assert append(spark, catalog, 2) == 4
    Snapshots(catalog).create("pinned", [BRONZE], spark=spark)  # version 4
    assert append(spark, catalog, 3) == 5
    pinned_files = files(catalog, 4)  # the compacted file and batch 2's
    removed_after_pin = files(catalog, 5) - pinned_files  # batch 3's
    assert len(compacted) == 1
    assert not compacted & removed_before_pin
    assert compacted < pinned_files
    assert removed_after_pin
    return removed_before_pin, pinned_files, removed_after_pin


def assert_a_dry_run_deletes_nothing(
    spark: SparkSession, catalog: Catalog, removed_before_pin: set[Path], freed: int
) -> None:
    """A dry run reports the files the pinned lake's maintenance would vacuum, and keeps them."""
    dry = maintain(
        spark, catalog, [BRONZE], retention_hours=0, enforce_retention=False, dry_run=True
    ).table(BRONZE)
    assert dry["compaction"] is None
    assert dry["vacuumed_files"] == relative(catalog, removed_before_pin)
    assert dry["bytes_freed"] == freed
    assert dry["retention_hours"] == 2  # the pin is minutes old: its age plus the margin
    assert dry["version_after"] == dry["version_before"] == 5
    assert all(p.exists() for p in removed_before_pin)  # a dry run deletes nothing


def test_maintenance_keeps_pinned_versions_and_vacuums_the_rest(
    spark: SparkSession, catalog: Catalog
) -> None:
    removed_before_pin, pinned_files, removed_after_pin = pinned_lake(spark, catalog)
    freed = sum(p.stat().st_size for p in removed_before_pin)
    before = read_table(spark, catalog, BRONZE, snapshot="pinned").collect()
    assert_a_dry_run_deletes_nothing(spark, catalog, removed_before_pin, freed)

    entry = maintain(spark, catalog, [BRONZE], retention_hours=0, enforce_retention=False).table(
        BRONZE
    )
    assert entry["compaction"]["files_removed"] == len(pinned_files | removed_after_pin)
    assert entry["compaction"]["files_added"] == 1
    assert entry["compaction"]["bytes_removed"] > entry["compaction"]["bytes_added"] > 0
    assert entry["pinned_versions"] == [4]
    assert entry["protected_files"] == len(pinned_files)
    assert entry["retention_hours"] == 2
    assert entry["vacuumed_files"] == relative(catalog, removed_before_pin)
    assert entry["vacuumed"] == len(removed_before_pin)
    assert entry["bytes_freed"] == freed
    assert entry["version_before"] == 5
    assert entry["version_after"] == 8  # OPTIMIZE, then VACUUM START and END
    assert spark.conf.get(RETENTION_CHECK_CONF) == "true"  # restored after the VACUUM
    assert spark.conf.get(RETENTION_WINDOW_IGNORE_CONF) == "true"

    assert all(p.exists() for p in pinned_files)
    assert all(p.exists() for p in removed_after_pin)  # removed after the pin: kept by time
    assert not any(p.exists() for p in removed_before_pin)
    pinned = read_table(spark, catalog, BRONZE, snapshot="pinned")
    assertDataFrameEqual(pinned, before)
    assertDataFrameEqual(pinned, expected(spark, 0, 1, 2), checkRowOrder=False)
    with pytest.raises((PySparkException, Py4JJavaError), match=r"FILE_NOT_EXIST"):
        read_table(spark, catalog, BRONZE, version=2).collect()
    current = read_table(spark, catalog, BRONZE)
    assertDataFrameEqual(current, expected(spark, 0, 1, 2, 3), checkRowOrder=False)
    assert len(files(catalog, 8)) == 1

    # The pin is what kept those files: without it, a zero retention takes them all.
    Snapshots(catalog).delete("pinned", spark=spark)
    unpinned = maintain(spark, catalog, [BRONZE], retention_hours=0, enforce_retention=False).table(
        BRONZE
    )
    assert unpinned["compaction"]["files_removed"] == 0
    assert unpinned["pinned_versions"] == []
    assert unpinned["retention_hours"] == 0
    assert unpinned["vacuumed_files"] == relative(catalog, pinned_files | removed_after_pin)
    assert unpinned["version_after"] == 10
    assert not any(p.exists() for p in pinned_files | removed_after_pin)
    assertDataFrameEqual(
        read_table(spark, catalog, BRONZE), expected(spark, 0, 1, 2, 3), checkRowOrder=False
    )

    again = maintain(spark, catalog, [BRONZE], retention_hours=0, enforce_retention=False).table(
        BRONZE
    )
    assert again["compaction"]["files_removed"] == 0
    assert again["vacuumed"] == 0
    assert again["version_after"] == 10  # nothing to do, no commits


def test_maintenance_refuses_to_vacuum_pinned_files_delta_no_longer_tracks(
    spark: SparkSession, catalog: Catalog
) -> None:
    append(spark, catalog, 0)
    append(spark, catalog, 1)
    Snapshots(catalog).create("pinned", [BRONZE], spark=spark)  # version 2
    compact(spark, catalog)  # version 3
    # Written ten days ago, pinned and compacted eight days ago: Delta forgets removals after
    # delta.deletedFileRetentionDuration (a week), so VACUUM would judge the pinned files by
    # age, and the older one is older than any retention that still spares the pin.
    backdate(spark, catalog, range(2), hours=240)
    backdate(spark, catalog, range(2, 4), hours=192)
    pinned_files = files(catalog, 2)
    written_first = files(catalog, 1)  # batch 0's files: older than the cutoff
    assert written_first < pinned_files

    for dry_run in (True, False):
        with pytest.raises(MaintenanceError) as refused:
            maintain(spark, catalog, [BRONZE], dry_run=dry_run)
        message = str(refused.value)
        assert (
            f"would delete {len(written_first)} of the files snapshot versions [2] still "
            f"reference (e.g. {relative(catalog, written_first)[0]})" in message
        )
        assert "delta.deletedFileRetentionDuration, 168 hours here" in message
    assert all(p.exists() for p in pinned_files)
    assert catalog.delta_table(BRONZE).version() == 3  # nothing to compact, nothing vacuumed
    # Read with delta-rs: delta-spark refuses time travel past the table's retention anyway.
    pinned = read_pandas(catalog, BRONZE, snapshot="pinned").sort_values("offset")
    truth = pa.concat_tables([raw_events(0), raw_events(1)]).to_pandas()
    pd.testing.assert_frame_equal(pinned.reset_index(drop=True), truth)


def test_maintenance_enforces_the_table_retention(spark: SparkSession, catalog: Catalog) -> None:
    append(spark, catalog, 0)
    append(spark, catalog, 1)
    with pytest.raises(MaintenanceError, match=r"48 hours is shorter than .*\(168 hours\)"):
        maintain(spark, catalog, [BRONZE], retention_hours=48)
    assert catalog.delta_table(BRONZE).version() == 2  # refused before compacting


def test_read_pandas_matches_the_version_and_refuses_large_reads(
    spark: SparkSession, catalog: Catalog
) -> None:
    append(spark, catalog, 0)
    append(spark, catalog, 1)
    Snapshots(catalog).create("small", [BRONZE], spark=spark)
    append(spark, catalog, 2)

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
