"""The job-crash part of the chaos suite: kill -9 each job at random points, restart, and account.

The end-to-end test runs the quick configuration on the shared broker; the others prove that the
checks behind ``lost`` and ``duplicated`` see a duplicated row, a missing one and a changed value.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession

from pipelines.chaos.jobs import (
    JOBS,
    KILL_KINDS,
    bronze_faults,
    kill_plan,
    repeated_rows,
    run_job_crashes,
    silver_faults,
    table_diff,
)
from pipelines.config import Settings, TriggerSettings
from pipelines.gold.job import run_gold
from pipelines.gold.tables import (
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_FEATURES_HISTORY,
    GOLD_USER_FEATURES,
    GOLD_USER_FEATURES_HISTORY,
)
from pipelines.lake.catalog import Catalog
from pipelines.quality.report import accounting_report
from pipelines.quality.tables import QUALITY_SUITE_RESULTS
from pipelines.silver.job import run_silver, silver_suite_validator
from pipelines.silver.tables import SILVER_EVENTS
from pipelines.tables import LAKE_TABLES
from tests.conftest import SharedBroker, make_settings
from tests.streaming.helpers import forget_commit, forget_last_commit
from tests.streaming.test_gold_job import NOW, click, silver_from
from tests.streaming.test_silver_job import event, land_in_bronze

AVAILABLE_NOW = TriggerSettings(mode="available-now")

QUICK_CRASHES, QUICK_EVENTS = 4, 3_000


@pytest.mark.streaming
@pytest.mark.slow
@pytest.mark.chaos
def test_quick_job_crashes_lose_nothing_and_write_nothing_twice(
    kafka_broker: SharedBroker, tmp_path: Path
) -> None:
    lines: list[str] = []
    result = run_job_crashes(
        tmp_path / "chaos",
        crashes=QUICK_CRASHES,
        events=QUICK_EVENTS,
        seed=11,
        log=lines.append,
        bootstrap_servers=kafka_broker.bootstrap_servers,
    )
    story = "\n".join(lines)
    details = result.details
    assert result.part == "jobs"
    assert result.events == QUICK_EVENTS
    assert result.injected >= QUICK_CRASHES, story
    assert result.lost == 0, story
    assert result.duplicated == 0, story
    assert all(details["kills_per_job"][job] >= QUICK_CRASHES // 4 - 1 for job in JOBS), story
    assert details["mid_batch"] + details["between_batches"] + details["startup"] == (
        result.injected
    )
    assert details["restarts"] >= result.injected
    checks = details["checks"]
    # Not vacuous: every layer holds data and so does the clean reference.
    assert checks["bronze"]["notes"]["rows"] == QUICK_EVENTS
    valid = details["events"]["valid"]
    assert 0 < valid < QUICK_EVENTS
    assert checks["silver"]["notes"]["rows"] == valid
    accounting = checks["silver"]["notes"]["accounting"]
    # input = silver + quarantine + duplicates, per batch and against the tables, and every
    # batch has its suite result (a kill while the suite ran is re-validated on replay).
    assert accounting["broken_batches"] == accounting["mismatches"] == [], accounting
    assert accounting["suite_problems"] == [], accounting
    assert accounting["ok"], accounting
    assert accounting["totals"]["input_rows"] == QUICK_EVENTS
    assert details["problems"] == [], story
    for table in ("sessions", "gold.user_features", "gold.item_features_history"):
        assert checks[table]["rows"] == checks[table]["reference_rows"] > 0, (table, story)
    assert sum(1 for line in lines if "kill #" in line) == result.injected


@pytest.mark.streaming
def test_gold_replayed_after_publishing_only_its_users_publishes_its_items_as_before(
    spark: SparkSession, tmp_path: Path
) -> None:
    """What the chaos run found: gold killed between its user and its item commits restarted
    with the batch's own as-of time as "already published", so the replay moved every item row
    to that time. The replay must publish what the batch would have."""
    settings: Settings = make_settings(tmp_path / "lake", gold={"publish_every": "1 hour"})
    start = NOW.replace(minute=0, second=0) - timedelta(hours=5)
    catalog = silver_from(
        spark,
        settings,
        [
            click("u1", "i1", start + timedelta(minutes=10)),
            click("u1", "i2", start + timedelta(hours=2, minutes=5)),
            click("u2", "i1", start + timedelta(hours=2, minutes=30)),
        ],
    )
    assert run_gold(spark, settings, trigger=AVAILABLE_NOW).stats.batches_published == 1
    tables = (
        GOLD_USER_FEATURES,
        GOLD_USER_FEATURES_HISTORY,
        GOLD_ITEM_FEATURES,
        GOLD_ITEM_FEATURES_HISTORY,
    )
    published = {spec.name: catalog.read_arrow(spec.name) for spec in tables}
    assert published[GOLD_ITEM_FEATURES_HISTORY.name].num_rows == 3  # i1 in two slices, i2

    # The crash: the user tables hold batch 0, the item tables and the checkpoint do not.
    for spec in (GOLD_ITEM_FEATURES, GOLD_ITEM_FEATURES_HISTORY):
        forget_last_commit(spark, catalog, spec.name)
    forget_commit(catalog.checkpoint(GOLD_USER_FEATURES.name), 0)

    replay = run_gold(spark, settings, trigger=AVAILABLE_NOW)

    assert replay.stats.batches_published == 1
    for name, before in published.items():
        diff = table_diff(catalog.read_arrow(name), before, None, ignore=["published_at"])
        assert diff.total == 0, (name, diff)


@pytest.mark.streaming
def test_silver_replayed_after_its_writes_still_records_its_suite_result(
    spark: SparkSession, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "lake")
    catalog = Catalog(settings.storage, LAKE_TABLES)
    land_in_bronze(catalog, [json.dumps(event()) for _ in range(5)] + ["{broken"])
    validator = silver_suite_validator(settings, catalog)
    run_silver(spark, settings, trigger=AVAILABLE_NOW, validator=validator)
    assert accounting_report(catalog, require_suites=True).ok

    # The crash: quarantine, silver and the batch results landed; the suite result and the
    # checkpoint's commit did not.
    forget_last_commit(spark, catalog, QUALITY_SUITE_RESULTS.name)
    forget_commit(catalog.checkpoint(SILVER_EVENTS.name), 0)
    restarted = silver_suite_validator(settings, catalog)  # a new process: nothing cached
    run_silver(spark, settings, trigger=AVAILABLE_NOW, validator=restarted)

    assert accounting_report(catalog, require_suites=True).suite_problems == []


# -- the checks can fail ----------------------------------------------------------------------
def _bronze(rows: list[tuple[str, int, int, str]]) -> pa.Table:
    topics, partitions, offsets, values = zip(*rows, strict=True)
    return pa.table(
        {
            "topic": list(topics),
            "partition": pa.array(partitions, pa.int32()),
            "offset": pa.array(offsets, pa.int64()),
            "value": list(values),
        }
    )


def test_bronze_faults_count_a_replayed_row_and_a_missing_message() -> None:
    produced = Counter({"a": 1, "b": 1, "c": 2})  # "c" produced twice (a client retry)
    exact = _bronze([("t", 0, 0, "a"), ("t", 0, 1, "c"), ("t", 1, 0, "b"), ("t", 1, 1, "c")])
    assert (bronze_faults(produced, exact).lost, bronze_faults(produced, exact).duplicated) == (
        0,
        0,
    )

    replayed = _bronze([("t", 0, 0, "a"), ("t", 0, 0, "a"), ("t", 0, 1, "c"), ("t", 1, 0, "b")])
    faults = bronze_faults(produced, replayed)
    assert faults.duplicated == 1  # (t, 0, 0) twice
    assert faults.lost == 1  # the second "c"
    assert faults.notes["offset_gaps"] == 0

    gap = bronze_faults(produced, _bronze([("t", 0, 0, "a"), ("t", 0, 2, "c"), ("t", 1, 0, "b")]))
    assert (gap.lost, gap.duplicated, gap.notes["offset_gaps"]) == (1, 0, 1)


def test_silver_faults_count_a_duplicate_id_a_missing_id_and_a_stranger() -> None:
    expected = {"e1", "e2", "e3"}
    assert silver_faults(expected, pa.array(["e3", "e1", "e2"])).lost == 0
    faults = silver_faults(expected, pa.array(["e1", "e1", "e2", "x9"]))
    assert (faults.lost, faults.duplicated, faults.notes["unexpected_ids"]) == (1, 1, 1)


def test_table_diff_sees_repeated_missing_extra_and_changed_rows() -> None:
    at = datetime(2026, 11, 28, 12, tzinfo=UTC)
    reference = pa.table(
        {
            "user_id": ["u1", "u2", "u3"],
            "feature_ts": [at, at, at],
            "revenue_30d": [10.0, 0.1 + 0.2, 5.0],
            "load_id": ["q:1", "q:1", "q:2"],
        }
    )
    # Another run: other load ids, and 0.1 + 0.2 summed in another order.
    same = reference.set_column(3, "load_id", pa.array(["r:1", "r:2", "r:2"]))
    same = same.set_column(2, "revenue_30d", pa.array([10.0, 0.3, 5.0]))
    assert table_diff(same, reference, ["user_id"], ignore=["load_id"]).total == 0
    assert table_diff(same, reference, None, ignore=["load_id"]).total == 0

    crashed = pa.table(
        {
            "user_id": ["u1", "u1", "u2", "u4"],
            "feature_ts": [at, at, at, at],
            "revenue_30d": [10.0, 10.0, 0.31, 1.0],
            "load_id": ["q:1", "q:1", "q:1", "q:3"],
        }
    )
    diff = table_diff(crashed, reference, ["user_id"], ignore=["load_id"])
    assert (diff.repeated, diff.missing, diff.extra, diff.different) == (1, 1, 1, 1)
    as_rows = table_diff(crashed, reference, None, ignore=["load_id"])
    assert (as_rows.missing, as_rows.extra) == (2, 3)
    assert repeated_rows(crashed, ["user_id", "feature_ts", "load_id"]) == 1
    assert repeated_rows(reference, ["user_id", "feature_ts", "load_id"]) == 0


def test_kill_plan_spreads_every_kind_over_every_job() -> None:
    plan = kill_plan(20, seed=3)
    assert sum(len(kills) for kills in plan.values()) == 20
    assert all(len(plan[job]) >= 20 // 4 - 1 for job in JOBS)
    assert all({k.kind for k in plan[job]} == set(KILL_KINDS) for job in JOBS)
    assert all(k.job == job for job in JOBS for k in plan[job])
    assert plan == kill_plan(20, seed=3)
    assert plan != kill_plan(20, seed=4)
    quick = kill_plan(4, seed=3)
    assert sorted(k.kind for kills in quick.values() for k in kills) == sorted(KILL_KINDS)
    assert sorted(len(kills) for kills in kill_plan(6, seed=3).values()) == [1, 1, 2, 2]
    for job in ("silver", "sessions", "gold"):  # waits for its upstream: not a startup kill
        kills = plan[job]
        assert kills[-1].kind != "startup" or all(k.kind == "startup" for k in kills)
