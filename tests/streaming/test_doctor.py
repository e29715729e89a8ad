"""`lakehouse doctor`: every check on this machine, and a clear failure when the broker is down."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.doctor import run_checks
from pipelines.streaming.kafka import EmbeddedKafka
from tests.conftest import conf_folder, free_port, make_settings

pytestmark = pytest.mark.streaming


def test_doctor_passes_on_the_embedded_defaults_and_reports_the_cluster_adapters(
    spark: SparkSession, kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, kafka={"bootstrap_servers": kafka_broker.bootstrap_servers})
    checks = {c.name: c for c in run_checks(settings, spark_factory=lambda _s: spark)}
    for name in (
        "python",
        "java",
        "spark",
        "delta adapter",
        "kafka adapter",
        "kafka broker",
        "storage",
        "checkpoints",
        "mlflow",
        "collector",
    ):
        assert checks[name].status == "ok", checks[name]
    assert "delta-rs" in checks["delta adapter"].detail
    # The cluster adapters are not selected and their jars are absent here: a warning with the fix.
    cluster = checks["delta-spark (not selected)"]
    assert cluster.status == "warn" and "Maven Central" in cluster.detail


def test_doctor_exits_1_and_names_the_fix_when_the_broker_is_down(tmp_path: Path) -> None:
    closed = free_port()
    env = conf_folder(
        tmp_path,
        f"storage: {{root: '{tmp_path / 'lake'}'}}\n"
        f"kafka: {{bootstrap_servers: '127.0.0.1:{closed}'}}\n",
        "down",
    )
    result = CliRunner().invoke(
        app,
        ["doctor", "--env", "down", "--skip-spark", "--kafka-timeout", "2", "--json"],
        env={**env, "COLUMNS": "200"},
    )
    assert result.exit_code == 1
    assert f"127.0.0.1:{closed} did not answer" in result.output
    assert "kafka broker: start the embedded broker with `lakehouse kafka serve`" in result.output
    assert '"status": "fail"' in result.output
