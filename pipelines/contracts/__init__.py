"""Versioned event contracts: JSON Schemas, their registry, and derived Spark schemas."""

from pipelines.contracts.compatibility import CompatibilityReport, check_compatibility
from pipelines.contracts.registry import (
    SCHEMAS_DIR,
    ContractError,
    ContractRegistry,
    EventContract,
    Violation,
    event_time_ms,
)
from pipelines.contracts.spark_schema import event_spark_schema, unified_event_schema

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
