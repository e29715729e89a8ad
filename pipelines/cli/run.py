"""``lakehouse``: Run a pipeline job."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from pipelines.bronze.job import run_bronze
from pipelines.cli.common import (
    AvailableNowOption,
    EnvOption,
    JsonOption,
    ProcessingTimeOption,
    TimeoutOption,
    app,
    err,
    friendly_errors,
    out,
    trigger_from_flags,
)
from pipelines.gold.job import run_gold
from pipelines.runtime import lakehouse
from pipelines.silver.job import run_silver
from pipelines.silver.sessions_job import run_sessions
from pipelines.streaming.kafka import (
    resolve_bootstrap,
)

run_app = typer.Typer(
    help="Run a pipeline job (a Spark Structured Streaming query).", no_args_is_help=True
)
app.add_typer(run_app, name="run")


# -- run --------------------------------------------------------------------------------------
@run_app.command("bronze")
@friendly_errors
def run_bronze_cmd(
    available_now: Annotated[
        bool, typer.Option("--available-now", help="Drain what Kafka holds now, then stop.")
    ] = False,
    processing_time: Annotated[
        str | None,
        typer.Option(
            "--processing-time", help="Run continuously with this trigger interval, e.g. '5s'."
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop a continuous run after this many seconds.")
    ] = None,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Kafka -> bronze.events_raw (checkpoint at <checkpoint root>/bronze.events_raw)."""

    lake = lakehouse(env)
    settings = lake.settings
    trigger = trigger_from_flags(settings, available_now, processing_time)
    servers = resolve_bootstrap(settings)
    spark = lake.spark
    console = err if as_json else out
    started = time.perf_counter()
    with console.status(f"bronze: {trigger.mode} from {servers}") as status:

        def progress(query: Any, stats: Any) -> None:
            status.update(
                f"bronze: {stats.rows_written:,} rows in {stats.batches_written} batches "
                f"({'active' if query.isActive else 'done'})"
            )

        run = run_bronze(
            spark,
            settings,
            servers,
            trigger=trigger,
            on_progress=progress,
            timeout_s=timeout,
            monitor=lake.monitor,
        )
    summary = {
        "table": "bronze.events_raw",
        "rows_written": run.stats.rows_written,
        "batches_written": run.stats.batches_written,
        "replayed_batches_skipped": run.stats.batches_skipped,
        "table_version": run.table_version,
        "seconds": round(time.perf_counter() - started, 2),
        "query_id": run.query_id,
        "skipped_lost_from_kafka": run.stats.skipped_events,
        "data_loss": [gap.as_dict() for gap in run.stats.data_loss],
    }
    for gap in run.stats.data_loss:
        err.print(f"[bold red]data loss:[/] {gap.describe()}", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(summary))
    else:
        out.print(
            f"bronze.events_raw: +{run.stats.rows_written:,} rows "
            f"in {run.stats.batches_written} batches (skipped replays: "
            f"{run.stats.batches_skipped}), now at version {run.table_version}"
        )


