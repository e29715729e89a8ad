"""Shared pieces of the command line: consoles, options, error handling, output helpers."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version as pkg_version
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from pipelines.bronze.data_loss import DataLossError
from pipelines.config import ConfigError, Settings, TriggerSettings, spark_interval
from pipelines.contracts import (
    ContractError,
)
from pipelines.jvm import JarsMissingError
from pipelines.lake.catalog import CatalogConflictError, TableNotFoundError
from pipelines.lake.maintenance import MaintenanceError
from pipelines.lake.snapshots import SnapshotError
from pipelines.lake.tables import UnknownTableError
from pipelines.notebooks import NotebookError
from pipelines.quality.expectations import QualityConfigError
from pipelines.streaming.kafka import (
    EmbeddedKafkaError,
    KafkaUnavailableError,
)
from pipelines.streaming.queries import StreamingJobError
from pipelines.training.point_in_time import LeakageError

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    help="Streaming lakehouse for real-time recommendations: Kafka -> Spark -> Delta.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console()
err = Console(stderr=True)

EnvOption = Annotated[
    str | None,
    typer.Option(
        "--env",
        "-e",
        help="Environment: conf/<env>.yaml over conf/base.yaml (default: $LAKEHOUSE_ENV or local).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on the last line.")]
AvailableNowOption = Annotated[
    bool, typer.Option("--available-now", help="Drain what the source holds now, then stop.")
]
ProcessingTimeOption = Annotated[
    str | None,
    typer.Option(
        "--processing-time", help="Run continuously with this trigger interval, e.g. '5s'."
    ),
]
TimeoutOption = Annotated[
    float | None, typer.Option(help="Stop a continuous run after this many seconds.")
]

_USER_ERRORS = (
    EmbeddedKafkaError,
    ConfigError,
    QualityConfigError,
    SnapshotError,
    MaintenanceError,
    LeakageError,
    ContractError,
    KafkaUnavailableError,
    JarsMissingError,
    CatalogConflictError,
    TableNotFoundError,
    UnknownTableError,
    StreamingJobError,
    NotebookError,
    DataLossError,
)


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors a user can fix into one red line and a non-zero exit (2 for config)."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except _USER_ERRORS as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None

    return wrapper


@app.callback(invoke_without_command=True)
def _root(
    context: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(pkg_version("lakehouse-pipelines"))
        raise typer.Exit(0)
    if context.invoked_subcommand is None:
        out.print(context.get_help())
        raise typer.Exit(2)


# -- helpers for output -----------------------------------------------------------------------
@contextmanager
def progress_bar(console: Console, label: str, total: int) -> Iterator[Callable[[int], None]]:
    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def info_dict(info: Any) -> dict[str, Any]:
    data = dict(info.__dict__)
    data["last_commit"] = info.last_commit.isoformat() if info.last_commit else None
    return data


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def trigger_from_flags(
    settings: Settings, available_now: bool, processing_time: str | None
) -> TriggerSettings:
    if available_now and processing_time:
        raise ConfigError("choose one of --available-now and --processing-time, not both")
    if processing_time:
        interval = normalise_interval(processing_time)
        return TriggerSettings(mode="processing-time", interval=interval)
    if available_now:
        return TriggerSettings(mode="available-now")
    return settings.streaming.trigger


def normalise_interval(text: str) -> str:
    try:
        return spark_interval(text)
    except ValueError:
        raise ConfigError(
            f"--processing-time {text!r} is not a duration; use e.g. 5s, 500ms, 1m"
        ) from None
