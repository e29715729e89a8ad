"""``lakehouse status``: the health snapshot as a terminal dashboard (Rich), refreshed live."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from pipelines.monitoring.alerts import Alert
from pipelines.monitoring.health import Health


def render_status(health: Health, alerts: list[Alert], env: str) -> Group:
    """Queries, tables (freshness), per-hop latency, quality and alerts as Rich renderables."""
    stamp = health.generated_at.strftime("%H:%M:%S UTC")
    header = Text.assemble(
        ("lakehouse status ", "bold"), (f"({env}) ", "dim"), (f"at {stamp}", "dim")
    )
    queries = Table(
        "query",
        "batches",
        "last input",
        "rows/s",
        "last batch",
        "backlog",
        "idle",
        title="streaming queries",
        title_justify="left",
    )
    for q in health.queries:
        queries.add_row(
            q.name,
            f"{q.batches:,}",
            f"{q.input_rows:,}",
            _num(q.processed_rows_per_s),
            f"{q.batch_duration_ms / 1000:.1f}s",
            _num(q.backlog),
            _age(q.seconds_since_progress),
        )
    if not health.queries:
        queries.add_row("[dim]no query progress recorded yet[/]", *[""] * 6)
    tables = Table(
        "table", "version", "rows", "freshness", "last commit", title="tables", title_justify="left"
    )
    for t in health.tables:
        tables.add_row(
            t.name,
            str(t.version),
            f"{t.rows:,}",
            _age(t.freshness_s),
            f"{_age(t.seconds_since_commit)} ago",
        )
    hops = Table(
        "hop", "p50", "p95", title="per-hop latency (recent silver rows)", title_justify="left"
    )
    for hop, stats in health.hops.items():
        hops.add_row(hop, _age(stats["p50_s"]), _age(stats["p95_s"]))
    gate = health.quarantine
    quality = Text(
        f"quality: {gate.get('recent_rate', 0.0):.2%} quarantined over the last "
        f"{gate.get('recent_batches', 0)} batches; {gate.get('total_quarantined', 0):,} rows in "
        f"quarantine; GX failures in 24 h: {health.suites.get('recent_failures', 0)}"
    )
    if alerts:
        fired = Text("\n".join(f"ALERT [{a.rule}] {a.message}" for a in alerts), style="bold red")
    else:
        fired = Text("no alerts firing", style="green")
    return Group(header, queries, tables, hops, quality, fired)


def _num(value: float | int | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if abs(seconds) < 120:
        return f"{seconds:.1f}s"
    if abs(seconds) < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"
