"""``lakehouse``: the command line of the streaming lakehouse.

Every command takes ``--env`` (default ``$LAKEHOUSE_ENV`` or ``local``), loads the settings once
and passes them down. Known failures (bad config, unreachable broker, missing table, failed
query) print one readable line and exit non-zero; ``--json`` puts one JSON object on the last
line of stdout and sends progress to stderr.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from pipelines.bronze.data_loss import DataLossError
from pipelines.config import ConfigError, Settings, TriggerSettings, load_settings, spark_interval
from pipelines.contracts import (
    ContractError,
    ContractRegistry,
    check_compatibility,
    event_spark_schema,
)
from pipelines.contracts.registry import SCHEMAS_DIR, EventContract, flatten_schema
from pipelines.jvm import JarsMissingError
from pipelines.lake.catalog import Catalog, CatalogConflictError, TableNotFoundError
from pipelines.lake.maintenance import MaintenanceError
from pipelines.lake.snapshots import SnapshotError
from pipelines.lake.tables import UnknownTableError
from pipelines.notebooks import NotebookError
from pipelines.quality.expectations import QualityConfigError
from pipelines.streaming.kafka import (
    EmbeddedKafkaError,
    KafkaUnavailableError,
    embedded_broker,
    embedded_data_dir,
    resolve_bootstrap,
    write_embedded_state,
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
kafka_app = typer.Typer(
    help="The embedded Kafka broker and topic inspection.", no_args_is_help=True
)
run_app = typer.Typer(
    help="Run a pipeline job (a Spark Structured Streaming query).", no_args_is_help=True
)
contracts_app = typer.Typer(help="The versioned event contract.", no_args_is_help=True)
bench_app = typer.Typer(
    help="Benchmarks (each measures its baseline in the same run).", no_args_is_help=True
)
quality_app = typer.Typer(
    help="Data quality: accounting checks and suite reports.", no_args_is_help=True
)
app.add_typer(kafka_app, name="kafka")
app.add_typer(run_app, name="run")
app.add_typer(contracts_app, name="contracts")
app.add_typer(bench_app, name="bench")
app.add_typer(quality_app, name="quality")
snapshot_app = typer.Typer(
    help="Named snapshots: table -> Delta version, pinned.", no_args_is_help=True
)
training_app = typer.Typer(help="Point-in-time training sets.", no_args_is_help=True)
features_app = typer.Typer(help="Feature definitions.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(training_app, name="training-set")
app.add_typer(features_app, name="features")
drift_app = typer.Typer(help="Feature drift against the champion's snapshot.", no_args_is_help=True)
app.add_typer(drift_app, name="drift")
metrics_app = typer.Typer(
    help="Prometheus metrics of the lakehouse's health.", no_args_is_help=True
)
app.add_typer(metrics_app, name="metrics")
alerts_app = typer.Typer(help="Threshold alerts (monitoring.alerts).", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")
notebook_app = typer.Typer(help="Databricks notebooks, run locally.", no_args_is_help=True)
app.add_typer(notebook_app, name="notebook")
collector_app = typer.Typer(
    help="The HTTP collector: contract-validated events into Kafka.", no_args_is_help=True
)
app.add_typer(collector_app, name="collector")

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


def _settings(env: str | None) -> Settings:
    return load_settings(env)


def _gx_validator(settings: Settings, spark: Any) -> Any:
    """The silver GX suite validator when enabled in config, else None."""
    if not settings.quality.great_expectations.enabled:
        return None
    from pipelines.lake.catalog import Catalog as _Catalog
    from pipelines.silver.job import silver_suite_validator

    return silver_suite_validator(settings, _Catalog.for_settings(settings))


def _spark(settings: Settings) -> Any:
    from pipelines.spark import build_spark

    return build_spark(settings)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        from importlib.metadata import version as pkg_version

        out.print(pkg_version("lakehouse-pipelines"))
        raise typer.Exit(0)


# -- kafka ------------------------------------------------------------------------------------
@kafka_app.command("serve")
@friendly_errors
def kafka_serve(
    env: EnvOption = None,
    brokers: Annotated[
        int,
        typer.Option(
            "--brokers",
            help="1, or 3 for a replicated cluster (replication factor 3, min.insync.replicas 2).",
        ),
    ] = 1,
) -> None:
    """Run the embedded Kafka broker (Apache Kafka, KRaft) on 127.0.0.1 until Ctrl-C.

    Topics and messages live in <storage root>/_kafka and survive a restart. Other commands with
    the same --env find the broker automatically (kafka.bootstrap_servers: embedded).
    """
    if brokers not in (1, 3):
        raise typer.BadParameter("must be 1 or 3", param_hint="--brokers")
    settings = _settings(env)
    data_dir = embedded_data_dir(settings)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the broker like Ctrl-C does

    previous = signal.signal(signal.SIGTERM, interrupt)
    idle = threading.Event()
    try:
        out.print(f"starting {brokers} embedded Kafka broker(s), data in {data_dir} …")
        sys.stdout.flush()
        with embedded_broker(settings, num_brokers=brokers, data_dir=data_dir) as broker:
            state = write_embedded_state(settings, broker.bootstrap_servers)
            out.print(
                f"embedded Kafka broker listening on [bold]{broker.bootstrap_servers}[/] "
                f"(started in {broker.start_seconds:.1f}s)"
            )
            out.print(f"  (address recorded in {state}; Ctrl-C to stop)")
            out.print(
                f"  export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", highlight=False
            )
            sys.stdout.flush()
            try:
                while broker.running:
                    idle.wait(1.0)  # until Ctrl-C / SIGTERM, or a broker JVM dies
                logs = ", ".join(str(f) for f in broker.log_files)
                raise KafkaUnavailableError(
                    f"the embedded Kafka broker stopped unexpectedly; see {logs}"
                )
            finally:
                state.unlink(missing_ok=True)
    except KeyboardInterrupt:
        out.print("embedded Kafka broker stopped")
    except EmbeddedKafkaError as exc:
        raise KafkaUnavailableError(str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    from pipelines.notebooks import run_notebook

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


# -- monitoring -------------------------------------------------------------------------------
@metrics_app.command("serve")
@friendly_errors
def metrics_serve(
    env: EnvOption = None,
    host: Annotated[
        str | None, typer.Option(help="Bind address (default: monitoring.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default: monitoring.port; 0 = any free port).")
    ] = None,
) -> None:
    """Serve the lakehouse's health as Prometheus metrics on /metrics until Ctrl-C: per query
    (rates, batch duration, backlog), per table (rows, freshness), per quality rule, per drift
    feature, and the alerts firing. Dashboard: pipelines/monitoring/grafana/lakehouse.json."""
    from pipelines.monitoring.exporter import HealthCollector, serve_metrics
    from pipelines.monitoring.health import lake_health

    settings = _settings(env)
    catalog = Catalog.for_settings(settings)
    collector = HealthCollector(lambda: lake_health(settings, catalog), settings.monitoring.alerts)
    server, bound = serve_metrics(
        collector,
        host or settings.monitoring.host,
        settings.monitoring.port if port is None else port,
    )
    bind = host or settings.monitoring.host
    out.print(f"metrics on [bold]http://{bind}:{bound}/metrics[/]; Ctrl-C to stop")
    sys.stdout.flush()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


@app.command("status")
@friendly_errors
def status(
    env: EnvOption = None,
    refresh: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 5.0,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    as_json: JsonOption = False,
) -> None:
    """A live terminal dashboard: running queries, backlog, freshness, per-hop latency, the last
    quality results and the alerts firing (Ctrl-C to leave)."""
    from rich.live import Live

    from pipelines.monitoring.alerts import evaluate
    from pipelines.monitoring.health import lake_health
    from pipelines.monitoring.status import render_status

    settings = _settings(env)
    catalog = Catalog.for_settings(settings)

    def snapshot() -> Any:
        health = lake_health(settings, catalog)
        return health, evaluate(health, settings.monitoring.alerts)

    if as_json or once:
        health, alerts = snapshot()
        if as_json:
            out.print(
                json.dumps(
                    {**health.to_dict(), "alerts": [a.to_dict() for a in alerts]}, default=str
                ),
                highlight=False,
            )
        else:
            out.print(render_status(health, alerts, settings.env))
        return
    with Live(console=out, auto_refresh=False, screen=False) as live:
        try:
            while True:
                health, alerts = snapshot()
                live.update(render_status(health, alerts, settings.env), refresh=True)
                time.sleep(refresh)
        except KeyboardInterrupt:
            pass


@app.command("report")
@friendly_errors
def report_cmd(
    env: EnvOption = None,
    output: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path(
        "report.html"
    ),
) -> None:
    """Write a self-contained HTML report with plots: throughput and batch duration over time,
    quarantine by rule, feature drift, model vs baseline over training runs, and the tables."""
    from pipelines.monitoring.report import build_report

    settings = _settings(env)
    page = build_report(settings)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page)
    out.print(f"report written to [bold]{output}[/] ({len(page) / 1024:,.0f} KiB)")


@alerts_app.command("check")
@friendly_errors
def alerts_check(
    env: EnvOption = None,
    webhook: Annotated[
        str | None,
        typer.Option(help="POST fired alerts here (default: monitoring.alerts.webhook_url)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate the thresholds in monitoring.alerts; exit 1 and print what fired."""
    from pipelines.monitoring.alerts import evaluate, post_webhook
    from pipelines.monitoring.health import lake_health

    settings = _settings(env)
    alerts = evaluate(lake_health(settings), settings.monitoring.alerts)
    target = webhook or settings.monitoring.alerts.webhook_url
    delivered = None
    if alerts and target:
        delivered = post_webhook(target, alerts, settings.env)
    if as_json:
        out.print(
            json.dumps({"firing": [a.to_dict() for a in alerts], "webhook_status": delivered}),
            highlight=False,
        )
    elif alerts:
        for a in alerts:
            line = escape(f"[{a.rule}] {a.subject}: {a.message}")
            err.print(f"[bold red]ALERT[/] {line}", highlight=False, soft_wrap=True)
    else:
        out.print("[green]no alerts firing[/]")
    if alerts:
        raise typer.Exit(1)


