"""Spark schemas derived from the contract's JSON Schemas (never typed by hand).

Everything is nullable on the Spark side: a JSON parser cannot enforce presence, so "required" is
checked by the contract rules of the validation gate, not by the schema.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from pipelines.contracts.registry import ContractError, ContractRegistry, EventContract

_SCALARS: dict[str, DataType] = {
    "string": StringType(),
    "integer": LongType(),
    "number": DoubleType(),
    "boolean": BooleanType(),
}


def spark_type(schema: dict[str, Any], path: str = "$") -> DataType:
    """The Spark type for one JSON Schema node.

    ``oneOf``/``anyOf`` alternatives of one type collapse to it; mixed scalar alternatives (the
    contract's ``timestamp``: epoch ms or RFC 3339) become a string that keeps the raw value.
    """
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    if alternatives:
        types = {_json_type(alt, path) for alt in alternatives} - {"null"}
        if len(types) == 1:
            return spark_type({**schema, "type": types.pop(), "oneOf": None, "anyOf": None}, path)
        if types <= set(_SCALARS):
            return StringType()
        raise ContractError(f"{path}: cannot map alternatives {sorted(types)} to one Spark type")
    json_type = _json_type(schema, path)
    if json_type == "object":
        return StructType(
            [
                StructField(name, spark_type(sub, f"{path}.{name}"), nullable=True)
                for name, sub in schema.get("properties", {}).items()
            ]
        )
    if json_type == "array":
        return ArrayType(spark_type(schema.get("items", {"type": "string"}), f"{path}[]"), True)
    if json_type in _SCALARS:
        return _SCALARS[json_type]
    raise ContractError(f"{path}: JSON type {json_type!r} has no Spark mapping")


def event_spark_schema(contract: EventContract) -> StructType:
    """The Spark schema of one event type at one version."""
    derived = spark_type(contract.schema, contract.event_type)
    assert isinstance(derived, StructType)
    return derived


def unified_event_schema(registry: ContractRegistry) -> StructType:
    """One schema that parses every event type and version: the union of their fields.

    A field that two contracts type differently is an error, because one column cannot hold both.
    """
    merged = StructType([])
    for contract in registry.all():
        merged = merge_struct(merged, event_spark_schema(contract), contract.event_type)
    return merged


def merge_struct(left: StructType, right: StructType, where: str) -> StructType:
    fields = {f.name: f for f in left.fields}
    order = [f.name for f in left.fields]
    for field in right.fields:
        if field.name not in fields:
            fields[field.name] = field
            order.append(field.name)
            continue
        existing = fields[field.name].dataType
        if isinstance(existing, StructType) and isinstance(field.dataType, StructType):
            merged = merge_struct(existing, field.dataType, f"{where}.{field.name}")
            fields[field.name] = StructField(field.name, merged, True)
        elif existing != field.dataType:
            raise ContractError(
                f"field {field.name!r} is {existing.simpleString()} in one contract and "
                f"{field.dataType.simpleString()} in {where}; one column cannot hold both"
            )
    return StructType([fields[name] for name in order])


def _json_type(schema: dict[str, Any], path: str) -> str:
    declared = schema.get("type")
    if declared is None and "const" in schema:
        declared = _python_json_type(schema["const"])
    if declared is None and "properties" in schema:
        declared = "object"
    if isinstance(declared, list):
        non_null = [t for t in declared if t != "null"]
        if len(non_null) != 1:
            raise ContractError(f"{path}: union type {declared} has no single Spark mapping")
        declared = non_null[0]
    if not isinstance(declared, str):
        raise ContractError(f"{path}: no 'type' declared")
    return declared


def _python_json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"
