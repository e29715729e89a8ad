"""``lakehouse``: Data quality."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from pipelines.cli.common import (
    EnvOption,
    JsonOption,
    app,
    friendly_errors,
    out,
)
from pipelines.quality.report import accounting_report, latest_results
from pipelines.runtime import lakehouse

quality_app = typer.Typer(
    help="Data quality: accounting checks and suite reports.", no_args_is_help=True
)
app.add_typer(quality_app, name="quality")


# -- quality ----------------------------------------------------------------------------------
@quality_app.command("check")
@friendly_errors
def quality_check(env: EnvOption = None, as_json: JsonOption = False) -> None:
    """Check the accounting: every batch's input = silver + quarantine + duplicates (+ dropped),
    batch totals match the tables, and every Great Expectations suite ran and passed (each
    silver batch that wrote rows has a result; gold's latest). Exits 1 when broken."""

    lake = lakehouse(env)
    settings = lake.settings
    report = accounting_report(
        lake.catalog,
        require_suites=settings.quality.great_expectations.enabled,
    )
    if as_json:
        print(json.dumps({"ok": report.ok, **report.__dict__}, default=str))
    else:
        verdict = "[green]holds[/]" if report.ok else "[bold red]BROKEN[/]"
        out.print(f"accounting of silver.events over {report.batches} batches: {verdict}")
        for key, value in report.totals.items():
            out.print(f"  {key}: {value:,}", highlight=False)
        for name, rows in report.table_rows.items():
            out.print(f"  table rows ({name}): {rows:,}", highlight=False)
        for batch in report.broken_batches:
            out.print(
                f"  [red]✗[/] batch {batch['batch_id']}: input {batch['input']} "
                f"!= accounted {batch['accounted']}"
            )
        for mismatch in report.mismatches:
            out.print(f"  [red]✗[/] {mismatch}")
        for problem in report.suite_problems:
            out.print(f"  [red]✗[/] {problem}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@quality_app.command("report")
@friendly_errors
def quality_report(
    limit: Annotated[int, typer.Option(min=1, help="Latest batches to show.")] = 10,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """The latest batch and Great Expectations suite results, and where the Data Docs are."""

    lake = lakehouse(env)
    settings = lake.settings
    report = latest_results(lake.catalog, settings, limit)
    if as_json:
        print(json.dumps(report, default=str))
        return
    batches = Table(
        "batch",
        "input",
        "written",
        "quarantined",
        "duplicates",
        "warnings",
        "ok",
        title="quality.batch_results (silver.events)",
    )
    for row in report["batches"]:
        batches.add_row(
            str(row["batch_id"]),
            f"{row['input_rows']:,}",
            f"{row['written_rows']:,}",
            f"{row['quarantined_rows']:,}",
            f"{row['duplicates_in_batch'] + row['duplicates_existing']:,}",
            f"{sum(c for _, c in row['warnings_by_rule']):,}",
            "✓" if row["invariant_holds"] else "✗",
        )
    out.print(batches)
    suites = Table(
        "suite", "batch", "success", "expectations", "failed", title="quality.suite_results"
    )
    for row in report["suites"]:
        suites.add_row(
            row["suite"],
            row["batch_label"],
            "[green]✓[/]" if row["success"] else "[red]✗[/]",
            f"{row['successful']}/{row['evaluated']}",
            "; ".join(row["failed"]) or "-",
        )
    out.print(suites)
    out.print(f"Data Docs: {report['data_docs'] or 'not built yet (run silver with GX enabled)'}")
