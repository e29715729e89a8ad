"""Gold end to end: silver -> gold (gated), snapshots, training sets, on real Delta tables."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from typer.testing import CliRunner

from pipelines.cli.main import app
from pipelines.config import Settings, TriggerSettings
from pipelines.gold.job import gold_snapshot_validator, gold_suite_gate, run_gold
from pipelines.gold.tables import GOLD_ITEM_FEATURES, GOLD_USER_FEATURES, GOLD_USER_FEATURES_HISTORY
from pipelines.lake.catalog import Catalog
from pipelines.lake.snapshots import SnapshotError, Snapshots
from pipelines.quality.tables import QUALITY_SUITE_RESULTS
from pipelines.silver.job import run_silver
from pipelines.silver.sessions_job import run_sessions
from pipelines.streaming.queries import StreamingJobError
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.tables import LAKE_TABLES
from pipelines.training.sets import build_training_set
from tests.conftest import REPO, make_settings
from tests.streaming.test_silver_job import land_in_bronze

pytestmark = pytest.mark.streaming

NOW = datetime.now(tz=UTC).replace(microsecond=0)
AVAILABLE_NOW = TriggerSettings(mode="available-now")


def click(user: str, item: str, at: datetime) -> str:
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "click",
            "user_id": user,
            "item_id": item,
            "timestamp": int(at.timestamp() * 1000),
            "schema_version": 1,
            "properties": {"position": 1, "category": "books"},
        }
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "lake", gold={"publish_every": "1 hour"})


def silver_from(spark: SparkSession, settings: Settings, values: list[str]) -> Catalog:
    catalog = Catalog(settings.storage, LAKE_TABLES)
    land_in_bronze(catalog, values)
    run_silver(spark, settings, trigger=AVAILABLE_NOW)
    run_sessions(spark, settings, trigger=AVAILABLE_NOW)
    return catalog


def test_gold_publishes_history_per_slice_and_a_rerun_adds_nothing(
    spark: SparkSession, settings: Settings
) -> None:
    start = NOW.replace(minute=0, second=0) - timedelta(hours=5)
    events = [
        click("u1", "i1", start + timedelta(minutes=10)),
        click("u1", "i2", start + timedelta(hours=2, minutes=5)),
        click("u2", "i1", start + timedelta(hours=2, minutes=30)),
    ]
    catalog = silver_from(spark, settings, events)

    run = run_gold(spark, settings, trigger=AVAILABLE_NOW, gate=gold_suite_gate(settings, catalog))

    assert (run.stats.batches_published, run.stats.batches_rejected) == (1, 0)
    history = catalog.read(spark, GOLD_USER_FEATURES_HISTORY.name).orderBy("user_id", "feature_ts")
    rows = [(r.user_id, r.feature_ts, r.click_count_24h) for r in history.collect()]
    last = (start + timedelta(hours=2, minutes=30)).replace(tzinfo=None)
    assert rows == [
        ("u1", (start + timedelta(hours=1)).replace(tzinfo=None), 1),  # end of its first slice
        ("u1", last, 2),  # its second slice ends after the batch's T: capped at T
        ("u2", last, 1),
    ]
    current = {r.user_id: r for r in catalog.read(spark, GOLD_USER_FEATURES.name).collect()}
    assert {u: (r.feature_ts, r.click_count_24h) for u, r in current.items()} == {
        "u1": (last, 2),
        "u2": (last, 1),
    }
    items = {
        r.item_id: r.clicks_24h for r in catalog.read(spark, GOLD_ITEM_FEATURES.name).collect()
    }
    assert items == {"i1": 2, "i2": 1}

    versions = run.versions
    again = run_gold(spark, settings, trigger=AVAILABLE_NOW)
    assert again.stats.batches_published == 0
    assert again.versions == versions


def test_a_batch_breaking_its_suite_is_not_published_and_recorded_failed(
    spark: SparkSession, tmp_path: Path
) -> None:
    stale = make_settings(tmp_path / "lake", gold={"max_staleness": "1 hour"})
    catalog = silver_from(spark, stale, [click("u1", "i1", NOW - timedelta(days=2))])

    with pytest.raises(StreamingJobError, match=r"failed its suite and was not published"):
        run_gold(spark, stale, trigger=AVAILABLE_NOW, gate=gold_suite_gate(stale, catalog))

    assert catalog.info(GOLD_USER_FEATURES.name).rows == 0
    assert catalog.info(GOLD_USER_FEATURES_HISTORY.name).rows == 0
    results = catalog.read(spark, QUALITY_SUITE_RESULTS.name).collect()
    failed = [r for r in results if not r.success]
    assert {r.table for r in failed} == {"gold.user_features", "gold.item_features"}
    assert all(any("feature_ts" in f for f in r.failed) for r in failed)

    carry_on = stale.model_copy(
        update={"gold": stale.gold.model_copy(update={"on_suite_failure": "continue"})}
    )
    run = run_gold(spark, carry_on, trigger=AVAILABLE_NOW, gate=gold_suite_gate(carry_on, catalog))
    assert (run.stats.batches_rejected, run.stats.batches_published) == (1, 0)
    assert catalog.info(GOLD_USER_FEATURES.name).rows == 0


def test_snapshot_pins_versions_and_training_sets_are_reproducible(
    spark: SparkSession, settings: Settings
) -> None:
    generator = ClickstreamGenerator(users=60, items=30, seed=3, end=NOW, days=2)
    catalog = silver_from(spark, settings, [e.value.decode() for e in generator.events(2_500)])
    run_gold(spark, settings, trigger=AVAILABLE_NOW)
    tables = [
        "silver.events",
        "gold.user_features_history",
        "gold.item_features_history",
        "gold.user_features",
        "gold.item_features",
    ]
    snapshots = Snapshots(catalog)
    snap = snapshots.create(
        "s1", tables, validate=gold_snapshot_validator(spark, settings, catalog, "s1"), spark=spark
    )
    assert snap.versions == {t: catalog.info(t).version for t in tables}

    first = build_training_set(
        spark, settings, snapshot="s1", label_event="purchase", horizon="24h", seed=7
    )
    # New data after the snapshot must not change a rebuild from it.
    land_in_bronze(catalog, [click("late-user", "i9", NOW - timedelta(minutes=1))])
    run_silver(spark, settings, trigger=AVAILABLE_NOW)
    run_gold(spark, settings, trigger=AVAILABLE_NOW)
    again = build_training_set(
        spark, settings, snapshot="s1", label_event="purchase", horizon="24h", seed=7, name="again"
    )
    other_seed = build_training_set(
        spark, settings, snapshot="s1", label_event="purchase", horizon="24h", seed=8
    )

    assert first.positives > 0 and first.rows > first.positives
    assert again.digest == first.digest
    assert (again.rows, again.versions) == (first.rows, first.versions)
    assert other_seed.digest != first.digest
    built = catalog.read(spark, "gold.training_sets").where(F.col("training_set") == first.name)
    assert built.count() == first.rows
    leaks = built.where(
        (F.col("user_feature_ts") >= F.col("label_ts"))
        | (F.col("item_feature_ts") >= F.col("label_ts"))
    )
    assert leaks.count() == 0
    assert built.where(F.col("user_feature_ts").isNotNull()).count() > first.rows // 3

    with pytest.raises(SnapshotError, match=r"no snapshot 'missing'"):
        build_training_set(spark, settings, snapshot="missing", label_event="click", horizon="1h")


def test_snapshot_cli_refuses_tables_that_fail_their_suite(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path / "lake")
    catalog = silver_from(spark, settings, [click("u1", "i1", NOW - timedelta(minutes=5))])
    run_gold(spark, settings, trigger=AVAILABLE_NOW)
    monkeypatch.setenv("LAKEHOUSE_DATA", settings.storage.root)
    runner = CliRunner()

    ok = runner.invoke(app, ["snapshot", "create", "good", "--env", "test", "--json"])
    assert ok.exit_code == 0, ok.output
    pinned: dict[str, Any] = json.loads(ok.output.strip().splitlines()[-1])["versions"]
    assert pinned["gold.user_features"] == catalog.info("gold.user_features").version
    shown = runner.invoke(app, ["snapshot", "show", "good", "--env", "test", "--json"])
    assert json.loads(shown.output.strip().splitlines()[-1])["versions"] == pinned

    # A freshness bound the table cannot meet: the snapshot is refused and nothing recorded.
    strict = tmp_path / "conf"
    shutil.copytree(REPO / "conf", strict)
    with (strict / "test.yaml").open("a") as conf:
        conf.write("gold:\n  max_staleness: 1 ms\n")
    monkeypatch.setenv("LAKEHOUSE_CONF_DIR", str(strict))
    refused = runner.invoke(app, ["snapshot", "create", "bad", "--env", "test"])
    assert refused.exit_code == 1, refused.output
    assert "expect_column_max_to_be_between(feature_ts)" in refused.output
    assert [s.name for s in Snapshots(catalog).list()] == ["good"]
    monkeypatch.delenv("LAKEHOUSE_CONF_DIR")

    deleted = runner.invoke(app, ["snapshot", "delete", "good", "--env", "test"])
    assert deleted.exit_code == 0
    missing = runner.invoke(app, ["snapshot", "show", "good", "--env", "test"])
    assert missing.exit_code == 1
    assert "no snapshot 'good'" in missing.output


def test_features_doc_is_generated_from_the_definitions() -> None:
    result = CliRunner().invoke(
        app, ["features", "docs", "--check", "--out", str(REPO / "docs/FEATURES.md")]
    )
    assert result.exit_code == 0, result.output
