"""``lakehouse``: Tables, history, SQL, snapshots and maintenance."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from pyspark.errors import AnalysisException, ParseException
from rich.table import Table

from pipelines.cli.common import (
    EnvOption,
    JsonOption,
    app,
    err,
    friendly_errors,
    human_size,
    info_dict,
    out,
)
from pipelines.lake.maintenance import maintain
from pipelines.lake.snapshots import Snapshots
from pipelines.runtime import lakehouse
from pipelines.training.sets import DEFAULT_SNAPSHOT_TABLES

snapshot_app = typer.Typer(
    help="Named snapshots: table -> Delta version, pinned.", no_args_is_help=True
)
app.add_typer(snapshot_app, name="snapshot")


# -- tables / sql -----------------------------------------------------------------------------
@app.command("tables")
@friendly_errors
def tables(env: EnvOption = None, as_json: JsonOption = False) -> None:
    """List every table of the lake: version, rows, files, size, last commit."""
    lake = lakehouse(env)
    infos = lake.catalog.infos()
    if as_json:
        print(json.dumps({"tables": [info_dict(i) for i in infos]}))
        return
    table = Table("table", "version", "rows", "files", "size", "last commit", "location")
    for info in infos:
        if not info.exists:
            table.add_row(info.name, "-", "-", "-", "-", "not created yet", info.location)
            continue
        table.add_row(
            info.name,
            str(info.version),
            f"{info.rows:,}",
            str(info.files),
            human_size(info.size_bytes or 0),
            f"{info.last_commit:%Y-%m-%d %H:%M:%S} ({info.last_operation})"
            if info.last_commit
            else "-",
            info.location,
        )
    out.print(table)


@app.command("history")
@friendly_errors
def history(
    table: Annotated[str, typer.Argument(help="Table name, e.g. bronze.events_raw.")],
    limit: Annotated[int, typer.Option(min=1, help="Most recent commits to show.")] = 20,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a table's Delta commits: version, time, operation, rows added, streaming batch."""
    lake = lakehouse(env)
    commits = lake.catalog.history(table, limit)
    rows = [
        {
            "version": c.get("version"),
            "timestamp": c.get("timestamp"),
            "operation": c.get("operation"),
            "rows_added": (c.get("operationMetrics") or {}).get("num_added_rows"),
            "files_added": (c.get("operationMetrics") or {}).get("num_added_files"),
            "batch_id": c.get("lakehouse.batch_id"),
            "app_id": c.get("lakehouse.app_id"),
        }
        for c in commits
    ]
    if as_json:
        print(json.dumps({"table": table, "commits": rows}))
        return
    out_table = Table(
        "version", "committed", "operation", "rows added", "files", "batch", title=table
    )
    for row in rows:
        stamp = row["timestamp"]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp / 1000)) if stamp else "-"
        out_table.add_row(
            str(row["version"]),
            when,
            str(row["operation"]),
            str(row["rows_added"] or "-"),
            str(row["files_added"] or "-"),
            str(row["batch_id"] or "-"),
        )
    out.print(out_table)