# -- doctor -----------------------------------------------------------------------------------
@app.command("doctor")
@friendly_errors
def doctor(
    env: EnvOption = None,
    skip_spark: Annotated[
        bool, typer.Option("--skip-spark", help="Skip the checks that start a JVM.")
    ] = False,
    kafka_timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker.")] = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Check Java, Spark, the configured adapters (delta-spark / Kafka jars?), the broker,
    storage, checkpoints, MLflow and the collector's keys; exit 1 naming the fix if any fails."""
    from pipelines.doctor import run_checks

    settings = _settings(env)
    checks = run_checks(
        settings, spark=not skip_spark, spark_factory=_spark, kafka_timeout_s=kafka_timeout
    )
    failed = [c for c in checks if c.status == "fail"]
    if as_json:
        out.print_json(
            data={"env": settings.env, "ok": not failed, "checks": [c.to_dict() for c in checks]}
        )
    else:
        table = Table(
            "check", "status", "detail", "fix", title=f"lakehouse doctor ({settings.env})"
        )
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}
        for c in checks:
            table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail, c.fix)
        out.print(table)
    if failed:
        err.print(
            f"[bold red]{len(failed)} check(s) failed:[/] "
            + "; ".join(f"{c.name}: {c.fix}" for c in failed),
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


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
    from pipelines.collector import serve

    settings = _settings(env)
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


@kafka_app.command("topics")
@friendly_errors
def kafka_topics(env: EnvOption = None, as_json: JsonOption = False) -> None:
    """List topics with their partitions and message counts (high - low watermark)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    settings = _settings(env)
    servers = resolve_bootstrap(settings)
    consumer = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": "lakehouse-cli",
            "log_level": 3,
            **settings.kafka.security.client_config(),
        }
    )
    try:
        metadata = consumer.list_topics(timeout=settings.kafka.consumer.metadata_timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailableError(f"Kafka brokers {servers} did not answer: {exc}") from None
    rows = []
    for name in sorted(metadata.topics):
        if name.startswith("__"):
            continue
        parts = metadata.topics[name].partitions
        marks = [consumer.get_watermark_offsets(TopicPartition(name, p), timeout=5) for p in parts]
        rows.append(
            {"topic": name, "partitions": len(parts), "messages": sum(h - lo for lo, h in marks)}
        )
    consumer.close()
    if as_json:
        print(json.dumps({"bootstrap_servers": servers, "topics": rows}))
        return
    table = Table("topic", "partitions", "messages", title=f"Kafka at {servers}")
    for row in rows:
        table.add_row(row["topic"], str(row["partitions"]), f"{row['messages']:,}")
    out.print(table)


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
    from pipelines.synthetic.clickstream import ClickstreamGenerator
    from pipelines.synthetic.publish import publish_clickstream

    settings = _settings(env)
    servers = resolve_bootstrap(settings)
    generator = ClickstreamGenerator(
        users=users, items=items, seed=seed, bad_fraction=bad_fraction, days=days
    )
    console = err if as_json else out
    with _bar(console, "producing", events) as advance:
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
    from pipelines.bronze.job import run_bronze

    settings = _settings(env)
    trigger = _trigger(settings, available_now, processing_time)
    servers = resolve_bootstrap(settings)
    spark = _spark(settings)
    console = err if as_json else out
    started = time.perf_counter()
    with console.status(f"bronze: {trigger.mode} from {servers}") as status:

        def progress(query: Any, stats: Any) -> None:
            status.update(
                f"bronze: {stats.rows_written:,} rows in {stats.batches_written} batches "
                f"({'active' if query.isActive else 'done'})"
            )

        run = run_bronze(
            spark, settings, servers, trigger=trigger, on_progress=progress, timeout_s=timeout
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
    from pipelines.silver.job import run_silver

    settings = _settings(env)
    trigger = _trigger(settings, available_now, processing_time)
    spark = _spark(settings)
    validator = _gx_validator(settings, spark) if gx else None
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
        )
    from pipelines.demo import silver_summary

    summary = silver_summary(run.stats) | {
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
    from pipelines.silver.sessions_job import run_sessions

    settings = _settings(env)
    trigger = _trigger(settings, available_now, processing_time)
    spark = _spark(settings)
    console = err if as_json else out
    with console.status(f"sessions: {trigger.mode} from silver.events"):
        run = run_sessions(spark, settings, trigger=trigger, timeout_s=timeout)
    summary = {**run.stats.__dict__, "table_version": run.table_version, "query_id": run.query_id}
    if as_json:
        print(json.dumps(summary))
        return
    out.print(
        f"silver.sessions: {run.stats.sessions_upserted:,} sessions upserted, "
        f"{run.stats.sessions_deleted:,} merged away, from {run.stats.events_read:,} new events "
        f"in {run.stats.batches_written} batches; now at version {run.table_version}"
    )


def _trigger(
    settings: Settings, available_now: bool, processing_time: str | None
) -> TriggerSettings:
    if available_now and processing_time:
        raise ConfigError("choose one of --available-now and --processing-time, not both")
    if processing_time:
        interval = _normalise_interval(processing_time)
        return TriggerSettings(mode="processing-time", interval=interval)
    if available_now:
        return TriggerSettings(mode="available-now")
    return settings.streaming.trigger


def _normalise_interval(text: str) -> str:
    try:
        return spark_interval(text)
    except ValueError:
        raise ConfigError(
            f"--processing-time {text!r} is not a duration; use e.g. 5s, 500ms, 1m"
        ) from None


# -- tables / sql -----------------------------------------------------------------------------
@app.command("tables")
@friendly_errors
def tables(env: EnvOption = None, as_json: JsonOption = False) -> None:
    """List every table of the lake: version, rows, files, size, last commit."""
    settings = _settings(env)
    infos = Catalog.for_settings(settings).infos()
    if as_json:
        print(json.dumps({"tables": [_info_dict(i) for i in infos]}))
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
            _size(info.size_bytes or 0),
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
    settings = _settings(env)
    commits = Catalog.for_settings(settings).history(table, limit)
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
    from pyspark.errors import AnalysisException, ParseException

    settings = _settings(env)
    spark = _spark(settings)
    views = Catalog.for_settings(settings).register_all(spark)
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
    pairs: list[tuple[EventContract, EventContract]] = []
    if candidate is not None:
        new = _candidate_contract(candidate, registry, event_types)
        older = [
            v
            for v in registry.versions(new.event_type)
            if registry.get(new.event_type, v).source.resolve() != new.source.resolve()
        ]
        if not older:
            raise ContractError(
                f"no earlier version of {new.event_type} to compare {candidate} with"
            )
        pairs.append((registry.get(new.event_type, max(older)), new))
    else:
        for event_type in event_types or registry.event_types:
            versions = registry.versions(event_type)
            pairs += [
                (registry.get(event_type, a), registry.get(event_type, b))
                for a, b in itertools.pairwise(versions)
            ]
    reports = [check_compatibility(old, new) for old, new in pairs]
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


def _candidate_contract(
    path: Path, registry: ContractRegistry, event_types: list[str] | None
) -> EventContract:
    if not path.is_file():
        raise ContractError(f"candidate schema {path} does not exist")
    flat = flatten_schema(path)
    declared = flat.get("properties", {}).get("event_type", {}).get("const")
    event_type = event_types[0] if event_types else (declared or path.parent.name)
    if event_type not in registry.event_types:
        raise ContractError(
            f"cannot tell which event type {path} is for; pass it as an argument "
            f"(known: {', '.join(registry.event_types)})"
        )
    match = re.match(r"v(\d+)\.json$", path.name)
    version = int(match.group(1)) if match else max(registry.versions(event_type)) + 1
    return EventContract(event_type, version, flat, path)


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
    from pipelines.gold.job import gold_suite_gate, run_gold

    settings = _settings(env)
    trigger = _trigger(settings, available_now, processing_time)
    spark = _spark(settings)
    gate = (
        gold_suite_gate(settings, Catalog.for_settings(settings))
        if gx and settings.quality.great_expectations.enabled
        else None
    )
    console = err if as_json else out
    with console.status(f"gold: {trigger.mode} from silver.events"):
        run = run_gold(spark, settings, trigger=trigger, gate=gate, timeout_s=timeout)
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
    from pipelines.demo import DEFAULT_SNAPSHOT_TABLES
    from pipelines.gold.job import gold_snapshot_validator
    from pipelines.lake.snapshots import Snapshots

    settings = _settings(env)
    catalog = Catalog.for_settings(settings)
    validator = (
        gold_snapshot_validator(_spark(settings), settings, catalog, name) if validate else None
    )
    snap = Snapshots(catalog).create(
        name, tables or list(DEFAULT_SNAPSHOT_TABLES), note, validator, spark=_spark(settings)
    )
    _print_snapshot(snap, as_json)


@snapshot_app.command("list")
@friendly_errors
def snapshot_list(env: EnvOption = None, as_json: JsonOption = False) -> None:
    """Every snapshot, newest first."""
    from pipelines.lake.snapshots import Snapshots

    snaps = Snapshots(Catalog.for_settings(_settings(env))).list()
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
    from pipelines.lake.snapshots import Snapshots

    _print_snapshot(Snapshots(Catalog.for_settings(_settings(env))).get(name), as_json)


@snapshot_app.command("delete")
@friendly_errors
def snapshot_delete(
    name: Annotated[str, typer.Argument(help="Snapshot name.")], env: EnvOption = None
) -> None:
    """Forget a snapshot (its versions are no longer protected from VACUUM)."""
    from pipelines.lake.snapshots import Snapshots

    settings = _settings(env)
    Snapshots(Catalog.for_settings(settings)).delete(name, spark=_spark(settings))
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
    from pipelines.lake.maintenance import maintain

    settings = _settings(env)
    report = maintain(
        _spark(settings),
        Catalog.for_settings(settings),
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
            _size(int(row.get("bytes_freed") or 0)),
            ", ".join(map(str, sorted(row.get("pinned_versions") or []))) or "-",
        )
    out.print(table)


@training_app.command("build")
@friendly_errors
def training_set_build(
    snapshot: Annotated[str, typer.Option(help="Snapshot whose versions are read.")],
    labels: Annotated[
        str, typer.Option(help="Outcome that makes a positive: purchase | click.")
    ] = "purchase",
    horizon: Annotated[
        str, typer.Option(help="Outcome window after the exposure, e.g. 24h.")
    ] = "24h",
    seed: Annotated[int, typer.Option(help="Seed of the negative sampling.")] = 42,
    negatives: Annotated[int, typer.Option(min=1, help="Sampled negatives per positive.")] = 4,
    name: Annotated[
        str | None, typer.Option(help="Training set name (default from the inputs).")
    ] = None,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build a point-in-time training set: silver labels, features strictly before each label."""
    from pipelines.config import parse_duration
    from pipelines.training.sets import build_training_set

    if labels not in ("purchase", "click"):
        raise ConfigError(f"--labels must be purchase or click, not {labels!r}")
    try:
        parse_duration(horizon)
    except ValueError as exc:
        raise ConfigError(f"--horizon: {exc}") from None
    settings = _settings(env)
    result = build_training_set(
        _spark(settings),
        settings,
        snapshot=snapshot,
        label_event=labels,
        horizon=horizon,
        seed=seed,
        negatives_per_positive=negatives,
        name=name,
    )
    if as_json:
        print(json.dumps(result.__dict__))
        return
    out.print(
        f"training set [bold]{result.name}[/]: {result.rows:,} rows "
        f"({result.positives:,} positives) "
        f"from snapshot {result.snapshot}; digest {result.digest}"
    )
    out.print(
        "  read " + ", ".join(f"{t}@v{v}" for t, v in sorted(result.versions.items())),
        highlight=False,
    )


@training_app.command("list")
@friendly_errors
def training_set_list(env: EnvOption = None, as_json: JsonOption = False) -> None:
    """Every training set built, newest first."""
    from pipelines.training.sets import training_sets

    rows = training_sets(Catalog.for_settings(_settings(env)))
    if as_json:
        print(json.dumps({"training_sets": rows}, default=str))
        return
    table = Table("name", "snapshot", "labels", "rows", "positives", "digest")
    for row in rows:
        table.add_row(
            str(row["name"]),
            str(row["snapshot"]),
            f"{row['label_event']} / {row['horizon']}",
            f"{row['rows']:,}",
            f"{row['positives']:,}",
            str(row["digest"])[:16] + "…",
        )
    out.print(table)


@features_app.command("docs")
@friendly_errors
def features_docs(
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the Markdown.")] = Path(
        "docs/FEATURES.md"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 if the file is out of date.")
    ] = False,
) -> None:
    """Write docs/FEATURES.md from the feature definitions (or check it is current)."""
    from pipelines.gold.features import features_markdown

    text = features_markdown()
    if check:
        current = out_file.read_text() if out_file.is_file() else ""
        if current != text:
            err.print(f"[red]{out_file} is out of date[/]; run `lakehouse features docs`")
            raise typer.Exit(1)
        out.print(f"{out_file} is up to date")
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text)
    out.print(f"wrote {out_file}")


