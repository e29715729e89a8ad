"""The one place a SparkSession is built.

Everything else receives the session as an argument. Locally the session binds to 127.0.0.1,
keeps the UI off, uses UTC, and runs Python workers with this interpreter so they can import
``pipelines``, ``confluent_kafka`` and ``deltalake``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.config import Settings

_LOG4J = Path(__file__).with_name("log4j2.properties")


def build_spark(settings: Settings, app_name: str | None = None) -> SparkSession:
    """Build (or return the active) SparkSession configured from ``settings.spark``."""
    spark_settings = settings.spark
    local = spark_settings.master.startswith("local")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    java_opts = f"-Dlog4j.configurationFile=file:{_LOG4J} -Dlog4j2.configurationFile=file:{_LOG4J}"
    builder = (
        SparkSession.builder.master(spark_settings.master)
        .appName(app_name or spark_settings.app_name)
        .config("spark.sql.shuffle.partitions", str(spark_settings.shuffle_partitions))
        .config("spark.default.parallelism", str(spark_settings.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.pyspark.fallback.enabled", "false")
        .config("spark.driver.memory", spark_settings.driver_memory)
        .config("spark.driver.extraJavaOptions", java_opts)
        .config("spark.executor.extraJavaOptions", java_opts)
        .config("spark.log.structuredLogging.enabled", "false")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.sql.streaming.stopActiveRunOnRestart", "true")
    )
    if local:
        builder = (
            builder.config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config(
                "spark.sql.warehouse.dir",
                str(Path(settings.storage.resolved().root) / "_warehouse"),
            )
        )
    for key, value in spark_settings.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(spark_settings.log_level)
    return spark
