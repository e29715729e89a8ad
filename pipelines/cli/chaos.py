"""``lakehouse``: The chaos suite."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pipelines.chaos.report import render, totals
from pipelines.chaos.runner import PARTS, run_chaos
from pipelines.cli.common import (
    EnvOption,
    JsonOption,
    app,
    err,
    friendly_errors,
    out,
)
from pipelines.runtime import lakehouse


# -- chaos ------------------------------------------------------------------------------------
@app.command("chaos")
@friendly_errors
def chaos_cmd(
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes: about a minute per part.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of every random choice and generated input.")] = 7,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only", help="Run only this part (repeatable): jobs, failover, restarts, hostile."
        ),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Where brokers, collectors, spools and tables go (default: a temporary folder, "
            "removed after a clean run, kept after a failure)."
        ),
    ] = None,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Crash the jobs, kill a broker of three, restart the collector and the broker under SDK
    load, and feed the collector a hostile corpus; then count what was lost or duplicated.

    Every part starts its own brokers and processes on free 127.0.0.1 ports. Exits 1 when an
    event was lost or duplicated or a part failed. See docs/CHAOS.md.
    """

    unknown = sorted(set(only or ()) - set(PARTS))
    if unknown:
        raise typer.BadParameter(
            f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}", param_hint="--only"
        )
    lake = lakehouse(env)
    settings = lake.settings
    folder = workdir or Path(tempfile.mkdtemp(prefix="lakehouse-chaos-"))
    console = err if as_json else out

    def log(message: str) -> None:
        console.print(f"[dim]›[/] {escape(message)}", highlight=False, soft_wrap=True)

    started = time.monotonic()
    results = run_chaos(
        folder, quick=quick, seed=seed, parts=set(only or ()) or None, log=log, settings=settings
    )
    seconds = time.monotonic() - started
    summary = totals(results)
    failed = bool(summary["failed_parts"])
    if as_json:
        record = {"results": [r.to_dict() for r in results], **summary}
        print(json.dumps(record | {"seconds": round(seconds, 1), "workdir": str(folder)}))
    else:
        out.print(render(results), markup=False, highlight=False, soft_wrap=True)
        out.print(f"wall time {seconds:.0f}s", highlight=False)
    if workdir is None and not failed:
        shutil.rmtree(folder, ignore_errors=True)
    elif failed:
        console.print(f"[yellow]logs and data kept in {folder}[/]", highlight=False)
    if failed:
        raise typer.Exit(1)
