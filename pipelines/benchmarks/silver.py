"""``lakehouse bench silver``: the silver gate against a parse-only query over the same bronze data.

All in one run, over the same pre-filled ``bronze.events_raw`` (one Delta version per micro-batch,
``ROWS_PER_VERSION`` rows each, read one version per micro-batch, ~2 % bad events):

(a) parse-only baseline: the bronze change feed parsed with the contract's Spark schema
    (``parsed_events``), materialised and discarded — no gate, no dedup, no sink;
(b) silver: the real silver query (gate, quarantine, dedup against silver, three idempotent Delta
    commits per batch) with Great Expectations off;
(c) the same silver query with the Great Expectations suite on every batch, on a fresh copy, to
    report GX overhead separately.

Spark start-up and a warm-up run (Python workers, JIT) are excluded.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.config import Settings, SilverSettings, StorageSettings, TriggerSettings
from pipelines.lake.catalog import Catalog
from pipelines.silver.events import parsed_events
from pipelines.silver.job import run_silver, silver_suite_validator
from pipelines.streaming.queries import await_query
from pipelines.streaming.sinks import table_writer
from pipelines.streaming.sources import delta_stream
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.tables import LAKE_TABLES

ROWS_PER_VERSION = 200_000


def bench_silver(
    settings: Settings,
    spark_factory: Callable[[Settings], SparkSession],
    events: int,
    stage: Callable[[str], None] = lambda _msg: None,
    *,
    workdir: str | None = None,
    bad_fraction: float = 0.02,
) -> dict[str, Any]:
    """Run the benchmark and return its figures."""
    root = Path(workdir or tempfile.mkdtemp(prefix="lakehouse-bench-silver-")).resolve()
    per_batch = ROWS_PER_VERSION
    lakes = {name: _with_root(settings, root / name) for name in ("warmup", "silver", "gx")}

    stage("starting Spark (excluded from timings)")
    spark = spark_factory(settings)
    stage(f"pre-filling bronze: {events:,} events, {bad_fraction:.0%} bad, {per_batch:,}/version")
    generated = _generated_bronze(events, bad_fraction)
    for name in ("silver", "gx"):
        prefill_bronze(spark, Catalog.for_settings(lakes[name], LAKE_TABLES), generated, per_batch)
    prefill_bronze(
        spark,
        Catalog.for_settings(lakes["warmup"], LAKE_TABLES),
        generated.slice(0, min(events, 20_000)),
        per_batch,
    )

    stage("warming up (excluded from timings)")
    available_now = TriggerSettings(mode="available-now")
    run_silver(spark, lakes["warmup"], trigger=available_now)
    _parse_only(spark, lakes["warmup"], root / "warmup-parse")

    stage("(a) parse-only query over bronze")
    t0 = time.perf_counter()
    _parse_only(spark, lakes["silver"], root / "parse-only")
    parse_s = time.perf_counter() - t0

    stage("(b) silver query (gate, quarantine, dedup, accounting), GX off")
    t0 = time.perf_counter()
    silver = run_silver(spark, lakes["silver"], trigger=available_now)
    silver_s = time.perf_counter() - t0

    stage("(c) silver query with the Great Expectations suite on every batch")
    gx_settings = lakes["gx"]
    validator = silver_suite_validator(gx_settings, Catalog(gx_settings.storage, LAKE_TABLES))
    t0 = time.perf_counter()
    with_gx = run_silver(spark, gx_settings, trigger=available_now, validator=validator)
    gx_s = time.perf_counter() - t0

    accounts = silver.stats.accounts
    batches = len(accounts)
    return {
        "benchmark": "silver",
        "events": events,
        "bad_fraction": bad_fraction,
        "micro_batches": batches,
        "rows_per_batch": per_batch,
        "parse_only_seconds": round(parse_s, 3),
        "parse_only_events_per_s": round(events / parse_s),
        "silver_seconds": round(silver_s, 3),
        "silver_events_per_s": round(events / silver_s),
        "ratio_silver_to_parse_only": round(parse_s / silver_s, 3),
        "silver_with_gx_seconds": round(gx_s, 3),
        "silver_with_gx_events_per_s": round(events / gx_s),
        "gx_overhead_seconds_per_batch": round((gx_s - silver_s) / max(1, batches), 3),
        "written": sum(a.written_rows for a in accounts),
        "quarantined": sum(a.quarantined_rows for a in accounts),
        "duplicates": sum(a.duplicates for a in accounts),
        "silver_step_seconds": silver.stats.timings,
        "gx_step_seconds": with_gx.stats.timings,
        "accounting_holds": all(a.invariant_holds for a in accounts)
        and all(a.invariant_holds for a in with_gx.stats.accounts),
        "targets": {"silver_events_per_s": 30_000, "ratio_silver_to_parse_only": 0.5},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "workdir": str(root),
    }


def prefill_bronze(spark: SparkSession, catalog: Catalog, rows: pa.Table, per_version: int) -> None:
    """Append ``rows`` (bronze-shaped) in commits of ``per_version`` rows, one file each."""
    writer = table_writer(catalog, BRONZE_EVENTS_RAW)
    for batch_id, start in enumerate(range(0, rows.num_rows, per_version)):
        frame = spark.createDataFrame(rows.slice(start, per_version), BRONZE_EVENTS_RAW.schema)
        writer.append_frame(frame.coalesce(1), "bench-prefill", batch_id)


def _generated_bronze(events: int, bad_fraction: float) -> pa.Table:
    now = datetime.now(tz=UTC)
    generator = ClickstreamGenerator(
        users=max(100, events // 40), items=2_000, seed=17, bad_fraction=bad_fraction
    )
    generated = list(generator.events(events))
    stamp = pa.array([now] * events, pa.timestamp("us", tz="UTC"))
    return pa.table(
        {
            "key": [e.key for e in generated],
            "value": [e.value.decode("utf-8", "replace") for e in generated],
            "topic": [e.event_type for e in generated],
            "partition": pa.array([0] * events, pa.int32()),
            "offset": pa.array(range(events), pa.int64()),
            "kafka_timestamp": stamp,
            "ingest_ts": stamp,
            "ingest_date": pa.array([now.date()] * events),
        }
    )


def _parse_only(spark: SparkSession, settings: Settings, checkpoint: Path) -> None:
    catalog = Catalog.for_settings(settings, LAKE_TABLES)

    def materialise(batch_df: DataFrame, _batch_id: int) -> None:
        parsed_events(batch_df).write.format("noop").mode("overwrite").save()

    query = (
        delta_stream(
            spark,
            catalog,
            BRONZE_EVENTS_RAW.name,
            max_files_per_trigger=settings.silver.max_files_per_trigger,
            max_bytes_per_trigger=settings.silver.max_bytes_per_trigger,
        )
        .writeStream.foreachBatch(materialise)
        .option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True)
        .start()
    )
    await_query(query)


def _with_root(settings: Settings, root: Path) -> Settings:
    silver = SilverSettings(max_files_per_trigger=1, session_gap=settings.silver.session_gap)
    return settings.model_copy(
        update={"storage": StorageSettings(root=str(root)), "silver": silver}
    )
