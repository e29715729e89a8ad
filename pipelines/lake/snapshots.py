"""Named snapshots: a name pinned to one Delta version of each of several tables.

A snapshot is what a training run reads: ``train-2026-11`` always means the same versions of the
same tables, so the same snapshot always yields the same training set. Snapshots live in the Delta
table ``lake.snapshots`` (one row per snapshot and table), and maintenance never vacuums the files
a pinned version still needs (see :mod:`pipelines.lake.maintenance`).

The reading helpers resolve a version from a version number, a timestamp or a snapshot name and
read it with Spark (through :meth:`Catalog.read`) or, for small tables, with delta-rs into pandas.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from delta.tables import DeltaTable as SparkDeltaTable
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.lake.catalog import Catalog
from pipelines.lake.tables import LAKE_SNAPSHOTS, UnknownTableError

if TYPE_CHECKING:
    import pandas as pd

Validator = Callable[[str, int], list[str]]
Rows = list[dict[str, Any]]

# Names end up in Delta SQL predicates (delete), so keep them to a safe alphabet.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class SnapshotError(LookupError):
    """A snapshot that does not exist, already exists, or cannot be created as asked."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Snapshot:
    name: str
    versions: dict[str, int]  # table name -> pinned Delta version
    created_at: datetime
    note: str


def snapshots_location(catalog: Catalog) -> str:
    """Where ``lake.snapshots`` lives: ``<tables root>/lake/snapshots``.

    Resolved here rather than with ``catalog.location`` so it works whether or not
    ``LAKE_SNAPSHOTS`` is one of the tables of the catalog's registry (``pipelines.tables``).
    """
    return catalog.location(LAKE_SNAPSHOTS.name)


