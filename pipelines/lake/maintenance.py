"""Table maintenance: compact small files, then VACUUM what no one needs, sparing snapshots.

Streaming appends leave one small file per micro-batch; ``OPTIMIZE`` (delta-rs
``optimize.compact()``) rewrites them into fewer, larger files. ``VACUUM`` then deletes files
that the current version no longer references once they are older than the retention, which
ends time travel to the versions that used them, except for versions pinned by a named
snapshot: those are passed to delta-rs as ``keep_versions``, and every vacuum is first run dry
and checked against the pinned versions' own file lists, so a pinned file is never deleted even
if the library stopped honouring ``keep_versions``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from deltalake import DeltaTable
from deltalake.exceptions import DeltaError
from deltalake.fs import DeltaStorageHandler
from pyarrow.fs import FileType

from pipelines.lake.catalog import Catalog
from pipelines.lake.snapshots import Snapshots
from pipelines.lake.tables import TABLES, table_spec

log = logging.getLogger(__name__)


class MaintenanceError(RuntimeError):
    """Maintenance stopped because it could not guarantee that pinned files survive."""


@dataclass
class MaintenanceReport:
    """What maintenance did (or, in a dry run, would do), one dict per table.

    Keys per table: ``table``, ``exists``, ``version_before``, ``version_after``,
    ``compaction`` (``files_removed``, ``files_added``, ``bytes_removed``, ``bytes_added``;
    ``None`` in a dry run), ``vacuumed_files`` (paths relative to the table root of the files
    deleted, or in a dry run that would be), ``vacuumed`` (their count), ``bytes_freed`` (their
    size in storage), ``pinned_versions`` and ``protected_files`` (how many files the pinned
    versions reference, all kept).
    """

    tables: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def table(self, name: str) -> dict[str, Any]:
        for entry in self.tables:
            if entry["table"] == name:
                return entry
        raise KeyError(f"table {name} is not in this report ({[t['table'] for t in self.tables]})")


def maintain(
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
        tables: catalog names; default every table in the catalog that exists.
        retention_hours: removed files younger than this are kept (delta-rs takes whole hours,
            so a fraction is rounded up: keeping more is the safe side).
        enforce_retention: when True, delta-rs refuses a retention shorter than the table's
            ``delta.deletedFileRetentionDuration``; set False to vacuum sooner (tests, backfills).
        dry_run: compact nothing and delete nothing; report what VACUUM would delete now.
        snapshots: whose pins to keep; default the catalog's own ``lake.snapshots``.

    Raises:
        MaintenanceError: a pinned version cannot be loaded, or VACUUM would delete a file a
            pinned version references; nothing is deleted from that table.
    """
    if retention_hours < 0:
        raise ValueError(f"retention_hours must be >= 0, got {retention_hours}")
    hours = math.ceil(retention_hours)
    names = list(tables) if tables is not None else sorted(TABLES)
    for name in names:
        table_spec(name)  # an unknown name fails before any table is touched
    pinned = (snapshots or Snapshots(catalog)).pinned_versions()
    report = MaintenanceReport(dry_run=dry_run)
    for name in names:
        if not catalog.exists(name):
            if tables is not None:
                report.tables.append({"table": name, "exists": False})
            continue
        report.tables.append(
            _maintain_table(
                catalog,
                name,
                hours=hours,
                enforce_retention=enforce_retention,
                dry_run=dry_run,
                pinned=sorted(pinned.get(name, set())),
            )
        )
    return report


def _maintain_table(
    catalog: Catalog,
    name: str,
    *,
    hours: int,
    enforce_retention: bool,
    dry_run: bool,
    pinned: list[int],
) -> dict[str, Any]:
    table = catalog.delta_table(name)
    before = table.version()
    roots = (catalog.location(name).rstrip("/") + "/", table.table_uri.rstrip("/") + "/")
    protected = _protected_files(catalog, name, pinned, roots)
    compaction = None if dry_run else _compact(table)

    def vacuum(dry: bool) -> list[str]:
        try:
            files = table.vacuum(
                retention_hours=hours,
                dry_run=dry,
                enforce_retention_duration=enforce_retention,
                keep_versions=pinned or None,
            )
        except DeltaError as error:
            raise MaintenanceError(
                f"vacuum of {name} refused: {error}; use a retention of at least the table's "
                "delta.deletedFileRetentionDuration (default 168 hours)"
            ) from None
        return [_relative(f, roots) for f in files]

    candidates = vacuum(dry=True)
    endangered = sorted(f for f in candidates if unquote(f) in protected)
    if endangered:
        raise MaintenanceError(
            f"VACUUM of {name} would delete {len(endangered)} of the files snapshot versions "
            f"{pinned} still reference (e.g. {endangered[0]}); nothing was vacuumed. This "
            "deltalake version does not honour keep_versions: upgrade it, or delete those "
            "snapshots first"
        )
    # delta-rs lists every expired tombstone, including files an earlier VACUUM already
    # deleted; only files still in storage count (and are worth a VACUUM commit).
    present = _existing_sizes(catalog, name, candidates)
    if dry_run:
        vacuumed = present
    elif present:
        deleted = set(vacuum(dry=False))
        vacuumed = {f: size for f, size in present.items() if f in deleted}
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
        "pinned_versions": pinned,
        "protected_files": len(protected),
    }
    log.info(
        "%s: compacted %s; %s %d files (%d bytes); kept %d files for snapshot versions %s",
        name,
        "nothing (dry run)"
        if compaction is None
        else f"{compaction['files_removed']} -> {compaction['files_added']} files",
        "would vacuum" if dry_run else "vacuumed",
        len(vacuumed),
        entry["bytes_freed"],
        len(protected),
        pinned,
    )
    return entry


def _compact(table: DeltaTable) -> dict[str, Any]:
    metrics = table.optimize.compact()
    return {
        "files_removed": int(metrics.get("numFilesRemoved", 0)),
        "files_added": int(metrics.get("numFilesAdded", 0)),
        "bytes_removed": _total_size(metrics.get("filesRemoved")),
        "bytes_added": _total_size(metrics.get("filesAdded")),
    }


def _total_size(stats: Any) -> int | None:
    # delta-rs reports {"totalSize": …} per side, as a dict or as its JSON text.
    if isinstance(stats, str):
        stats = json.loads(stats)
    if isinstance(stats, dict) and stats.get("totalSize") is not None:
        return int(stats["totalSize"])
    return None


def _protected_files(
    catalog: Catalog, name: str, pinned: list[int], roots: tuple[str, ...]
) -> set[str]:
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
        files.update(unquote(_relative(uri, roots)) for uri in uris)
    return files


def _relative(path: str, roots: tuple[str, ...]) -> str:
    """A data file's path relative to the table root (delta-rs returns either form)."""
    for root in roots:
        if path.startswith(root):
            return path[len(root) :]
    return path


def _existing_sizes(catalog: Catalog, name: str, paths: list[str]) -> dict[str, int]:
    """Size of each of ``paths`` (relative to the table) that still exists in storage."""
    if not paths:
        return {}
    storage = DeltaStorageHandler(catalog.location(name), options=catalog.storage_options)
    return {
        path: int(info.size or 0)
        for path, info in zip(paths, storage.get_file_info(paths), strict=True)
        if info.type == FileType.File
    }
