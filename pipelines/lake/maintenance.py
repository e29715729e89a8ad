"""Table maintenance: compact small files, then VACUUM what no one needs, sparing snapshots.

Both commands run through delta-spark. ``OPTIMIZE`` (``DeltaTable.optimize()
.executeCompaction()``) rewrites the small files streaming appends leave into fewer, larger
files. ``VACUUM`` then deletes the files the current version no longer references once they
were removed longer ago than the retention, which ends time travel to the versions that read
them.

delta-spark's VACUUM cannot keep given versions (delta-rs had ``keep_versions``), so pinned
versions are kept by time: the retention is stretched until VACUUM's cutoff falls before the
commit of the oldest version a snapshot pins, less :data:`PIN_MARGIN`. A file that a pinned
version reads and the current one does not was removed by a later commit, so its removal is
newer than the cutoff and VACUUM keeps it. Every VACUUM is first run dry, and the files it would
delete are checked against the pinned versions' own file lists (read with delta-rs); if one of
them is there, nothing is deleted. That happens when Delta has already forgotten the removal:
it keeps removals for the table's ``delta.deletedFileRetentionDuration`` (default a week) and
then judges a file by its modification time alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from delta.tables import DeltaTable
from deltalake import DeltaTable as DeltaRsTable
from deltalake.fs import DeltaStorageHandler
from pyarrow.fs import FileType
from pyspark.errors import IllegalArgumentException
from pyspark.sql import SparkSession

from pipelines.lake.catalog import Catalog
from pipelines.lake.snapshots import Snapshots

log = logging.getLogger(__name__)

# How far before the oldest pinned commit VACUUM's cutoff stays. A commit that removes a pinned
# file stamps the removal when its operation starts (a long OPTIMIZE can start before the pinned
# commit and land after it), and the cutoff moves on between the dry run and the real one.
PIN_MARGIN = timedelta(hours=1)
# How long Delta remembers removed files when delta.deletedFileRetentionDuration is not set.
DEFAULT_DELETED_FILE_RETENTION_HOURS = 168.0

RETENTION_CHECK_CONF = "spark.databricks.delta.retentionDurationCheck.enabled"
# Since Delta 4.1, VACUUM ignores ``RETAIN n HOURS`` other than 0 and uses the table's
# delta.deletedFileRetentionDuration unless this (internal) conf is false.
RETENTION_WINDOW_IGNORE_CONF = "spark.databricks.delta.vacuum.retentionWindowIgnore.enabled"


class MaintenanceError(RuntimeError):
    """Maintenance stopped because it could not guarantee that pinned files survive."""


@dataclass
class MaintenanceReport:
    """What maintenance did (or, in a dry run, would do), one dict per table.

    Keys per table: ``table``, ``exists``, ``version_before``, ``version_after``,
    ``compaction`` (``files_removed``, ``files_added``, ``bytes_removed``, ``bytes_added``;
    ``None`` in a dry run), ``vacuumed_files`` (paths relative to the table root of the files
    deleted, or in a dry run that would be), ``vacuumed`` (their count), ``bytes_freed`` (their
    size in storage), ``retention_hours`` (the retention VACUUM ran with: the one asked for, or
    longer to spare the pinned versions), ``pinned_versions`` and ``protected_files`` (how many
    files the pinned versions reference, all kept).
    """

    tables: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def table(self, name: str) -> dict[str, Any]:
        for entry in self.tables:
            if entry["table"] == name:
                return entry
        raise KeyError(f"table {name} is not in this report ({[t['table'] for t in self.tables]})")


def maintain(
    spark: SparkSession,
    catalog: Catalog,
    tables: Sequence[str] | None = None,
    *,
    retention_hours: float = 168,
    enforce_retention: bool = True,
    dry_run: bool = False,
    snapshots: Snapshots | None = None,
) -> MaintenanceReport:
    """Compact and vacuum each existing table, keeping every file a snapshot still needs.

    Args:
        spark: the session that runs OPTIMIZE and VACUUM (Delta's SQL extension loaded).
        tables: catalog names; default every table in the catalog that exists.
        retention_hours: removed files younger than this are kept. Delta counts whole hours, so
            a fraction is rounded up (keeping more is the safe side); a table with pinned
            versions gets a longer retention when its oldest pin needs it.
        enforce_retention: when True, refuse a retention shorter than the table's
            ``delta.deletedFileRetentionDuration``; set False to vacuum sooner (tests, backfills).
        dry_run: compact nothing and delete nothing; report what VACUUM would delete now.
        snapshots: whose pins to keep; default the catalog's own ``lake.snapshots``.

    Raises:
        MaintenanceError: a pinned version cannot be loaded, the retention is shorter than the
            table's while enforced, or VACUUM would delete a file a pinned version references;
            nothing is deleted from that table.
    """
    if retention_hours < 0:
        raise ValueError(f"retention_hours must be >= 0, got {retention_hours}")
    names = list(tables) if tables is not None else catalog.tables.names()
    for name in names:
        catalog.tables.spec(name)  # an unknown name fails before any table is touched
    pinned = (snapshots or Snapshots(catalog)).pinned_versions()
    report = MaintenanceReport(dry_run=dry_run)
    for name in names:
        if not catalog.exists(name):
            if tables is not None:
                report.tables.append({"table": name, "exists": False})
            continue
        report.tables.append(
            _maintain_table(
                spark,
                catalog,
                name,
                retention_hours=retention_hours,
                enforce_retention=enforce_retention,
                dry_run=dry_run,
                pinned=sorted(pinned.get(name, set())),
            )
        )
    return report


def _maintain_table(
    spark: SparkSession,
    catalog: Catalog,
    name: str,
    *,
    retention_hours: float,
    enforce_retention: bool,
    dry_run: bool,
    pinned: list[int],
) -> dict[str, Any]:
    location = catalog.location(name)
    table = catalog.delta_table(name)  # delta-rs, read only: version, history, properties
    before = table.version()
    protected = _protected_files(catalog, name, pinned, location)
    oldest_pin = _oldest_pin_commit(table, name, pinned, before) if pinned else None
    hours = vacuum_hours(retention_hours, oldest_pin, datetime.now(tz=UTC))
    table_hours = _deleted_file_retention_hours(table.metadata().configuration)
    shorter = table_hours is None or hours < table_hours
    if shorter and enforce_retention and table_hours is not None:
        raise MaintenanceError(
            f"vacuum of {name} refused: a retention of {hours} hours is shorter than the table's "
            f"delta.deletedFileRetentionDuration ({table_hours:g} hours); use a retention of at "
            "least that, or pass enforce_retention=False"
        )
    compaction = None if dry_run else _compact(spark, location)

    def vacuum(dry: bool) -> list[str]:
        confs = {RETENTION_WINDOW_IGNORE_CONF: "false"}
        if shorter and not enforce_retention:
            confs[RETENTION_CHECK_CONF] = "false"
        try:
            with _session_conf(spark, confs):
                paths = _vacuum(spark, location, hours, dry_run=dry)
        except IllegalArgumentException as error:
            raise MaintenanceError(
                f"vacuum of {name} refused: {error}; use a retention of at least the table's "
                "delta.deletedFileRetentionDuration (default 168 hours)"
            ) from None
        return [_relative(path, location, strict=True) for path in paths]

    candidates = vacuum(dry=True)
    endangered = sorted(f for f in candidates if unquote(f) in protected)
    if endangered:
        kept_for = "as set" if table_hours is None else f"{table_hours:g} hours here"
        raise MaintenanceError(
            f"VACUUM of {name} would delete {len(endangered)} of the files snapshot versions "
            f"{pinned} still reference (e.g. {endangered[0]}); nothing was vacuumed. Most "
            "likely Delta no longer tracks their removal (it keeps removals for the table's "
            f"delta.deletedFileRetentionDuration, {kept_for}) and so judges them by age: "
            "raise that table property above the age of the oldest snapshot, or delete those "
            "snapshots first"
        )
    # The dry run also lists the directories it would remove once empty; only files count (and
    # are worth a VACUUM, which commits twice).
    present = _existing_sizes(catalog, location, candidates)
    if dry_run:
        vacuumed = present
    elif present:
        vacuum(dry=False)
        remaining = _existing_sizes(catalog, location, list(present))
        vacuumed = {f: size for f, size in present.items() if f not in remaining}
    else:
        vacuumed = {}
    entry = {
        "table": name,
        "exists": True,
        "version_before": before,
        "version_after": catalog.delta_table(name).version(),
        "compaction": compaction,
        "vacuumed_files": sorted(vacuumed),
        "vacuumed": len(vacuumed),
        "bytes_freed": sum(vacuumed.values()),
        "retention_hours": hours,
        "pinned_versions": pinned,
        "protected_files": len(protected),
    }
    log.info(
        "%s: compacted %s; %s %d files (%d bytes, retention %d hours); kept %d files for "
        "snapshot versions %s",
        name,
        "nothing (dry run)"
        if compaction is None
        else f"{compaction['files_removed']} -> {compaction['files_added']} files",
        "would vacuum" if dry_run else "vacuumed",
        len(vacuumed),
        entry["bytes_freed"],
        hours,
        len(protected),
        pinned,
    )
    return entry


def vacuum_hours(requested: float, oldest_pin: datetime | None, now: datetime) -> int:
    """The whole hours to VACUUM with: ``requested``, or longer so that the cutoff falls
    :data:`PIN_MARGIN` before ``oldest_pin`` (the commit time of the oldest pinned version).

    Whole hours because Delta rounds the retention to the nearest hour; rounding up keeps more.
    """
    hours = math.ceil(requested)
    if oldest_pin is not None:
        hours = max(hours, math.ceil((now - oldest_pin + PIN_MARGIN) / timedelta(hours=1)))
    return hours


def _compact(spark: SparkSession, location: str) -> dict[str, Any]:
    row = DeltaTable.forPath(spark, location).optimize().executeCompaction().first()
    metrics = row["metrics"] if row is not None else None
    if metrics is None:
        return {"files_removed": 0, "files_added": 0, "bytes_removed": 0, "bytes_added": 0}
    return {
        "files_removed": int(metrics["numFilesRemoved"]),
        "files_added": int(metrics["numFilesAdded"]),
        "bytes_removed": _total_size(metrics["filesRemoved"]),
        "bytes_added": _total_size(metrics["filesAdded"]),
    }


def _total_size(stats: Any) -> int | None:
    # delta-spark reports a (min, max, avg, totalFiles, totalSize) struct per side.
    if stats is None or stats["totalSize"] is None:
        return None
    return int(stats["totalSize"])


def _vacuum(spark: SparkSession, location: str, hours: int, *, dry_run: bool) -> list[str]:
    """Run VACUUM on the table at ``location``; in a dry run, the paths it would delete."""
    quoted = location.replace("`", "``")
    statement = f"VACUUM delta.`{quoted}` RETAIN {hours} HOURS" + (" DRY RUN" if dry_run else "")
    rows = spark.sql(statement).collect()
    return [str(row["path"]) for row in rows] if dry_run else []


@contextmanager
def _session_conf(spark: SparkSession, confs: dict[str, str]) -> Iterator[None]:
    """Set ``confs`` on the session for the ``with`` block only, then restore what was there."""
    previous = {key: spark.conf.get(key, None) for key in confs}
    for key, value in confs.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, before in previous.items():
            if before is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, before)


def _oldest_pin_commit(table: DeltaRsTable, name: str, pinned: list[int], latest: int) -> datetime:
    """When the oldest pinned version was committed (the earliest commit time from it on, in
    case writers' clocks disagree); the earliest available commit if its entry is gone."""
    oldest = min(pinned)
    commits = table.history(latest - oldest + 1)
    stamps = [
        int(c["timestamp"])
        for c in commits
        if c.get("timestamp") is not None and int(c.get("version", latest)) >= oldest
    ]
    if not stamps:
        raise MaintenanceError(
            f"a snapshot pins {name}@v{oldest}, but the table's history has no commit time from "
            "that version on; nothing was vacuumed"
        )
    return datetime.fromtimestamp(min(stamps) / 1000, tz=UTC)


_INTERVAL_HOURS = {
    "week": 168.0,
    "day": 24.0,
    "hour": 1.0,
    "minute": 1 / 60,
    "second": 1 / 3600,
    "millisecond": 1 / 3_600_000,
    "microsecond": 1 / 3_600_000_000,
}


def _deleted_file_retention_hours(configuration: Mapping[str, str | None]) -> float | None:
    """The table's ``delta.deletedFileRetentionDuration`` in hours (``None``: not understood).

    Delta writes it as an interval, e.g. ``interval 1 week`` or ``interval 36 hours``.
    """
    setting = configuration.get("delta.deletedFileRetentionDuration")
    if setting is None:
        return DEFAULT_DELETED_FILE_RETENTION_HOURS
    words = setting.lower().split()
    if words[:1] == ["interval"]:
        words = words[1:]
    if not words or len(words) % 2:
        return None
    total = 0.0
    for amount, unit in zip(words[::2], words[1::2], strict=True):
        factor = _INTERVAL_HOURS.get(unit.removesuffix("s"))
        try:
            value = float(amount)
        except ValueError:
            return None
        if factor is None:
            return None
        total += value * factor
    return total


def _protected_files(catalog: Catalog, name: str, pinned: list[int], location: str) -> set[str]:
    """Relative (decoded) paths of every data file that a pinned version of ``name`` reads."""
    files: set[str] = set()
    for version in pinned:
        try:
            uris = catalog.delta_table(name, version).file_uris()
        except Exception as error:
            raise MaintenanceError(
                f"a snapshot pins {name}@v{version}, which can no longer be loaded ({error}); "
                "nothing was vacuumed. Delete the snapshots that pin it (Snapshots.list() shows "
                "which), or restore the table's _delta_log"
            ) from error
        files.update(unquote(_relative(uri, location)) for uri in uris)
    return files


def _relative(path: str, location: str, *, strict: bool = False) -> str:
    """A file's path relative to the table root, from any form of it (``/…``, ``file:/…``,
    ``file:///…``, ``s3://…``).

    A path outside the table cannot be vacuumed and is returned as it is; with ``strict`` (paths
    VACUUM lists, which are all inside the table) it is an error, so the pin check never compares
    paths it failed to map.
    """
    root = _without_scheme(location).rstrip("/") + "/"
    bare = _without_scheme(path)
    if bare.startswith(root):
        return bare[len(root) :]
    if strict:
        raise MaintenanceError(
            f"VACUUM listed {path}, which is not under the table root {location}; nothing was "
            "vacuumed"
        )
    return path


def _without_scheme(path: str) -> str:
    if path.startswith("file:"):
        return "/" + path.removeprefix("file:").lstrip("/")
    _, separator, rest = path.partition("://")
    return rest if separator else path


def _existing_sizes(catalog: Catalog, location: str, paths: list[str]) -> dict[str, int]:
    """Size of each of ``paths`` (relative to the table) that is a file in storage now."""
    if not paths:
        return {}
    storage = DeltaStorageHandler(location, options=catalog.storage_options)
    return {
        path: int(info.size or 0)
        for path, info in zip(paths, storage.get_file_info(paths), strict=True)
        if info.type == FileType.File
    }
