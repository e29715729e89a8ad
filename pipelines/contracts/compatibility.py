"""Schema evolution rules: which changes between two contract versions break consumers.

Breaking: a field removed, a field's type changed, a field that becomes required (new or
existing), enum values removed, a closed object (``additionalProperties: false``) becoming
stricter. Compatible: new optional fields, enum values added, descriptions and bounds on text.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.contracts.registry import (
    ContractError,
    ContractRegistry,
    EventContract,
    flatten_schema,
)


@dataclass
class CompatibilityReport:
    event_type: str
    old_version: int
    new_version: int
    breaking: list[str] = field(default_factory=list)
    compatible: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaking


def check_compatibility(old: EventContract, new: EventContract) -> CompatibilityReport:
    """Compare ``new`` against ``old``; every difference lands in ``breaking`` or ``compatible``."""
    report = CompatibilityReport(old.event_type, old.version, new.version)
    _compare(old.schema, new.schema, "", report)
    return report


def check_versions(
    registry: ContractRegistry, event_types: Iterable[str]
) -> list[CompatibilityReport]:
    """Each registered version of ``event_types`` against the version before it."""
    reports = []
    for event_type in event_types:
        for old, new in itertools.pairwise(registry.versions(event_type)):
            reports.append(
                check_compatibility(registry.get(event_type, old), registry.get(event_type, new))
            )
    return reports


def check_candidate(
    registry: ContractRegistry, path: Path, event_type: str | None = None
) -> CompatibilityReport:
    """A proposed schema file against the latest registered version of its event type (named,
    or read from the file's ``event_type`` const, or from its folder's name).

    Raises:
        ContractError: the file is missing, its event type unknown, or there is nothing earlier
            to compare it with.
    """
    new = candidate_contract(registry, path, event_type)
    older = [
        v
        for v in registry.versions(new.event_type)
        if registry.get(new.event_type, v).source.resolve() != new.source.resolve()
    ]
    if not older:
        raise ContractError(f"no earlier version of {new.event_type} to compare {path} with")
    return check_compatibility(registry.get(new.event_type, max(older)), new)


def candidate_contract(
    registry: ContractRegistry, path: Path, event_type: str | None = None
) -> EventContract:
    """The contract a proposed schema file would register (version from its ``v<N>.json`` name,
    else the next one)."""
    if not path.is_file():
        raise ContractError(f"candidate schema {path} does not exist")
    flat = flatten_schema(path)
    declared = flat.get("properties", {}).get("event_type", {}).get("const")
    event_type = event_type or declared or path.parent.name
    if event_type not in registry.event_types:
        raise ContractError(
            f"cannot tell which event type {path} is for; pass it as an argument "
            f"(known: {', '.join(registry.event_types)})"
        )
    match = re.match(r"v(\d+)\.json$", path.name)
    version = int(match.group(1)) if match else max(registry.versions(event_type)) + 1
    return EventContract(event_type, version, flat, path)


def _compare(
    old: dict[str, Any], new: dict[str, Any], path: str, report: CompatibilityReport
) -> None:
    old_props: dict[str, Any] = old.get("properties", {})
    new_props: dict[str, Any] = new.get("properties", {})
    old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
    for name in old_props:
        if name not in new_props:
            report.breaking.append(f"removed field {_at(path, name)}")
    for name, sub in new_props.items():
        where = _at(path, name)
        if name not in old_props:
            if name in new_required:
                report.breaking.append(f"new required field {where}")
            else:
                report.compatible.append(f"added optional field {where}")
            continue
        if name in new_required and name not in old_required:
            report.breaking.append(f"field {where} became required")
        elif name in old_required and name not in new_required:
            report.compatible.append(f"field {where} became optional")
        _compare_field(old_props[name], sub, where, report)


def _compare_field(
    old: dict[str, Any], new: dict[str, Any], where: str, report: CompatibilityReport
) -> None:
    old_types, new_types = _types(old), _types(new)
    if old_types != new_types:
        report.breaking.append(
            f"retyped field {where}: {'|'.join(sorted(old_types))} -> {'|'.join(sorted(new_types))}"
        )
        return
    if "enum" in old or "enum" in new:
        old_enum, new_enum = set(old.get("enum", [])), set(new.get("enum", []))
        if "enum" not in old:
            report.breaking.append(f"field {where} is now restricted to {sorted(new_enum)}")
        elif "enum" in new and old_enum - new_enum:
            report.breaking.append(f"field {where} no longer allows {sorted(old_enum - new_enum)}")
        elif new_enum - old_enum:
            report.compatible.append(f"field {where} also allows {sorted(new_enum - old_enum)}")
    if old.get("additionalProperties", True) and new.get("additionalProperties", True) is False:
        report.breaking.append(f"object {where} no longer accepts unknown fields")
    if "object" in new_types:
        _compare(old, new, where, report)


def _types(schema: dict[str, Any]) -> set[str]:
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    if alternatives:
        out: set[str] = set()
        for alt in alternatives:
            out |= _types(alt)
        return out
    declared = schema.get("type")
    if declared is None:
        if "properties" in schema:
            return {"object"}
        if "const" in schema:
            return {type(schema["const"]).__name__}
        return {"any"}
    types = set(declared) if isinstance(declared, list) else {declared}
    if "format" in schema and "string" in types:
        types = (types - {"string"}) | {f"string({schema['format']})"}
    return types


def _at(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
