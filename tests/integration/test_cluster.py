"""The pipeline on a real Spark standalone cluster gives the same tables as in local mode.

A master and two one-core workers are started from the pyspark install (``spark-class``) on
127.0.0.1. A driver process runs bronze -> silver -> sessions -> gold (``pipelines.jobs``,
available-now) with nothing but ``spark.master: spark://…`` in its config, so the executors get
Delta and Kafka only the way a user's would: the session ships the pinned jars. Meanwhile the same
jobs run in local mode, in this process (on the suite's shared session), on the same Kafka input;
then the summaries and every table are compared, row for row.

Columns left out of the comparison hold the wall clock or a query's random id, which no two runs
share: ``ingest_ts`` (``current_timestamp()`` when bronze wrote the row; silver and quarantine copy
it) and ``ingest_date`` (its date, bronze's and the quarantine's partition), ``processed_at`` /
``quarantined_at`` (when silver wrote the row), ``published_at`` (when gold published it) and
``load_id`` (``<query id>:<batch id>``; a query id is random per checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyspark
import pytest
import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from pipelines import jobs, runtime
from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.config import Settings, deep_merge, load_settings
from pipelines.gold.tables import (
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_FEATURES_HISTORY,
    GOLD_USER_FEATURES,
    GOLD_USER_FEATURES_HISTORY,
)
from pipelines.lake.catalog import Catalog
from pipelines.silver.tables import SILVER_EVENTS, SILVER_QUARANTINE, SILVER_SESSIONS
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.synthetic.publish import publish_clickstream
from pipelines.tables import LAKE_TABLES
from tests.conftest import REPO, SharedBroker, free_port, unique_topics
from tests.integration.cluster_driver import LAYERS

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.cluster]

SPARK_HOME = Path(pyspark.__file__).resolve().parent
WORKERS = 2
EVENTS = 3_000
# Wall-clock and query-id columns (see the module docstring); every other column is compared.
NOT_COMPARED = {
    BRONZE_EVENTS_RAW.name: ("ingest_ts", "ingest_date"),
    SILVER_EVENTS.name: ("ingest_ts", "processed_at", "load_id"),
    SILVER_QUARANTINE.name: ("ingest_ts", "ingest_date", "quarantined_at", "load_id"),
    SILVER_SESSIONS.name: (),
    GOLD_USER_FEATURES.name: ("published_at", "load_id"),
    GOLD_USER_FEATURES_HISTORY.name: ("published_at", "load_id"),
    GOLD_ITEM_FEATURES.name: ("published_at", "load_id"),
    GOLD_ITEM_FEATURES_HISTORY.name: ("published_at", "load_id"),
}


@dataclass(frozen=True)
class StandaloneCluster:
    master_url: str
    status_url: str


def _kill_groups(*procs: subprocess.Popen[bytes]) -> None:
    """SIGKILL each process's group (a JVM and, for a worker, its executors; for the driver, its
    JVM) and wait until no process of any group is left running."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):  # the whole group already exited
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    for proc in procs:
        proc.wait(max(0.0, deadline - time.monotonic()))
        while _group_running(proc.pid):
            assert time.monotonic() < deadline, f"process group {proc.pid} outlived SIGKILL"
            time.sleep(0.1)


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs. Killed executors are reparented to init,
    which may reap them late: a zombie holds nothing, so on Linux only live ones count."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # the process ended while we looked
            # pid (comm) state ppid pgrp …: comm may hold spaces, so split after its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _master_status(status_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(status_url, timeout=5) as response:
        return dict(json.load(response))


def _alive_workers(status_url: str) -> int:
    try:
        status = _master_status(status_url)
    except OSError:
        return 0  # the master's web UI is not up yet
    return sum(1 for worker in status.get("workers", []) if worker.get("state") == "ALIVE")


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("*.log")))