@app.command("train")
@friendly_errors
def train_cmd(
    snapshot: Annotated[str, typer.Option(help="Snapshot to train from.")],
    seed: Annotated[int, typer.Option(help="Seed (training set negatives).")] = 42,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Retrain the recommender from a snapshot, log it to MLflow, register it, promote if better."""
    from pipelines.training.train import train

    settings = _settings(env)
    run = train(_spark(settings), settings, snapshot=snapshot, seed=seed)
    if as_json:
        print(json.dumps(run.__dict__))
        return
    k = settings.mlflow.k
    table = Table(
        "metric", "item-item model", "popularity baseline", title=f"MLflow run {run.run_id}"
    )
    for name, value in run.metrics.items():
        table.add_row(name, f"{value:.4f}", f"{run.baseline[name]:.4f}")
    out.print(table)
    verdict = "[green]promoted to champion[/]" if run.promoted else "[yellow]kept as challenger[/]"
    against = (
        f" (champion NDCG@{k}: {run.champion_ndcg:.4f})" if run.champion_ndcg is not None else ""
    )
    out.print(f"{run.model_name} v{run.model_version}: {verdict}{against}")
    out.print(
        "inputs: " + ", ".join(f"{t}@v{v}" for t, v in sorted(run.versions.items())),
        highlight=False,
    )


@app.command("recommend")
@friendly_errors
def recommend_cmd(
    user: Annotated[str | None, typer.Option("--user", help="User to recommend for.")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="How many items.")] = 10,
    batch: Annotated[
        bool, typer.Option("--batch", help="Write gold.recommendations for every active user.")
    ] = False,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Top-k items for a user from the champion model (unknown users: cold-start fallback)."""
    import pandas as pd

    from pipelines.training.train import champion_model

    if (user is None) == (not batch):
        raise ConfigError("pass --user USER, or --batch to write gold.recommendations")
    settings = _settings(env)
    if batch:
        from pipelines.training.recommendations import write_recommendations

        written = write_recommendations(_spark(settings), settings, k)
        if as_json:
            print(json.dumps(written))
        else:
            out.print(
                f"gold.recommendations: {written['users']:,} users x {k} items from "
                f"{written['model_name']} v{written['model_version']} "
                f"(table version {written['table_version']})"
            )
        return
    try:
        model, version = champion_model(settings)
    except LookupError as exc:
        raise ConfigError(str(exc)) from None
    result = model.predict(pd.DataFrame({"user_id": [user], "k": [k]}))
    cold = bool(result["cold_start"].iloc[0]) if len(result) else True
    if as_json:
        print(
            json.dumps(
                {
                    "user_id": user,
                    "model_version": version,
                    "cold_start": cold,
                    "items": result["item_id"].tolist(),
                }
            )
        )
        return
    title = f"top {k} for {user} (model v{version}{', cold start: popular items' if cold else ''})"
    table = Table("rank", "item", title=title)
    for row in result.itertuples():
        table.add_row(str(row.rank), str(row.item_id))
    out.print(table)


@drift_app.command("check")
@friendly_errors
def drift_check(
    snapshot: Annotated[
        str | None, typer.Option(help="Reference snapshot (default: the champion's).")
    ] = None,
    retrain_on_drift: Annotated[
        bool, typer.Option("--retrain-on-drift", help="Snapshot and retrain when a feature drifts.")
    ] = False,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """PSI of gold.user_features now vs. the reference snapshot; writes quality.drift_results."""
    from pipelines.monitoring.drift_job import check_drift

    settings = _settings(env)
    try:
        report = check_drift(
            _spark(settings), settings, snapshot=snapshot, retrain_on_drift=retrain_on_drift
        )
    except LookupError as exc:
        raise ConfigError(str(exc)) from None
    if as_json:
        print(
            json.dumps(
                {
                    "reference_snapshot": report.reference_snapshot,
                    "reference_version": report.reference_version,
                    "current_version": report.current_version,
                    "drifted": report.drifted,
                    "features": [f.__dict__ for f in report.features],
                    "retrained": report.retrained,
                }
            )
        )
        return
    table = Table(
        "feature",
        "PSI",
        "status",
        "reference mean",
        "current mean",
        title=f"drift vs snapshot {report.reference_snapshot} (gold.user_features "
        f"v{report.reference_version} -> v{report.current_version})",
    )
    colour = {"ok": "green", "warn": "yellow", "drift": "red", "skipped": "dim"}
    for f in report.features:
        table.add_row(
            f.feature,
            f"{f.psi:.4f}",
            f"[{colour.get(f.status, 'white')}]{f.status}[/]",
            "-" if f.reference_mean is None else f"{f.reference_mean:.3f}",
            "-" if f.current_mean is None else f"{f.current_mean:.3f}",
        )
    out.print(table)
    if report.retrained:
        out.print(
            f"retrained from snapshot {report.retrained['snapshot']}: "
            f"v{report.retrained['model_version']} ({report.retrained['alias']})"
        )


# -- quality ----------------------------------------------------------------------------------
@quality_app.command("check")
@friendly_errors
def quality_check(env: EnvOption = None, as_json: JsonOption = False) -> None:
    """Check the accounting: every batch's input = silver + quarantine + duplicates (+ dropped),
    batch totals match the tables, and every Great Expectations suite ran and passed (each
    silver batch that wrote rows has a result; gold's latest). Exits 1 when broken."""
    from pipelines.quality.report import accounting_report

    settings = _settings(env)
    report = accounting_report(
        Catalog.for_settings(settings),
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
    from pipelines.quality.report import latest_results

    settings = _settings(env)
    report = latest_results(Catalog.for_settings(settings), settings, limit)
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


# -- demo / bench -----------------------------------------------------------------------------
@app.command("demo")
@friendly_errors
def demo(
    events: Annotated[
        int | None, typer.Option(min=1, help="Events to generate (default from config).")
    ] = None,
    bad_fraction: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Share of bad events.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the whole job on the embedded defaults: broker, synthetic traffic, bronze."""
    from pipelines.demo import DemoHooks, run_demo

    settings = _settings(env)
    overrides = {
        k: v
        for k, v in {"events": events, "bad_fraction": bad_fraction, "seed": seed}.items()
        if v is not None
    }
    if overrides:
        settings = settings.model_copy(update={"demo": settings.demo.model_copy(update=overrides)})
    console = err if as_json else out
    total = settings.demo.events
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        produced = progress.add_task("produce to Kafka", total=total)
        landed = progress.add_task("bronze.events_raw", total=total)
        gated = progress.add_task("silver gate", total=total)
        hooks = DemoHooks(
            stage=lambda msg: progress.console.print(f"[dim]›[/] {msg}", highlight=False),
            produced=lambda n: progress.advance(produced, n),
            bronze_rows=lambda n: progress.advance(landed, n),
            silver_rows=lambda n: progress.advance(gated, n),
        )
        summary = run_demo(settings, _spark, hooks)
    if as_json:
        print(json.dumps(summary, default=str))
        return
    _print_demo(summary)


def _print_demo(summary: dict[str, Any]) -> None:
    ingest, kafka, bronze = summary["ingest"], summary["kafka"], summary["bronze"]
    sdk = ingest["sdk"]
    out.print(
        f"{ingest['path']}: {sdk['tracked']:,} events tracked, {ingest['accepted']:,} accepted "
        f"into their topics, {ingest['rejected']:,} rejected to the DLQ "
        f"({ingest['events_per_second']:,} events/s; SDK retried {sdk['retried']:,}, "
        f"spooled {sdk['spooled']:,}, dropped {sdk['dropped']:,})",
        highlight=False,
    )
    bad = ingest["generated"]["by_kind"]
    out.print(
        f"bad events mixed in ({sum(bad.values())}): "
        + ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
        + "; rejected at the edge by rule: "
        + ", ".join(f"{k}={v}" for k, v in ingest["rejected_by_rule"].items()),
        highlight=False,
    )
    table = Table("topic", "accepted", "in bronze", title="collector -> Kafka -> bronze.events_raw")
    for topic, count in kafka["produced_per_topic"].items():
        table.add_row(topic, f"{count:,}", f"{bronze['rows_per_topic'].get(topic, 0):,}")
    table.add_row(
        "[bold]total[/]", f"[bold]{kafka['produced']:,}[/]", f"[bold]{bronze['rows']:,}[/]"
    )
    out.print(table)
    out.print(
        f"bronze.events_raw at version {bronze['table_version']} ({bronze['files']} files, "
        f"{bronze['batches']} micro-batches, {bronze['rows_per_second']:,} rows/s) "
        f"-> {bronze['location']}"
    )
    verdict = (
        "[green]every accepted event is in bronze[/]"
        if summary["matches"]
        else "[red]bronze does not match Kafka[/]"
    )
    out.print(verdict)
    silver, sessions, gx = summary["silver"], summary["sessions"], summary["great_expectations"]
    flow = Table("silver gate", "rows", title="bronze.events_raw -> silver")
    flow.add_row("input (bronze rows)", f"{silver['input']:,}")
    flow.add_row("silver.events", f"{silver['written']:,}")
    flow.add_row("silver.quarantine", f"{silver['quarantined']:,}")
    flow.add_row("duplicates removed", f"{silver['duplicates']:,}")
    if silver["dropped"]:
        flow.add_row("dropped by rule", f"{silver['dropped']:,}")
    out.print(flow)
    if silver["quarantined_by_rule"]:
        rules = Table("rule", "rows", title="quarantine by rule (a row can break several)")
        for rule, count in silver["quarantined_by_rule"].items():
            rules.add_row(rule, f"{count:,}")
        out.print(rules)
    if silver["warnings_by_rule"]:
        warned = ", ".join(f"{k}={v}" for k, v in silver["warnings_by_rule"].items())
        out.print(f"warnings (rows kept): {warned}", highlight=False)
    holds = "[green]holds[/]" if silver["accounting_holds"] else "[red]BROKEN[/]"
    out.print(f"accounting input = silver + quarantine + duplicates: {holds}")
    out.print(
        f"silver.sessions: {sessions['rows']:,} sessions ({sessions['converted']:,} converted)"
    )
    out.print(
        f"Great Expectations: {gx['suites_passed']}/{gx['suites_run']} batch suites passed; "
        f"Data Docs: {gx['data_docs'] or '-'}"
    )
    gold, training = summary["gold"], summary["training_set"]
    out.print(
        f"gold: {gold['user_features']:,} users and {gold['item_features']:,} items with features "
        f"({gold['batches_published']} batches published, {gold['batches_rejected']} rejected)"
    )
    pins = ", ".join(f"{t}@v{v}" for t, v in sorted(summary["snapshot"]["versions"].items()))
    out.print(f"snapshot {summary['snapshot']['name']}: {pins}", highlight=False)
    out.print(
        f"training set {training['name']}: {training['rows']:,} rows "
        f"({training['positives']:,} positives), digest {training['digest'][:16]}…"
    )
    model = summary["model"]
    k = next((n.split("@")[1] for n in model["metrics"] if n.startswith("ndcg@")), "10")
    out.print(
        f"model {model['registered_model']} v{model['version']} ({model['alias']}), MLflow run "
        f"{model['mlflow_run_id']}: NDCG@{k} {model['metrics'][f'ndcg@{k}']:.4f} vs popularity "
        f"baseline {model['baseline_metrics'][f'ndcg@{k}']:.4f}"
    )
    for user, rec in summary["recommendations"].items():
        flag = " (cold start: popular items)" if rec["cold_start"] else ""
        out.print(f"  recommend {user}{flag}: {', '.join(rec['items'])}", highlight=False)
    out.print(f"total {summary['seconds']}s")
    example = "SELECT failed_rules, count(*) FROM silver.quarantine GROUP BY 1"
    out.print(f'next: [bold]lakehouse quality report[/], [bold]lakehouse sql "{example}"[/]')


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
    from pipelines.benchmarks.bronze import bench_bronze

    settings = _settings(env)
    result = bench_bronze(
        settings,
        _spark,
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
    from pipelines.benchmarks.collector import bench_collector

    settings = _settings(env)
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
    from pipelines.benchmarks.silver import bench_silver

    settings = _settings(env)
    result = bench_silver(
        settings,
        _spark,
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
    from pipelines.benchmarks.freshness import bench_freshness

    settings = _settings(env)
    result = bench_freshness(
        settings,
        _spark,
        rate=rate,
        seconds=seconds,
        warmup_s=warmup,
        trigger=_normalise_interval(trigger),
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
    import shutil
    import tempfile

    from pipelines.chaos.report import render, totals
    from pipelines.chaos.runner import PARTS, run_chaos

    unknown = sorted(set(only or ()) - set(PARTS))
    if unknown:
        raise typer.BadParameter(
            f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}", param_hint="--only"
        )
    settings = _settings(env)
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


# -- helpers for output -----------------------------------------------------------------------
@contextmanager
def _bar(console: Console, label: str, total: int) -> Iterator[Callable[[int], None]]:
    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def _info_dict(info: Any) -> dict[str, Any]:
    data = dict(info.__dict__)
    data["last_commit"] = info.last_commit.isoformat() if info.last_commit else None
    return data


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def main() -> None:
    app()


__all__ = ["app", "main"]

if __name__ == "__main__":  # `python -m pipelines.cli …`, e.g. a collector a chaos part can kill
    main()
