"""``lakehouse doctor``: is this machine and this environment able to run the jobs?

Each check says what it looked at and, when it fails, the fix. Checks that need a JVM (Spark and
its connectors) can be skipped for a quick look.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pipelines.config import ConfigError, Settings
from pipelines.jvm import JAR_SETS, JarsMissingError, jar_set
from pipelines.lake.objects import ObjectStore
from pipelines.spark import build_spark, connector_status, ships_pinned_jars
from pipelines.streaming.kafka import (
    KafkaUnavailableError,
    check_reachable,
    client_config,
    resolve_bootstrap,
)

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def run_checks(
    settings: Settings,
    *,
    spark: bool = True,
    spark_factory: Callable[[Settings], Any] | None = None,
    kafka_timeout_s: float = 5.0,
) -> list[Check]:
    """Every check, in the order a user would fix them."""
    checks = [check_python(), check_java()]
    session = None
    if spark:
        session, spark_check = check_spark(settings, spark_factory)
        checks.append(spark_check)
    checks += check_jars(settings, session)
    checks.append(check_broker(settings, kafka_timeout_s))
    checks += check_storage(settings)
    checks.append(check_mlflow(settings))
    checks.append(check_collector(settings))
    return checks


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] == (3, 11):
        return Check("python", "ok", f"Python {version} at {sys.executable}")
    return Check(
        "python",
        "fail",
        f"Python {version}; the pinned requirements are for 3.11",
        "install Python 3.11 and recreate .venv (make PYTHON=/path/to/python3.11 install)",
    )


def check_java() -> Check:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    fix = "install JDK 17+ (Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
    if not java or not Path(java).exists():
        return Check("java", "fail", "no java on PATH or JAVA_HOME", fix)
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("java", "fail", f"{java} -version failed: {exc}", fix)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = int(match.group(1)) if match else 0
    if match and major == 1 and match.group(2):
        major = int(match.group(2))
    if major >= 17:
        return Check("java", "ok", f"Java {major} at {java}")
    return Check("java", "fail", f"{java} is Java {major or '?'}; Spark 4 needs 17+", fix)


def check_spark(settings: Settings, factory: Callable[[Settings], Any] | None) -> tuple[Any, Check]:
    version = importlib.metadata.version("pyspark")
    if factory is None:
        factory = build_spark
    try:
        session = factory(settings)
        session.range(1).count()
    except Exception as exc:  # the JVM's errors come in many types; report any of them
        return None, Check(
            "spark",
            "fail",
            f"pyspark {version} could not start a session with master "
            f"{settings.spark.master}: {str(exc).splitlines()[0][:200]}",
            "check Java, spark.master and spark.conf in conf/<env>.yaml",
        )
    return session, Check("spark", "ok", f"pyspark {version}, master {session.sparkContext.master}")


def check_jars(settings: Settings, session: Any) -> list[Check]:
    """The pinned JVM jars: each set resolved (``.jars/``), and each connector loading in the
    session (on a cluster, the runtime's own connectors)."""

    checks = []
    pinned = ships_pinned_jars(settings)
    for name, coordinates in JAR_SETS.items():
        if name == "spark" and not pinned:
            checks.append(Check("jars: spark", "ok", "cluster master: the cluster's own jars"))
            continue
        try:
            jars = jar_set(name)
        except JarsMissingError as exc:
            checks.append(Check(f"jars: {name}", "fail", str(exc).split(";")[0], str(exc)))
            continue
        size = sum(j.stat().st_size for j in jars.jars) / 1e6
        checks.append(
            Check(
                f"jars: {name}",
                "ok",
                f"{len(jars.jars)} jars ({size:.0f} MB) in {jars.folder} for "
                f"{', '.join(coordinates)}",
            )
        )
    if session is None:
        checks.append(
            Check("connectors", "warn", "not checked (Spark skipped)", "run without --skip-spark")
        )
        return checks

    for connector, (available, reason) in connector_status(session).items():
        checks.append(
            Check(connector, "ok" if available else "fail", reason, "" if available else reason)
        )
    return checks


def check_broker(settings: Settings, timeout_s: float) -> Check:

    try:
        servers = resolve_bootstrap(settings)
        check_reachable(client_config(settings.kafka, servers), timeout_s)
    except KafkaUnavailableError as exc:
        return Check(
            "kafka broker",
            "fail",
            str(exc).split(";")[0],
            "start the embedded broker with `lakehouse kafka serve` (same --env), or set "
            "kafka.bootstrap_servers to reachable brokers",
        )
    return Check("kafka broker", "ok", f"{servers} answered a metadata request")


def check_storage(settings: Settings) -> list[Check]:

    storage = settings.storage.resolved()
    checks = []
    try:
        where = ObjectStore(storage).check_writable()
        checks.append(Check("storage", "ok", f"wrote and deleted a test object under {where}"))
    except Exception as exc:  # boto3, OS and permission errors alike
        fix = (
            "check storage.s3 (endpoint, region, credentials) and the bucket policy"
            if storage.remote
            else f"make {storage.root} writable or set storage.root"
        )
        checks.append(
            Check("storage", "fail", f"cannot write under {storage.root}: {exc}"[:300], fix)
        )
    ckpt = storage.checkpoints
    if "://" in ckpt or ckpt.startswith("dbfs:"):
        checks.append(Check("checkpoints", "ok", f"{ckpt} (cluster filesystem; not probed here)"))
    else:
        try:
            Path(ckpt).mkdir(parents=True, exist_ok=True)
            probe = Path(ckpt) / ".write-check"
            probe.write_text("ok")
            probe.unlink()
            checks.append(Check("checkpoints", "ok", f"{ckpt} is writable"))
        except OSError as exc:
            checks.append(
                Check("checkpoints", "fail", f"{ckpt}: {exc}", "set storage.checkpoint_root")
            )
    return checks


def check_mlflow(settings: Settings) -> Check:

    try:
        uri = settings.mlflow.resolved_tracking_uri(settings.storage)
    except ConfigError as exc:
        return Check("mlflow", "fail", str(exc), "set mlflow.tracking_uri")
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return Check("mlflow", "fail", f"{folder}: {exc}", "set mlflow.tracking_uri")
        state = "exists" if (folder / "mlflow.db").exists() else "created on first training run"
        return Check("mlflow", "ok", f"SQLite store {uri} ({state})")
    if uri == "databricks" or uri.startswith(("http://", "https://", "databricks")):
        return Check("mlflow", "ok", f"tracking server {uri} (not contacted by doctor)")
    return Check("mlflow", "ok", f"tracking URI {uri}")


def check_collector(settings: Settings) -> Check:
    keys = settings.collector.write_keys
    if not keys:
        return Check(
            "collector",
            "warn",
            "collector.write_keys is empty: `lakehouse collector serve` will refuse to start",
            "add a key, e.g. collector.write_keys.web: ${LAKEHOUSE_WRITE_KEY_WEB}",
        )
    return Check(
        "collector",
        "ok",
        f"{len(keys)} write key(s) ({', '.join(sorted(keys))}); port {settings.collector.port}",
    )
