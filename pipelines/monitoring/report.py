"""``lakehouse report``: one self-contained HTML page (plots embedded as PNG data URIs).

Throughput and batch duration over time per query, quarantine by rule, feature drift against
its thresholds, model vs baseline NDCG over training runs, and the freshness, per-hop latency
and alert tables — readable offline, attachable to a ticket.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime
from typing import Any

import matplotlib
import matplotlib.dates

matplotlib.use("Agg")  # no display: render to files only
import matplotlib.pyplot as plt
import mlflow
from matplotlib.figure import Figure

from pipelines.config import Settings
from pipelines.lake.catalog import Catalog
from pipelines.monitoring.alerts import Alert, evaluate
from pipelines.monitoring.health import Health, lake_health
from pipelines.monitoring.tables import MONITORING_QUERY_PROGRESS
from pipelines.tables import LAKE_TABLES
from pipelines.training.train import configure_mlflow

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.ok{color:#176117}.fire{color:#b00020;font-weight:600}img{max-width:100%;border:1px solid #eee}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}.empty{color:#888;font-style:italic}
"""


def build_report(settings: Settings, catalog: Catalog | None = None) -> str:
    """The report as one HTML string."""
    catalog = catalog or Catalog.for_settings(settings, LAKE_TABLES)
    health = lake_health(settings, catalog)
    alerts = evaluate(health, settings.monitoring.alerts)
    progress = (
        catalog.read_arrow(MONITORING_QUERY_PROGRESS.name).to_pylist()
        if catalog.exists(MONITORING_QUERY_PROGRESS.name)
        else []
    )
    runs = model_runs(settings)
    plots = [
        ("Throughput over time", throughput_plot(progress)),
        ("Batch duration over time", duration_plot(progress)),
        ("Quarantine by rule", quarantine_plot(health)),
        ("Feature drift (PSI)", drift_plot(health, settings)),
        ("Model vs baseline over training runs", model_plot(runs, settings.mlflow.k)),
    ]
    generated = health.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>lakehouse report ({html.escape(settings.env)})</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Lakehouse health — {html.escape(settings.env)}</h1>",
        f"<p>Generated {generated} from {html.escape(catalog.storage.root)}.</p>",
        _alerts_html(alerts),
        "<div class='grid'>",
    ]
    for title, png in plots:
        body = (
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
            if png
            else "<p class='empty'>no data yet</p>"
        )
        parts.append(f"<section><h2>{html.escape(title)}</h2>{body}</section>")
    parts.append("</div>")
    parts += [_queries_html(health), _tables_html(health), _hops_html(health)]
    parts.append("</body></html>")
    return "\n".join(parts)


def model_runs(settings: Settings) -> list[dict[str, Any]]:
    """Training runs (start time, model and baseline NDCG@k) from the MLflow store."""
    try:
        configure_mlflow(settings)
        frame = mlflow.search_runs(
            experiment_names=[settings.mlflow.experiment], order_by=["start_time ASC"]
        )
    except Exception:  # no store yet, or it is unreachable: the plot says "no data"
        return []
    k = settings.mlflow.k
    model, base = f"metrics.ndcg_at_{k}", f"metrics.baseline_ndcg_at_{k}"
    if frame.empty or model not in frame.columns:
        return []
    return [
        {"start": row["start_time"], "model": row[model], "baseline": row.get(base)}
        for _, row in frame.iterrows()
        if not math.isnan(row[model])
    ]


def throughput_plot(progress: list[dict[str, Any]]) -> str | None:
    return _series_plot(progress, "processed_rows_per_s", "rows/s processed", scale=1.0)


def duration_plot(progress: list[dict[str, Any]]) -> str | None:
    return _series_plot(progress, "batch_duration_ms", "batch duration (s)", scale=0.001)


def quarantine_plot(health: Health) -> str | None:
    by_rule = health.quarantine.get("by_rule") or {}
    if not by_rule:
        return None
    rules = list(by_rule)[:15][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(rules) + 1.2))
    ax.barh(rules, [by_rule[r] for r in rules], color="#c0392b")
    ax.set_xlabel("quarantined rows")
    return _png(fig)


