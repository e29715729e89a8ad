"""``lakehouse``: Benchmarks."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from rich.table import Table

from pipelines.benchmarks.bronze import bench_bronze
from pipelines.benchmarks.collector import bench_collector
from pipelines.benchmarks.freshness import bench_freshness
from pipelines.benchmarks.silver import bench_silver
from pipelines.cli.common import (
    EnvOption,
    JsonOption,
    app,
    err,
    friendly_errors,
    normalise_interval,
    out,
)
from pipelines.runtime import lakehouse

bench_app = typer.Typer(
    help="Benchmarks (each measures its baseline in the same run).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


@bench_app.command("bronze")
@friendly_errors
def bench_bronze_cmd(
    events: Annotated[
        int, typer.Option(min=1000, help="Messages to pre-load and drain.")
    ] = 500_000,
    workdir: Annotated[
        str | None, typer.Option(help="Where the benchmark tables go (default: a temp dir).")
    ] = None,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Bronze events/s vs Spark's own Kafka read and a plain consumer drain, in one run."""

    lake = lakehouse(env)
    settings = lake.settings
    result = bench_bronze(
        settings,
        lake.spark_factory,
        events,
        stage=_stage_printer(as_json),
        workdir=workdir,
    )
    keys = (
        "raw_drain_events_per_s",
        "spark_read_events_per_s",
        "bronze_events_per_s",
        "ratio_bronze_to_spark_read",
        "ratio_bronze_to_raw",
        "micro_batches",
        "delta_write_ms_per_batch",
        "delta_commit_overhead_ms",
        "delta_commit_without_txn_ms",
        "complete",
    )
    _print_bench(result, f"bronze benchmark, {events:,} events", keys, as_json)


@bench_app.command("collector")
@friendly_errors
def bench_collector_cmd(
    seconds: Annotated[float, typer.Option(min=1, help="Length of each measured phase.")] = 10.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Closed-loop clients.")] = 16,
    batch_size: Annotated[int, typer.Option(min=1, help="Events per request.")] = 100,
    latency_rate: Annotated[
        float, typer.Option(min=1, help="Events/s for the latency phase (default: half target).")
    ] = 10_000,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Collector accepted events/s (closed loop), p50/p99 latency at a fixed load (open loop),
    and the SDK's cost per track() call."""

    lake = lakehouse(env)
    settings = lake.settings
    result = bench_collector(
        settings,
        seconds=seconds,
        concurrency=concurrency,
        batch_size=batch_size,
        latency_rate=latency_rate,
        stage=_stage_printer(as_json),
    )
    keys = (
        "accepted_events_per_s",
        "requests_per_s",
        "non_200_responses",
        "throughput_target_met",
        "latency_load_events_per_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_max_ms",
        "latency_target_met",
        "sdk_track_us",
    )
    _print_bench(result, f"collector benchmark, {batch_size}-event batches", keys, as_json)


@bench_app.command("silver")
@friendly_errors
def bench_silver_cmd(
    events: Annotated[
        int, typer.Option(min=1000, help="Bronze rows to pre-fill and gate.")
    ] = 200_000,
    workdir: Annotated[
        str | None, typer.Option(help="Where the benchmark tables go (default: a temp dir).")
    ] = None,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Silver events/s vs a parse-only query over the same bronze data, GX overhead separately."""

    lake = lakehouse(env)
    settings = lake.settings
    result = bench_silver(
        settings,
        lake.spark_factory,
        events,
        stage=_stage_printer(as_json),
        workdir=workdir,
    )
    keys = (
        "parse_only_events_per_s",
        "silver_events_per_s",
        "ratio_silver_to_parse_only",
        "silver_with_gx_events_per_s",
        "gx_overhead_seconds_per_batch",
        "micro_batches",
        "accounting_holds",
    )
    _print_bench(result, f"silver benchmark, {events:,} events", keys, as_json)


@bench_app.command("freshness")
@friendly_errors
def bench_freshness_cmd(
    rate: Annotated[int, typer.Option(min=100, help="Offered load, events/s.")] = 5_000,
    seconds: Annotated[float, typer.Option(min=10, help="Measured window, after warm-up.")] = 60,
    warmup: Annotated[float, typer.Option(min=0, help="Warm-up seconds, not measured.")] = 30,
    trigger: Annotated[
        str, typer.Option(help="Processing-time trigger of every hop.")
    ] = "2 seconds",
    workdir: Annotated[
        str | None, typer.Option(help="Where the benchmark tables go (default: a temp dir).")
    ] = None,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """End-to-end freshness (event time -> visible in gold.user_features), p50/p95, and gold
    update time per micro-batch, with every hop on a processing-time trigger."""

    lake = lakehouse(env)
    settings = lake.settings
    result = bench_freshness(
        settings,
        lake.spark_factory,
        rate=rate,
        seconds=seconds,
        warmup_s=warmup,
        trigger=normalise_interval(trigger),
        stage=_stage_printer(as_json),
        workdir=workdir,
    )
    if as_json:
        print(json.dumps(result))
        return
    table = Table("measure", "value", title=f"freshness at {rate:,} events/s, {trigger} triggers")
    for key in (
        "events_measured",
        "events_visible_in_gold",
        "freshness_p50_s",
        "freshness_p95_s",
        "freshness_max_s",
    ):
        table.add_row(key, str(result[key]))
    for name, d in result["batch_seconds"].items():
        table.add_row(
            f"{name} batch seconds p50/p95", f"{d['p50']} / {d['p95']} ({d['batches']} batches)"
        )
    out.print(table)


def _stage_printer(as_json: bool) -> Callable[[str], None]:
    """Benchmark stage lines, on stderr when stdout carries the JSON."""
    console = err if as_json else out
    return lambda message: console.print(f"[dim]›[/] {message}", highlight=False)


def _print_bench(result: dict[str, Any], title: str, keys: Sequence[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    table = Table("measure", "value", title=title)
    for key in keys:
        value = result[key]
        shown = (
            f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        )
        table.add_row(key, shown)
    out.print(table)
