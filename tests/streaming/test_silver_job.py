"""The silver gate end to end: real bronze Delta tables, the real silver query, row by row."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.testing import assertDataFrameEqual
from typer.testing import CliRunner

from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.cli.main import app
from pipelines.config import Settings, SilverSettings, TriggerSettings
from pipelines.lake.catalog import Catalog
from pipelines.quality.accounting import reconcile
from pipelines.quality.expectations import Expectation, load_rule_set
from pipelines.quality.report import accounting_report
from pipelines.quality.tables import QUALITY_BATCH_RESULTS
from pipelines.silver.job import run_silver, silver_suite_validator
from pipelines.silver.sessions import sessions as all_sessions
from pipelines.silver.sessions_job import SessionsRun, run_sessions, session_events
from pipelines.silver.tables import SILVER_EVENTS, SILVER_QUARANTINE, SILVER_SESSIONS
from pipelines.streaming.queries import StreamingJobError, stop_gracefully
from pipelines.streaming.sinks import table_writer
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.tables import LAKE_TABLES
from tests.conftest import make_settings
from tests.streaming.helpers import forget_commit, spy_on_driver_transfers

pytestmark = pytest.mark.streaming

NOW = datetime.now(tz=UTC).replace(microsecond=0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "lake", quality={"great_expectations": {"enabled": False}})


def event(event_type: str = "click", **changes: Any) -> dict[str, Any]:
    """A valid event of ``event_type``, with ``changes`` applied (None removes a field)."""
    base: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "user_id": "user-1",
        "timestamp": int((NOW - timedelta(minutes=10)).timestamp() * 1000),
        "schema_version": 1,
        "context": {"device": "mobile", "locale": "en-US"},
    }
    base |= {
        "page_view": {"item_id": "item-1", "properties": {"page_type": "product"}},
        "click": {"item_id": "item-1", "properties": {"position": 1}},
        "search": {"properties": {"query": "shoes", "result_count": 3}},
        "add_to_cart": {"item_id": "item-1", "properties": {"quantity": 1}},
        "purchase": {
            "item_id": "item-1",
            "properties": {"order_id": "o-1", "revenue": 10.0, "currency": "EUR", "quantity": 1},
        },
    }[event_type]
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def land_in_bronze(catalog: Catalog, values: list[str | None], ingest: datetime = NOW) -> None:
    """Append raw values to bronze as one commit (one Delta version), like one bronze batch."""
    writer = table_writer(catalog, BRONZE_EVENTS_RAW)
    start = (
        (catalog.info(BRONZE_EVENTS_RAW.name).rows or 0)
        if catalog.exists(BRONZE_EVENTS_RAW.name)
        else 0
    )
    n = len(values)
    ts = pa.array([ingest] * n, pa.timestamp("us", tz="UTC"))
    data = pa.table(
        {
            "key": [f"user-{i}" for i in range(n)],
            "value": values,
            "topic": ["events"] * n,
            "partition": pa.array([0] * n, pa.int32()),
            "offset": pa.array(range(start, start + n), pa.int64()),
            "kafka_timestamp": ts,
            "ingest_ts": ts,
            "ingest_date": pa.array([ingest.date()] * n),
        }
    )
    # The test session (the active one) writes one version of one file per call.
    spark = SparkSession.getActiveSession()
    assert spark is not None
    frame = spark.createDataFrame(data, schema=BRONZE_EVENTS_RAW.schema).coalesce(1)
    version = catalog.info(BRONZE_EVENTS_RAW.name).version
    writer.append_frame(frame, "test-bronze", 0 if version is None else version + 1)


def rows(spark: SparkSession, catalog: Catalog, table: str) -> list[dict[str, Any]]:
    return [r.asDict(recursive=True) for r in catalog.read(spark, table).collect()]


def test_every_bad_kind_lands_in_quarantine_with_its_rule(
    spark: SparkSession, settings: Settings
) -> None:
    catalog = Catalog(settings.storage, LAKE_TABLES)
    generator = ClickstreamGenerator(users=200, items=80, seed=11, bad_fraction=0.3, end=NOW)
    generated = list(generator.events(1_200))
    land_in_bronze(catalog, [e.value.decode("utf-8", "replace") for e in generated])

    run = run_silver(spark, settings, trigger=TriggerSettings(mode="available-now"))

    kind_at = {offset: e.kind for offset, e in enumerate(generated)}
    quarantine = rows(spark, catalog, SILVER_QUARANTINE.name)
    by_kind: dict[str, list[list[str]]] = {}
    for row in quarantine:
        by_kind.setdefault(kind_at[row["source_offset"]], []).append(row["failed_rules"])
    counts = generator.report.by_kind
    assert set(by_kind) == {
        "malformed_json",
        "missing_required",
        "wrong_type",
        "unknown_event_type",
        "future_timestamp",
    }
    assert by_kind["malformed_json"] == [["json_parse"]] * counts["malformed_json"]
    assert by_kind["unknown_event_type"] == [["unknown_event_type"]] * counts["unknown_event_type"]
    assert by_kind["future_timestamp"] == [["timestamp_in_future"]] * counts["future_timestamp"]
    assert len(by_kind["missing_required"]) == counts["missing_required"]
    assert all(r and all(x.startswith("required:") for x in r) for r in by_kind["missing_required"])
    assert len(by_kind["wrong_type"]) == counts["wrong_type"]
    assert all(any(x.startswith("type:") for x in r) for r in by_kind["wrong_type"])
    assert all(row["first_error"] and row["raw_value"] is not None for row in quarantine)

    silver_offsets = {r["source_offset"] for r in rows(spark, catalog, SILVER_EVENTS.name)}
    assert {kind_at[o] for o in silver_offsets} == {"good"}
    assert len(silver_offsets) == generator.report.good
    (account,) = run.stats.accounts
    assert account.duplicates_in_batch == counts["duplicate"]
    assert (account.input_rows, account.invariant_holds) == (1_200, True)


def test_hostile_timestamps_are_quarantined_and_no_silver_row_has_a_null_event_time(
    spark: SparkSession, settings: Settings
) -> None:
    catalog = Catalog(settings.storage, LAKE_TABLES)
    good = event()
    hostile = {
        '"timestamp": 4100000000000.0': 4_100_000_000_000.0,  # year 2099, once NULL in silver
        '"timestamp": 1e30': 1e30,
        '"timestamp": integral float': float(good["timestamp"]),
        '"timestamp": "2026-13-45T99:00:00Z"': "2026-13-45T99:00:00Z",
    }
    values = [json.dumps(good)] + [json.dumps(event(timestamp=t)) for t in hostile.values()]
    values.append(json.dumps(good).replace(str(good["timestamp"]), "1" + "0" * 30))  # 10**30
    land_in_bronze(catalog, values)

    run_silver(spark, settings, trigger=TriggerSettings(mode="available-now"))

    silver = rows(spark, catalog, SILVER_EVENTS.name)
    assert [r["event_id"] for r in silver] == [good["event_id"]]
    assert all(r["event_ts"] is not None for r in silver)
    quarantine = rows(spark, catalog, SILVER_QUARANTINE.name)
    assert len(quarantine) == len(values) - 1
    for row in quarantine:
        # each is refused for its time: by the contract (type:/format:timestamp) or the gate
        assert any(
            r.endswith(":timestamp") or r == "event_time_readable" for r in row["failed_rules"]
        ), row


def test_a_row_breaking_two_rules_lists_both_and_warnings_never_drop(
    spark: SparkSession, settings: Settings
) -> None:
    catalog = Catalog(settings.storage, LAKE_TABLES)
    future = int((NOW + timedelta(days=2)).timestamp() * 1000)
    two_rules = event(user_id=None, timestamp=future)
    negative_jpy = event(
        "purchase",
        properties={"order_id": "o-9", "revenue": -5.0, "currency": "JPY", "quantity": 1},
    )
    empty_search = event("search", properties={"query": "  ", "result_count": 0})
    land_in_bronze(catalog, [json.dumps(e) for e in (two_rules, negative_jpy, empty_search)])

    run = run_silver(spark, settings, trigger=TriggerSettings(mode="available-now"))

    quarantine = {r["event_id"]: r for r in rows(spark, catalog, SILVER_QUARANTINE.name)}
    assert quarantine[two_rules["event_id"]]["failed_rules"] == [
        "required:user_id",
        "timestamp_in_future",
    ]
    assert quarantine[two_rules["event_id"]]["first_error"].startswith("required:user_id")
    assert quarantine[negative_jpy["event_id"]]["failed_rules"] == ["purchase_revenue_non_negative"]
    (kept,) = rows(spark, catalog, SILVER_EVENTS.name)
    assert kept["event_id"] == empty_search["event_id"]
    assert kept["quality_warnings"] == ["search_query_not_empty"]
    (account,) = run.stats.accounts
    assert dict(account.warnings_by_rule) == {
        "search_query_not_empty": 1,
        "purchase_currency_supported": 1,  # counted, though the row was quarantined for revenue
    }
    assert dict(account.quarantined_by_rule) == {
        "required:user_id": 1,
        "timestamp_in_future": 1,
        "purchase_revenue_non_negative": 1,
    }


def test_typed_silver_row_matches_the_event(spark: SparkSession, settings: Settings) -> None:
    catalog = Catalog(settings.storage, LAKE_TABLES)
    purchase = event("purchase", timestamp="2026-11-20T10:15:30.250Z", session_id="s-1")
    purchase["properties"]["category"] = "books"
    land_in_bronze(catalog, [json.dumps(purchase)], ingest=datetime(2026, 11, 20, 11, tzinfo=UTC))

    run_silver(spark, settings, trigger=TriggerSettings(mode="available-now"))

    expected = spark.createDataFrame(
        [
            (
                purchase["event_id"],
                "purchase",
                "user-1",
                "s-1",
                datetime(2026, 11, 20, 10, 15, 30, 250000),
                "item-1",
                "o-1",
                10.0,
                "EUR",
                1,
                "books",
                "mobile",
                "en-US",
                1,
                [],
                "events",
                0,
            )
        ],
        "event_id string, event_type string, user_id string, session_id string, "
        "event_ts timestamp, "
        "item_id string, order_id string, revenue double, currency string, quantity bigint, "
        "category string, device string, locale string, schema_version bigint, "
        "quality_warnings array<string>, source_topic string, source_offset bigint",
    )
    actual = catalog.read(spark, SILVER_EVENTS.name).selectExpr(
        "event_id",
        "event_type",
        "user_id",
        "session_id",
        "event_ts",
        "item_id",
        "properties.order_id",
        "properties.revenue",
        "properties.currency",
        "properties.quantity",
        "properties.category",
        "context.device",
        "context.locale",
        "schema_version",
        "quality_warnings",
        "source_topic",
        "source_offset",
    )
    assertDataFrameEqual(actual, expected)
    (row,) = catalog.read(spark, SILVER_EVENTS.name).select("event_date").collect()
    assert row.event_date.isoformat() == "2026-11-20"


def test_exact_duplicates_across_two_micro_batches_appear_once(
    spark: SparkSession, settings: Settings
) -> None:
    catalog = Catalog(settings.storage, LAKE_TABLES)
    first, second = event(), event("page_view")
    land_in_bronze(catalog, [json.dumps(first)])
    run_silver(spark, settings, trigger=TriggerSettings(mode="available-now"))
    land_in_bronze(catalog, [json.dumps(first), json.dumps(second), json.dumps(second)])
    run = run_silver(spark, settings, trigger=TriggerSettings(mode="available-now"))

    ids = sorted(r["event_id"] for r in rows(spark, catalog, SILVER_EVENTS.name))
    assert ids == sorted([first["event_id"], second["event_id"]])
    (account,) = run.stats.accounts
    assert (account.input_rows, account.written_rows) == (3, 1)
    assert (account.duplicates_existing, account.duplicates_in_batch) == (1, 1)
    assert account.invariant_holds


def test_accounting_holds_across_a_mid_stream_stop_and_replays_add_nothing(
    spark: SparkSession, settings: Settings
) -> None:
    capped = settings.model_copy(update={"silver": SilverSettings(max_files_per_trigger=1)})
    catalog = Catalog(capped.storage, LAKE_TABLES)
    generator = ClickstreamGenerator(users=100, items=50, seed=5, bad_fraction=0.1, end=NOW)
    values = [e.value.decode("utf-8", "replace") for e in generator.events(900)]
    # Six bronze versions (one file each): six silver micro-batches. Three land before a
    # continuous run, which is stopped once it has written them; three land after the stop.
    for chunk in range(3):
        land_in_bronze(catalog, values[chunk * 150 : (chunk + 1) * 150])

    def stop_after_three(query: Any, stats: Any) -> None:
        if stats.batches_written >= 3:
            stop_gracefully(query)

    first = run_silver(
        spark,
        capped,
        trigger=TriggerSettings(mode="processing-time", interval="2 seconds"),
        on_progress=stop_after_three,
        timeout_s=300,
    )
    assert first.stats.batches_written == 3
    for chunk in range(3, 6):
        land_in_bronze(catalog, values[chunk * 150 : (chunk + 1) * 150])
    rest = run_silver(spark, capped, trigger=TriggerSettings(mode="available-now"))
    assert rest.stats.batches_written == 3

    results = rows(spark, catalog, QUALITY_BATCH_RESULTS.name)
    assert sorted(r["batch_id"] for r in results) == list(range(6))
    assert all(r["invariant_holds"] for r in results)
    assert sum(r["input_rows"] for r in results) == 900
    report = accounting_report(catalog, require_suites=False)  # this lake runs no suites
    assert report.ok, report
    assert (
        report.table_rows["written"]
        + report.table_rows["quarantined"]
        + report.totals["duplicates_in_batch"]
        + report.totals["duplicates_existing"]
        == 900
    )

    versions = {
        t: catalog.info(t).version
        for t in (SILVER_EVENTS.name, SILVER_QUARANTINE.name, QUALITY_BATCH_RESULTS.name)
    }
    again = run_silver(spark, capped, trigger=TriggerSettings(mode="available-now"))
    assert again.stats.batches_written == 0
    # Crash after the three commits, before the checkpoint: the replay must skip them all.
    forget_commit(catalog.checkpoint(SILVER_EVENTS.name), 5)
    replay = run_silver(spark, capped, trigger=TriggerSettings(mode="available-now"))
    assert (replay.stats.batches_skipped, replay.stats.batches_written) == (1, 0)
    assert {t: catalog.info(t).version for t in versions} == versions


def test_a_half_written_batch_is_completed_without_duplicates_on_replay(
    spark: SparkSession, settings: Settings
) -> None:
    catalog = Catalog(settings.storage, LAKE_TABLES)
    values = [json.dumps(event()) for _ in range(20)] + ["{broken"]
    land_in_bronze(catalog, values)
    run_silver(spark, settings, trigger=TriggerSettings(mode="available-now"))
    # Simulate a crash after the silver commit but before the batch results and checkpoint:
    # the results commit never happened (its log entry is gone), nor the checkpoint's entry.
    results_log = Path(catalog.location(QUALITY_BATCH_RESULTS.name)) / "_delta_log"
    last = catalog.delta_table(QUALITY_BATCH_RESULTS.name).version()
    # The commit file, its Delta checksum and Hadoop's hidden .crc of each.
    for entry in [*results_log.glob(f"{last:020d}.*"), *results_log.glob(f".{last:020d}.*")]:
        entry.unlink()
    spark._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()  # as a restarted process would
    assert catalog.info(QUALITY_BATCH_RESULTS.name).rows == 0
    forget_commit(catalog.checkpoint(SILVER_EVENTS.name), 0)

    replay = run_silver(spark, settings, trigger=TriggerSettings(mode="available-now"))

    assert replay.stats.batches_written == 1
    (account,) = replay.stats.accounts
    # The replayed split is identical: its own silver rows are not mistaken for duplicates.
    assert (account.written_rows, account.quarantined_rows, account.duplicates_existing) == (
        20,
        1,
        0,
    )
    assert catalog.info(SILVER_EVENTS.name).rows == 20
    assert catalog.info(SILVER_QUARANTINE.name).rows == 1
    assert reconcile(rows(spark, catalog, QUALITY_BATCH_RESULTS.name), {"written": 20}).ok


# What silver's batch path may bring to the driver: aggregates, never rows of the batch.
_BATCH_COLUMNS = {
    *BRONZE_EVENTS_RAW.schema.fieldNames(),
    *SILVER_EVENTS.schema.fieldNames(),
    *SILVER_QUARANTINE.schema.fieldNames(),
}
_ROWS_TO_DRIVER = ("toArrow", "toPandas", "toLocalIterator", "tail", "_collect_as_arrow")


def test_the_batch_path_brings_no_batch_rows_to_the_driver(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path / "lake")  # the Great Expectations suite on every batch
    catalog = Catalog(settings.storage, LAKE_TABLES)
    generator = ClickstreamGenerator(users=100, items=50, seed=7, bad_fraction=0.2, end=NOW)
    values = [e.value.decode("utf-8", "replace") for e in generator.events(600)]
    land_in_bronze(catalog, values[:300])
    land_in_bronze(catalog, values[250:])  # 50 ids again: duplicates of the first batch
    frame_class = type(spark.range(1))
    collected: list[tuple[int, list[str]]] = []
    to_driver: list[str] = []
    collect = frame_class.collect

    def counted_collect(self: DataFrame) -> list[Row]:
        found = collect(self)
        collected.append((len(found), list(self.columns)))
        return found

    def refused(name: str) -> Any:
        def call(self: DataFrame, *args: Any, **kwargs: Any) -> Any:
            to_driver.append(name)
            raise AssertionError(f"silver called DataFrame.{name}: batch rows to the driver")

        return call

    monkeypatch.setattr(frame_class, "collect", counted_collect)
    for name in _ROWS_TO_DRIVER:
        monkeypatch.setattr(frame_class, name, refused(name))
    capped = settings.model_copy(update={"silver": SilverSettings(max_files_per_trigger=1)})
    validator = silver_suite_validator(capped, catalog)
    run = run_silver(
        spark, capped, trigger=TriggerSettings(mode="available-now"), validator=validator
    )
    monkeypatch.undo()

    assert to_driver == []
    assert len(run.stats.accounts) == 2
    assert sum(a.written_rows for a in run.stats.accounts) == generator.report.good
    assert run.stats.accounts[1].duplicates_existing > 0
    # The tallies and duplicate counts (a few rows: rules, dates, kinds) and the suite's metrics;
    # the suite's samples of unexpected values read one column, and there are none here.
    shapes = [columns for _, columns in collected]
    assert shapes.count(["tally", "name", "rows", "first_version", "last_version"]) == 2, shapes
    assert shapes.count(["route", "count"]) == 2, shapes
    assert max(n for n, _ in collected) < 40, [x for x in collected if x[0] >= 40]
    samples = [(n, c) for n, c in collected if set(c) & _BATCH_COLUMNS]
    assert all(n == 0 and len(c) == 1 for n, c in samples), [
        (n, c) for n, c in samples if n or len(c) != 1
    ]
    assert accounting_report(catalog, require_suites=True).ok


def test_a_fail_rule_stops_the_query_naming_the_rule_and_a_sample(
    spark: SparkSession, settings: Settings
) -> None:
    catalog = Catalog(settings.storage, LAKE_TABLES)
    base = load_rule_set(SILVER_EVENTS.name, settings.rules_dir, settings.quality)
    strict = base.__class__(
        table=base.table,
        contract_action=base.contract_action,
        rules=(
            *base.rules,
            Expectation("no_test_users", "user_id <> 'tester'", "fail", "no test traffic"),
        ),
        source=base.source,
    )
    land_in_bronze(catalog, [json.dumps(event()), json.dumps(event(user_id="tester"))])

    with pytest.raises(StreamingJobError) as info:
        run_silver(spark, settings, trigger=TriggerSettings(mode="available-now"), rule_set=strict)

    message = str(info.value)
    assert "rule no_test_users (action fail) broke on 1 row(s)" in message
    assert "tester" in message and "offset 1" in message
    assert catalog.info(SILVER_EVENTS.name).rows == 0
    assert catalog.info(QUALITY_BATCH_RESULTS.name).rows == 0


def test_sessions_follow_late_events_and_match_a_full_recomputation(
    spark: SparkSession, settings: Settings
) -> None:
    catalog = Catalog(settings.storage, LAKE_TABLES)
    t0 = NOW - timedelta(hours=5)

    def at(minutes: float, event_type: str = "page_view", user: str = "user-1") -> str:
        ts = int((t0 + timedelta(minutes=minutes)).timestamp() * 1000)
        return json.dumps(event(event_type, user_id=user, timestamp=ts))

    land_in_bronze(catalog, [at(0), at(50), at(0, user="user-2"), at(30, user="user-2")])
    run_silver(spark, settings, trigger=TriggerSettings(mode="available-now"))
    run_sessions(spark, settings, trigger=TriggerSettings(mode="available-now"))
    before = {(r["user_id"], r["event_count"]) for r in rows(spark, catalog, SILVER_SESSIONS.name)}
    assert before == {("user-1", 1), ("user-2", 2)}  # user-1: 50 min apart; user-2: exactly 30
    assert len(rows(spark, catalog, SILVER_SESSIONS.name)) == 3

    land_in_bronze(catalog, [at(25, "purchase"), at(30 + 1 / 60_000, user="user-2")])  # late
    run_silver(spark, settings, trigger=TriggerSettings(mode="available-now"))
    merged = run_sessions(spark, settings, trigger=TriggerSettings(mode="available-now"))

    assert merged.stats.sessions_deleted == 1  # user-1's second session was absorbed
    after = catalog.read(spark, SILVER_SESSIONS.name)
    full = all_sessions(
        session_events(catalog.read(spark, SILVER_EVENTS.name)), timedelta(minutes=30)
    )
    assertDataFrameEqual(after, full, checkRowOrder=False)
    user1 = [r for r in rows(spark, catalog, SILVER_SESSIONS.name) if r["user_id"] == "user-1"]
    assert [(r["event_count"], r["converted"], r["duration_s"]) for r in user1] == [
        (3, True, 3000.0)
    ]


# What the sessions batch path may bring to the driver: the window start and the change counts.
_SESSION_COLUMNS = {*SILVER_EVENTS.schema.fieldNames(), *SILVER_SESSIONS.schema.fieldNames()}


def test_the_sessions_batch_path_brings_no_batch_rows_to_the_driver(
    spark: SparkSession, settings: Settings
) -> None:
    catalog = Catalog(settings.storage, LAKE_TABLES)
    t0 = NOW - timedelta(hours=3)

    def at(minutes: float, user: str, event_type: str = "page_view") -> str:
        ts = int((t0 + timedelta(minutes=minutes)).timestamp() * 1000)
        return json.dumps(event(event_type, user_id=user, timestamp=ts))

    def sessions_batch() -> SessionsRun:
        run_silver(spark, settings, trigger=TriggerSettings(mode="available-now"))
        with spy_on_driver_transfers(spark, "sessions") as transfers:
            run = run_sessions(spark, settings, trigger=TriggerSettings(mode="available-now"))
        assert transfers.refused == []
        # The earliest window start and the two change counts: one row each, no batch column.
        assert max(n for n, _ in transfers.collected) == 1, transfers.collected
        assert not [c for _, c in transfers.collected if set(c) & _SESSION_COLUMNS]
        return run

    users = [f"user-{i}" for i in range(30)]
    land_in_bronze(catalog, [at(m, u) for u in users for m in (0, 10, 50)])
    first = sessions_batch()
    # Late purchases: each bridges its user's two sessions into one, converted.
    land_in_bronze(catalog, [at(30, u, "purchase") for u in users[:10]])
    late = sessions_batch()

    assert (first.stats.batches_written, late.stats.batches_written) == (1, 1)
    assert (first.stats.events_read, late.stats.events_read) == (90, 10)
    assert (first.stats.sessions_upserted, first.stats.sessions_deleted) == (60, 0)
    assert (late.stats.sessions_upserted, late.stats.sessions_deleted) == (10, 10)
    after = catalog.read(spark, SILVER_SESSIONS.name)
    full = all_sessions(
        session_events(catalog.read(spark, SILVER_EVENTS.name)), timedelta(minutes=30)
    )
    assertDataFrameEqual(after, full, checkRowOrder=False)
    assert after.where("converted").count() == 10


def test_quality_check_cli_fails_when_the_accounting_is_broken(
    spark: SparkSession, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    catalog = Catalog(settings.storage, LAKE_TABLES)
    land_in_bronze(catalog, [json.dumps(event()), "not json"])
    gx = settings.quality.great_expectations.model_copy(update={"enabled": True})
    checked = settings.model_copy(
        update={"quality": settings.quality.model_copy(update={"great_expectations": gx})}
    )
    validator = silver_suite_validator(checked, catalog)  # the CLI's env runs suites
    run_silver(spark, settings, trigger=TriggerSettings(mode="available-now"), validator=validator)
    monkeypatch.setenv("LAKEHOUSE_DATA", settings.storage.root)
    runner = CliRunner()
    ok = runner.invoke(app, ["quality", "check", "--env", "test", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output.strip().splitlines()[-1])["ok"] is True

    tampered = pa.Table.from_pylist(
        [rows(spark, catalog, QUALITY_BATCH_RESULTS.name)[0] | {"batch_id": 99, "input_rows": 5}],
        schema=QUALITY_BATCH_RESULTS.arrow_schema,
    )
    table_writer(catalog, QUALITY_BATCH_RESULTS).append(tampered, "tamper", 0, spark=spark)
    broken = runner.invoke(app, ["quality", "check", "--env", "test"])
    assert broken.exit_code == 1
    assert "batch 99: input 5 != accounted 2" in broken.output
    # ...and a batch that wrote rows with no suite result is a suite that did not run.
    assert "batch 99" in broken.output and "has no suite result" in broken.output
