"""The table catalog: logical names -> Delta locations, creation, inspection and Spark reads.

Tables are written by delta-rs and follow the open Delta protocol. Spark reads a version of a
table scalably: delta-rs resolves the exact file list of that version from the log, and Spark's
own Parquet reader reads those files (partition values come from the paths).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError as DeltaTableNotFound
from pyspark.sql import DataFrame, SparkSession

from pipelines.config import Settings, StorageSettings
from pipelines.lake.tables import TABLES, TableSpec, table_spec


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
        storage_options: dict[str, str] | None = None,
        *,
        engine: str = "delta-rs",
    ) -> None:
        self.storage = storage.resolved()
        self.storage_options = (
            storage_options if storage_options is not None else self.storage.delta_options()
        )
        self.engine = engine

    @classmethod
    def for_settings(cls, settings: Settings) -> Catalog:
        """The catalog of an environment: its storage, storage options and Delta engine."""
        return cls(settings.storage, engine=settings.engines.delta)

    def location(self, name: str) -> str:
        spec = table_spec(name)
        return f"{self.storage.tables_root}/{spec.layer}/{spec.short_name}"

    def checkpoint(self, query_name: str) -> str:
        """Checkpoint folder of a streaming query: ``<checkpoint root>/<query name>``."""
        return f"{self.storage.checkpoints.rstrip('/')}/{query_name}"

    def exists(self, name: str) -> bool:
        return bool(
            DeltaTable.is_deltatable(self.location(name), storage_options=self.storage_options)
        )

    def ensure(self, spec: TableSpec) -> DeltaTable:
        """Open the table, creating it (schema, partitioning, change data feed) if missing."""
        location = self.location(spec.name)
        if not DeltaTable.is_deltatable(location, storage_options=self.storage_options):
            DeltaTable.create(
                location,
                schema=spec.arrow_schema,
                mode="ignore",
                partition_by=list(spec.partition_by) or None,
                name=spec.name,
                description=spec.description,
                configuration=spec.configuration,
                storage_options=self.storage_options,
            )
        return DeltaTable(location, storage_options=self.storage_options)

    def delta_table(self, name: str, version: int | None = None) -> DeltaTable:
        spec = table_spec(name)
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
        return [self.info(name) for name in sorted(TABLES)]

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        return list(self.delta_table(name).history(limit))

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
        spec = table_spec(name)
        columns = [f.name for f in spec.schema.fields]
        if self.engine == "delta-spark":
            # The cluster adapter: Spark's own Delta reader (jars from the cluster/Maven).
            reader = spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            frame = reader.load(self.location(name))
            for column, op, value in partitions or []:
                frame = frame.filter(_partition_filter(column, op, value))
            return frame.select(*columns)
        dt = self.delta_table(name, version)
        files = dt.file_uris(file_pruning_predicate=partitions) if partitions else dt.file_uris()
        if not files:
            return spark.createDataFrame([], spec.schema)
        if self.storage.remote:
            # Spark has no s3:// filesystem without hadoop-aws (a Maven jar); the embedded
            # engine reads object storage through delta-rs/Arrow instead. Clusters use
            # engines.delta: delta-spark with their s3a filesystem.
            data = self.read_arrow(name, version=version, partitions=partitions)
            return spark.createDataFrame(data, schema=spec.schema).select(*columns)
        frame = (
            spark.read.schema(spec.schema).option("basePath", self.location(name)).parquet(*files)
        )
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
        spec = table_spec(name)
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
            filesystem=self._filesystem(),
        )
        return dataset.to_table(columns=columns)

    def _filesystem(self) -> pafs.FileSystem | None:
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

    def register_views(self, spark: SparkSession) -> dict[str, str]:
        """Register every existing table as a temp view; returns logical name -> view name."""
        registered = {}
        for name, spec in sorted(TABLES.items()):
            if self.exists(name):
                self.read(spark, name).createOrReplaceTempView(spec.view_name)
                registered[name] = spec.view_name
        return registered


def _partition_filter(column: str, op: str, value: Any) -> Any:
    """A delta-rs partition filter tuple as a Spark Column."""
    from pyspark.sql import functions as F

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
