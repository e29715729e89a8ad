"""``lakehouse``: Monitoring: metrics, status, report, alerts, doctor."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from pipelines.cli.common import (
    EnvOption,
    JsonOption,
    app,
    err,
    friendly_errors,
    out,
)
from pipelines.doctor import run_checks
from pipelines.monitoring.alerts import evaluate, post_webhook
from pipelines.monitoring.exporter import HealthCollector, serve_metrics
from pipelines.monitoring.health import lake_health
from pipelines.monitoring.report import build_report
from pipelines.monitoring.status import render_status
from pipelines.runtime import lakehouse

metrics_app = typer.Typer(
    help="Prometheus metrics of the lakehouse's health.", no_args_is_help=True
)
app.add_typer(metrics_app, name="metrics")
alerts_app = typer.Typer(help="Threshold alerts (monitoring.alerts).", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")


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

    lake = lakehouse(env)
    settings = lake.settings
    catalog = lake.catalog
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

    lake = lakehouse(env)
    settings = lake.settings
    catalog = lake.catalog

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

    lake = lakehouse(env)
    settings = lake.settings
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

    lake = lakehouse(env)
    settings = lake.settings
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

    lake = lakehouse(env)
    settings = lake.settings
    checks = run_checks(
        settings,
        spark=not skip_spark,
        spark_factory=lake.spark_factory,
        kafka_timeout_s=kafka_timeout,
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