@pytest.fixture
def standalone_cluster(tmp_path: Path) -> Iterator[StandaloneCluster]:
    """A master and ``WORKERS`` one-core workers on 127.0.0.1, each in its own process group
    (killed in teardown, also when the test fails)."""
    logs, conf = tmp_path / "cluster-logs", tmp_path / "spark-conf"
    logs.mkdir()
    conf.mkdir()  # an empty SPARK_CONF_DIR: no spark-env.sh or spark-defaults.conf of the host
    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_CONF_DIR": str(conf),
        # Every server of the cluster (RPC, web UIs, executors' block managers) on loopback.
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_DAEMON_MEMORY": "384m",
        # Executors' shuffle and block scratch under the test's folder, not the system temp
        # directory, where a killed executor would leave it behind.
        "SPARK_LOCAL_DIRS": str(tmp_path / "spark-scratch"),
        # Executors inherit the worker's environment. The four jobs run no Python on them, but
        # should one (a Python UDF), it imports this checkout's `pipelines` as a cluster would
        # import the installed wheel, not the checkout the virtualenv's editable install names.
        "PYTHONPATH": str(REPO),
    }
    port, webui = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    status_url = f"http://127.0.0.1:{webui}/json/"
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    commands = [
        [
            spark_class,
            "org.apache.spark.deploy.master.Master",
            *("--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui)),
        ]
    ]
    for n in range(WORKERS):
        work = tmp_path / f"worker-{n}"
        commands.append(
            [
                spark_class,
                "org.apache.spark.deploy.worker.Worker",
                *("--host", "127.0.0.1", "--webui-port", str(free_port())),
                *("--cores", "1", "--memory", "1g", "--work-dir", str(work)),
                master_url,
            ]
        )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, command in enumerate(commands):
            with (logs / f"{'master' if i == 0 else f'worker-{i - 1}'}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        command,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=tmp_path,
                        start_new_session=True,  # its own process group, killed as one
                    )
                )
        deadline = time.monotonic() + 120
        while _alive_workers(status_url) < WORKERS:
            dead = [p.args for p in procs if p.poll() is not None]
            assert not dead, f"{dead} exited:\n{_logs(logs)}"
            assert time.monotonic() < deadline, f"workers not ALIVE in 120 s:\n{_logs(logs)}"
            time.sleep(0.2)
        yield StandaloneCluster(master_url, status_url)
    finally:
        _kill_groups(*procs)


def config_folder(root: Path, overrides: dict[str, Any]) -> Path:
    """A copy of the repository's ``conf/`` whose ``test.yaml`` carries ``overrides``."""
    conf = root / "conf"
    shutil.copytree(REPO / "conf", conf)
    test_yaml = conf / "test.yaml"
    merged = deep_merge(yaml.safe_load(test_yaml.read_text()) or {}, overrides)
    test_yaml.write_text(yaml.safe_dump(merged, sort_keys=False))
    return conf


class ClusterDriver:
    """The driver process (``cluster_driver``: every layer on the cluster), running while this
    process does other work."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path, timeout_s: float):
        self.proc, self.out, self.err, self.timeout_s = proc, out, err, timeout_s
        self.deadline = time.monotonic() + timeout_s

    def check(self) -> None:
        """Fail now, with its log, if the driver has already failed."""
        code = self.proc.poll()
        assert code in (None, 0), f"the cluster driver failed ({code}):\n{self._tail()}"

    def result(self) -> list[dict[str, Any]]:
        """Wait for the driver (until the deadline); its JSON lines."""
        try:
            code: int | None = self.proc.wait(max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
        limit = f"limit {self.timeout_s:.0f} s"
        assert code == 0, f"the cluster driver ended with {code} ({limit}):\n{self._tail()}"
        lines = self.out.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def _tail(self) -> str:
        return self.err.read_text()[-5000:]


@contextmanager
def cluster_driver(conf: Path, cwd: Path, timeout_s: float) -> Iterator[ClusterDriver]:
    """Start the driver process on entry; kill its process group on the way out, whatever
    happened."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEHOUSE_", "SPARK_"))}
    env |= {
        "LAKEHOUSE_ENV": "test",
        "LAKEHOUSE_CONF_DIR": str(conf),
        "PYTHONPATH": str(REPO),
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    out, err = cwd / "driver.out", cwd / "driver.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.cluster_driver", "test"],
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group: the driver JVM dies with it
        )
    try:
        yield ClusterDriver(proc, out, err, timeout_s)
    finally:
        _kill_groups(proc)


def comparable(spark: SparkSession, settings: Settings, table: str) -> DataFrame:
    """``table``'s rows in ``settings``' lake, without its wall-clock and query-id columns."""
    frame = Catalog.for_settings(settings, LAKE_TABLES).read(spark, table)
    return frame.drop(*NOT_COMPARED[table])


