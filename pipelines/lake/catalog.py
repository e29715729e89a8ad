"""The table catalog: logical names -> Delta locations, Spark catalog registration, inspection.

Tables are written by delta-spark (``pipelines.streaming.delta``) under
``<storage root>/tables/<layer>/<table>`` and registered in the Spark catalog under their logical
names (schemas ``bronze``, ``silver``, ``gold``, ``quality``, ``lake``, ``monitoring``) as
external tables, so SQL uses the names directly. Small metadata reads and Arrow reads outside
Spark (``info``, ``history``, ``read_arrow``) use delta-rs as a reader; it never writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from delta.tables import DeltaTable as SparkDeltaTable
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError as DeltaTableNotFound
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import Settings, StorageSettings
from pipelines.lake.tables import TableRegistry, TableSpec


class TableNotFoundError(LookupError):
    """A known table that has not been written yet (the message says which job creates it)."""

    def __str__(self) -> str:
        return str(self.args[0])


_CREATED_BY = {
    "bronze": "lakehouse run bronze",
    "silver": "lakehouse run silver",
    "gold": "lakehouse run gold",
}


@dataclass(frozen=True)
class TableInfo:
    name: str
    location: str
    exists: bool
    version: int | None = None
    rows: int | None = None
    files: int | None = None
    size_bytes: int | None = None
    last_commit: datetime | None = None
    last_operation: str | None = None


class Catalog:
    """Resolves and manages the lake's tables under ``<storage root>/tables``."""

    def __init__(
        self,
        storage: StorageSettings,
        tables: TableRegistry,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        self.storage = storage.resolved()
        self.tables = tables
        self.storage_options = (
            storage_options if storage_options is not None else self.storage.delta_options()
        )

    @classmethod
    def for_settings(cls, settings: Settings, tables: TableRegistry) -> Catalog:
        """The catalog of an environment's storage, knowing the tables of ``tables``."""
        return cls(settings.storage, tables)

    def location(self, name: str) -> str:
        spec = self.tables.spec(name)
        return f"{self.storage.tables_root}/{spec.layer}/{spec.short_name}"

    def checkpoint(self, query_name: str) -> str:
        """Checkpoint folder of a streaming query: ``<checkpoint root>/<query name>``."""
        return f"{self.storage.checkpoints.rstrip('/')}/{query_name}"

    def exists(self, name: str) -> bool:
        return bool(
            DeltaTable.is_deltatable(self.location(name), storage_options=self.storage_options)
        )

    def delta_table(self, name: str, version: int | None = None) -> DeltaTable:
        spec = self.tables.spec(name)
        try:
            return DeltaTable(
                self.location(name), version=version, storage_options=self.storage_options
            )
        except DeltaTableNotFound:
            raise TableNotFoundError(
                f"table {name} does not exist yet at {self.location(name)}; "
                f"`{_CREATED_BY.get(spec.layer, 'its job')}` creates it"
            ) from None

    def info(self, name: str) -> TableInfo:
        location = self.location(name)
        if not self.exists(name):
            return TableInfo(name=name, location=location, exists=False)
        dt = self.delta_table(name)
        actions = pa.table(dt.get_add_actions(flatten=True))
        rows = sum(v for v in actions.column("num_records").to_pylist() if v is not None)
        size = sum(actions.column("size_bytes").to_pylist())
        last = dt.history(1)[0] if dt.version() >= 0 else {}
        stamp = last.get("timestamp")
        return TableInfo(
            name=name,
            location=location,
            exists=True,
            version=dt.version(),
            rows=rows,
            files=actions.num_rows,
            size_bytes=size,
            last_commit=datetime.fromtimestamp(stamp / 1000, tz=UTC) if stamp else None,
            last_operation=last.get("operation"),
        )

    def infos(self) -> list[TableInfo]:
        return [self.info(name) for name in self.tables.names()]

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits newest first; the JSON ``userMetadata`` our writers stamp (app id, batch id,
        the job's own keys) is unpacked into each entry."""
        return [_unpacked(commit) for commit in self.delta_table(name).history(limit)]

    def read(
        self,
        spark: SparkSession,
        name: str,
        version: int | None = None,
        partitions: list[tuple[str, str, Any]] | None = None,
    ) -> DataFrame:
        """The table (at ``version``, default latest) as a Spark DataFrame.

        ``partitions`` prunes files by partition values before Spark sees them, e.g.
        ``[("event_date", "in", ["2026-11-26"])]``.
        """
        spec = self.tables.spec(name)
        columns = [f.name for f in spec.schema.fields]
        self.bind(spark)
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        frame = reader.load(self.location(name))
        for column, op, value in partitions or []:
            frame = frame.filter(_partition_filter(column, op, value))
        return frame.select(*columns)

    def read_arrow(
        self,
        name: str,
        *,
        version: int | None = None,
        columns: list[str] | None = None,
        partitions: list[tuple[str, str, Any]] | None = None,
    ) -> pa.Table:
        """A (small) table version as Arrow, without Spark.

        Files are resolved by delta-rs and read by pyarrow's own Parquet dataset. (delta-rs'
        ``to_pyarrow_dataset`` routes I/O through Python callbacks from Arrow threads, which can
        abort the interpreter at exit.)
        """
        spec = self.tables.spec(name)
        table = self.delta_table(name, version)
        files = (
            table.file_uris(file_pruning_predicate=partitions) if partitions else table.file_uris()
        )
        schema = spec.arrow_schema
        if not files:
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        partitioning = (
            ds.partitioning(pa.schema([schema.field(c) for c in spec.partition_by]), flavor="hive")
            if spec.partition_by
            else None
        )
        base = self.location(name)
        if "://" in base:  # pyarrow filesystems take paths without the scheme
            files = [f.split("://", 1)[1] for f in files]
            base = base.split("://", 1)[1]
        dataset = ds.dataset(
            files,
            schema=schema,
            format="parquet",
            partitioning=partitioning,
            partition_base_dir=base if partitioning else None,
            filesystem=self.filesystem(),
        )
        return dataset.to_table(columns=columns)

    def filesystem(self) -> pafs.FileSystem | None:
        """pyarrow's filesystem for the storage root (None for a local path)."""
        root = self.storage.root
        if "://" not in root:
            return None
        if root.startswith("s3://"):
            s3 = self.storage.s3
            kwargs: dict[str, Any] = {"region": s3.region}
            if s3.endpoint_url:
                scheme, _, host = s3.endpoint_url.partition("://")
                kwargs.update(endpoint_override=host, scheme=scheme)
            if s3.access_key_id is not None and s3.secret_access_key is not None:
                kwargs["access_key"] = s3.access_key_id.get_secret_value()
                kwargs["secret_key"] = s3.secret_access_key.get_secret_value()
            if s3.session_token is not None:
                kwargs["session_token"] = s3.session_token.get_secret_value()
            return pafs.S3FileSystem(**kwargs)
        filesystem, _ = pafs.FileSystem.from_uri(root)
        return filesystem

    def bind(self, spark: SparkSession) -> None:
        """Point ``spark``'s S3A filesystem at this catalog's object storage (session confs, so
        one session can serve several storage roots); nothing for local roots."""
        for key, value in self.storage.s3a_options().items():
            spark.conf.set(key, value)

    def ensure(self, spark: SparkSession, spec: TableSpec) -> None:
        """Create ``spec``'s table at its location if missing (schema, partitioning, properties:
        change data feed on) and register it in the Spark catalog under its logical name."""
        location = self.location(spec.name)
        self.bind(spark)
        if not SparkDeltaTable.isDeltaTable(spark, location):
            builder = (
                SparkDeltaTable.createIfNotExists(spark).location(location).addColumns(spec.schema)
            )
            if spec.description:
                builder = builder.comment(spec.description)
            if spec.partition_by:
                builder = builder.partitionedBy(*spec.partition_by)
            for key, value in spec.configuration.items():
                builder = builder.property(key, value)
            builder.execute()
        self.register(spark, spec.name)

    def register(self, spark: SparkSession, name: str) -> None:
        """Register the existing table ``name`` in ``spark``'s catalog at its location.

        The name is an external table (``CREATE TABLE … USING delta LOCATION``); a name left
        registered at another location (another storage root in the same session) is re-pointed.
        A managed table of the same name is never dropped.

        Raises:
            CatalogConflictError: ``name`` is a managed table elsewhere.
        """
        location = self.location(name)
        self.bind(spark)
        registered = _registered(spark)
        if registered.get(name) == location:
            return
        spec = self.tables.spec(name)
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {spec.layer}")
        if name in registered:
            # Ours, at another root (one session serving several storage roots): forget the
            # name only. Going through Spark's DROP TABLE would first open the old table, which
            # may be gone or unreachable.
            _forget_external_table(spark, spec.layer, spec.short_name)
        elif spark.catalog.tableExists(name):  # registered before this process (a metastore)
            current = spark.sql(f"DESCRIBE DETAIL {name}").first()
            if current is not None and _same_location(str(current["location"]), location):
                registered[name] = location
                return
            if spark.catalog.getTable(name).tableType.upper() != "EXTERNAL":
                raise CatalogConflictError(
                    f"{name} is a managed table in the Spark catalog, not the lake's table at "
                    f"{location}; drop or rename it, or use another storage.root"
                )
            spark.sql(f"DROP TABLE {name}")  # external: only the name goes, never the data
        quoted = location.replace("\\", "\\\\").replace("'", "\\'")
        spark.sql(f"CREATE TABLE {name} USING delta LOCATION '{quoted}'")
        registered[name] = location

    def register_all(self, spark: SparkSession) -> list[str]:
        """Register every table that exists under this storage root; returns their names."""
        names = [name for name in self.tables.names() if self.exists(name)]
        for name in names:
            self.register(spark, name)
        return names


class CatalogConflictError(RuntimeError):
    """A lake table's logical name is taken by another table in the Spark catalog."""


# Spark application id -> logical name -> location registered by this process.
_REGISTRATIONS: dict[str, dict[str, str]] = {}


def _registered(spark: SparkSession) -> dict[str, str]:
    try:
        key = spark.sparkContext.applicationId
    except Exception:  # Spark Connect: no SparkContext; one registry per session object
        key = str(id(spark))
    return _REGISTRATIONS.setdefault(key, {})


def _forget_external_table(spark: SparkSession, schema: str, table: str) -> None:
    """Remove an external table's entry from the session catalog without reading the table."""
    jvm = spark._jvm  # py4j: the catalog API has no "forget" call
    if jvm is None:  # Spark Connect: only SQL, which opens the table first
        spark.sql(f"DROP TABLE IF EXISTS {schema}.{table}")
        return
    identifier = jvm.org.apache.spark.sql.catalyst.TableIdentifier(
        table, jvm.scala.Option.apply(schema)
    )
    session_catalog = spark._jsparkSession.sessionState().catalog()
    session_catalog.dropTable(identifier, True, False)  # if exists, no purge


def _unpacked(commit: dict[str, Any]) -> dict[str, Any]:
    raw = commit.get("userMetadata")
    if not isinstance(raw, str):
        return commit
    try:
        stamp = json.loads(raw)
    except ValueError:
        return commit
    return {**commit, **stamp} if isinstance(stamp, dict) else commit


def _same_location(a: str, b: str) -> bool:
    def norm(path: str) -> str:
        return path.removeprefix("file:").removeprefix("//").rstrip("/")

    return norm(a) == norm(b)


def _partition_filter(column: str, op: str, value: Any) -> Any:
    """A delta-rs partition filter tuple as a Spark Column."""

    col = F.col(column)
    if op in ("in", "not in"):
        values = list(value)
        return col.isin(values) if op == "in" else ~col.isin(values)
    ops = {
        "=": col == value,
        "!=": col != value,
        "<": col < value,
        "<=": col <= value,
        ">": col > value,
        ">=": col >= value,
    }
    if op not in ops:
        raise ValueError(f"unsupported partition filter operator {op!r}")
    return ops[op]
