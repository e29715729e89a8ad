"""An ``s3://`` storage root end to end, against moto's S3 server on 127.0.0.1.

Bronze -> silver (with Great Expectations) -> sessions -> gold run on object storage with local
checkpoints; a snapshot pins and reads the tables; Data Docs are published to the bucket; and
every table holds the same rows as the same run on local storage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from pyspark.sql import SparkSession

from pipelines.bronze.job import run_bronze
from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.config import ConfigError, Settings, TriggerSettings
from pipelines.gold.job import gold_suite_gate, run_gold
from pipelines.gold.tables import GOLD_ITEM_FEATURES, GOLD_USER_FEATURES, GOLD_USER_FEATURES_HISTORY
from pipelines.lake.catalog import Catalog
from pipelines.lake.objects import ObjectStore
from pipelines.lake.snapshots import Snapshots
from pipelines.silver.job import run_silver, silver_suite_validator
from pipelines.silver.sessions_job import run_sessions
from pipelines.silver.tables import SILVER_EVENTS, SILVER_QUARANTINE, SILVER_SESSIONS
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.synthetic.publish import publish_clickstream
from pipelines.tables import LAKE_TABLES
from tests.conftest import SharedBroker, free_port, make_settings, unique_topics

pytestmark = [pytest.mark.streaming, pytest.mark.slow]

AVAILABLE_NOW = TriggerSettings(mode="available-now")
BUCKET = "lake"
TABLES = (
    BRONZE_EVENTS_RAW.name,
    SILVER_EVENTS.name,
    SILVER_QUARANTINE.name,
    SILVER_SESSIONS.name,
    GOLD_USER_FEATURES.name,
    GOLD_ITEM_FEATURES.name,
    GOLD_USER_FEATURES_HISTORY.name,
)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in its own process (delta-rs blocks the GIL during some requests, so an
    in-process server thread could not answer them)."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Keep the AWS SDKs from probing instance metadata (169.254.169.254): nothing leaves 127.0.0.1.
    previous = os.environ.get("AWS_EC2_METADATA_DISABLED")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except EndpointConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)
        if previous is None:
            os.environ.pop("AWS_EC2_METADATA_DISABLED", None)
        else:
            os.environ["AWS_EC2_METADATA_DISABLED"] = previous


def s3_storage(endpoint: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "root": f"s3://{BUCKET}/runs/{tmp_path.name}",
        "checkpoint_root": str(tmp_path / "checkpoints"),
        "s3": {
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "allow_http": True,
        },
    }


def run_layers(
    spark: SparkSession, settings: Settings, bootstrap: str, *, suites: bool
) -> dict[str, int]:
    """Every layer, available-now; ``suites`` runs the GX suites too (they never change rows)."""
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    run_bronze(spark, settings, bootstrap, trigger=AVAILABLE_NOW)
    validator = silver_suite_validator(settings, catalog) if suites else None
    run_silver(spark, settings, trigger=AVAILABLE_NOW, validator=validator)
    run_sessions(spark, settings, trigger=AVAILABLE_NOW)
    gate = gold_suite_gate(settings, catalog) if suites else None
    run_gold(spark, settings, trigger=AVAILABLE_NOW, gate=gate)
    return {name: catalog.info(name).rows or 0 for name in TABLES}


def test_s3_root_runs_every_layer_with_the_same_rows_as_local_storage(
    spark: SparkSession, kafka_broker: SharedBroker, s3_endpoint: str, tmp_path: Path
) -> None:
    kafka = {"bootstrap_servers": kafka_broker.bootstrap_servers, "topics": unique_topics()}
    local = make_settings(tmp_path / "local", kafka=kafka)
    remote = make_settings(
        tmp_path / "unused",
        kafka=kafka,
        storage=s3_storage(s3_endpoint, tmp_path),
        quality={"great_expectations": {"data_docs": True}},  # published to the bucket
    )
    generator = ClickstreamGenerator(users=60, items=40, seed=3, bad_fraction=0.03)
    published = publish_clickstream(generator, 800, local.kafka, kafka_broker.bootstrap_servers)
    assert published.delivery.total_delivered == 800

    on_s3 = run_layers(spark, remote, kafka_broker.bootstrap_servers, suites=True)
    on_disk = run_layers(spark, local, kafka_broker.bootstrap_servers, suites=False)
    assert on_s3 == on_disk
    assert on_s3[BRONZE_EVENTS_RAW.name] == 800
    assert on_s3[SILVER_QUARANTINE.name] > 0 and on_s3[GOLD_USER_FEATURES.name] > 0

    # The tables really are in the bucket, not on disk.
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    prefix = f"runs/{tmp_path.name}/tables/gold/user_features/_delta_log/"
    logs = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    assert logs.get("KeyCount", 0) >= 1
    assert not (tmp_path / "unused").exists()

    # Data Docs were published next to the tables through boto3.
    objects = ObjectStore(remote.storage)
    assert objects.exists("quality/gx/data_docs/index.html")
    assert b"<html" in objects.get_bytes("quality/gx/data_docs/index.html").lower()

    # A snapshot pins versions and reads them back from S3 with Spark, also after new commits.
    catalog = Catalog.for_settings(remote, LAKE_TABLES)
    snap = Snapshots(catalog).create(
        "s3-pin", [SILVER_EVENTS.name, GOLD_USER_FEATURES.name], "on object storage", spark=spark
    )
    pinned = snap.versions[GOLD_USER_FEATURES.name]
    frame = catalog.read(spark, GOLD_USER_FEATURES.name, version=pinned)
    assert frame.count() == on_s3[GOLD_USER_FEATURES.name]
    local_frame = Catalog.for_settings(local, LAKE_TABLES).read(spark, GOLD_USER_FEATURES.name)
    assert sorted(r.user_id for r in frame.select("user_id").collect()) == sorted(
        r.user_id for r in local_frame.select("user_id").collect()
    )


def test_object_storage_root_needs_local_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"storage\.checkpoint_root"):
        make_settings(tmp_path, storage={"root": "s3://lake/x"})
    with pytest.raises(ConfigError, match="not a Hadoop-compatible filesystem"):
        make_settings(tmp_path, storage={"root": "s3://lake/x", "checkpoint_root": "s3://a/b"})
    settings = make_settings(
        tmp_path,
        storage={
            "root": "s3://lake/x",
            "checkpoint_root": "dbfs:/ck",
            "s3": {"access_key_id": "AKIA-secret-id", "secret_access_key": "very-secret"},
        },
    )
    assert settings.storage.delta_options()["AWS_SECRET_ACCESS_KEY"] == "very-secret"
    assert "very-secret" not in repr(settings) and "very-secret" not in str(settings.storage)
