"""Gold end to end: silver -> gold (gated), snapshots, training sets, on real Delta tables."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from typer.testing import CliRunner

from pipelines.chaos.jobs import table_diff
from pipelines.cli.main import app
from pipelines.config import Settings, TriggerSettings
from pipelines.gold.features import AS_OF, item_features_at, user_features_at
from pipelines.gold.job import gold_snapshot_validator, gold_suite_gate, run_gold
from pipelines.gold.tables import (
    GOLD_ITEM_FEATURE_BUCKETS,
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_FEATURES_HISTORY,
    GOLD_USER_FEATURE_BUCKETS,
    GOLD_USER_FEATURES,
    GOLD_USER_FEATURES_HISTORY,
)
from pipelines.lake.catalog import Catalog
from pipelines.lake.snapshots import SnapshotError, Snapshots
from pipelines.quality.tables import QUALITY_SUITE_RESULTS
from pipelines.silver.job import run_silver
from pipelines.silver.sessions_job import run_sessions
from pipelines.silver.tables import SILVER_EVENTS
from pipelines.streaming.queries import StreamingJobError
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.tables import LAKE_TABLES
from pipelines.training.sets import build_training_set
from tests.conftest import REPO, make_settings
from tests.streaming.helpers import forget_commit, forget_last_commit, spy_on_driver_transfers
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


_PROPERTIES: dict[str, dict[str, Any]] = {
    "page_view": {"page_type": "product"},
    "click": {"position": 1},
    "search": {"query": "shoes", "result_count": 3},
    "add_to_cart": {"quantity": 1},
    "purchase": {"order_id": "o-1", "revenue": 12.5, "currency": "EUR", "quantity": 1},
}


def event_at(
    at: datetime,
    event_type: str = "click",
    *,
    user: str = "edge",
    item: str | None = "edge-item",
    category: str | None = "books",
) -> str:
    """A valid event of ``event_type`` at ``at`` (millisecond precision)."""
    properties = dict(_PROPERTIES[event_type])
    if category is not None:
        properties["category"] = category
    body: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "user_id": user,
        "timestamp": int(at.timestamp() * 1000),
        "schema_version": 1,
        "properties": properties,
    }
    if item is not None and event_type != "search":
        body["item_id"] = item
    return json.dumps(body)


def around(edge: datetime, **kwargs: Any) -> list[str]:
    """Events just before, exactly at and just after ``edge``: one bucket straddling it."""
    return [
        event_at(edge - timedelta(minutes=5), "page_view", category="music", **kwargs),
        event_at(edge, "add_to_cart", **kwargs),
        event_at(edge + timedelta(minutes=5), "purchase", category="garden", **kwargs),
    ]


def published(spark: SparkSession, catalog: Catalog, table: str, load_id: str) -> DataFrame:
    """One batch's rows of a history table, without the publication stamp."""
    rows = catalog.read(spark, table).where(F.col("load_id") == load_id)
    return rows.drop("published_at", "load_id")


# What gold's batch path may bring to the driver: aggregates of the batch and the ends of the
# buckets straddling a window edge, never rows of the batch or of the features.
_GOLD_COLUMNS = {
    *SILVER_EVENTS.schema.fieldNames(),
    *GOLD_USER_FEATURES.schema.fieldNames(),
    *GOLD_ITEM_FEATURES.schema.fieldNames(),
    *GOLD_USER_FEATURE_BUCKETS.schema.fieldNames(),
    *GOLD_ITEM_FEATURE_BUCKETS.schema.fieldNames(),
}


