"""Monitoring on real queries: progress rows per micro-batch, /metrics, alerts, the HTML report."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery
from typer.testing import CliRunner

from pipelines.bronze.job import run_bronze
from pipelines.cli.main import app
from pipelines.config import AlertSettings, Settings, TriggerSettings
from pipelines.lake.catalog import Catalog
from pipelines.monitoring.alerts import evaluate
from pipelines.monitoring.exporter import HealthCollector, serve_metrics
from pipelines.monitoring.health import collect_health
from pipelines.monitoring.progress import progress_recorder
from pipelines.monitoring.report import build_report
from pipelines.monitoring.tables import MONITORING_QUERY_PROGRESS
from pipelines.silver.job import run_silver
from pipelines.silver.tables import SILVER_EVENTS
from pipelines.streaming.delta import BatchWriteStats
from pipelines.streaming.queries import stop_gracefully
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.synthetic.publish import publish_clickstream
from pipelines.tables import LAKE_TABLES
from tests.conftest import SharedBroker, conf_folder, make_settings, unique_topics
from tests.streaming.helpers import metric_samples

pytestmark = pytest.mark.streaming

AVAILABLE_NOW = TriggerSettings(mode="available-now")


def settings_for(tmp_path: Path, broker: SharedBroker, per_trigger: int) -> Settings:
    return make_settings(
        tmp_path / "lake",
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "topics": unique_topics(),
            "consumer": {"max_offsets_per_trigger": per_trigger},
        },
        silver={"max_files_per_trigger": 1},
        quality={"great_expectations": {"enabled": False}},
    )


def progress_rows(catalog: Catalog) -> list[dict]:
    return catalog.read_arrow(MONITORING_QUERY_PROGRESS.name).to_pylist()


def test_every_micro_batch_is_recorded_and_a_quarantine_spike_fires_its_alert(
    spark: SparkSession, kafka_broker: SharedBroker, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, kafka_broker, per_trigger=450)
    generator = ClickstreamGenerator(users=50, items=30, seed=11, bad_fraction=0.3)
    publish_clickstream(generator, 1_200, settings.kafka, kafka_broker.bootstrap_servers)
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    monitor = progress_recorder(spark, catalog)
    bronze = run_bronze(
        spark, settings, kafka_broker.bootstrap_servers, trigger=AVAILABLE_NOW, monitor=monitor
    )
    silver = run_silver(spark, settings, trigger=AVAILABLE_NOW, monitor=monitor)

    assert_one_progress_row_per_micro_batch(
        catalog, bronze.stats.batches_written, silver.stats.batches_written
    )

    health = collect_health(catalog)
    assert health.quarantine["recent_rate"] > 0.2
    (fired,) = [a for a in evaluate(health, settings.monitoring.alerts) if a.rule != "freshness"]
    assert fired.rule == "quarantine_rate" and fired.subject == "silver.quarantine"

    # The CLI evaluates the same thresholds and exits 1 naming what fired.
    env = conf_folder(
        tmp_path,
        f"storage: {{root: '{tmp_path / 'lake'}'}}\n"
        "monitoring: {alerts: {freshness_s: 1000000000}}\n",
        "ops",
    )
    result = CliRunner().invoke(app, ["alerts", "check", "--env", "ops"], env=env)
    assert result.exit_code == 1, result.output
    assert "quarantine_rate" in result.output and "silver.quarantine" in result.output

    # /metrics over HTTP: Prometheus text with the documented names and these exact values.
    samples = served_metrics(catalog, settings)
    assert samples[("lakehouse_query_batches_total", (("query", "bronze_events_raw"),))] == 3
    silver_rows = catalog.info(SILVER_EVENTS.name).rows
    assert samples[("lakehouse_table_rows", (("table", "silver.events"),))] == silver_rows
    assert 0.2 < samples[("lakehouse_quarantine_rate", ())] < 0.4
    assert (
        samples[
            (
                "lakehouse_alerts_firing",
                (("rule", "quarantine_rate"), ("subject", "silver.quarantine")),
            )
        ]
        == 1
    )
    assert (
        samples[
            ("lakehouse_hop_latency_seconds", (("hop", "kafka_to_bronze"), ("quantile", "0.5")))
        ]
        >= 0
    )

    assert_the_report_renders_its_plots(settings, catalog, tmp_path)


def assert_one_progress_row_per_micro_batch(
    catalog: Catalog, bronze_batches: int, silver_batches: int
) -> None:
    """monitoring.query_progress holds one row per micro-batch of each query, with the rows it
    read, the backlog left after it and its durations."""
    rows = progress_rows(catalog)
    by_query: dict[str, list[int]] = {}
    for row in rows:
        by_query.setdefault(row["query_name"], []).append(row["batch_id"])
    # One row per micro-batch per query, nothing twice, batch ids 0..n-1.
    assert sorted(by_query["bronze_events_raw"]) == list(range(bronze_batches))
    assert bronze_batches >= 3  # 1,200 records, at most 450 per trigger
    assert sorted(by_query["silver_events"]) == list(range(silver_batches))
    bronze_rows = sorted(
        (r for r in rows if r["query_name"] == "bronze_events_raw"), key=lambda r: r["batch_id"]
    )
    assert all(0 < r["num_input_rows"] <= 450 for r in bronze_rows)
    assert sum(r["num_input_rows"] for r in bronze_rows) == 1_200
    # What was left after each batch, from the source's own offsets.
    read = 0
    for row in bronze_rows:
        read += row["num_input_rows"]
        assert row["backlog"] == 1_200 - read
    assert all(
        r["batch_duration_ms"] > 0 and "addBatch" in dict(r["duration_ms"]) for r in bronze_rows
    )


def served_metrics(
    catalog: Catalog, settings: Settings
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of one scrape of /metrics over HTTP."""
    collector = HealthCollector(lambda: collect_health(catalog), settings.monitoring.alerts)
    server, port = serve_metrics(collector, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
    return metric_samples(text)


def assert_the_report_renders_its_plots(
    settings: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    """The HTML report holds its plots and renders them in a real browser (skipped without
    headless Chromium)."""
    report = tmp_path / "report.html"
    report.write_text(build_report(settings, catalog))
    html = report.read_text()
    assert html.count("data:image/png;base64,") >= 3  # throughput, duration, quarantine
    assert "quarantine_rate" in html
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium) for the screenshot")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1280,1600",
            report.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = matplotlib.image.imread(shot)[..., :3]
    not_white = float((pixels < 0.9).any(axis=-1).mean())
    colours = len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert not_white > 0.05 and colours > 100, (not_white, colours)  # plots, not a blank page


def test_a_query_that_stops_with_records_waiting_fires_the_stalled_alert(
    spark: SparkSession, kafka_broker: SharedBroker, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, kafka_broker, per_trigger=400)
    generator = ClickstreamGenerator(users=40, items=20, seed=5)
    publish_clickstream(generator, 1_000, settings.kafka, kafka_broker.bootstrap_servers)
    # A continuous query whose next trigger is far away: one batch, then it stops progressing.
    slow = TriggerSettings(mode="processing-time", interval="10 minutes")

    def stop_after_first_batch(query: StreamingQuery, stats: BatchWriteStats) -> None:
        if stats.batches_written >= 1:
            stop_gracefully(query)  # the "crash": records still wait in Kafka

    run = run_bronze(
        spark,
        settings,
        kafka_broker.bootstrap_servers,
        trigger=slow,
        on_progress=stop_after_first_batch,
        timeout_s=120,
        monitor=progress_recorder(spark, Catalog.for_settings(settings, LAKE_TABLES)),
    )
    assert run.stats.batches_written == 1
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    time.sleep(1.5)
    health = collect_health(catalog)
    (bronze,) = [q for q in health.queries if q.name == "bronze_events_raw"]
    # Exactly what the one batch left in Kafka (Spark spreads the 400 cap over partitions).
    assert 0 < run.stats.rows_written <= 400
    assert bronze.backlog == 1_000 - run.stats.rows_written
    assert bronze.seconds_since_progress > 1
    limits = AlertSettings(stalled_after_s=1, freshness_s=1e9)
    fired = {(a.rule, a.subject) for a in evaluate(health, limits)}
    assert fired == {("query_stalled", "bronze_events_raw")}
    # With the default threshold (15 min) the same query is not (yet) stalled.
    assert not [
        a for a in evaluate(health, AlertSettings(freshness_s=1e9)) if a.rule == "query_stalled"
    ]
