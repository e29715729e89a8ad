"""The Kafka port: Spark's own ``format("kafka")`` (spark-sql-kafka), options from config.

Records come out as ``KAFKA_RECORDS_SCHEMA``: the binary key/value become UTF-8 strings (invalid
bytes replaced by U+FFFD), so bronze keeps them as received. Offsets live in the Spark checkpoint
and no consumer-group offsets are committed. The jars come from ``.jars/spark`` locally and are
built into Databricks (shaded there: see ``kafka_client_package``).

Security: the Java client takes SASL credentials as a JAAS login-module string
(``kafka.sasl.jaas.config``). The password appears only in the options handed to Spark; the
options object's ``repr`` and everything logged show it redacted (Spark itself redacts option
values matching ``spark.redaction.regex``, which matches ``password``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.config import KafkaSecurity, KafkaSettings
from pipelines.spark import class_loadable

log = logging.getLogger(__name__)

NATIVE_FORMAT = "kafka"
APACHE_KAFKA = "org.apache.kafka"
# Databricks' built-in connector shades the Kafka client under this package.
DATABRICKS_SHADED_KAFKA = "kafkashaded.org.apache.kafka"
_LOGIN_MODULES = {
    "PLAIN": "common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "common.security.scram.ScramLoginModule",
}
SECRET_OPTIONS = frozenset({"kafka.sasl.jaas.config"})
REDACTED = "*** (redacted)"
# A Kafka record as the port hands it on (bronze's table takes its columns from here).
KAFKA_RECORDS_SCHEMA = StructType(
    [
        StructField("key", StringType(), True),
        StructField("value", StringType(), True),
        StructField("topic", StringType(), True),
        StructField("partition", IntegerType(), True),
        StructField("offset", LongType(), True),
        StructField("timestamp", TimestampType(), True),
    ]
)


@dataclass(frozen=True)
class NativeKafkaOptions:
    """The reader options of ``format("kafka")``; ``repr`` never shows a secret."""

    options: dict[str, str] = field(repr=False)

    def redacted(self) -> dict[str, str]:
        return {k: REDACTED if k in SECRET_OPTIONS else v for k, v in self.options.items()}

    def __repr__(self) -> str:
        return f"NativeKafkaOptions({self.redacted()})"

    __str__ = __repr__


def native_kafka_options(
    kafka: KafkaSettings,
    bootstrap_servers: str,
    topics: list[str],
    starting_offsets: str | None = None,
    *,
    client_package: str = APACHE_KAFKA,
) -> NativeKafkaOptions:
    """``settings.kafka`` as ``format("kafka")`` options.

    Args:
        client_package: the Kafka client's Java package, for the SASL login module
            (``kafkashaded.org.apache.kafka`` on Databricks).

    Raises:
        ValueError: SASL PLAIN/SCRAM is selected without both a username and a password.
    """
    consumer = kafka.consumer
    options = {
        "kafka.bootstrap.servers": bootstrap_servers,
        "subscribePattern": subscription_pattern(topics),
        "startingOffsets": starting_offsets or consumer.starting_offsets,
        "failOnDataLoss": str(consumer.fail_on_data_loss).lower(),
        "minPartitions": str(consumer.min_partitions),
        "maxRecordsPerPartition": str(consumer.max_records_per_partition),
        "kafkaConsumer.pollTimeoutMs": str(int(consumer.poll_timeout_s * 1000)),
        "kafka.fetch.max.wait.ms": str(consumer.fetch_max_wait_ms),
    }
    if consumer.max_offsets_per_trigger:
        options["maxOffsetsPerTrigger"] = str(consumer.max_offsets_per_trigger)
    security = kafka.security
    options["kafka.security.protocol"] = security.protocol
    if security.sasl_mechanism:
        options["kafka.sasl.mechanism"] = security.sasl_mechanism
    jaas = sasl_jaas_config(security, client_package)
    if jaas is not None:
        options["kafka.sasl.jaas.config"] = jaas
    return NativeKafkaOptions(options)


def subscription_pattern(topics: list[str]) -> str:
    """A regex matching exactly ``topics`` (Java syntax).

    ``subscribe`` fails the query while a listed topic does not exist yet (Spark describes every
    topic); a pattern picks each topic up once it exists, from its earliest offset, so bronze can
    start before the first event of a type was ever sent.
    """
    return "^(?:" + "|".join(_java_quote(t) for t in topics) + ")$"


def _java_quote(topic: str) -> str:
    # Topic names are [a-zA-Z0-9._-]; escape the regex metacharacters among them.
    return "".join("\\" + c if c in ".-" else c for c in topic)


def sasl_jaas_config(security: KafkaSecurity, client_package: str = APACHE_KAFKA) -> str | None:
    """The JAAS login-module line for SASL PLAIN/SCRAM (None when SASL is not used).

    Raises:
        ValueError: PLAIN/SCRAM without both ``sasl_username`` and ``sasl_password``.
    """
    mechanism = security.sasl_mechanism
    if mechanism is None or not security.protocol.startswith("SASL"):
        return None
    if security.sasl_username is None or security.sasl_password is None:
        raise ValueError(
            f"kafka.security.sasl_mechanism {mechanism} needs kafka.security.sasl_username and "
            "kafka.security.sasl_password (e.g. ${KAFKA_PASSWORD})"
        )
    module = f"{client_package}.{_LOGIN_MODULES[mechanism]}"
    username = _jaas_quote(security.sasl_username)
    password = _jaas_quote(security.sasl_password.get_secret_value())
    return f"{module} required username={username} password={password};"


def native_kafka_stream(
    spark: SparkSession,
    kafka: KafkaSettings,
    bootstrap_servers: str,
    topics: list[str],
    starting_offsets: str | None = None,
) -> DataFrame:
    """Kafka records through ``format("kafka")``, as ``KAFKA_RECORDS_SCHEMA``."""
    options = native_kafka_options(
        kafka,
        bootstrap_servers,
        topics,
        starting_offsets,
        client_package=kafka_client_package(spark)
        if kafka.security.sasl_mechanism
        else APACHE_KAFKA,
    )
    log.info("native Kafka source on %s: %s", bootstrap_servers, options)
    return kafka_records(spark.readStream.format(NATIVE_FORMAT).options(**options.options).load())


def kafka_records(native: DataFrame) -> DataFrame:
    """``format("kafka")`` rows in ``KAFKA_RECORDS_SCHEMA``'s columns and types: UTF-8 key and
    value (invalid bytes become U+FFFD), topic, partition, offset, timestamp."""
    return native.select(
        F.make_valid_utf8(F.col("key").cast("string")).alias("key"),
        F.make_valid_utf8(F.col("value").cast("string")).alias("value"),
        F.col("topic"),
        F.col("partition"),
        F.col("offset"),
        F.col("timestamp"),
    )


def kafka_client_package(spark: SparkSession) -> str:
    """The Java package of the session's Kafka client: shaded on Databricks, Apache elsewhere."""
    shaded = class_loadable(spark, f"{DATABRICKS_SHADED_KAFKA}.{_LOGIN_MODULES['PLAIN']}")
    if shaded is None:  # no JVM gateway (Spark Connect): Databricks is the shaded case
        shaded = "DATABRICKS_RUNTIME_VERSION" in os.environ
    return DATABRICKS_SHADED_KAFKA if shaded else APACHE_KAFKA


def _jaas_quote(value: str) -> str:
    """A JAAS option value in double quotes (Kafka parses it with backslash escapes)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
