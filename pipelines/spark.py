"""The one place a SparkSession is built.

Everything else receives the session as an argument. Locally the session binds to 127.0.0.1,
keeps the UI off, uses UTC, runs Python workers with this interpreter, and loads the project's
pinned connector jars (delta-spark, spark-sql-kafka, hadoop-aws: ``pipelines.jvm``, resolved
once by ``make``) from ``.jars/spark``; nothing is downloaded when a session starts. A Spark
standalone cluster (master ``spark://host:port``) runs plain Spark, which has none of these
connectors: the session ships the same pinned jars to its executors (``spark.jars``, served by
the driver) and gives them the same S3A settings. On Databricks ``getOrCreate`` returns the
cluster's session, where Delta and Kafka are built in.

Every session built here has Delta's SQL extension and catalog, and registers the lake's tables
under their logical names (``bronze.events_raw``, ``silver.events``, ``gold.user_features`` …), so
``spark.table("silver.events")`` and ``SELECT … VERSION AS OF 3`` work directly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

from pyspark.sql import SparkSession

from pipelines.config import Settings
from pipelines.contracts.spark_rules import JSON_READER_CONF
from pipelines.jvm import PROBE_CLASSES, jar_set
from pipelines.lake.catalog import Catalog
from pipelines.tables import LAKE_TABLES

_LOG4J = Path(__file__).with_name("log4j2.properties")

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


class ConnectorStatus(NamedTuple):
    """Whether a connector's JVM classes load in a session, and why (or how to fix it)."""

    available: bool
    reason: str


def build_spark(settings: Settings, app_name: str | None = None) -> SparkSession:
    """Build (or return the active) SparkSession configured from ``settings``."""
    spark_settings = settings.spark
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        # On a Databricks cluster the runtime owns the session (master, Delta, Kafka, UI):
        # use it as it is, with only how the contract reads JSON and the settings' own
        # spark.conf applied.
        session = SparkSession.builder.getOrCreate()
        for key, value in {**JSON_READER_CONF, **spark_settings.conf}.items():
            session.conf.set(key, value)
        Catalog.for_settings(settings, LAKE_TABLES).register_all(session)
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
    Catalog.for_settings(settings, LAKE_TABLES).register_all(spark)
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
    storage = settings.storage.resolved()
    if ships_pinned_jars(settings):
        # CREATE SCHEMA (the catalog's layers) makes folders here: beside the tables, not in
        # the driver's working directory.
        conf["spark.sql.warehouse.dir"] = f"{storage.root}/_warehouse"
    if _is_local(settings):
        conf.update(
            {
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
                # File listings (VACUUM, partition discovery) use this many tasks, not 10,000.
                "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(
                    spark_settings.shuffle_partitions
                ),
            }
        )
        if not storage.remote:
            # Shuffle and block-manager scratch under the storage root, not the system temp
            # directory, where a killed JVM used to leave it behind (219 MB after 19 kills).
            conf["spark.local.dir"] = f"{storage.root}/_spark/scratch"
    conf["spark.sql.extensions"] = DELTA_EXTENSION
    conf["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
    # Delta reads a table's log with this many tasks (default 50): far too many for small
    # local tables, where it dominates every commit.
    conf["spark.databricks.delta.snapshotPartitions"] = str(spark_settings.shuffle_partitions)
    jars = connector_jars(settings)
    if jars:
        conf["spark.jars"] = ",".join(jars)
    conf.update(s3a_conf(settings))
    conf.update(JSON_READER_CONF)
    conf.update(spark_settings.conf)
    return conf


def ships_pinned_jars(settings: Settings) -> bool:
    """Whether sessions of this master get the project's pinned connector jars (and S3A confs).

    True for a local master and for a Spark standalone cluster (``spark://``): both run the
    Spark that pyspark ships, without Delta, Kafka or S3A. Other cluster managers (YARN,
    Kubernetes, Databricks) bring their own connectors, or the operator names them in
    ``spark.conf``.
    """
    master = settings.spark.master
    return _is_local(settings) or master.startswith("spark://")


def connector_jars(settings: Settings) -> list[str]:
    """The jar files a session adds to pyspark's own (``.jars/spark``).

    On a standalone cluster Spark's driver serves ``spark.jars`` to every executor, which adds
    them to its classpath, so the workers need nothing installed but Spark itself (the version
    pyspark pins).

    Empty for other cluster masters (the cluster provides its jars) and when ``spark.conf``
    already sets ``spark.jars`` or ``spark.jars.packages`` (the operator has chosen the jars).

    Raises:
        JarsMissingError: the jars were never resolved (the message names the command).
    """
    user_conf = settings.spark.conf
    chosen = "spark.jars" in user_conf or "spark.jars.packages" in user_conf
    if not ships_pinned_jars(settings) or chosen:
        return []
    return [str(jar) for jar in jar_set("spark").jars]


def s3a_conf(settings: Settings) -> dict[str, str]:
    """Hadoop's S3A filesystem for an ``s3://`` storage root, as session confs (local and
    standalone masters: the ones given the pinned hadoop-aws).

    ``s3://`` paths are served by S3A (Databricks maps them itself), with the endpoint, region
    and credentials of ``storage.s3``; without keys, S3A's default provider chain applies.
    ``spark.hadoop.*`` confs reach the executors' Hadoop configuration too.
    """
    if not ships_pinned_jars(settings):
        return {}
    return {f"spark.hadoop.{k}": v for k, v in settings.storage.s3a_options().items()}


def connector_status(spark: SparkSession) -> dict[str, ConnectorStatus]:
    """Whether each connector's JVM classes (delta-spark, spark-sql-kafka, hadoop-aws) load in
    ``spark``; each status's reason names the class checked and, when missing, the fix."""
    out = {}
    for connector, class_name in PROBE_CLASSES["spark"].items():
        loadable = class_loadable(spark, class_name)
        if loadable is None:
            out[connector] = ConnectorStatus(
                False,
                f"cannot check for {class_name}: the session has no JVM gateway (Spark "
                "Connect); the cluster must provide the connector (Databricks does)",
            )
        elif loadable:
            out[connector] = ConnectorStatus(True, f"{class_name} is on the classpath")
        else:
            out[connector] = ConnectorStatus(
                False,
                f"{connector} is not on the classpath ({class_name} does not load): run "
                "`make install` (resolves .jars/spark) or, on a cluster, install the connector",
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
