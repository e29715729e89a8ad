"""What the session builder and the native Kafka adapter configure, computed without a JVM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.config import Settings
from pipelines.spark import (
    DELTA_CATALOG,
    DELTA_EXTENSION,
    DELTA_SPARK_PACKAGE,
    KAFKA_PACKAGE,
    cluster_packages,
    session_conf,
)
from pipelines.streaming.kafka_native import (
    DATABRICKS_SHADED_KAFKA,
    REDACTED,
    native_kafka_options,
)
from tests.conftest import make_settings

PASSWORD = 's3cr"et\\pw'  # a quote and a backslash: both need escaping inside JAAS


def settings_with(tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(tmp_path, **overrides)


# -- session conf -----------------------------------------------------------------------------
def test_default_session_adds_no_connector_and_downloads_nothing(tmp_path: Path) -> None:
    conf = session_conf(settings_with(tmp_path))
    assert "spark.jars.packages" not in conf
    assert "spark.sql.extensions" not in conf
    assert "spark.sql.catalog.spark_catalog" not in conf
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert conf["spark.sql.warehouse.dir"] == str(tmp_path.resolve() / "_warehouse")


def test_delta_spark_adds_the_extension_catalog_and_its_package(tmp_path: Path) -> None:
    conf = session_conf(settings_with(tmp_path, engines={"delta": "delta-spark"}))
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION
    assert conf["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG
    assert conf["spark.jars.packages"] == DELTA_SPARK_PACKAGE == "io.delta:delta-spark_2.13:4.4.1"


def test_native_kafka_adds_only_its_package(tmp_path: Path) -> None:
    conf = session_conf(settings_with(tmp_path, engines={"kafka": "native"}))
    assert conf["spark.jars.packages"] == KAFKA_PACKAGE
    assert KAFKA_PACKAGE == "org.apache.spark:spark-sql-kafka-0-10_2.13:4.2.0"
    assert "spark.sql.extensions" not in conf


def test_both_cluster_adapters_add_both_packages(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, engines={"delta": "delta-spark", "kafka": "native"})
    assert cluster_packages(settings) == [DELTA_SPARK_PACKAGE, KAFKA_PACKAGE]
    assert session_conf(settings)["spark.jars.packages"] == f"{DELTA_SPARK_PACKAGE},{KAFKA_PACKAGE}"


@pytest.mark.parametrize("key", ["spark.jars", "spark.jars.packages"])
def test_operator_supplied_jars_are_kept_and_nothing_is_added(tmp_path: Path, key: str) -> None:
    settings = settings_with(
        tmp_path,
        engines={"delta": "delta-spark", "kafka": "native"},
        spark={"conf": {key: "/opt/jars/delta-spark.jar"}},
    )
    conf = session_conf(settings)
    assert cluster_packages(settings) == []
    jars = {k: v for k, v in conf.items() if k.startswith("spark.jars")}
    assert jars == {key: "/opt/jars/delta-spark.jar"}
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION  # still a Delta session


def test_a_cluster_master_gets_the_delta_session_confs_but_no_packages(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path,
        engines={"delta": "delta-spark", "kafka": "native"},
        spark={"master": "spark://spark-master:7077"},
    )
    conf = session_conf(settings)
    assert "spark.jars.packages" not in conf
    assert "spark.driver.bindAddress" not in conf
    assert conf["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG


def test_user_conf_overrides_computed_values(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, spark={"conf": {"spark.sql.session.timeZone": "CET"}})
    assert session_conf(settings)["spark.sql.session.timeZone"] == "CET"


# -- native Kafka options ---------------------------------------------------------------------
def kafka_settings(tmp_path: Path, **security: Any) -> Settings:
    return settings_with(
        tmp_path,
        kafka={
            "consumer": {
                "starting_offsets": "latest",
                "max_offsets_per_trigger": 5000,
                "min_partitions": 3,
                "max_records_per_partition": 700,
                "poll_timeout_s": 12.5,
                "fail_on_data_loss": False,
            },
            "security": security,
        },
    )


def test_native_options_map_the_consumer_settings(tmp_path: Path) -> None:
    settings = kafka_settings(tmp_path)
    options = native_kafka_options(settings.kafka, "b1:9092,b2:9092", ["clicks", "views"])
    assert options.options == {
        "kafka.bootstrap.servers": "b1:9092,b2:9092",
        "subscribe": "clicks,views",
        "startingOffsets": "latest",
        "failOnDataLoss": "false",
        "minPartitions": "3",
        "maxRecordsPerPartition": "700",
        "kafkaConsumer.pollTimeoutMs": "12500",
        "maxOffsetsPerTrigger": "5000",
        "kafka.security.protocol": "PLAINTEXT",
    }
    earliest = native_kafka_options(settings.kafka, "b1:9092", ["clicks"], "earliest")
    assert earliest.options["startingOffsets"] == "earliest"


def test_no_trigger_cap_means_no_max_offsets_option(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, kafka={"consumer": {"max_offsets_per_trigger": None}})
    options = native_kafka_options(settings.kafka, "b:9092", ["t"])
    assert "maxOffsetsPerTrigger" not in options.options


@pytest.mark.parametrize(
    ("mechanism", "module"),
    [
        ("PLAIN", "org.apache.kafka.common.security.plain.PlainLoginModule"),
        ("SCRAM-SHA-256", "org.apache.kafka.common.security.scram.ScramLoginModule"),
        ("SCRAM-SHA-512", "org.apache.kafka.common.security.scram.ScramLoginModule"),
    ],
)
def test_sasl_becomes_a_jaas_config_holding_the_password_only_in_the_options(
    tmp_path: Path, mechanism: str, module: str
) -> None:
    settings = kafka_settings(
        tmp_path,
        protocol="SASL_SSL",
        sasl_mechanism=mechanism,
        sasl_username="svc-lakehouse",
        sasl_password=PASSWORD,
    )
    options = native_kafka_options(settings.kafka, "b:9093", ["t"])
    assert options.options["kafka.security.protocol"] == "SASL_SSL"
    assert options.options["kafka.sasl.mechanism"] == mechanism
    assert options.options["kafka.sasl.jaas.config"] == (
        f'{module} required username="svc-lakehouse" password="s3cr\\"et\\\\pw";'
    )
    assert not any("sasl.username" in k or "sasl.password" in k for k in options.options)
    for shown in (repr(options), str(options), f"{options}", str(options.redacted())):
        assert PASSWORD not in shown
        assert "s3cr" not in shown
    assert options.redacted()["kafka.sasl.jaas.config"] == REDACTED
    assert "svc-lakehouse" not in repr(options)  # the whole JAAS line is redacted


def test_databricks_gets_the_shaded_login_module(tmp_path: Path) -> None:
    settings = kafka_settings(
        tmp_path,
        protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password="p",
    )
    options = native_kafka_options(
        settings.kafka, "b:9093", ["t"], client_package=DATABRICKS_SHADED_KAFKA
    )
    assert options.options["kafka.sasl.jaas.config"].startswith(
        "kafkashaded.org.apache.kafka.common.security.plain.PlainLoginModule required "
    )


def test_sasl_without_credentials_is_a_clear_error(tmp_path: Path) -> None:
    settings = kafka_settings(tmp_path, protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512")
    with pytest.raises(ValueError, match=r"SCRAM-SHA-512 needs kafka.security.sasl_username"):
        native_kafka_options(settings.kafka, "b:9093", ["t"])


def test_ssl_without_sasl_sets_only_the_protocol(tmp_path: Path) -> None:
    settings = kafka_settings(tmp_path, protocol="SSL")
    options = native_kafka_options(settings.kafka, "b:9093", ["t"]).options
    assert options["kafka.security.protocol"] == "SSL"
    assert "kafka.sasl.mechanism" not in options
    assert "kafka.sasl.jaas.config" not in options
