"""What a lake table is (``TableSpec``), the registry the catalog is handed, and the lake's own
snapshot table. Each layer defines its tables in its own ``tables.py``; ``pipelines.tables`` gathers
them.

Schemas here are the single definition of each table; the Arrow schema (for reads outside Spark
and for batches built in Python) is derived from the Spark one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import pyarrow as pa
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)


@dataclass(frozen=True)
class TableSpec:
    """A Delta table the pipelines own."""

    name: str  # "<layer>.<table>", e.g. "bronze.events_raw"
    schema: StructType
    partition_by: tuple[str, ...] = ()
    description: str = ""
    change_data_feed: bool = True
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def layer(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def short_name(self) -> str:
        return self.name.split(".", 1)[1]

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        return to_arrow_schema(self.schema, timezone="UTC")

    @property
    def configuration(self) -> dict[str, str]:
        conf = {
            "delta.enableChangeDataFeed": str(self.change_data_feed).lower(),
            # delta-rs (the pandas/Arrow reader outside Spark) cannot read deletion vectors yet;
            # Databricks turns them on for new tables by default, so every lake table says no.
            "delta.enableDeletionVectors": "false",
        }
        conf.update(self.properties)
        return conf


LAKE_SNAPSHOTS = TableSpec(
    name="lake.snapshots",
    schema=StructType(
        [
            StructField("name", StringType(), False),
            StructField("table", StringType(), False),
            StructField("version", LongType(), False),
            StructField("created_at", TimestampType(), False),
            StructField("note", StringType(), True),
        ]
    ),
    description="Named snapshots: one row per (snapshot name, table) with the pinned Delta "
    "version. Maintenance keeps the files of every pinned version.",
)


class UnknownTableError(LookupError):
    """A table name that the catalog does not define."""

    def __str__(self) -> str:
        return str(self.args[0])


class TableRegistry:
    """Every table of a lake by logical name, gathered from the layers that own them (the
    catalog is handed one; it knows no layer itself)."""

    def __init__(self, specs: Iterable[TableSpec]) -> None:
        self._specs: dict[str, TableSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"table {spec.name} is defined twice")
            self._specs[spec.name] = spec

    def spec(self, name: str) -> TableSpec:
        """The table called ``name``.

        Raises:
            UnknownTableError: no such table (the message lists the known ones).
        """
        if name not in self._specs:
            known = ", ".join(sorted(self._specs))
            raise UnknownTableError(f"unknown table {name!r} (known: {known})")
        return self._specs[name]

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[TableSpec]:
        return iter(self._specs.values())
