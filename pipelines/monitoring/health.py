"""The lakehouse's health, computed from its own tables: one snapshot that the Prometheus
endpoint, the terminal dashboard, the HTML report and the alerts all read.

- queries: the latest ``monitoring.query_progress`` row per query (rates, duration, backlog) and
  how long ago it made progress;
- tables: version, rows, last commit, and freshness = last commit time minus the newest event
  time in the table (from Delta file statistics, no scan);
- hops: per-hop latency of recent silver rows, from their own lineage columns (event ->
  collector -> Kafka -> bronze -> silver);
- quality: quarantine rate and rows by rule over recent batches, suite failures;
- drift: the latest PSI per feature.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.config import Settings
from pipelines.gold.tables import GOLD_ITEM_FEATURES_HISTORY, GOLD_USER_FEATURES_HISTORY
from pipelines.lake.catalog import Catalog
from pipelines.monitoring.tables import MONITORING_QUERY_PROGRESS, QUALITY_DRIFT_RESULTS
from pipelines.quality.tables import QUALITY_BATCH_RESULTS, QUALITY_SUITE_RESULTS
from pipelines.silver.tables import SILVER_EVENTS, SILVER_QUARANTINE, SILVER_SESSIONS
from pipelines.tables import LAKE_TABLES

# Which column carries event time in each table whose freshness is tracked.
EVENT_TIME = {
    BRONZE_EVENTS_RAW.name: "kafka_timestamp",
    SILVER_EVENTS.name: "event_ts",
    SILVER_QUARANTINE.name: "kafka_timestamp",
    SILVER_SESSIONS.name: "session_end",
    GOLD_USER_FEATURES_HISTORY.name: "feature_ts",
    GOLD_ITEM_FEATURES_HISTORY.name: "feature_ts",
}
# (name, later column, earlier column) over silver.events' lineage.
HOPS = (
    ("event_to_collector", "received_at", "event_ts"),
    ("collector_to_kafka", "kafka_timestamp", "received_at"),
    ("kafka_to_bronze", "ingest_ts", "kafka_timestamp"),
    ("bronze_to_silver", "processed_at", "ingest_ts"),
)


@dataclass
class QueryHealth:
    name: str
    query_id: str
    batches: int
    last_batch_id: int
    last_progress: datetime
    seconds_since_progress: float
    input_rows: int
    input_rows_per_s: float | None
    processed_rows_per_s: float | None
    batch_duration_ms: int
    backlog: int | None
    state_rows: int


@dataclass
class TableHealth:
    name: str
    version: int
    rows: int
    last_commit: datetime | None
    newest_event: datetime | None
    freshness_s: float | None  # last commit - newest event time
    seconds_since_commit: float | None


@dataclass
class Health:
    generated_at: datetime
    queries: list[QueryHealth] = field(default_factory=list)
    tables: list[TableHealth] = field(default_factory=list)
    hops: dict[str, dict[str, float]] = field(default_factory=dict)
    quarantine: dict[str, Any] = field(default_factory=dict)
    suites: dict[str, Any] = field(default_factory=dict)
    drift: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def collect_health(
    catalog: Catalog,
    *,
    now: datetime | None = None,
    recent_batches: int = 20,
    hop_sample: int = 5_000,
) -> Health:
    """Everything the dashboards show, read from the lake's tables (missing tables are empty)."""
    now = now or datetime.now(tz=UTC)
    return Health(
        generated_at=now,
        queries=query_health(catalog, now),
        tables=[t for name in EVENT_TIME if (t := table_health(catalog, name, now)) is not None],
        hops=hop_latency(catalog, hop_sample),
        quarantine=quarantine_health(catalog, recent_batches),
        suites=suite_health(catalog, now),
        drift=latest_drift(catalog),
    )


def lake_health(settings: Settings, catalog: Catalog | None = None) -> Health:
    """``collect_health`` over the environment's lake, with the quarantine rate taken over the
    same number of batches the ``quarantine_rate`` alert uses (so metric and alert agree)."""
    return collect_health(
        catalog or Catalog.for_settings(settings, LAKE_TABLES),
        recent_batches=settings.monitoring.alerts.recent_batches,
    )


def query_health(catalog: Catalog, now: datetime) -> list[QueryHealth]:
    if not catalog.exists(MONITORING_QUERY_PROGRESS.name):
        return []
    rows = catalog.read_arrow(MONITORING_QUERY_PROGRESS.name).to_pylist()
    latest: dict[str, dict[str, Any]] = {}
    batches: Counter[str] = Counter()
    for row in rows:
        name = row["query_name"]
        batches[name] += 1
        if name not in latest or (row["progress_ts"], row["batch_id"]) > (
            latest[name]["progress_ts"],
            latest[name]["batch_id"],
        ):
            latest[name] = row
    out = []
    for name, row in sorted(latest.items()):
        ts = _utc(row["progress_ts"])
        out.append(
            QueryHealth(
                name=name,
                query_id=row["query_id"],
                batches=batches[name],
                last_batch_id=row["batch_id"],
                last_progress=ts,
                seconds_since_progress=(now - ts).total_seconds(),
                input_rows=row["num_input_rows"],
                input_rows_per_s=row["input_rows_per_s"],
                processed_rows_per_s=row["processed_rows_per_s"],
                batch_duration_ms=row["batch_duration_ms"],
                backlog=row["backlog"],
                state_rows=row["state_rows_total"],
            )
        )
    return out


