"""A Delta table's change data feed as a Spark streaming source, on delta-rs (``lakehouse-delta``).

The embedded replacement for ``readStream.format("delta").option("readChangeFeed", "true")``.

* Offsets are table versions: ``{"version": v}`` means every version up to ``v`` has been read.
  They live in the Spark checkpoint, so a restarted query resumes after the last committed batch.
* A micro-batch reads the change data feed of versions ``(start, end]`` through delta-rs. Commits
  that change no data (compaction, vacuum) contribute nothing: maintenance never re-delivers rows.
* ``maxRowsPerTrigger`` caps a micro-batch by the rows the commits added (whole versions; at least
  one), also under ``Trigger.AvailableNow``, which stops at the version seen when the query began.
* Rows carry ``_change_type``, ``_commit_version`` and ``_commit_timestamp``; by default only
  inserts and update post-images are emitted (``changeTypes``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

FORMAT = "lakehouse-delta"
CDF_FIELDS = [
    StructField("_change_type", StringType(), True),
    StructField("_commit_version", LongType(), True),
    StructField("_commit_timestamp", TimestampType(), True),
]


class DeltaSourceError(RuntimeError):
    """The change feed cannot be read; the message names the table and the fix."""


@dataclass(frozen=True)
class DeltaSourceOptions:
    path: str
    storage_options: dict[str, str] = field(default_factory=dict)
    starting_version: int | None = 0  # None = latest (only changes after the query starts)
    max_rows_per_trigger: int | None = None
    min_partitions: int = 2
    change_types: tuple[str, ...] = ("insert", "update_postimage")

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> DeltaSourceOptions:
        opts = {k.lower(): v for k, v in options.items()}
        if not opts.get("path"):
            raise DeltaSourceError(
                f"{FORMAT}: option 'path' (the Delta table location) is required"
            )
        starting = opts.get("startingversion", "earliest").strip().lower()
        if starting == "earliest":
            version: int | None = 0
        elif starting == "latest":
            version = None
        elif starting.isdigit():
            version = int(starting)
        else:
            raise DeltaSourceError(
                f"{FORMAT}: startingVersion must be 'earliest', 'latest' or a version number, "
                f"got {starting!r}"
            )
        cap = opts.get("maxrowspertrigger")
        return cls(
            path=opts["path"],
            storage_options=json.loads(opts.get("storageoptions", "{}")),
            starting_version=version,
            max_rows_per_trigger=int(cap) if cap else None,
            min_partitions=int(opts.get("minpartitions", 2)),
            change_types=tuple(
                t.strip() for t in opts.get("changetypes", "insert,update_postimage").split(",")
            ),
        )

    def table(self, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(self.path, version=version, storage_options=self.storage_options)
        except Exception as exc:
            raise DeltaSourceError(
                f"cannot open Delta table at {self.path}: {exc}; has the job that writes it run?"
            ) from None


class DeltaChangeFeedSource(DataSource):
    """``spark.readStream.format("lakehouse-delta").option("path", …).load()``"""

    @classmethod
    def name(cls) -> str:
        return FORMAT

    def schema(self) -> StructType:
        options = DeltaSourceOptions.parse(self.options)
        table_schema = from_arrow_schema(pa.schema(options.table().schema().to_arrow()))
        return StructType([*table_schema.fields, *CDF_FIELDS])

    def streamReader(self, schema: StructType) -> DeltaChangeFeedReader:
        return DeltaChangeFeedReader(DeltaSourceOptions.parse(self.options), schema)


class VersionRange(InputPartition):
    """Versions ``first..last`` (inclusive) of the change feed: one Spark task."""

    def __init__(
        self, first: int, last: int, options: DeltaSourceOptions, schema: StructType
    ) -> None:
        super().__init__((first, last))
        self.first = first
        self.last = last
        self.options = options
        self.schema = schema


class DeltaChangeFeedReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Driver side: plans version ranges. ``read`` runs in the executors' Python workers."""

    def __init__(self, options: DeltaSourceOptions, schema: StructType) -> None:
        self.options = options
        self.schema = schema
        self._table: DeltaTable | None = None
        self._target: int | None = None

    def _latest_version(self) -> int:
        if self._table is None:
            self._table = self.options.table()
        else:
            self._table.update_incremental()
        return int(self._table.version())

    def initialOffset(self) -> dict[str, Any]:
        starting = self.options.starting_version
        if starting is None:
            return {"version": self._latest_version()}
        return {"version": starting - 1}

    def getDefaultReadLimit(self) -> ReadLimit:
        cap = self.options.max_rows_per_trigger
        return ReadMaxRows(cap) if cap else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        self._target = self._latest_version()

    def latestOffset(self, start: dict[str, Any], limit: ReadLimit) -> dict[str, Any]:
        begin = int(start["version"])
        latest = self._latest_version()
        if self._target is not None:
            latest = min(latest, self._target)
        if latest <= begin:
            return {"version": begin}
        if isinstance(limit, ReadMaxRows):
            latest = self._versions_within(begin, latest, limit.max_rows)
        return {"version": latest}

    def reportLatestOffset(self) -> dict[str, Any] | None:
        return {"version": self._latest_version()} if self._table is not None else None

    def partitions(self, start: dict[str, Any], end: dict[str, Any]) -> Sequence[InputPartition]:
        first, last = int(start["version"]) + 1, int(end["version"])
        return [
            VersionRange(a, b, self.options, self.schema)
            for a, b in split_versions(first, last, self.options.min_partitions)
        ]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, VersionRange)
        return read_changes(partition)

    def commit(self, end: dict[str, Any]) -> None:
        """Nothing to do: offsets are kept in the Spark checkpoint."""

    def _versions_within(self, begin: int, latest: int, max_rows: int) -> int:
        """The last version in ``(begin, latest]`` such that the rows added stay within
        ``max_rows`` (always at least one version, so a large commit still progresses)."""
        assert self._table is not None
        added = {
            int(commit["version"]): int(
                (commit.get("operationMetrics") or {}).get("num_added_rows", 0)
            )
            for commit in self._table.history(latest - begin)
            if begin < int(commit.get("version", -1)) <= latest
        }
        total, end = 0, begin
        for version in range(begin + 1, latest + 1):
            rows = added.get(version, 0)
            if end > begin and total + rows > max_rows:
                break
            total, end = total + rows, version
        return end


