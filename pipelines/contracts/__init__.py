"""Versioned event contracts: JSON Schemas, their registry, and derived Spark schemas."""

from typing import Any

from pipelines.contracts import spark_schema
from pipelines.contracts.compatibility import CompatibilityReport, check_compatibility
from pipelines.contracts.registry import (
    SCHEMAS_DIR,
    ContractError,
    ContractRegistry,
    EventContract,
    Violation,
    event_time_ms,
)

# The Spark schemas import pyspark, which apps using only the SDK or the collector should not
# pay for (about a second); they load on first use.
_SPARK = ("event_spark_schema", "unified_event_schema")


def __getattr__(name: str) -> Any:
    if name in _SPARK:
        return getattr(spark_schema, name)
    raise AttributeError(f"module 'pipelines.contracts' has no attribute {name!r}")


__all__ = [
    "SCHEMAS_DIR",
    "CompatibilityReport",
    "ContractError",
    "ContractRegistry",
    "EventContract",
    "Violation",
    "check_compatibility",
    "event_spark_schema",
    "event_time_ms",
    "unified_event_schema",
]