def table_health(catalog: Catalog, name: str, now: datetime) -> TableHealth | None:
    if not catalog.exists(name):
        return None
    info = catalog.info(name)
    actions = pa.table(catalog.delta_table(name).get_add_actions(flatten=True))
    column = f"max.{EVENT_TIME[name]}"
    newest = None
    if column in actions.column_names and actions.num_rows:
        value = pc.max(actions.column(column)).as_py()
        newest = _utc(value) if value is not None else None
    last = info.last_commit
    return TableHealth(
        name=name,
        version=info.version or 0,
        rows=info.rows or 0,
        last_commit=last,
        newest_event=newest,
        freshness_s=(last - newest).total_seconds() if last and newest else None,
        seconds_since_commit=(now - last).total_seconds() if last else None,
    )


def hop_latency(catalog: Catalog, sample: int) -> dict[str, dict[str, float]]:
    """p50/p95/max seconds per hop over the most recently processed silver rows."""
    if not catalog.exists(SILVER_EVENTS.name):
        return {}
    columns = sorted({c for _, a, b in HOPS for c in (a, b)})
    data = catalog.read_arrow(SILVER_EVENTS.name, columns=columns)
    if data.num_rows == 0:
        return {}
    if data.num_rows > sample:
        order = pc.sort_indices(data, sort_keys=[("processed_at", "descending")])
        data = data.take(order[:sample])
    out = {}
    for hop, later, earlier in HOPS:
        seconds = pc.divide(
            pc.cast(pc.subtract(data[later], data[earlier]), pa.int64()), 1_000_000
        ).drop_null()
        if len(seconds) == 0:
            continue
        p50, p95 = pc.quantile(seconds, q=[0.5, 0.95]).to_pylist()
        out[hop] = {"p50_s": p50, "p95_s": p95, "max_s": float(pc.max(seconds).as_py())}
    return out


def quarantine_health(catalog: Catalog, recent: int) -> dict[str, Any]:
    """Quarantined share of input over the last ``recent`` batches, rows by rule (all time)."""
    if not catalog.exists(QUALITY_BATCH_RESULTS.name):
        return {}
    rows = catalog.read_arrow(QUALITY_BATCH_RESULTS.name).to_pylist()
    rows.sort(key=lambda r: r["processed_at"])
    by_rule: Counter[str] = Counter()
    for row in rows:
        by_rule.update(dict(row["quarantined_by_rule"] or []))
    last = rows[-recent:]
    input_rows = sum(r["input_rows"] for r in last)
    quarantined = sum(r["quarantined_rows"] for r in last)
    latest = rows[-1] if rows else None
    return {
        "batches": len(rows),
        "recent_batches": len(last),
        "recent_input_rows": input_rows,
        "recent_quarantined_rows": quarantined,
        "recent_rate": quarantined / input_rows if input_rows else 0.0,
        "latest_batch_rate": latest["quarantined_rows"] / latest["input_rows"]
        if latest and latest["input_rows"]
        else 0.0,
        "total_quarantined": sum(r["quarantined_rows"] for r in rows),
        "total_input": sum(r["input_rows"] for r in rows),
        "by_rule": dict(by_rule.most_common()),
        "series": [
            {
                "processed_at": _utc(r["processed_at"]),
                "table": r["table"],
                "input_rows": r["input_rows"],
                "quarantined_rows": r["quarantined_rows"],
            }
            for r in rows
        ],
    }


def suite_health(catalog: Catalog, now: datetime, window: timedelta = timedelta(hours=24)) -> dict:
    if not catalog.exists(QUALITY_SUITE_RESULTS.name):
        return {}
    rows = catalog.read_arrow(QUALITY_SUITE_RESULTS.name).to_pylist()
    recent = [r for r in rows if _utc(r["run_time"]) >= now - window]
    failed = [r for r in recent if not r["success"]]
    return {
        "runs": len(rows),
        "recent_runs": len(recent),
        "recent_failures": len(failed),
        "failures_by_suite": dict(Counter(r["suite"] for r in failed)),
    }


def latest_drift(catalog: Catalog) -> list[dict[str, Any]]:
    if not catalog.exists(QUALITY_DRIFT_RESULTS.name):
        return []
    rows = catalog.read_arrow(QUALITY_DRIFT_RESULTS.name).to_pylist()
    if not rows:
        return []
    last = max(r["checked_at"] for r in rows)
    return sorted(
        (
            {
                "feature": r["feature"],
                "psi": r["psi"],
                "status": r["status"],
                "checked_at": _utc(r["checked_at"]),
            }
            for r in rows
            if r["checked_at"] == last
        ),
        key=lambda r: r["feature"],
    )


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
