"""Monitoring's pure parts: backlog from offsets, progress rows, alert rules, the dashboard."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pyspark.sql.streaming.listener import StreamingQueryProgress

from pipelines.collector.metrics import CollectorMetrics
from pipelines.config import AlertSettings
from pipelines.monitoring.alerts import Alert, evaluate, post_webhook
from pipelines.monitoring.exporter import METRICS
from pipelines.monitoring.health import Health, QueryHealth, TableHealth
from pipelines.monitoring.progress import backlog, progress_row

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
DASHBOARD = Path(__file__).resolve().parents[2] / "pipelines/monitoring/grafana/lakehouse.json"


def test_backlog_sums_partitions_and_handles_versions_and_unknowns() -> None:
    end = json.dumps({"clicks": {"0": 10, "1": 5}, "views": {"0": 7}})
    latest = json.dumps({"clicks": {"0": 15, "1": 5, "2": 3}, "views": {"0": 7}})
    assert backlog(end, latest) == 8  # 5 + 0 + 3 (a new partition counts from 0) + 0
    assert backlog('{"version": 4}', '{"version": 9}') == 5
    assert backlog("12", "10") == 0  # never negative
    assert backlog(None, latest) is None
    assert backlog(end, '"garbage"') is None


def progress_json(**overrides: object) -> dict:
    base = {
        "id": "6f1c2f7e-5a0b-4f44-9a57-2b1c3d4e5f60",
        "runId": "7f1c2f7e-5a0b-4f44-9a57-2b1c3d4e5f61",
        "name": "bronze.events_raw",
        "timestamp": "2026-11-26T11:59:00.000Z",
        "batchId": 3,
        "batchDuration": 1500,
        "numInputRows": 1200,
        "inputRowsPerSecond": 600.0,
        "processedRowsPerSecond": 800.0,
        "durationMs": {"addBatch": 1200, "latestOffset": 40, "triggerExecution": 1500},
        "stateOperators": [
            {
                "operatorName": "dedupe",
                "numRowsTotal": 50,
                "numRowsUpdated": 7,
                "memoryUsedBytes": 4096,
                "numRowsRemoved": 0,
                "allUpdatesTimeMs": 1,
                "allRemovalsTimeMs": 0,
                "commitTimeMs": 1,
                "numRowsDroppedByWatermark": 0,
                "numShufflePartitions": 2,
                "numStateStoreInstances": 2,
                "customMetrics": {},
            }
        ],
        "sources": [
            {
                "description": "lakehouse-kafka",
                "startOffset": {"t": {"0": 0}},
                "endOffset": {"t": {"0": 1200}},
                "latestOffset": {"t": {"0": 1500}},
                "numInputRows": 1200,
                "inputRowsPerSecond": 600.0,
                "processedRowsPerSecond": 800.0,
                "metrics": {},
            }
        ],
        "sink": {"description": "ForeachBatchSink", "numOutputRows": -1, "metrics": {}},
    }
    base.update(overrides)
    return base


def test_progress_row_keeps_rates_durations_state_and_backlog() -> None:
    row = progress_row(StreamingQueryProgress.fromJson(progress_json()), recorded_at=NOW)
    assert row["query_name"] == "bronze.events_raw" and row["batch_id"] == 3
    assert row["progress_ts"] == datetime(2026, 11, 26, 11, 59, tzinfo=UTC)
    assert (row["num_input_rows"], row["input_rows_per_s"], row["processed_rows_per_s"]) == (
        1200,
        600.0,
        800.0,
    )
    assert row["duration_ms"]["addBatch"] == 1200 and row["batch_duration_ms"] == 1500
    assert (row["state_rows_total"], row["state_rows_updated"]) == (50, 7)
    assert row["backlog"] == 300 and row["sources"][0]["backlog"] == 300
    assert row["num_output_rows"] is None  # foreachBatch reports -1: unknown, not negative
    assert row["progress_date"] == NOW.date()


def health(**parts: object) -> Health:
    return Health(generated_at=NOW, **parts)  # type: ignore[arg-type]


def query(name: str, idle_s: float, backlog_rows: int | None) -> QueryHealth:
    return QueryHealth(
        name=name,
        query_id="q",
        batches=4,
        last_batch_id=3,
        last_progress=NOW - timedelta(seconds=idle_s),
        seconds_since_progress=idle_s,
        input_rows=10,
        input_rows_per_s=5.0,
        processed_rows_per_s=6.0,
        batch_duration_ms=900,
        backlog=backlog_rows,
        state_rows=0,
    )


def test_each_rule_fires_on_its_own_trouble_only() -> None:
    limits = AlertSettings(
        freshness_s=600,
        quarantine_rate=0.05,
        recent_batches=2,
        backlog=1000,
        stalled_after_s=300,
        suite_failures=0,
        drift_psi=0.25,
    )
    calm = health(
        queries=[
            query("silver.events", idle_s=5, backlog_rows=0),
            query("gold.features", idle_s=9_000, backlog_rows=0),
        ],  # finished, not stalled
        tables=[TableHealth("silver.events", 3, 100, NOW, NOW - timedelta(seconds=60), 60.0, 1.0)],
        quarantine={
            "batches": 3,
            "by_rule": {"json_parse": 1},
            "series": [
                {"input_rows": 100, "quarantined_rows": 50},  # old spike: ignored
                {"input_rows": 100, "quarantined_rows": 1},
                {"input_rows": 100, "quarantined_rows": 2},
            ],
        },
        suites={"recent_failures": 0, "failures_by_suite": {}},
        drift=[{"feature": "recency_s", "psi": 0.1, "status": "ok"}],
    )
    assert evaluate(calm, limits) == []

    spike = health(
        quarantine={
            "batches": 2,
            "by_rule": {"json_parse": 30, "required:item_id": 9},
            "series": [
                {"input_rows": 100, "quarantined_rows": 2},
                {"input_rows": 100, "quarantined_rows": 38},
            ],
        },
    )
    (fired,) = evaluate(spike, limits)
    assert (fired.rule, fired.value) == ("quarantine_rate", pytest.approx(0.2))
    assert "json_parse=30" in fired.message

    stalled = health(queries=[query("bronze.events_raw", idle_s=1_200, backlog_rows=5_000)])
    rules = {(a.rule, a.subject) for a in evaluate(stalled, limits)}
    assert rules == {("query_stalled", "bronze.events_raw"), ("backlog", "bronze.events_raw")}

    stale = health(
        tables=[TableHealth("silver.events", 3, 100, NOW, NOW - timedelta(hours=2), 7200.0, 5.0)]
    )
    assert [a.rule for a in evaluate(stale, limits)] == ["freshness"]
    drifted = health(drift=[{"feature": "recency_s", "psi": 0.4, "status": "alert"}])
    assert [(a.rule, a.subject) for a in evaluate(drifted, limits)] == [("drift", "recency_s")]
    failing = health(suites={"recent_failures": 2, "failures_by_suite": {"gold.user_features": 2}})
    assert [a.rule for a in evaluate(failing, limits)] == ["suite_failures"]


def exported_metric_names() -> set[str]:
    names = set()
    for name, (kind, _help, _labels) in METRICS.items():
        names.add(f"{name}_total" if kind == "counter" else name)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    for family in CollectorMetrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_every_dashboard_panel_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_metric_names()
    promql_words = {
        "sum",
        "by",
        "rate",
        "increase",
        "histogram_quantile",
        "or",
        "vector",
        "le",
        "outcome",
        "rule",
        "status",
        "quantile",
        "m",
        "s",
    }
    assert len(dashboard["panels"]) >= 12
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            words = set(re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", target["expr"]))
            metrics = {w for w in words if w.startswith("lakehouse_")}
            assert metrics, f"panel {panel['title']!r} queries no lakehouse metric"
            assert metrics <= exported, (panel["title"], metrics - exported)
            assert words - metrics <= promql_words, (panel["title"], words - metrics)


def test_webhook_posts_the_fired_alerts_as_json() -> None:

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        alert = Alert("drift", "recency_s", 0.4, 0.25, "feature recency_s drifted")
        status = post_webhook(f"http://127.0.0.1:{server.server_port}/hook", [alert], "test")
    finally:
        server.shutdown()
    assert status == 204
    (body,) = received
    assert body["env"] == "test" and body["alerts"][0]["rule"] == "drift"
    assert "[drift] feature recency_s drifted" in body["text"]