def test_every_layer_on_a_standalone_cluster_gives_the_same_tables_as_local_mode(
    spark: SparkSession,
    kafka_broker: SharedBroker,
    standalone_cluster: StandaloneCluster,
    tmp_path: Path,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    shared: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topics": unique_topics(),
        },
    }
    local_root, cluster_root = tmp_path / "local", tmp_path / "cluster"
    local_root.mkdir()
    cluster_root.mkdir()
    local_conf = config_folder(
        local_root, deep_merge(shared, {"storage": {"root": str(local_root / "lake")}})
    )
    cluster_conf = config_folder(
        cluster_root,
        deep_merge(
            shared,
            {
                "storage": {"root": str(cluster_root / "lake")},
                "spark": {
                    "master": standalone_cluster.master_url,
                    # A test binds everything to loopback; a real driver is reached by name.
                    "conf": {
                        "spark.driver.host": "127.0.0.1",
                        "spark.driver.bindAddress": "127.0.0.1",
                        "spark.ui.enabled": "false",
                        "spark.executor.memory": "768m",
                    },
                },
            },
        ),
    )
    local = load_settings("test", conf_dir=local_conf, environ={})
    on_cluster = load_settings("test", conf_dir=cluster_conf, environ={})

    generator = ClickstreamGenerator(users=150, items=80, seed=15, bad_fraction=0.05)
    published = publish_clickstream(generator, EVENTS, local.kafka, bootstrap)
    assert published.delivery.total_delivered == EVENTS
    bad = published.generation.by_kind
    assert bad.get("duplicate", 0) > 0 and bad.get("malformed_json", 0) > 0, bad

    # The cluster's driver runs in its own process while this one runs the same jobs locally.
    started = time.monotonic()
    with cluster_driver(cluster_conf, cluster_root, timeout_s=900) as driver:
        factory = runtime.LakehouseFactory(
            load_settings=lambda env: local, spark=lambda settings: spark
        )
        local_summaries: dict[str, jobs.Summary] = {}
        with runtime.using(factory):
            for job in LAYERS:
                local_summaries[job] = jobs.JOBS[job]("test")
                driver.check()
        local_seconds = time.monotonic() - started
        driver_lines = driver.result()
        cluster_seconds = time.monotonic() - started
    summaries = {line["job"]: line for line in driver_lines if "job" in line}
    where = next(line for line in driver_lines if "master" in line)
    assert where == {"master": standalone_cluster.master_url, "executors": WORKERS}
    # The master moves an application to its completed list shortly after the driver stops.
    deadline = time.monotonic() + 60
    apps = _master_status(standalone_cluster.status_url)["completedapps"]
    while not apps and time.monotonic() < deadline:
        time.sleep(0.5)
        apps = _master_status(standalone_cluster.status_url)["completedapps"]
    # One application, ended by the driver (not killed), with the executors the config asked for.
    assert [(a["name"], a["state"], a["memoryperexecutor"]) for a in apps] == [
        ("lakehouse", "FINISHED", 768)
    ], apps

    # The same work in the same batches.
    for job, fields in {
        "bronze": ("rows_written", "batches_written", "table_version"),
        "silver": (
            "batches",
            "input",
            "written",
            "quarantined",
            "duplicates",
            "quarantined_by_rule",
            "invariant_holds",
            "silver_version",
            "quarantine_version",
        ),
        "sessions": (
            "batches_written",
            "events_read",
            "sessions_upserted",
            "sessions_deleted",
            "table_version",
        ),
        "gold": (
            "batches_published",
            "batches_rejected",
            "users_published",
            "items_published",
            "latest_feature_ts",
            "versions",
        ),
    }.items():
        assert {f: summaries[job][f] for f in fields} == {
            f: local_summaries[job][f] for f in fields
        }, job
    assert summaries["bronze"]["rows_written"] == EVENTS
    assert summaries["silver"]["duplicates"] > 0 and summaries["silver"]["quarantined"] > 0
    assert summaries["silver"]["invariant_holds"] is True

    for table in NOT_COMPARED:
        expected = comparable(spark, local, table)
        actual = comparable(spark, on_cluster, table)
        assert expected.count() > 0, table
        assertDataFrameEqual(actual, expected, checkRowOrder=False)
    print(f"local run: {local_seconds:.0f} s, cluster run: {cluster_seconds:.0f} s (concurrent)")
