"""``lakehouse``: The versioned event contract."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipelines.cli.common import (
    JsonOption,
    app,
    friendly_errors,
    out,
)
from pipelines.contracts import (
    ContractError,
    ContractRegistry,
    check_compatibility,
    event_spark_schema,
)
from pipelines.contracts.registry import SCHEMAS_DIR, EventContract, flatten_schema

contracts_app = typer.Typer(help="The versioned event contract.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")

# -- contracts --------------------------------------------------------------------------------
SchemasDirOption = Annotated[
    Path,
    typer.Option("--schemas-dir", help="Contract folder (<type>/v<N>.json).", show_default=False),
]


@contracts_app.command("list")
@friendly_errors
def contracts_list(schemas_dir: SchemasDirOption = SCHEMAS_DIR) -> None:
    """List event types, their versions and required fields."""
    registry = ContractRegistry(schemas_dir)
    table = Table("event type", "versions", "required fields (latest)")
    for event_type in registry.event_types:
        table.add_row(
            event_type,
            ", ".join(f"v{v}" for v in registry.versions(event_type)),
            ", ".join(registry.get(event_type).required),
        )
    out.print(table)


@contracts_app.command("show")
@friendly_errors
def contracts_show(
    event_type: Annotated[str, typer.Argument(help="Event type, e.g. purchase.")],
    version: Annotated[int | None, typer.Option(help="Schema version (default: latest).")] = None,
    spark_schema: Annotated[
        bool, typer.Option("--spark", help="Print the derived Spark schema.")
    ] = False,
    schemas_dir: SchemasDirOption = SCHEMAS_DIR,
) -> None:
    """Print an event type's flattened JSON Schema (or its derived Spark schema)."""
    contract = ContractRegistry(schemas_dir).get(event_type, version)
    if spark_schema:
        print(event_spark_schema(contract).simpleString())
    else:
        print(json.dumps(contract.schema, indent=2))


@contracts_app.command("check")
@friendly_errors
def contracts_check(
    event_types: Annotated[
        list[str] | None,
        typer.Argument(help="Event types to check (default: all).", show_default=False),
    ] = None,
    candidate: Annotated[
        Path | None,
        typer.Option(
            help="A proposed schema file, compared with the latest registered version of its type."
        ),
    ] = None,
    schemas_dir: SchemasDirOption = SCHEMAS_DIR,
    as_json: JsonOption = False,
) -> None:
    """Reject breaking changes: each version against the previous one (or a candidate against
    the latest). Exits 1 when a change removes or retypes a field or adds a required one."""
    registry = ContractRegistry(schemas_dir)
    pairs: list[tuple[EventContract, EventContract]] = []
    if candidate is not None:
        new = _candidate_contract(candidate, registry, event_types)
        older = [
            v
            for v in registry.versions(new.event_type)
            if registry.get(new.event_type, v).source.resolve() != new.source.resolve()
        ]
        if not older:
            raise ContractError(
                f"no earlier version of {new.event_type} to compare {candidate} with"
            )
        pairs.append((registry.get(new.event_type, max(older)), new))
    else:
        for event_type in event_types or registry.event_types:
            versions = registry.versions(event_type)
            pairs += [
                (registry.get(event_type, a), registry.get(event_type, b))
                for a, b in itertools.pairwise(versions)
            ]
    reports = [check_compatibility(old, new) for old, new in pairs]
    breaking = any(not r.ok for r in reports)
    if as_json:
        print(json.dumps({"ok": not breaking, "checks": [r.__dict__ for r in reports]}))
    else:
        if not reports:
            out.print("nothing to compare: every event type has a single version")
        for report in reports:
            verdict = "[green]compatible[/]" if report.ok else "[bold red]BREAKING[/]"
            out.print(
                f"{report.event_type} v{report.old_version} -> v{report.new_version}: {verdict}"
            )
            for change in report.breaking:
                out.print(f"  [red]✗[/] {change}", highlight=False)
            for change in report.compatible:
                out.print(f"  [green]✓[/] {change}", highlight=False)
    if breaking:
        raise typer.Exit(1)


def _candidate_contract(
    path: Path, registry: ContractRegistry, event_types: list[str] | None
) -> EventContract:
    if not path.is_file():
        raise ContractError(f"candidate schema {path} does not exist")
    flat = flatten_schema(path)
    declared = flat.get("properties", {}).get("event_type", {}).get("const")
    event_type = event_types[0] if event_types else (declared or path.parent.name)
    if event_type not in registry.event_types:
        raise ContractError(
            f"cannot tell which event type {path} is for; pass it as an argument "
            f"(known: {', '.join(registry.event_types)})"
        )
    match = re.match(r"v(\d+)\.json$", path.name)
    version = int(match.group(1)) if match else max(registry.versions(event_type)) + 1
    return EventContract(event_type, version, flat, path)
