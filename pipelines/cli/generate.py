"""``lakehouse``: Synthetic events into Kafka."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from pipelines.cli.common import (
    EnvOption,
    JsonOption,
    app,
    err,
    friendly_errors,
    out,
    progress_bar,
)
from pipelines.runtime import lakehouse
from pipelines.streaming.kafka import (
    resolve_bootstrap,
)
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.synthetic.publish import publish_clickstream


# -- generate ---------------------------------------------------------------------------------
@app.command("generate")
@friendly_errors
def generate(
    events: Annotated[
        int, typer.Option("--events", "-n", min=1, help="How many events to produce.")
    ] = 10_000,
    users: Annotated[int, typer.Option(min=1, help="Distinct users.")] = 1_000,
    items: Annotated[int, typer.Option(min=1, help="Catalog size.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same events).")] = 42,
    bad_fraction: Annotated[
        float,
        typer.Option(
            "--bad-fraction", min=0.0, max=1.0, help="Share of malformed/invalid/duplicate events."
        ),
    ] = 0.0,
    days: Annotated[
        float, typer.Option(min=0.01, help="Event times span this many days up to now.")
    ] = 3.0,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Produce realistic synthetic clickstream to Kafka (one topic per event type)."""

    lake = lakehouse(env)
    settings = lake.settings
    servers = resolve_bootstrap(settings)
    generator = ClickstreamGenerator(
        users=users, items=items, seed=seed, bad_fraction=bad_fraction, days=days
    )
    console = err if as_json else out
    with progress_bar(console, "producing", events) as advance:
        result = publish_clickstream(
            generator, events, settings.kafka, servers, on_progress=advance
        )
    summary = {"bootstrap_servers": servers, **result.to_dict()}
    if as_json:
        print(json.dumps(summary))
        return
    table = Table(
        "topic",
        "produced",
        title=f"produced {result.delivery.total_delivered:,} events to {servers}",
    )
    for topic, count in sorted(result.delivery.delivered.items()):
        table.add_row(topic, f"{count:,}")
    out.print(table)
    if result.generation.by_kind:
        bad = ", ".join(f"{k}={v}" for k, v in sorted(result.generation.by_kind.items()))
        out.print(f"bad events mixed in: {bad}")