@app.command("sql")
@friendly_errors
def sql(
    query: Annotated[
        str, typer.Argument(help="Spark SQL; refer to tables by name, e.g. bronze.events_raw.")
    ],
    limit: Annotated[int, typer.Option(min=1, help="Rows to print at most.")] = 50,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run Spark SQL over the lake's tables (registered under their names) and print the result.

    Delta SQL works as on a cluster: ``SELECT … FROM gold.user_features VERSION AS OF 3``,
    ``DESCRIBE HISTORY bronze.events_raw``.
    """

    lake = lakehouse(env)
    spark = lake.spark
    views = lake.catalog.register_all(spark)
    try:
        frame = spark.sql(query)
        rows = frame.limit(limit + 1).collect()
    except (AnalysisException, ParseException) as exc:
        known = ", ".join(sorted(views)) or "none yet; run `lakehouse demo` or a job first"
        message = str(exc).split("\n")[0]
        err.print(f"[bold red]error:[/] {message}\n  tables: {known}", highlight=False)
        raise typer.Exit(1) from None
    columns = frame.columns
    truncated = len(rows) > limit
    rows = rows[:limit]
    if as_json:
        print(
            json.dumps(
                {
                    "columns": columns,
                    "rows": [r.asDict(recursive=True) for r in rows],
                    "truncated": truncated,
                },
                default=str,
            )
        )
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*["NULL" if v is None else str(v) for v in row])
    out.print(table)
    if truncated:
        out.print(f"(first {limit} rows; use --limit for more)")


# -- snapshots, maintenance, training sets, features -------------------------------------------
@snapshot_app.command("create")
@friendly_errors
def snapshot_create(
    name: Annotated[str, typer.Argument(help="Snapshot name, e.g. train-2026-11.")],
    tables: Annotated[
        list[str] | None,
        typer.Option("--tables", help="Tables to pin (repeatable; default: silver + gold)."),
    ] = None,
    note: Annotated[str, typer.Option(help="Free text kept with the snapshot.")] = "",
    validate: Annotated[
        bool,
        typer.Option("--validate/--no-validate", help="Validate gold tables with their suites."),
    ] = True,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pin the current Delta version of each table under NAME (refused if validation fails)."""

    lake = lakehouse(env)
    catalog = lake.catalog
    validator = lake.snapshot_validator(name, enabled=validate)
    snap = Snapshots(catalog).create(
        name, tables or list(DEFAULT_SNAPSHOT_TABLES), note, validator, spark=lake.spark
    )
    _print_snapshot(snap, as_json)


@snapshot_app.command("list")
@friendly_errors
def snapshot_list(env: EnvOption = None, as_json: JsonOption = False) -> None:
    """Every snapshot, newest first."""

    snaps = Snapshots(lakehouse(env).catalog).list()
    if as_json:
        print(json.dumps({"snapshots": [_snapshot_dict(s) for s in snaps]}))
        return
    table = Table("snapshot", "created", "tables", "note")
    for snap in snaps:
        pins = ", ".join(f"{t}@v{v}" for t, v in sorted(snap.versions.items()))
        table.add_row(snap.name, f"{snap.created_at:%Y-%m-%d %H:%M:%S}", pins, snap.note)
    out.print(table)


@snapshot_app.command("show")
@friendly_errors
def snapshot_show(
    name: Annotated[str, typer.Argument(help="Snapshot name.")],
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """The tables and Delta versions a snapshot pins."""

    _print_snapshot(Snapshots(lakehouse(env).catalog).get(name), as_json)


@snapshot_app.command("delete")
@friendly_errors
def snapshot_delete(
    name: Annotated[str, typer.Argument(help="Snapshot name.")], env: EnvOption = None
) -> None:
    """Forget a snapshot (its versions are no longer protected from VACUUM)."""

    lake = lakehouse(env)
    Snapshots(lake.catalog).delete(name, spark=lake.spark)
    out.print(f"snapshot {name} deleted")


def _snapshot_dict(snap: Any) -> dict[str, Any]:
    return {
        "name": snap.name,
        "versions": snap.versions,
        "created_at": snap.created_at.isoformat(),
        "note": snap.note,
    }


def _print_snapshot(snap: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_snapshot_dict(snap)))
        return
    table = Table(
        "table", "version", title=f"snapshot {snap.name} ({snap.created_at:%Y-%m-%d %H:%M:%S})"
    )
    for name, version in sorted(snap.versions.items()):
        table.add_row(name, str(version))
    out.print(table)


@app.command("maintain")
@friendly_errors
def maintain_cmd(
    tables: Annotated[
        list[str] | None, typer.Option("--tables", help="Tables (default: all).")
    ] = None,
    retention_hours: Annotated[float, typer.Option(min=0, help="VACUUM retention.")] = 168,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report only; change nothing.")
    ] = False,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """OPTIMIZE (compact small files) and VACUUM every table; files pinned snapshots need stay."""

    lake = lakehouse(env)
    report = maintain(
        lake.spark,
        lake.catalog,
        tables,
        retention_hours=retention_hours,
        dry_run=dry_run,
    )
    if as_json:
        print(json.dumps({"dry_run": report.dry_run, "tables": report.tables}, default=str))
        return
    table = Table(
        "table",
        "version",
        "compacted (removed -> added)",
        "vacuumed files",
        "freed",
        "pinned versions",
        title="maintenance" + (" (dry run)" if dry_run else ""),
    )
    for row in report.tables:
        if not row.get("exists"):
            continue
        compaction = row.get("compaction") or {}
        table.add_row(
            row["table"],
            f"{row['version_before']} -> {row['version_after']}",
            f"{compaction.get('files_removed', 0)} -> {compaction.get('files_added', 0)}",
            str(row.get("vacuumed", 0)),
            human_size(int(row.get("bytes_freed") or 0)),
            ", ".join(map(str, sorted(row.get("pinned_versions") or []))) or "-",
        )
    out.print(table)
