"""The one place a SparkSession is built.

Everything else receives the session as an argument. Locally the session binds to 127.0.0.1,
keeps the UI off, uses UTC, and runs Python workers with this interpreter so they can import
``pipelines``, ``confluent_kafka`` and ``deltalake``.

The cluster adapters (``engines.delta: delta-spark``, ``engines.kafka: native``) need JVM
connectors. A local session selecting one gets its Maven coordinates in ``spark.jars.packages``
(fetched from Maven Central when the JVM starts) unless ``spark.conf`` already provides
``spark.jars``/``spark.jars.packages``; the default adapters need nothing, so the default session
never downloads anything. On Databricks ``getOrCreate`` returns the cluster's session, where both
connectors are built in. ``adapter_availability`` says whether a running session can load them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

from pyspark.sql import SparkSession

from pipelines.config import Settings

_LOG4J = Path(__file__).with_name("log4j2.properties")

DELTA_SPARK_PACKAGE = "io.delta:delta-spark_2.13:4.4.1"  # pulls io.delta:delta-storage:4.4.1
KAFKA_PACKAGE = "org.apache.spark:spark-sql-kafka-0-10_2.13:4.2.0"
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"

# Adapter name -> (a JVM class it needs, the Maven package providing it, the jars to list in
# spark.jars when Maven is out of reach).
_CLUSTER_ADAPTERS = {
    "delta-spark": (
        "io.delta.tables.DeltaTable",
        DELTA_SPARK_PACKAGE,
        "delta-spark_2.13-4.4.1.jar and delta-storage-4.4.1.jar",
    ),
    "kafka-native": (
        "org.apache.spark.sql.kafka010.KafkaSourceProvider",
        KAFKA_PACKAGE,
        "spark-sql-kafka-0-10_2.13-4.2.0.jar, spark-token-provider-kafka-0-10_2.13-4.2.0.jar, "
        "kafka-clients and commons-pool2",
    ),
}


class AdapterStatus(NamedTuple):
    """Whether a cluster adapter's JVM classes load in a session, and why (or how to fix it)."""

    available: bool
    reason: str


def build_spark(settings: Settings, app_name: str | None = None) -> SparkSession:
    """Build (or return the active) SparkSession configured from ``settings``."""
    spark_settings = settings.spark
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        # On a Databricks cluster the runtime owns the session (master, Delta, Kafka, UI):
        # use it as it is, with only the settings' own spark.conf applied.
        session = SparkSession.builder.getOrCreate()
        for key, value in spark_settings.conf.items():
            session.conf.set(key, value)
        return session
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if _is_local(settings):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.master(spark_settings.master).appName(
        app_name or spark_settings.app_name
    )
    for key, value in session_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(spark_settings.log_level)
    return spark


def session_conf(settings: Settings) -> dict[str, str]:
    """Every Spark conf ``build_spark`` sets, in order (pure: no JVM is started).

    ``settings.spark.conf`` comes last, so it overrides anything computed here.
    """
    spark_settings = settings.spark
    java_opts = f"-Dlog4j.configurationFile=file:{_LOG4J} -Dlog4j2.configurationFile=file:{_LOG4J}"
    conf = {
        "spark.sql.shuffle.partitions": str(spark_settings.shuffle_partitions),
        "spark.default.parallelism": str(spark_settings.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.driver.memory": spark_settings.driver_memory,
        "spark.driver.extraJavaOptions": java_opts,
        "spark.executor.extraJavaOptions": java_opts,
        "spark.log.structuredLogging.enabled": "false",
        "spark.pyspark.python": sys.executable,
        "spark.sql.streaming.stopActiveRunOnRestart": "true",
    }
    if _is_local(settings):
        conf.update(
            {
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.sql.warehouse.dir": str(
                    Path(settings.storage.resolved().root) / "_warehouse"
                ),
            }
        )
    if settings.engines.delta == "delta-spark":
        conf["spark.sql.extensions"] = DELTA_EXTENSION
        conf["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
    packages = cluster_packages(settings)
    if packages:
        conf["spark.jars.packages"] = ",".join(packages)
    conf.update(spark_settings.conf)
    return conf


def cluster_packages(settings: Settings) -> list[str]:
    """Maven coordinates a local session needs for the selected cluster adapters.

    Empty for the default adapters, for a non-local master (the cluster provides its jars) and
    when ``spark.conf`` already sets ``spark.jars`` or ``spark.jars.packages`` (the operator has
    chosen the jars).
    """
    user_conf = settings.spark.conf
    if not _is_local(settings) or "spark.jars" in user_conf or "spark.jars.packages" in user_conf:
        return []
    packages = []
    if settings.engines.delta == "delta-spark":
        packages.append(DELTA_SPARK_PACKAGE)
    if settings.engines.kafka == "native":
        packages.append(KAFKA_PACKAGE)
    return packages


def adapter_availability(spark: SparkSession) -> dict[str, AdapterStatus]:
    """Whether each cluster adapter's JVM classes load in ``spark``.

    Returns ``{"delta-spark": AdapterStatus, "kafka-native": AdapterStatus}``; each status is an
    ``(available, reason)`` tuple whose reason names the class checked and, when it is missing,
    the fix. Nothing is downloaded and no query is run.
    """
    out = {}
    for adapter, (class_name, package, jars) in _CLUSTER_ADAPTERS.items():
        loadable = class_loadable(spark, class_name)
        if loadable is None:
            out[adapter] = AdapterStatus(
                False,
                f"cannot check for {class_name}: the session has no JVM gateway (Spark "
                "Connect); the cluster must provide the connector (Databricks does)",
            )
        elif loadable:
            out[adapter] = AdapterStatus(True, f"{class_name} is on the classpath")
        else:
            name = adapter.replace("kafka-native", "spark-sql-kafka")
            out[adapter] = AdapterStatus(
                False,
                f"{name} jars are not on the classpath ({class_name} does not load): run where "
                f"Maven Central is reachable (a local session then fetches {package} through "
                f"spark.jars.packages) or on Databricks, or set spark.conf spark.jars to the jar "
                f"files ({jars})",
            )
    return out


def class_loadable(spark: SparkSession, class_name: str) -> bool | None:
    """Whether the driver JVM loads ``class_name`` (None: no JVM gateway, e.g. Spark Connect).

    Uses the thread's context class loader, where Spark puts the jars of ``spark.jars`` and
    ``spark.jars.packages``.
    """
    try:
        jvm = getattr(spark, "_jvm", None)
    except Exception:  # Spark Connect sessions have no py4j gateway and may raise on access
        jvm = None
    if jvm is None:
        return None
    try:
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName(class_name, False, loader)
        return True
    except Exception:  # py4j wraps ClassNotFoundException / NoClassDefFoundError
        return False


def _is_local(settings: Settings) -> bool:
    return settings.spark.master.startswith("local")
