"""``lakehouse``: Databricks notebooks, run locally."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.common import (
    EnvOption,
    JsonOption,
    app,
    friendly_errors,
    out,
)
from pipelines.config import ConfigError
from pipelines.notebooks import run_notebook

notebook_app = typer.Typer(help="Databricks notebooks, run locally.", no_args_is_help=True)
app.add_typer(notebook_app, name="notebook")


# -- notebooks --------------------------------------------------------------------------------
@notebook_app.command("run")
@friendly_errors
def notebook_run(
    path: Annotated[Path, typer.Argument(help="A Databricks source-format notebook.")],
    env: EnvOption = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Widget value, k=v (repeatable)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run a scheduled-job notebook locally with a widgets/dbutils shim (cells in order)."""

    params: dict[str, str] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r} must be key=value")
        params[key] = value
    result = run_notebook(
        path, env or os.environ.get("LAKEHOUSE_ENV", "local"), params, echo=not as_json
    )
    if as_json:
        out.print(
            json.dumps(
                {
                    "notebook": str(path),
                    "widgets": result.widgets,
                    "cells_run": result.cells_run,
                    "seconds": round(result.seconds, 2),
                    "exit_value": result.exit_value,
                },
                default=str,
            ),
            highlight=False,
        )
    else:
        out.print(
            f"[green]{path}[/]: {result.cells_run} cells in {result.seconds:.1f}s; "
            f"exit value: {result.exit_value}",
            highlight=False,
        )
