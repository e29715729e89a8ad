"""``lakehouse``: The versioned event contract."""

from __future__ import annotations

import json
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
    ContractRegistry,
)
from pipelines.contracts.compatibility import check_candidate, check_versions
from pipelines.contracts.registry import SCHEMAS_DIR
from pipelines.contracts.spark_schema import event_spark_schema

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
    if candidate is not None:
        reports = [check_candidate(registry, candidate, event_types[0] if event_types else None)]
    else:
        reports = check_versions(registry, event_types or registry.event_types)
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
