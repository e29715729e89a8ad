"""``lakehouse``: The demo."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from pipelines.cli.common import (
    EnvOption,
    JsonOption,
    app,
    err,
    friendly_errors,
    out,
)
from pipelines.demo import DemoHooks, run_demo
from pipelines.runtime import lakehouse


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

    lake = lakehouse(env)
    settings = lake.settings
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
        summary = run_demo(lake, hooks)
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
