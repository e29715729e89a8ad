"""``lakehouse``: The HTTP collector."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from pipelines.cli.common import (
    EnvOption,
    app,
    err,
    friendly_errors,
    out,
)
from pipelines.collector import serve
from pipelines.runtime import lakehouse
from pipelines.streaming.kafka import (
    resolve_bootstrap,
)

collector_app = typer.Typer(
    help="The HTTP collector: contract-validated events into Kafka.", no_args_is_help=True
)
app.add_typer(collector_app, name="collector")


# -- collector --------------------------------------------------------------------------------
@collector_app.command("serve")
@friendly_errors
def collector_serve(
    env: EnvOption = None,
    host: Annotated[
        str | None, typer.Option(help="Bind address (default: collector.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default: collector.port; 0 = any free port).")
    ] = None,
) -> None:
    """Serve POST /v1/events and the Segment API (/v1/batch, track, page, identify) until Ctrl-C.

    Valid events go to their event type's topic, invalid ones to the DLQ with the reason; a 2xx
    is sent only after Kafka acknowledged them. /healthz, /readyz and /metrics for operations.
    """

    lake = lakehouse(env)
    settings = lake.settings
    servers = resolve_bootstrap(settings)  # no broker yet: stop here, naming the fix

    def ready(url: str) -> None:
        out.print(f"collector listening on [bold]{url}[/] (Kafka {servers}); Ctrl-C to stop")
        out.print(f"  POST {url}/v1/events · Segment API {url}/v1/batch · {url}/metrics")
        sys.stdout.flush()

    def brokers() -> str:  # read again when Kafka is down: the broker may have moved
        return resolve_bootstrap(settings)

    try:
        unacknowledged = serve(settings, brokers, host=host, port=port, on_ready=ready)
    except OSError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if unacknowledged:
        err.print(f"[yellow]{unacknowledged} messages were not acknowledged by Kafka[/]")
        raise typer.Exit(1)
    out.print("collector stopped; every accepted event was acknowledged by Kafka")
