"""Versioned event contracts: JSON Schemas, their registry and compatibility rules.

The Spark schemas derived from them (``pipelines.contracts.spark_schema``) and the rules compiled
to Spark expressions (``pipelines.contracts.spark_rules``) are imported from their own modules:
they need pyspark, which the tracking SDK and the collector, which use only the registry, do not.
"""

from pipelines.contracts.compatibility import CompatibilityReport, check_compatibility
from pipelines.contracts.registry import (
    SCHEMAS_DIR,
    ContractError,
    ContractRegistry,
    EventContract,
    Violation,
    event_time_ms,
)

__all__ = [
    "SCHEMAS_DIR",
    "CompatibilityReport",
    "ContractError",
    "ContractRegistry",
    "EventContract",
    "Violation",
    "check_compatibility",
    "event_time_ms",
]
