"""Bronze survives a kill -9 in the middle of a micro-batch: exactly once across the restart.

The bronze query runs in its own process (its own JVM) on the shared broker; the test waits until
Spark has planned a batch (``offsets/N`` written) that it has not committed (no ``commits/N``),
kills the whole process group with SIGKILL, restarts bronze in the test session, and checks that
every produced message is in bronze exactly once with contiguous offsets per partition.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipelines.bronze.job import run_bronze
from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.config import Settings, TriggerSettings
from pipelines.lake.catalog import Catalog
from pipelines.tables import LAKE_TABLES
from tests.conftest import REPO, SharedBroker
from tests.streaming.helpers import contiguous, produce

pytestmark = [pytest.mark.streaming, pytest.mark.slow]

CHILD = """
import json, sys
from pipelines.bronze.job import run_bronze
from pipelines.config import TriggerSettings, load_settings
from pipelines.spark import build_spark

overrides, bootstrap = json.loads(sys.argv[1]), sys.argv[2]
settings = load_settings("test", conf_dir=sys.argv[3], overrides=overrides, environ={})
run_bronze(build_spark(settings), settings, bootstrap,
           trigger=TriggerSettings(mode="processing-time", interval="1 second"))
"""


def mid_batch(checkpoint: Path) -> int | None:
    """A batch id Spark has planned (offsets log) but not committed, once at least one landed."""
    offsets = {int(p.name) for p in (checkpoint / "offsets").glob("[0-9]*")}
    commits = {int(p.name) for p in (checkpoint / "commits").glob("[0-9]*")}
    open_batches = offsets - commits
    return max(open_batches) if commits and open_batches else None


def test_bronze_killed_mid_batch_restarts_with_every_message_exactly_once(
    spark: SparkSession, lake_settings: Settings, kafka_broker: SharedBroker, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topics = lake_settings.kafka.topics
    sent = produce(lake_settings, bootstrap, topics.click, 6_000)
    sent += produce(lake_settings, bootstrap, topics.page_view, 4_000)
    overrides = {
        "storage": {"root": lake_settings.storage.root},
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topics": lake_settings.kafka.topics.model_dump(),
            "consumer": {"max_offsets_per_trigger": 400},
        },
    }
    catalog = Catalog(lake_settings.storage, LAKE_TABLES)
    checkpoint = Path(catalog.checkpoint(BRONZE_EVENTS_RAW.name))
    log = (tmp_path / "bronze.log").open("w")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(overrides), bootstrap, str(REPO / "conf")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the JVM dies with it
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    killed_in = None
    try:
        deadline = time.monotonic() + 240
        while killed_in is None and time.monotonic() < deadline and child.poll() is None:
            killed_in = mid_batch(checkpoint) if checkpoint.exists() else None
            if killed_in is None:
                time.sleep(0.05)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
        log.close()
    assert killed_in is not None, (tmp_path / "bronze.log").read_text()[-3000:]
    assert not (checkpoint / "commits" / str(killed_in)).exists()
    landed_before = catalog.info(BRONZE_EVENTS_RAW.name).rows or 0
    assert 0 < landed_before < 10_000

    restarted = run_bronze(
        spark, lake_settings, bootstrap, trigger=TriggerSettings(mode="available-now")
    )
    rows = catalog.read(spark, BRONZE_EVENTS_RAW.name).select(
        "key", "value", "topic", "partition", "offset"
    )
    landed = rows.collect()
    assert len(landed) == 10_000  # every message, none twice
    per_partition = contiguous([(r.topic, r.partition, r.offset) for r in landed])
    assert sum(per_partition.values()) == 10_000
    assert sorted((r.key, r.value) for r in landed) == sorted(sent)
    assert restarted.stats.rows_written == 10_000 - landed_before