@run_app.command("silver")
@friendly_errors
def run_silver_cmd(
    available_now: AvailableNowOption = False,
    processing_time: ProcessingTimeOption = None,
    timeout: TimeoutOption = None,
    gx: Annotated[
        bool,
        typer.Option("--gx/--no-gx", help="Run the Great Expectations suite (config default)."),
    ] = True,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """bronze.events_raw -> gate -> silver.events + silver.quarantine + quality.batch_results."""

    lake = lakehouse(env)
    settings = lake.settings
    trigger = trigger_from_flags(settings, available_now, processing_time)
    spark = lake.spark
    validator = lake.silver_validator() if gx else None
    console = err if as_json else out
    with console.status(f"silver: {trigger.mode} from bronze.events_raw") as status:

        def progress(query: Any, stats: Any) -> None:
            status.update(
                f"silver: {stats.total('written_rows'):,} written, "
                f"{stats.total('quarantined_rows'):,} quarantined "
                f"in {stats.batches_written} batches"
            )

        run = run_silver(
            spark,
            settings,
            trigger=trigger,
            validator=validator,
            on_progress=progress,
            timeout_s=timeout,
            monitor=lake.monitor,
        )

    summary = run.stats.summary() | {
        "silver_version": run.silver_version,
        "quarantine_version": run.quarantine_version,
        "query_id": run.query_id,
    }
    if as_json:
        print(json.dumps(summary))
        return
    out.print(
        f"silver.events: +{summary['written']:,} rows, "
        f"silver.quarantine: +{summary['quarantined']:,}, "
        f"duplicates: {summary['duplicates']:,} in {run.stats.batches_written} batches "
        f"(skipped replays: {run.stats.batches_skipped}); accounting "
        + ("[green]holds[/]" if summary["invariant_holds"] else "[red]BROKEN[/]")
    )
    for rule, count in summary["quarantined_by_rule"].items():
        out.print(f"  quarantined by {rule}: {count:,}", highlight=False)


@run_app.command("sessions")
@friendly_errors
def run_sessions_cmd(
    available_now: AvailableNowOption = False,
    processing_time: ProcessingTimeOption = None,
    timeout: TimeoutOption = None,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """silver.events -> silver.sessions (incremental recomputation of affected users, MERGE)."""

    lake = lakehouse(env)
    settings = lake.settings
    trigger = trigger_from_flags(settings, available_now, processing_time)
    spark = lake.spark
    console = err if as_json else out
    with console.status(f"sessions: {trigger.mode} from silver.events"):
        run = run_sessions(
            spark, settings, trigger=trigger, timeout_s=timeout, monitor=lake.monitor
        )
    summary = {**run.stats.__dict__, "table_version": run.table_version, "query_id": run.query_id}
    if as_json:
        print(json.dumps(summary))
        return
    out.print(
        f"silver.sessions: {run.stats.sessions_upserted:,} sessions upserted, "
        f"{run.stats.sessions_deleted:,} merged away, from {run.stats.events_read:,} new events "
        f"in {run.stats.batches_written} batches; now at version {run.table_version}"
    )


@run_app.command("gold")
@friendly_errors
def run_gold_cmd(
    available_now: AvailableNowOption = False,
    processing_time: ProcessingTimeOption = None,
    timeout: TimeoutOption = None,
    gx: Annotated[
        bool, typer.Option("--gx/--no-gx", help="Gate every batch with the gold suites (config).")
    ] = True,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """silver.events -> gold.user_features / gold.item_features (+ history), gated by GX."""

    lake = lakehouse(env)
    settings = lake.settings
    trigger = trigger_from_flags(settings, available_now, processing_time)
    spark = lake.spark
    gate = lake.gold_gate() if gx else None
    console = err if as_json else out
    with console.status(f"gold: {trigger.mode} from silver.events"):
        run = run_gold(
            spark, settings, trigger=trigger, gate=gate, timeout_s=timeout, monitor=lake.monitor
        )
    summary = {
        "batches_published": run.stats.batches_published,
        "batches_rejected": run.stats.batches_rejected,
        "users_published": run.stats.users_published,
        "items_published": run.stats.items_published,
        "feature_ts": [t.isoformat() for t in run.stats.feature_ts],
        "rejections": run.stats.rejections,
        "versions": run.versions,
        "query_id": run.query_id,
    }
    if as_json:
        print(json.dumps(summary))
        return
    out.print(
        f"gold: {run.stats.users_published:,} user rows and "
        f"{run.stats.items_published:,} item rows "
        f"published in {run.stats.batches_published} batches "
        f"({run.stats.batches_rejected} rejected by their suites)"
    )
    for rejection in run.stats.rejections:
        out.print(f"  [red]✗[/] {rejection}", highlight=False)
