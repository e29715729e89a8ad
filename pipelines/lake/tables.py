"""Every table of the lake: logical name, schema, partitioning, description.

Schemas here are the single definition of each table; the Arrow schema handed to delta-rs is
derived from the Spark one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import pyarrow as pa
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import DateType, StructField, StructType, TimestampType

from pipelines.streaming.kafka_source import KAFKA_SOURCE_SCHEMA


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

    @property
    def view_name(self) -> str:
        """The name the table is registered under in Spark SQL (``bronze_events_raw``)."""
        return self.name.replace(".", "_")

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        return to_arrow_schema(self.schema, timezone="UTC")

    @property
    def configuration(self) -> dict[str, str]:
        conf = {"delta.enableChangeDataFeed": str(self.change_data_feed).lower()}
        conf.update(self.properties)
        return conf


BRONZE_EVENTS_RAW = TableSpec(
    name="bronze.events_raw",
    schema=StructType(
        [
            *(f for f in KAFKA_SOURCE_SCHEMA.fields if f.name != "timestamp"),
            StructField("kafka_timestamp", TimestampType(), True),
            StructField("ingest_ts", TimestampType(), False),
            StructField("ingest_date", DateType(), False),
        ]
    ),
    partition_by=("ingest_date",),
    description="Raw Kafka records, append-only: key, value as received, topic/partition/offset, "
    "broker timestamp and ingest time.",
)

TABLES: dict[str, TableSpec] = {spec.name: spec for spec in [BRONZE_EVENTS_RAW]}


class UnknownTableError(LookupError):
    """A table name that the catalog does not define."""

    def __str__(self) -> str:
        return str(self.args[0])


def table_spec(name: str) -> TableSpec:
    if name not in TABLES:
        raise UnknownTableError(f"unknown table {name!r} (known: {', '.join(sorted(TABLES))})")
    return TABLES[name]