class Snapshots:
    """Create, look up and delete named snapshots stored in ``lake.snapshots``."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.location = snapshots_location(catalog)

    def create(
        self,
        name: str,
        tables: Sequence[str],
        note: str = "",
        validate: Validator | None = None,
        *,
        spark: SparkSession,
    ) -> Snapshot:
        """Pin the current version of each table under ``name``, in one Delta commit.

        Args:
            spark: the session that writes ``lake.snapshots``.
            name: letters, digits, ``.``, ``_`` and ``-``; must not exist yet.
            tables: catalog names of existing tables.
            note: free text kept with the snapshot (why it was taken, by which run).
            validate: called as ``validate(table, version)`` for each pinned version; returns
                failure messages. If any table fails, nothing is recorded.

        Raises:
            SnapshotError: the name is taken or malformed, a table is unknown or not written
                yet, or validation failed (the message lists every failure).
        """
        _check_name(name)
        wanted = list(dict.fromkeys(tables))
        if not wanted:
            raise SnapshotError(f"snapshot {name!r} names no tables; pass at least one")
        known = {s.name: s for s in self.list()}
        if name in known:
            existing = known[name]
            raise SnapshotError(
                f"snapshot {name!r} already exists (created {existing.created_at:%Y-%m-%d %H:%M} "
                f"UTC, pins {', '.join(sorted(existing.versions))}); pick another name or "
                f"delete it first with Snapshots(catalog).delete({name!r})"
            )
        versions = {table: self._current_version(name, table) for table in wanted}
        if validate is not None:
            failures = [
                f"{table}@v{version}: {message}"
                for table, version in versions.items()
                for message in validate(table, version)
            ]
            if failures:
                raise SnapshotError(
                    f"snapshot {name!r} not created; validation failed: " + "; ".join(failures)
                )
        created_at = datetime.now(tz=UTC)
        snapshot = Snapshot(name=name, versions=versions, created_at=created_at, note=note)
        self._insert(spark, snapshot)
        return snapshot

    def get(self, name: str) -> Snapshot:
        for snapshot in self.list():
            if snapshot.name == name:
                return snapshot
        raise SnapshotError(self._unknown(name))

    def list(self) -> list[Snapshot]:
        """Every snapshot, newest first."""
        return _snapshots_from_rows(self._rows())

    def delete(self, name: str, *, spark: SparkSession) -> None:
        """Remove a snapshot (one commit); its versions become eligible for VACUUM."""
        _check_name(name)
        if name not in {s.name for s in self.list()}:
            raise SnapshotError(self._unknown(name))
        self.catalog.bind(spark)
        SparkDeltaTable.forPath(spark, self.location).delete(F.col("name") == F.lit(name))

    def pinned_versions(self) -> dict[str, set[int]]:
        """Table name -> every version some snapshot pins."""
        pinned: dict[str, set[int]] = {}
        for row in self._rows():
            pinned.setdefault(row["table"], set()).add(int(row["version"]))
        return pinned

    def _rows(self) -> Rows:
        options = self.catalog.storage_options
        if not DeltaTable.is_deltatable(self.location, storage_options=options):
            return []
        return self.catalog.read_arrow(LAKE_SNAPSHOTS.name).to_pylist()

    def _current_version(self, snapshot: str, table: str) -> int:
        try:
            self.catalog.tables.spec(table)
        except UnknownTableError:
            raise SnapshotError(
                f"snapshot {snapshot!r} not created: unknown table {table!r} "
                f"(known: {', '.join(self.catalog.tables.names())})"
            ) from None
        if not self.catalog.exists(table):
            raise SnapshotError(
                f"snapshot {snapshot!r} not created: table {table} has not been written yet "
                f"(no Delta table at {self.catalog.location(table)}); run its job first"
            )
        return self.catalog.delta_table(table).version()

    def _insert(self, spark: SparkSession, snapshot: Snapshot) -> None:
        rows = pa.Table.from_pylist(
            [
                {
                    "name": snapshot.name,
                    "table": table,
                    "version": version,
                    "created_at": snapshot.created_at,
                    "note": snapshot.note,
                }
                for table, version in snapshot.versions.items()
            ],
            schema=LAKE_SNAPSHOTS.arrow_schema,
        )
        self.catalog.ensure(spark, LAKE_SNAPSHOTS)
        # A MERGE that inserts only when no row has this name: one commit, and a concurrent
        # creator of the same name makes this insert nothing instead of mixing two snapshots.
        source = spark.createDataFrame(rows, schema=LAKE_SNAPSHOTS.schema)
        metrics = (
            SparkDeltaTable.forPath(spark, self.location)
            .alias("target")
            .merge(source.alias("source"), "target.name = source.name")
            .whenNotMatchedInsertAll()
            .execute()
            .first()
        )
        inserted = int(metrics["num_inserted_rows"]) if metrics is not None else -1
        if inserted != rows.num_rows:
            raise SnapshotError(
                f"snapshot {snapshot.name!r} was created concurrently by another process; "
                "get() it or pick another name"
            )

    def _unknown(self, name: str) -> str:
        names = sorted(s.name for s in self.list())
        if not names:
            return (
                f"no snapshot {name!r} (no snapshots yet; create one with "
                "Snapshots(catalog).create(name, tables))"
            )
        return f"no snapshot {name!r} (known: {', '.join(names)})"


def resolve_version(
    catalog: Catalog,
    name: str,
    *,
    version: int | None = None,
    timestamp: datetime | str | None = None,
    snapshot: str | None = None,
) -> int:
    """The Delta version of table ``name`` selected by at most one of the three selectors.

    No selector means the current version. ``timestamp`` (a datetime, naive = UTC, or an ISO 8601
    string) selects the latest version committed at or before it.

    Raises:
        ValueError: more than one selector, a version that does not exist, or a timestamp before
            the table's first commit.
        SnapshotError: the snapshot does not exist or does not pin this table.
    """
    selectors = {"version": version, "timestamp": timestamp, "snapshot": snapshot}
    chosen = [key for key, value in selectors.items() if value is not None]
    if len(chosen) > 1:
        raise ValueError(
            f"read {name} by one of version, timestamp or snapshot, not {' and '.join(chosen)}"
        )
    if snapshot is not None:
        pinned = Snapshots(catalog).get(snapshot)
        if name not in pinned.versions:
            raise SnapshotError(
                f"snapshot {snapshot!r} does not pin table {name} "
                f"(it pins: {', '.join(sorted(pinned.versions))})"
            )
        return pinned.versions[name]
    latest = catalog.delta_table(name).version()
    if version is not None:
        if not 0 <= version <= latest:
            raise ValueError(f"table {name} has no version {version} (versions 0..{latest})")
        return version
    if timestamp is not None:
        return _version_at(catalog, name, _as_utc(timestamp))
    return latest


def read_table(
    spark: SparkSession,
    catalog: Catalog,
    name: str,
    *,
    version: int | None = None,
    timestamp: datetime | str | None = None,
    snapshot: str | None = None,
) -> DataFrame:
    """Table ``name`` as a Spark DataFrame, at a version, a point in time or a snapshot."""
    if version is None and timestamp is None and snapshot is None:
        return catalog.read(spark, name)
    resolved = resolve_version(
        catalog, name, version=version, timestamp=timestamp, snapshot=snapshot
    )
    return catalog.read(spark, name, version=resolved)


def read_pandas(
    catalog: Catalog,
    name: str,
    *,
    version: int | None = None,
    timestamp: datetime | str | None = None,
    snapshot: str | None = None,
    columns: list[str] | None = None,
    max_rows: int = 1_000_000,
) -> pd.DataFrame:
    """A small table (or version of one) as pandas, read by delta-rs without Spark.

    Raises:
        ValueError: an unknown column, or the version holds more than ``max_rows`` rows (read
            it with :func:`read_table` instead).
    """
    spec = catalog.tables.spec(name)
    known = [f.name for f in spec.schema.fields]
    unknown = [c for c in columns or [] if c not in known]
    if unknown:
        raise ValueError(f"table {name} has no columns {unknown} (columns: {', '.join(known)})")
    resolved = resolve_version(
        catalog, name, version=version, timestamp=timestamp, snapshot=snapshot
    )
    table = catalog.delta_table(name, resolved)
    rows = _row_count(table)
    if rows > max_rows:
        raise ValueError(
            f"table {name}@v{resolved} has {rows} rows, more than max_rows={max_rows}; "
            "read it with Spark (pipelines.lake.snapshots.read_table) or raise max_rows"
        )
    frame: pd.DataFrame = catalog.read_arrow(
        name, version=resolved, columns=columns or known
    ).to_pandas()
    return frame


def _snapshots_from_rows(rows: Rows) -> list[Snapshot]:
    """Rows of ``lake.snapshots`` grouped into snapshots, newest first."""
    grouped: dict[str, Rows] = {}
    for row in rows:
        grouped.setdefault(row["name"], []).append(row)
    snapshots = [
        Snapshot(
            name=name,
            versions={r["table"]: int(r["version"]) for r in group},
            created_at=group[0]["created_at"],
            note=group[0]["note"] or "",
        )
        for name, group in grouped.items()
    ]
    return sorted(snapshots, key=lambda s: (s.created_at, s.name), reverse=True)


def _row_count(table: DeltaTable) -> int:
    """Rows in the loaded version: from file statistics, or Parquet footers if stats are missing."""
    counts = pa.table(table.get_add_actions(flatten=True)).column("num_records").to_pylist()
    if None in counts:
        return sum(pq.ParquetFile(uri).metadata.num_rows for uri in table.file_uris())
    return int(sum(counts))


def _version_at(catalog: Catalog, name: str, at: datetime) -> int:
    # Decided from the commit timestamps in the log rather than DeltaTable.load_as_version,
    # which silently returns version 0 for a time before the first commit.
    commits = [
        (int(c["version"]), datetime.fromtimestamp(c["timestamp"] / 1000, tz=UTC))
        for c in catalog.history(name)
        if c.get("timestamp") is not None
    ]
    before = [v for v, committed in commits if committed <= at]
    if not before:
        first_version, first_time = min(commits, key=lambda c: c[0])
        raise ValueError(
            f"table {name} has no version at or before {at.isoformat()}: its earliest "
            f"available commit (version {first_version}) is at {first_time.isoformat()}"
        )
    return max(before)


def _as_utc(timestamp: datetime | str) -> datetime:
    if isinstance(timestamp, str):
        try:
            stamp = datetime.fromisoformat(timestamp)
        except ValueError:
            raise ValueError(
                f"timestamp {timestamp!r} is not ISO 8601; write e.g. 2026-11-26T12:00:00Z"
            ) from None
    else:
        stamp = timestamp
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise SnapshotError(
            f"snapshot name {name!r} is not allowed: use up to 128 letters, digits, '.', '_' "
            "and '-', starting with a letter or digit (e.g. train-2026-11)"
        )