def split_versions(first: int, last: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous ``(first, last)`` version ranges, at most ``parts`` of them."""
    count = last - first + 1
    if count <= 0:
        return []
    size = -(-count // max(1, parts))
    return [(a, min(last, a + size - 1)) for a in range(first, last + 1, size)]


def read_changes(part: VersionRange) -> Iterator[pa.RecordBatch]:
    """Yield the change feed of the part's versions, cast to the Spark schema's Arrow types."""
    table = part.options.table()
    target = to_arrow_schema(part.schema, timezone="UTC")
    reader = pa.RecordBatchReader.from_stream(
        table.load_cdf(starting_version=part.first, ending_version=part.last)
    )
    keep = pa.array(part.options.change_types, pa.string())
    for batch in reader:
        if batch.num_rows == 0:
            continue
        columns = {name: batch.column(name) for name in batch.schema.names}
        change_type = pc.cast(columns["_change_type"], pa.string())
        mask = pc.is_in(change_type, value_set=keep)
        arrays = []
        for field_ in target:
            column = change_type if field_.name == "_change_type" else columns[field_.name]
            arrays.append(_cast(column, field_.type))
        out = pa.RecordBatch.from_arrays(arrays, schema=target).filter(mask)
        if out.num_rows:
            yield out


def _cast(column: pa.Array, to: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(to) and pa.types.is_timestamp(column.type) and column.type.tz is None:
        column = pc.assume_timezone(column, "UTC")
    return pc.cast(column, to)
