"""The CLI end to end, as a user runs it: real subprocesses, real JVMs, the embedded broker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from pipelines.cli.main import app
from pipelines.monitoring.exporter import METRICS
from tests.streaming.helpers import metric_samples

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAKEHOUSE = str(Path(sys.executable).with_name("lakehouse"))
REPO = Path(__file__).resolve().parents[2]


def cli_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKEHOUSE_")}
    return env | {
        "LAKEHOUSE_ENV": "test",
        "LAKEHOUSE_DATA": str(data),
        "LAKEHOUSE_CONF_DIR": str(REPO / "conf"),
        "LAKEHOUSE_GX_DATA_DOCS": "true",  # the demo reports its Data Docs
    }


def run(data: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LAKEHOUSE, *args],
        check=False,
        env=cli_env(data),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=data.parent,
    )


def invoke(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process, on the test session's warm SparkSession (the commands build it
    with ``getOrCreate``): what a cold JVM per command would add is start-up, not coverage."""
    result = CliRunner().invoke(app, list(args), env=cli_env(data), catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def last_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_demo_json_sends_through_the_collector_and_lands_every_accepted_event(
    spark: SparkSession, tmp_path: Path
) -> None:
    data = tmp_path / "lake"
    summary = last_json(invoke(data, "demo", "--json"))
    assert_every_accepted_event_reached_bronze(summary)
    assert_silver_and_monitoring_account_for_every_event(summary)
    assert_gold_published_a_snapshot_a_model_and_recommendations(summary)
    assert_the_training_set_rebuilds_with_the_same_digest(data, summary["training_set"]["digest"])
    assert_the_cli_reads_the_demo_lake(data, summary)
    assert_metrics_serve_the_demo_values(data, summary)


def assert_every_accepted_event_reached_bronze(summary: dict[str, Any]) -> None:
    """The SDK sent every event through the collector; Kafka and bronze hold the accepted."""
    ingest, kafka, bronze = summary["ingest"], summary["kafka"], summary["bronze"]
    sdk, bad = ingest["sdk"], ingest["generated"]["by_kind"]
    assert ingest["path"] == "tracking SDK -> HTTP collector -> Kafka"
    assert sdk["tracked"] == 3_000  # conf/test.yaml demo.events
    assert sdk["dropped"] == 0 and ingest["delivered"] is True
    assert sdk["spooled"] == 0  # the collector kept up: nothing had to wait on disk
    assert 30 <= sum(bad.values()) <= 90  # ~2 % of 3,000
    # Every bad kind but exact duplicates breaks the contract and is rejected at the edge.
    assert ingest["rejected"] == sum(v for k, v in bad.items() if k != "duplicate")
    assert ingest["accepted"] + ingest["rejected"] == 3_000
    assert sdk["accepted"] == ingest["accepted"] and sdk["rejected"] == ingest["rejected"]
    for rule in ("not_an_object", "unknown_event_type", "timestamp_in_future"):
        assert ingest["rejected_by_rule"][rule] > 0
    assert kafka["produced"] == ingest["accepted"] and kafka["dlq"] == ingest["rejected"]
    assert bronze["rows"] == kafka["produced"]
    assert bronze["rows_per_topic"] == kafka["produced_per_topic"]
    assert set(kafka["produced_per_topic"]) == {
        "page_views",
        "user_clicks",
        "search_queries",
        "add_to_carts",
        "purchase_events",
    }
    assert bronze["table_version"] >= 1
    assert summary["matches"] is True


def assert_silver_and_monitoring_account_for_every_event(summary: dict[str, Any]) -> None:
    """Silver wrote, quarantined or dropped as duplicate every accepted event; every batch of
    every query was monitored; the Great Expectations suites passed."""
    ingest, bronze = summary["ingest"], summary["bronze"]
    bad = ingest["generated"]["by_kind"]
    silver = summary["silver"]
    assert silver["input"] == ingest["accepted"]
    assert silver["written"] + silver["quarantined"] + silver["duplicates"] == silver["input"]
    assert silver["rows"] == silver["written"]
    assert silver["quarantine_rows"] == silver["quarantined"] == 0  # the edge caught them
    assert silver["duplicates"] == bad["duplicate"]  # client retries: same event_id

    # Every micro-batch of every query left one row in monitoring.query_progress.
    monitoring = summary["monitoring"]
    per_query = monitoring["batches_per_query"]
    assert per_query["bronze_events_raw"] == bronze["batches"] >= 1
    assert per_query["silver_events"] == silver["batches"] >= 1
    assert per_query["silver_sessions"] == summary["sessions"]["batches"] >= 1
    gold_batches = summary["gold"]["batches_published"] + summary["gold"]["batches_rejected"]
    assert per_query["gold_user_features"] == gold_batches >= 1
    assert monitoring["query_progress_rows"] == sum(per_query.values())
    assert monitoring["freshness_s"]["silver.events"] is not None
    assert monitoring["hop_latency_p50_s"]["kafka_to_bronze"] >= 0
    assert silver["invariant_holds"] is True
    assert silver["accounting_holds"] is True
    assert summary["sessions"]["rows"] > 0
    gx = summary["great_expectations"]
    assert gx["suites_run"] >= 1 and gx["suites_passed"] == gx["suites_run"]
    assert Path(gx["data_docs"]).is_file()


def assert_gold_published_a_snapshot_a_model_and_recommendations(summary: dict[str, Any]) -> None:
    """Gold published both feature tables; the snapshot pins the training set and the model;
    the champion recommends to a known user and to a new visitor."""
    gold, snapshot, training = summary["gold"], summary["snapshot"], summary["training_set"]
    assert gold["batches_published"] >= 1 and gold["batches_rejected"] == 0
    assert 0 < gold["user_features"] <= gold["user_features_history"]
    assert 0 < gold["item_features"] <= gold["item_features_history"]
    assert snapshot["name"] == "demo"
    assert set(training["versions"]) <= set(snapshot["versions"])
    assert all(snapshot["versions"][t] == v for t, v in training["versions"].items())
    assert training["rows"] > training["positives"] > 0
    assert len(training["digest"]) == 64

    model = summary["model"]
    assert model["alias"] == "champion" and model["mlflow_run_id"]
    # The margin over the baseline is asserted on pinned data in tests/streaming/test_training.py;
    # the tiny test-env demo (3,000 events, generated up to "now") only has to report both.
    for metrics in (model["metrics"], model["baseline_metrics"]):
        assert 0 < metrics["ndcg@10"] <= 1 and metrics["users"] > 0
    assert {t: model["input_versions"][t] for t in snapshot["versions"]} == snapshot["versions"]
    recs = summary["recommendations"]
    (known,) = [u for u in recs if u != "new-visitor"]
    assert len(recs[known]["items"]) == 5 and recs[known]["cold_start"] is False
    assert len(recs["new-visitor"]["items"]) == 5 and recs["new-visitor"]["cold_start"] is True


def assert_the_training_set_rebuilds_with_the_same_digest(data: Path, digest: str) -> None:
    """``training-set build`` from the demo snapshot reproduces the demo's training set."""
    rebuilt = last_json(
        invoke(
            data,
            "training-set",
            "build",
            "--snapshot",
            "demo",
            "--labels",
            "purchase",
            "--horizon",
            "24h",
            "--seed",
            "42",
            "--name",
            "rebuilt",
            "--json",
        )
    )
    assert rebuilt["digest"] == digest


def assert_the_cli_reads_the_demo_lake(data: Path, summary: dict[str, Any]) -> None:
    """``quality``, ``tables`` and ``sql`` (in this process and in a fresh one) read the lake."""
    ingest, kafka, bronze = summary["ingest"], summary["kafka"], summary["bronze"]
    gx = summary["great_expectations"]
    check = run(data, "quality", "check")
    assert check.returncode == 0, check.stderr
    assert "holds" in check.stdout
    report = last_json(run(data, "quality", "report", "--json"))
    assert report["data_docs"] == gx["data_docs"]
    assert report["batches"][0]["invariant_holds"] is True

    tables = last_json(run(data, "tables", "--json"))["tables"]
    (info,) = [t for t in tables if t["name"] == "bronze.events_raw"]
    assert (info["rows"], info["version"]) == (ingest["accepted"], bronze["table_version"])

    counted = last_json(
        invoke(
            data,
            "sql",
            "SELECT topic, count(*) AS n FROM bronze.events_raw GROUP BY topic",
            "--json",
        )
    )
    assert {r["topic"]: r["n"] for r in counted["rows"]} == kafka["produced_per_topic"]
    # A fresh session (a new process) finds every table by name, with Delta's time travel.
    at_v1 = last_json(
        run(data, "sql", "SELECT count(*) AS n FROM silver.events VERSION AS OF 1", "--json")
    )

    silver_v1 = DeltaTable(str(data / "tables" / "silver" / "events"), version=1)
    expected = sum(silver_v1.get_add_actions(flatten=True).column("num_records").to_pylist())
    assert at_v1["rows"] == [{"n": expected}] and expected > 0
    history = last_json(invoke(data, "sql", "DESCRIBE HISTORY bronze.events_raw", "--json"))
    assert {r["operation"] for r in history["rows"]} >= {"CREATE TABLE", "WRITE"}


def assert_metrics_serve_the_demo_values(data: Path, summary: dict[str, Any]) -> None:
    """`lakehouse metrics serve`: Prometheus text with the documented names and the demo's
    values."""
    bronze, silver = summary["bronze"], summary["silver"]
    server = subprocess.Popen(
        [LAKEHOUSE, "metrics", "serve", "--port", "0"],
        env=cli_env(data),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=data.parent,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/metrics", first)
        assert url, first + (server.stderr.read() if server.poll() is not None else "")
        with urllib.request.urlopen(url.group(0), timeout=60) as response:
            text = response.read().decode()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    samples = metric_samples(text)
    names = {name for name, _labels in samples}

    documented = (REPO / "docs" / "MONITORING.md").read_text()
    for name in names:
        assert f"`{name}`" in documented or f"`{name.removesuffix('_total')}" in documented, name
    assert {
        "lakehouse_query_batches_total",
        "lakehouse_query_batch_duration_seconds",
        "lakehouse_table_freshness_seconds",
        "lakehouse_hop_latency_seconds",
        "lakehouse_quarantine_rate",
    } <= names
    assert (
        set(METRICS)
        - {
            "lakehouse_quarantined_rows",
            "lakehouse_feature_drift_psi",
            "lakehouse_alerts_firing",
            "lakehouse_query_batches",
            "lakehouse_gate_input_rows",
            "lakehouse_query_backlog",
        }
        <= names
    )
    query = ("query", "bronze_events_raw")
    assert samples[("lakehouse_query_batches_total", (query,))] == bronze["batches"]
    rows = samples[("lakehouse_table_rows", (("table", "silver.events"),))]
    assert rows == silver["rows"]
    assert samples[("lakehouse_quarantine_rate", ())] == 0.0  # the edge caught the bad events
    assert (
        0
        <= samples[
            ("lakehouse_hop_latency_seconds", (("hop", "bronze_to_silver"), ("quantile", "0.5")))
        ]
        < 3600
    )


@pytest.fixture
def served_broker(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """``lakehouse kafka serve`` until it says where it listens. Its output goes to files, never
    to a pipe nobody reads: a full pipe would block the process on its next write (so it could
    not stop)."""
    data = tmp_path / "lake"
    out_file, err_file = tmp_path / "serve.out", tmp_path / "serve.err"
    with out_file.open("w") as stdout, err_file.open("w") as stderr:
        proc = subprocess.Popen(
            [LAKEHOUSE, "kafka", "serve"],
            env=cli_env(data),
            stdout=stdout,
            stderr=stderr,
            text=True,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 120
        while "listening on 127.0.0.1:" not in out_file.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, out_file.read_text() + err_file.read_text()
            time.sleep(0.1)
        seen = out_file.read_text()
        if "listening on 127.0.0.1:" not in seen:
            proc.wait(10)
            pytest.fail(seen + err_file.read_text())  # it exited: stderr is complete
        assert "starting 1 embedded Kafka broker(s)" in seen
        assert "embedded Kafka broker listening on 127.0.0.1:" in seen
        yield data, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_generate_bronze_and_clean_shutdown(
    served_broker: tuple[Path, subprocess.Popen[str]],
) -> None:
    data, proc = served_broker
    generated = last_json(
        run(data, "generate", "--events", "2000", "--bad-fraction", "0.05", "--json")
    )
    assert generated["produced"] == 2_000
    assert sum(generated["generated"]["by_kind"].values()) == 2_000 - generated["generated"]["good"]

    topics = last_json(run(data, "kafka", "topics", "--json"))["topics"]
    assert sum(t["messages"] for t in topics) == 2_000

    first = last_json(run(data, "run", "bronze", "--available-now", "--json"))
    assert first["rows_written"] == 2_000
    again = last_json(run(data, "run", "bronze", "--available-now", "--json"))
    assert again["rows_written"] == 0
    assert again["table_version"] == first["table_version"]

    proc.send_signal(signal.SIGINT)
    errors = data.parent / "serve.err"
    try:
        code = proc.wait(60)  # the broker's own grace is 20 s; the rest is a loaded machine
    except subprocess.TimeoutExpired:
        pytest.fail(f"kafka serve did not stop on SIGINT: {errors.read_text()}")
    assert code == 0, errors.read_text()
    assert not (data / "_embedded_kafka.json").exists()

    gone = run(data, "run", "bronze", "--available-now")
    assert gone.returncode == 1
    assert "lakehouse kafka serve" in gone.stderr


def test_bad_arguments_exit_non_zero_with_the_fix(tmp_path: Path) -> None:
    data = tmp_path / "lake"
    both = run(data, "run", "bronze", "--available-now", "--processing-time", "5s")
    assert both.returncode == 2
    assert "choose one of --available-now and --processing-time" in both.stderr

    bad_env = run(data, "tables", "--env", "staging")
    assert bad_env.returncode == 2
    assert "unknown environment 'staging'" in bad_env.stderr

    missing = run(data, "sql", "SELECT * FROM silver.nope")
    assert missing.returncode == 1
    assert "tables: none yet" in missing.stderr