def test_incremental_gold_equals_a_recomputation_from_silver_and_stays_in_spark(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Every history row the incremental job publishes, batch after batch (late events, buckets
    straddling the edges of every window, several slices), equals the features recomputed from
    silver at that batch's version; and the batch path brings no rows to the driver."""
    settings = make_settings(
        tmp_path / "lake",
        gold={"publish_every": "1 hour", "max_staleness": "60 days"},
        quality={"allowed_lateness": "40 days"},
    )
    hour = NOW.replace(minute=0, second=0) - timedelta(hours=3)
    t1 = hour + timedelta(minutes=30)  # the first batch's T: its newest event
    t2 = t1 + timedelta(minutes=20)
    generator = ClickstreamGenerator(users=30, items=15, seed=11, end=t1 - timedelta(minutes=1))
    first = [e.value.decode() for e in generator.events(400)]
    for window in (timedelta(hours=1), timedelta(hours=24), timedelta(days=7), timedelta(days=30)):
        first += around(t1 - window)
    first += around(t2 - timedelta(days=30), user="edge-2", item="edge-item-2")
    first += [event_at(hour - timedelta(minutes=35)), event_at(t1, "purchase", category="art")]
    late = [
        event_at(t1 - timedelta(hours=2), "search"),
        event_at(hour - timedelta(minutes=5)),  # the bucket now straddles T2 - 1h
        event_at(t1 - timedelta(hours=26), user="edge-2", item="edge-item-2", category="music"),
        event_at(t2, "page_view", user="edge-2", item="edge-item-2"),
        event_at(t2 - timedelta(minutes=1)),
    ]
    catalog = Catalog(settings.storage, LAKE_TABLES)
    gate = None
    batches = []
    for values in (first, late):
        silver_from(spark, settings, values)
        gate = gate or gold_suite_gate(settings, catalog)
        versions = (
            catalog.info(SILVER_EVENTS.name).version,
            catalog.info("silver.sessions").version,
        )
        with spy_on_driver_transfers(spark, "gold") as transfers:
            run = run_gold(spark, settings, trigger=AVAILABLE_NOW, gate=gate)
        assert transfers.refused == []
        assert max(n for n, _ in transfers.collected) <= 10, transfers.collected
        assert not [c for _, c in transfers.collected if set(c) & _GOLD_COLUMNS]
        assert (run.stats.batches_published, run.stats.batches_rejected) == (1, 0)
        batches.append((f"{run.query_id}:{len(batches)}", versions))

    assert run.stats.feature_ts == [t2.replace(tzinfo=UTC)]
    touched = iter([(30, 15), (2, 2)])  # many keys and slices, then the late batch's
    for load_id, (silver_version, sessions_version) in batches:
        events = catalog.read(spark, SILVER_EVENTS.name, version=silver_version)
        sessions = catalog.read(spark, "silver.sessions", version=sessions_version)
        users = published(spark, catalog, GOLD_USER_FEATURES_HISTORY.name, load_id)
        items = published(spark, catalog, GOLD_ITEM_FEATURES_HISTORY.name, load_id)
        user_points = users.select("user_id", F.col("feature_ts").alias(AS_OF))
        item_points = items.select("item_id", F.col("feature_ts").alias(AS_OF))
        least_users, least_items = next(touched)
        assert users.count() >= least_users and items.count() >= least_items
        assertDataFrameEqual(
            users, user_features_at(events, sessions, user_points), checkRowOrder=False
        )
        assertDataFrameEqual(items, item_features_at(events, item_points), checkRowOrder=False)
    # The current tables hold each key's latest history row.
    for current, history, key in (
        (GOLD_USER_FEATURES, GOLD_USER_FEATURES_HISTORY, "user_id"),
        (GOLD_ITEM_FEATURES, GOLD_ITEM_FEATURES_HISTORY, "item_id"),
    ):
        newest = Window.partitionBy(key).orderBy(F.col("feature_ts").desc())
        latest = (
            catalog.read(spark, history.name)
            .withColumn("_n", F.row_number().over(newest))
            .where("_n = 1")
            .drop("_n")
        )
        assertDataFrameEqual(catalog.read(spark, current.name), latest, checkRowOrder=False)
    edge = catalog.read(spark, GOLD_USER_FEATURES.name).where("user_id = 'edge'").first()
    assert edge is not None and edge.feature_ts == t2.replace(tzinfo=None)
    assert (edge.click_count_1h, edge.search_count_24h) == (2, 1)


def test_a_batch_replayed_after_its_state_merge_publishes_the_same_rows(
    spark: SparkSession, settings: Settings
) -> None:
    """The crash between the state MERGEs and the publication: the replay skips the MERGEs
    (the state holds the batch once) and publishes what the batch would have."""
    start = NOW.replace(minute=0, second=0) - timedelta(hours=5)
    catalog = silver_from(
        spark,
        settings,
        [
            *around(start + timedelta(minutes=30)),
            event_at(start + timedelta(hours=1, minutes=35), user="u2"),
            event_at(start + timedelta(hours=2, minutes=30), user="u2", item="i9"),
        ],
    )
    gate = gold_suite_gate(settings, catalog)
    assert run_gold(spark, settings, trigger=AVAILABLE_NOW, gate=gate).stats.batches_published == 1
    publications = (
        GOLD_USER_FEATURES,
        GOLD_USER_FEATURES_HISTORY,
        GOLD_ITEM_FEATURES,
        GOLD_ITEM_FEATURES_HISTORY,
    )
    state = (GOLD_USER_FEATURE_BUCKETS, GOLD_ITEM_FEATURE_BUCKETS)
    before = {spec.name: catalog.read_arrow(spec.name) for spec in (*publications, *state)}
    state_versions = {spec.name: catalog.info(spec.name).version for spec in state}

    # The crash: both state MERGEs landed; the suite results, the publications and the
    # checkpoint's commit did not.
    for name in [*(spec.name for spec in publications), *[QUALITY_SUITE_RESULTS.name] * 2]:
        forget_last_commit(spark, catalog, name)
    forget_commit(catalog.checkpoint(GOLD_USER_FEATURES.name), 0)
    assert catalog.info(GOLD_USER_FEATURES.name).rows == 0

    replay = run_gold(
        spark, settings, trigger=AVAILABLE_NOW, gate=gold_suite_gate(settings, catalog)
    )

    assert (replay.stats.batches_published, replay.stats.batches_skipped) == (1, 0)
    assert {spec.name: catalog.info(spec.name).version for spec in state} == state_versions
    for name, rows in before.items():
        diff = table_diff(catalog.read_arrow(name), rows, None, ignore=["published_at"])
        assert diff.total == 0, (name, diff)
    assert catalog.info(QUALITY_SUITE_RESULTS.name).rows == 2


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