def drift_plot(health: Health, settings: Settings) -> str | None:
    if not health.drift:
        return None
    features = [d["feature"] for d in health.drift]
    psi = [d["psi"] for d in health.drift]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(features) + 1.2))
    colours = [
        "#c0392b"
        if p > settings.drift.alert
        else "#e67e22"
        if p > settings.drift.warn
        else "#27ae60"
        for p in psi
    ]
    ax.barh(features, psi, color=colours)
    ax.axvline(settings.drift.warn, color="#e67e22", linestyle="--", label="warn")
    ax.axvline(settings.drift.alert, color="#c0392b", linestyle="--", label="alert")
    ax.set_xlabel("PSI vs the champion's snapshot")
    ax.legend(loc="lower right")
    return _png(fig)


def model_plot(runs: list[dict[str, Any]], k: int) -> str | None:
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = list(range(1, len(runs) + 1))
    ax.plot(x, [r["model"] for r in runs], marker="o", label="item-item model")
    ax.plot(x, [r["baseline"] for r in runs], marker="s", label="popularity baseline")
    ax.set_xlabel("training run")
    ax.set_ylabel(f"NDCG@{k}")
    ax.set_xticks(x)
    ax.legend()
    return _png(fig)


def _series_plot(
    progress: list[dict[str, Any]], column: str, label: str, scale: float
) -> str | None:
    by_query: dict[str, list[tuple[datetime, float]]] = {}
    for row in progress:
        value = row[column]
        if value is not None:
            by_query.setdefault(row["query_name"], []).append(
                (row["progress_ts"], float(value) * scale)
            )
    if not by_query:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, points in sorted(by_query.items()):
        points.sort()
        times = matplotlib.dates.date2num([p[0] for p in points])
        ax.plot(times, [p[1] for p in points], marker=".", label=name)
    ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%H:%M:%S"))
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return _png(fig)


def _png(fig: Figure) -> str:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _alerts_html(alerts: list[Alert]) -> str:
    if not alerts:
        return "<h2>Alerts</h2><p class='ok'>none firing</p>"
    rows = "".join(
        f"<tr><td>{html.escape(a.rule)}</td><td>{html.escape(a.subject)}</td>"
        f"<td class='fire'>{html.escape(a.message)}</td></tr>"
        for a in alerts
    )
    return (
        f"<h2>Alerts</h2><table><tr><th>rule</th><th>subject</th><th>what</th></tr>{rows}</table>"
    )


def _queries_html(health: Health) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(q.name)}</td><td>{q.batches}</td><td>{q.input_rows:,}</td>"
        f"<td>{_fmt(q.processed_rows_per_s)}</td><td>{q.batch_duration_ms / 1000:.2f}</td>"
        f"<td>{_fmt(q.backlog)}</td><td>{q.seconds_since_progress:,.0f}</td></tr>"
        for q in health.queries
    )
    return (
        "<h2>Streaming queries</h2><table><tr><th>query</th><th>batches</th><th>last input</th>"
        "<th>rows/s</th><th>last batch (s)</th><th>backlog</th><th>s since progress</th></tr>"
        f"{rows}</table>"
    )


def _tables_html(health: Health) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(t.name)}</td><td>{t.version}</td><td>{t.rows:,}</td>"
        f"<td>{_fmt(t.freshness_s)}</td><td>{_fmt(t.seconds_since_commit)}</td></tr>"
        for t in health.tables
    )
    return (
        "<h2>Tables</h2><table><tr><th>table</th><th>version</th><th>rows</th>"
        f"<th>freshness (s)</th><th>s since commit</th></tr>{rows}</table>"
    )


def _hops_html(health: Health) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(hop)}</td><td>{_fmt(s['p50_s'])}</td><td>{_fmt(s['p95_s'])}</td>"
        f"<td>{_fmt(s['max_s'])}</td></tr>"
        for hop, s in health.hops.items()
    )
    return (
        "<h2>Per-hop latency (recent silver rows, seconds)</h2><table><tr><th>hop</th>"
        f"<th>p50</th><th>p95</th><th>max</th></tr>{rows}</table>"
    )


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
