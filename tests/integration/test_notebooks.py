"""Notebooks run locally as a job cluster would run them: real Kafka, Delta and Spark.

``run_notebook`` gets the test's settings overrides (storage under ``tmp_path``, the session's
embedded broker, per-test topics) and the session's SparkSession, so the notebooks and the jobs
they call run against this test's lake only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from pipelines import jobs, runtime
from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.config import EVENT_TYPES, Settings, load_settings
from pipelines.gold.tables import GOLD_USER_FEATURES
from pipelines.lake.catalog import Catalog
from pipelines.lake.snapshots import Snapshots
from pipelines.notebooks import run_notebook
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.synthetic.publish import publish_clickstream
from pipelines.tables import LAKE_TABLES
from pipelines.training.sets import DEFAULT_SNAPSHOT_TABLES, build_training_set
from tests.conftest import REPO, SharedBroker
from tests.streaming.helpers import produce

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOTEBOOKS = REPO / "notebooks"


def lake_overrides(root: Path, broker: SharedBroker) -> dict[str, Any]:
    """Storage under ``root``, the session broker with topics no other test uses, no GX."""
    suffix = uuid.uuid4().hex[:8]
    topics = {t: f"{t}-{suffix}" for t in EVENT_TYPES} | {
        "dlq": f"dlq-{suffix}",
        "identities": f"identities-{suffix}",
    }
    return {
        "storage": {"root": str(root)},
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topics": topics},
        "quality": {"great_expectations": {"enabled": False}},
    }


@pytest.fixture(autouse=True)
def _repo_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_CONF_DIR", str(REPO / "conf"))


def test_bronze_notebook_lands_what_kafka_holds_and_a_rerun_adds_nothing(
    spark: SparkSession, kafka_broker: SharedBroker, tmp_path: Path
) -> None:
    overrides = lake_overrides(tmp_path / "lake", kafka_broker)
    settings = load_settings("test", overrides=overrides)
    topics, bootstrap = settings.kafka.topics, kafka_broker.bootstrap_servers
    sent = [(k, v, topics.click) for k, v in produce(settings, bootstrap, topics.click, 400)]
    sent += [(k, v, topics.purchase) for k, v in produce(settings, bootstrap, topics.purchase, 150)]

    first = run_notebook(NOTEBOOKS / "bronze.py", "test", overrides=overrides, spark=spark)

    summary = first.exit_json()
    assert {k: summary[k] for k in ("job", "env", "trigger", "table", "rows_written")} == {
        "job": "bronze",
        "env": "test",
        "trigger": "available-now",
        "table": "bronze.events_raw",
        "rows_written": 550,
    }
    assert first.widgets == {
        "env": "test",
        "trigger": "available-now",
        "interval": "",
        "timeout": "",
    }
    assert '"rows_written": 550' in first.output  # printed as well as returned
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    assert summary["table_version"] == catalog.info(BRONZE_EVENTS_RAW.name).version
    assertDataFrameEqual(
        catalog.read(spark, BRONZE_EVENTS_RAW.name).select("key", "value", "topic"),
        spark.createDataFrame(sent, "key string, value string, topic string"),
        checkRowOrder=False,
    )

    again = run_notebook(NOTEBOOKS / "bronze.py", "test", overrides=overrides, spark=spark)
    assert again.exit_json()["rows_written"] == 0
    assert again.exit_json()["table_version"] == summary["table_version"]
    assert catalog.info(BRONZE_EVENTS_RAW.name).rows == 550


@pytest.fixture(scope="module")
def gold_lake(
    spark: SparkSession, kafka_broker: SharedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], Settings, dict[str, Any]]]:
    """Synthetic clickstream in Kafka, then the streaming jobs bronze -> silver -> sessions ->
    gold, called as the notebooks call them (through ``pipelines.jobs``)."""
    overrides = lake_overrides(tmp_path_factory.mktemp("explore") / "lake", kafka_broker)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAKEHOUSE_CONF_DIR", str(REPO / "conf"))
        settings = load_settings("test", overrides=overrides)
    generator = ClickstreamGenerator(users=120, items=40, seed=11, days=2)
    published = publish_clickstream(
        generator, 1_200, settings.kafka, kafka_broker.bootstrap_servers
    )
    assert published.delivery.total_failed == 0
    factory = runtime.LakehouseFactory(load_settings=lambda _env: settings, spark=lambda _s: spark)
    with runtime.using(factory):
        summaries = {name: jobs.JOBS[name]("test") for name in ("bronze", "silver", "sessions")}
        summaries["gold"] = jobs.gold("test")
    yield overrides, settings, summaries


def test_the_streaming_jobs_summarise_what_they_wrote(
    gold_lake: tuple[dict[str, Any], Settings, dict[str, Any]],
) -> None:
    _, settings, summaries = gold_lake
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    bronze, silver = summaries["bronze"], summaries["silver"]
    assert bronze["rows_written"] == 1_200 == catalog.info(BRONZE_EVENTS_RAW.name).rows
    assert silver["input"] == 1_200 and silver["invariant_holds"] is True
    assert silver["written"] + silver["quarantined"] + silver["duplicates"] == 1_200
    assert silver["written"] == catalog.info("silver.events").rows
    assert summaries["sessions"]["table_version"] == catalog.info("silver.sessions").version
    gold = summaries["gold"]
    assert gold["great_expectations"] is False and gold["batches_rejected"] == 0
    users = catalog.info(GOLD_USER_FEATURES.name).rows
    # One silver version, one gold batch: every user is published once.
    assert gold["batches_published"] == 1
    assert users and gold["users_published"] == users
    assert {s["job"] for s in summaries.values()} == {"bronze", "silver", "sessions", "gold"}


def test_the_quality_report_and_maintenance_jobs_read_the_same_lake(
    gold_lake: tuple[dict[str, Any], Settings, dict[str, Any]],
) -> None:
    _, settings, summaries = gold_lake
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    factory = runtime.LakehouseFactory(load_settings=lambda _env: settings)
    with runtime.using(factory):
        report = jobs.quality_report("test", limit="5")
        maintenance = jobs.maintain("test", retention_hours="168", dry_run="true")
    silver = summaries["silver"]
    assert report["accounting"]["ok"] is True
    assert report["accounting"]["table_rows"] == {
        "written": silver["written"],
        "quarantined": silver["quarantined"],
        "source": 1_200,
    }
    assert [b["input_rows"] for b in report["latest_batches"]] == [1_200]
    assert report["suites_checked"] == 0  # Great Expectations is off in this lake
    assert maintenance["dry_run"] is True
    existing = {i.name: i.version for i in catalog.infos() if i.exists}
    assert {t["table"] for t in maintenance["tables"]} == set(existing)
    for table in maintenance["tables"]:  # a dry run changes nothing
        assert table["version_before"] == table["version_after"] == existing[table["table"]]


def test_explore_gold_stops_at_each_missing_step_and_then_shows_everything(
    spark: SparkSession, gold_lake: tuple[dict[str, Any], Settings, dict[str, Any]]
) -> None:
    overrides, settings, _ = gold_lake
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    path = NOTEBOOKS / "explore_gold.py"

    no_snapshot = run_notebook(path, "test", overrides=overrides, spark=spark)
    assert no_snapshot.exit_json()["stopped_at"] == "snapshot"
    assert "No snapshot yet: pin one with `lakehouse snapshot create NAME`" in no_snapshot.output
    assert "tables: bronze.events_raw" in no_snapshot.output  # registered under their names
    assert "gold.user_features" in no_snapshot.output

    Snapshots(catalog).create("explore", DEFAULT_SNAPSHOT_TABLES, "notebook test", spark=spark)
    no_training_set = run_notebook(path, "test", overrides=overrides, spark=spark)
    assert no_training_set.exit_json()["stopped_at"] == "training_set"
    assert "lakehouse training-set build --snapshot NAME" in no_training_set.output

    built = build_training_set(
        spark, settings, snapshot="explore", label_event="purchase", horizon="24h"
    )
    result = run_notebook(path, "test", overrides=overrides, spark=spark)

    gold = catalog.info(GOLD_USER_FEATURES.name)
    assert gold.version is not None
    previous = catalog.read(spark, GOLD_USER_FEATURES.name, version=gold.version - 1).count()
    assert result.exit_json() == {
        "tables": sum(1 for i in catalog.infos() if i.exists),
        "gold_users": gold.rows,
        "gold_version": gold.version,
        "previous_version_users": previous,
        "snapshot": "explore",
        "snapshot_users": gold.rows,  # nothing was published after the snapshot
        "training_set": built.name,
        "training_rows": built.rows,
    }
    out = result.output
    for table in ("bronze.events_raw", "gold.user_features", "lake.snapshots"):
        assert table in out  # the table listing
    assert "revenue_30d" in out and "trending_score" in out  # the two SQL queries
    assert f"{gold.rows} users at version {gold.version} (now)" in out  # time travel
    assert "snapshot explore (" in out and "gold.user_features@v" in out
    assert f"training set {built.name} from snapshot explore: {built.rows} rows" in out


def test_explore_gold_on_an_empty_lake_says_what_to_run(
    spark: SparkSession, kafka_broker: SharedBroker, tmp_path: Path
) -> None:
    overrides = lake_overrides(tmp_path / "empty", kafka_broker)
    result = run_notebook(NOTEBOOKS / "explore_gold.py", "test", overrides=overrides, spark=spark)
    assert result.exit_json() == {"stopped_at": "gold", "next": "lakehouse run gold"}
    assert "No gold features yet: run the streaming workflow" in result.output
