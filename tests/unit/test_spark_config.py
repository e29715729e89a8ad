"""What the session builder and the Kafka connector configure, computed without a JVM."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import Settings
from pipelines.jvm import JAR_SETS, JarsMissingError, jar_set
from pipelines.spark import (
    DELTA_CATALOG,
    DELTA_EXTENSION,
    connector_jars,
    s3a_conf,
    session_conf,
)
from pipelines.streaming.kafka_native import (
    DATABRICKS_SHADED_KAFKA,
    REDACTED,
    native_kafka_options,
    subscription_pattern,
)
from tests.conftest import make_settings

PASSWORD = 's3cr"et\\pw'  # a quote and a backslash: both need escaping inside JAAS


def settings_with(tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(tmp_path, **overrides)


# -- session conf -----------------------------------------------------------------------------
def test_local_session_loads_the_pinned_jars_with_delta_and_downloads_nothing(
    tmp_path: Path,
) -> None:
    conf = session_conf(settings_with(tmp_path))
    assert "spark.jars.packages" not in conf  # no resolution at session start
    jars = conf["spark.jars"].split(",")
    assert jars == [str(j) for j in jar_set("spark").jars]
    names = {Path(j).name for j in jars}
    assert {"delta-spark_4.2_2.13-4.4.0.jar", "spark-sql-kafka-0-10_2.13-4.2.0.jar"} <= names
    assert "hadoop-aws-3.5.0.jar" in names
    assert not any(n.startswith("bundle-") for n in names)  # not the whole AWS SDK
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION
    assert conf["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert conf["spark.sql.warehouse.dir"] == f"{tmp_path.resolve()}/_warehouse"
    # scratch space under the storage root, not the system temp directory a killed JVM litters
    assert conf["spark.local.dir"] == f"{tmp_path.resolve()}/_spark/scratch"
    assert "spark.hadoop.fs.s3.impl" not in conf


def test_pinned_delta_jar_matches_the_delta_spark_wheel() -> None:
    wheel = importlib.metadata.version("delta-spark")
    assert f"io.delta:delta-spark_4.2_2.13:{wheel}" in JAR_SETS["spark"]
    pyspark = importlib.metadata.version("pyspark")
    assert f"org.apache.spark:spark-sql-kafka-0-10_2.13:{pyspark}" in JAR_SETS["spark"]


@pytest.mark.parametrize("key", ["spark.jars", "spark.jars.packages"])
def test_operator_supplied_jars_are_kept_and_nothing_is_added(tmp_path: Path, key: str) -> None:
    settings = settings_with(tmp_path, spark={"conf": {key: "/opt/jars/delta-spark.jar"}})
    conf = session_conf(settings)
    assert connector_jars(settings) == []
    jars = {k: v for k, v in conf.items() if k.startswith("spark.jars")}
    assert jars == {key: "/opt/jars/delta-spark.jar"}
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION  # still a Delta session


@pytest.mark.parametrize("master", ["yarn", "k8s://https://10.0.0.1:6443"])
def test_a_managed_cluster_master_gets_the_delta_session_confs_but_no_jars(
    tmp_path: Path, master: str
) -> None:
    settings = settings_with(tmp_path, spark={"master": master})
    conf = session_conf(settings)
    assert "spark.jars" not in conf
    assert "spark.driver.bindAddress" not in conf
    assert conf["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG


def test_a_standalone_master_ships_the_pinned_jars_and_s3a_to_its_executors(
    tmp_path: Path,
) -> None:
    storage = {
        "root": "s3://lake/recsys",
        "checkpoint_root": str(tmp_path / "ckpt"),
        "s3": {
            "endpoint_url": "http://minio:9000",
            "access_key_id": "AK",
            "secret_access_key": "SK",
        },
    }
    settings = settings_with(
        tmp_path, spark={"master": "spark://spark-master:7077"}, storage=storage
    )
    conf = session_conf(settings)
    assert conf["spark.jars"].split(",") == [str(j) for j in jar_set("spark").jars]
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://minio:9000"
    assert conf["spark.sql.warehouse.dir"] == "s3://lake/recsys/_warehouse"
    # The executors connect back to the driver: it must not bind to loopback, and the cluster
    # keeps its own UI and scratch space.
    for local_only in ("spark.driver.bindAddress", "spark.ui.enabled", "spark.local.dir"):
        assert local_only not in conf
    assert conf["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG


def test_missing_jars_name_the_command_that_resolves_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKEHOUSE_JARS", str(tmp_path / "empty"))
    with pytest.raises(JarsMissingError, match="make install"):
        session_conf(settings_with(tmp_path))


def test_an_s3_root_is_served_by_s3a_with_the_configured_endpoint(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path,
        storage={
            "root": "s3://lake/recsys",
            "checkpoint_root": str(tmp_path / "ckpt"),
            "s3": {
                "endpoint_url": "http://127.0.0.1:9000",
                "access_key_id": "AK",
                "secret_access_key": "SK",
                "allow_http": True,
            },
        },
    )
    conf = s3a_conf(settings)
    assert conf == {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
        "spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:9000",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
        "spark.hadoop.fs.s3a.access.key": "AK",
        "spark.hadoop.fs.s3a.secret.key": "SK",
        "spark.hadoop.fs.s3a.aws.credentials.provider": (
            "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        ),
    }
    assert session_conf(settings)["spark.sql.warehouse.dir"] == "s3://lake/recsys/_warehouse"
    assert "spark.local.dir" not in session_conf(settings)  # a local path only


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
        "subscribePattern": "^(?:clicks|views)$",
        "startingOffsets": "latest",
        "failOnDataLoss": "false",
        "minPartitions": "3",
        "maxRecordsPerPartition": "700",
        "kafkaConsumer.pollTimeoutMs": "12500",
        "kafka.fetch.max.wait.ms": "20",
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


def test_the_subscription_matches_exactly_the_configured_topics() -> None:
    pattern = re.compile(subscription_pattern(["user_clicks", "page.views-v2"]))
    assert pattern.pattern == r"^(?:user_clicks|page\.views\-v2)$"
    assert pattern.match("user_clicks") and pattern.match("page.views-v2")
    assert not pattern.match("user_clicks2") and not pattern.match("pageXviews-v2")
