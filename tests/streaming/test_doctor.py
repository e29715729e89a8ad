"""`lakehouse doctor`: every check on this machine, and a clear failure when the broker is down."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from pipelines.cli.main import app
from pipelines.doctor import run_checks
from tests.conftest import SharedBroker, conf_folder, free_port, make_settings

pytestmark = pytest.mark.streaming


def test_doctor_passes_on_the_embedded_defaults_and_reports_every_jar_and_connector(
    spark: SparkSession, kafka_broker: SharedBroker, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, kafka={"bootstrap_servers": kafka_broker.bootstrap_servers})
    checks = {c.name: c for c in run_checks(settings, spark_factory=lambda _s: spark)}
    for name in (
        "python",
        "java",
        "spark",
        "jars: spark",
        "jars: broker",
        "delta-spark",
        "spark-sql-kafka",
        "hadoop-aws",
        "kafka broker",
        "storage",
        "checkpoints",
        "mlflow",
        "collector",
    ):
        assert checks[name].status == "ok", checks[name]
    assert "io.delta:delta-spark_4.2_2.13:4.4.0" in checks["jars: spark"].detail
    assert "org.apache.kafka:kafka_2.13:4.1.1" in checks["jars: broker"].detail
    assert "io.delta.tables.DeltaTable is on the classpath" in checks["delta-spark"].detail


def test_doctor_names_the_command_when_the_jars_are_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKEHOUSE_JARS", str(tmp_path / "no-jars"))
    checks = {c.name: c for c in run_checks(make_settings(tmp_path), spark=False)}
    for name in ("jars: spark", "jars: broker"):
        assert checks[name].status == "fail"
        assert "make install" in checks[name].fix
    assert checks["connectors"].status == "warn"


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
