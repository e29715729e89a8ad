"""The silver events job: bronze.events_raw -> gate -> silver.events + silver.quarantine.

Per micro-batch (bronze change-feed versions):

1. one Spark pass parses every row with the contract's Spark schema, evaluates every rule once
   (``Gate.evaluate``) and projects the columns both outputs need; it is collected once as Arrow
   (the driver holds the batch anyway, for the delta-rs commit);
2. ``split_batch`` routes the rows: quarantine, dropped, and valid rows deduplicated by
   ``event_id`` — the earliest copy in bronze order wins within the batch, and ids already in
   silver on the same event dates (written by earlier batches) are duplicates; a ``fail`` rule
   stops the query here, naming the rule and a sample row, before anything is written;
3. write quarantine, silver and the batch's accounting row, each as one idempotent Delta commit
   keyed by (query id, batch id): a replayed batch recomputes the same split — the lookup of
   existing ids excludes rows written by this very batch (``load_id``) — and skips every commit
   that already landed;
4. every N batches, validate the written rows with the Great Expectations suite.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.config import Settings, TriggerSettings
from pipelines.lake.catalog import Catalog
from pipelines.lake.tables import (
    BRONZE_EVENTS_RAW,
    QUALITY_BATCH_RESULTS,
    SILVER_EVENTS,
    SILVER_QUARANTINE,
    TableSpec,
)
from pipelines.quality.accounting import BatchAccount
from pipelines.quality.expectations import RuleSet, load_rule_set
from pipelines.quality.gate import Gate
from pipelines.silver.events import (
    BatchSplit,
    classified_events,
    event_dates,
    parsed_events,
    split_batch,
)
from pipelines.streaming.delta import BatchHandler, conform, query_id_from_checkpoint
from pipelines.streaming.queries import StepClock, await_query, start_table_stream
from pipelines.streaming.sinks import ensure_table, table_writer
from pipelines.streaming.sources import delta_stream

log = logging.getLogger(__name__)


class QualityRuleFailedError(RuntimeError):
    """A rule with action ``fail`` broke: the batch is not written and the query stops."""


class BatchValidator(Protocol):
    """Validates the rows a batch wrote (the Great Expectations suite) and records the result."""

    def __call__(self, written: DataFrame, batch_id: int, load_id: str) -> None: ...

    def recorded(self, batch_id: int, load_id: str) -> bool:
        """Whether the result of this batch is already recorded (a replay must not skip it)."""
        ...


@dataclass
class SilverStats:
    batches_written: int = 0
    batches_skipped: int = 0
    accounts: list[BatchAccount] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)  # seconds per step per batch

    def total(self, name: str) -> int:
        return sum(int(getattr(a, name)) for a in self.accounts)


@dataclass
class SilverRun:
    stats: SilverStats
    query_id: str
    silver_version: int | None
    quarantine_version: int | None


def silver_batch_handler(
    catalog: Catalog,
    gate: Gate,
    checkpoint: str,
    stats: SilverStats,
    *,
    validator: BatchValidator | None = None,
    validate_every: int = 1,
) -> BatchHandler:
    """The ``foreachBatch`` handler of the silver query (see the module docstring)."""
    appenders = {
        spec.name: table_writer(catalog, spec)
        for spec in (SILVER_QUARANTINE, SILVER_EVENTS, QUALITY_BATCH_RESULTS)
    }
    query: list[str] = []

    def app_id(spec: TableSpec) -> str:
        return f"{spec.name}:{query[0]}"

    def validate(batch_id: int) -> bool:
        return validator is not None and batch_id % validate_every == 0

    def handle(batch_df: DataFrame, batch_id: int) -> None:
        if not query:
            query.append(query_id_from_checkpoint(checkpoint, batch_df.sparkSession))
        load_id = f"{query[0]}:{batch_id}"
        if all(appenders[s.name].committed(app_id(s), batch_id) for s in _WRITES):
            stats.batches_skipped += 1
            log.warning("silver: batch %s already committed; skipping replay", batch_id)
            if validate(batch_id) and validator is not None:
                _validate_replayed(catalog, validator, batch_df.sparkSession, batch_id, load_id)
            return
        clock = StepClock()
        # One Spark pass: parse, every rule, the columns both outputs need; collected once.
        # A batch is often one Delta version read by one task: spread it over the cores first.
        spread = batch_df.repartition(batch_df.sparkSession.sparkContext.defaultParallelism)
        classified = pa.table(
            classified_events(gate.evaluate(parsed_events(spread)), load_id).toArrow()
        )
        clock.lap("spark_classify")
        existing = _existing_ids(catalog, event_dates(classified), load_id)
        clock.lap("existing_ids")
        split = split_batch(classified, existing)
        clock.lap("split")
        _stop_on_fail_rules(split.failing, gate.rule_set, batch_id)
        account = _account(split, classified, query_id=query[0], batch_id=batch_id, load_id=load_id)
        results = pa.Table.from_pylist(
            [account.to_row()], schema=QUALITY_BATCH_RESULTS.arrow_schema
        )
        for spec, data in (
            (SILVER_QUARANTINE, split.quarantine),
            (SILVER_EVENTS, split.silver),
            (QUALITY_BATCH_RESULTS, results),
        ):
            appenders[spec.name].append(
                data,
                app_id(spec),
                batch_id,
                {"lakehouse.load_id": load_id},
                spark=batch_df.sparkSession,
            )
        clock.lap("delta_writes")
        stats.batches_written += 1
        stats.accounts.append(account)
        if validator is not None and split.silver.num_rows and validate(batch_id):
            written = batch_df.sparkSession.createDataFrame(
                conform(split.silver, SILVER_EVENTS.arrow_schema)
            )
            validator(written, batch_id, load_id)
            clock.lap("great_expectations")
        stats.timings.append(clock.laps)

    return handle


# The row-count expectation's upper bound: a silver micro-batch is a few bronze batches.
SILVER_BATCH_ROW_BOUND = 10_000_000
_WRITES = (SILVER_QUARANTINE, SILVER_EVENTS, QUALITY_BATCH_RESULTS)


def start_silver(
    spark: SparkSession,
    settings: Settings,
    *,
    trigger: TriggerSettings | None = None,
    validator: BatchValidator | None = None,
    rule_set: RuleSet | None = None,
) -> tuple[StreamingQuery, SilverStats]:
    """Start the silver query and return it without waiting (see ``run_silver``)."""
    catalog = Catalog.for_settings(settings)
    rules = rule_set or load_rule_set(SILVER_EVENTS.name, settings.rules_dir, settings.quality)
    gate = Gate(rules)
    for spec in (BRONZE_EVENTS_RAW, *_WRITES):
        ensure_table(spark, catalog, spec)
    stats = SilverStats()
    handler = silver_batch_handler(
        catalog,
        gate,
        catalog.checkpoint(SILVER_EVENTS.name),
        stats,
        validator=validator,
        validate_every=settings.quality.great_expectations.every_n_batches,
    )
    source = delta_stream(
        spark,
        catalog,
        BRONZE_EVENTS_RAW.name,
        max_files_per_trigger=settings.silver.max_files_per_trigger,
        max_bytes_per_trigger=settings.silver.max_bytes_per_trigger,
    )
    query = start_table_stream(
        source,
        catalog=catalog,
        table=SILVER_EVENTS.name,
        handler=handler,
        trigger=trigger or settings.streaming.trigger,
    )
    return query, stats


def run_silver(
    spark: SparkSession,
    settings: Settings,
    *,
    trigger: TriggerSettings | None = None,
    validator: BatchValidator | None = None,
    on_progress: Callable[[StreamingQuery, SilverStats], None] | None = None,
    timeout_s: float | None = None,
    rule_set: RuleSet | None = None,
) -> SilverRun:
    """Run the silver query: drain bronze and return (available-now) or run until stopped.

    Raises:
        StreamingJobError: the query failed (including a ``fail`` rule, named in the message).
        QualityConfigError: the rule file is wrong.
    """
    query, stats = start_silver(
        spark, settings, trigger=trigger, validator=validator, rule_set=rule_set
    )
    await_query(
        query,
        on_progress=(lambda q: on_progress(q, stats)) if on_progress else None,
        timeout_s=timeout_s,
    )
    catalog = Catalog.for_settings(settings)
    return SilverRun(
        stats=stats,
        query_id=str(query.id),
        silver_version=catalog.delta_table(SILVER_EVENTS.name).version(),
        quarantine_version=catalog.delta_table(SILVER_QUARANTINE.name).version(),
    )


def silver_suite_validator(settings: Settings, catalog: Catalog) -> BatchValidator:
    """The Great Expectations suite for silver.events, recording each result (idempotently) in
    ``quality.suite_results`` and its Data Docs under ``<storage root>/quality/gx``."""
    return _SilverSuite(settings, catalog)


class _SilverSuite:
    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        from pipelines.contracts import ContractRegistry
        from pipelines.quality.recording import SuiteRecorder

        self.recorder = SuiteRecorder(settings, catalog)
        self.event_types = ContractRegistry().event_types

    def __call__(self, written: DataFrame, batch_id: int, load_id: str) -> None:
        from pipelines.quality.suites import silver_events_expectations

        expectations = silver_events_expectations(self.event_types, SILVER_BATCH_ROW_BOUND)
        self.recorder.validate(
            SILVER_EVENTS.name, expectations, written, batch_id=batch_id, load_id=load_id
        )

    def recorded(self, batch_id: int, load_id: str) -> bool:
        return self.recorder.recorded(SILVER_EVENTS.name, batch_id=batch_id, load_id=load_id)


def _validate_replayed(
    catalog: Catalog, validator: BatchValidator, spark: SparkSession, batch_id: int, load_id: str
) -> None:
    """A replayed batch whose writes landed but whose suite result did not (the process died
    while the suite ran): validate the rows it wrote, so no batch goes without a result."""
    if validator.recorded(batch_id, load_id):
        return
    written = catalog.read(spark, SILVER_EVENTS.name).filter(F.col("load_id") == load_id)
    if written.isEmpty():
        return
    log.warning("silver: batch %s has no suite result; validating the rows it wrote", batch_id)
    validator(written, batch_id, load_id)


def _stop_on_fail_rules(failing: pa.Table, rule_set: RuleSet, batch_id: int) -> None:
    if failing.num_rows == 0:
        return
    row = failing.slice(0, 1).to_pylist()[0]
    business = {r.name: r.action for r in rule_set.rules}
    broken = [r for r in row["failed_rules"] if business.get(r, rule_set.contract_action) == "fail"]
    raise QualityRuleFailedError(
        f"rule {', '.join(broken)} (action fail) broke on {failing.num_rows} row(s) of silver "
        f"batch {batch_id}; nothing of the batch was written. Sample: {row['source_topic']}"
        f"[{row['source_partition']}] offset {row['source_offset']}: {row['first_error']}; "
        f"value={str(row['raw_value'])[:300]!r}. Fix the data or change the rule's action in "
        f"{rule_set.source}, then restart the query."
    )


def _existing_ids(catalog: Catalog, dates: list[str], load_id: str) -> pa.Array:
    """``event_id`` of rows already in silver on these event dates, written by earlier batches."""
    if not dates:
        return pa.array([], pa.string())
    found = catalog.read_arrow(
        SILVER_EVENTS.name,
        columns=["event_id", "load_id"],
        partitions=[("event_date", "in", dates)],
    )
    earlier = found.filter(pc.not_equal(found.column("load_id"), load_id))
    return pc.unique(earlier.column("event_id").combine_chunks())


def _account(
    split: BatchSplit, classified: pa.Table, *, query_id: str, batch_id: int, load_id: str
) -> BatchAccount:
    versions = classified.column("bronze_version")
    bounds = pc.min_max(versions).as_py() if len(versions) else {"min": None, "max": None}
    return BatchAccount(
        table=SILVER_EVENTS.name,
        load_id=load_id,
        query_id=query_id,
        batch_id=batch_id,
        source_table=BRONZE_EVENTS_RAW.name,
        source_start_version=bounds["min"],
        source_end_version=bounds["max"],
        input_rows=split.input_rows,
        written_rows=split.silver.num_rows,
        quarantined_rows=split.quarantine.num_rows,
        dropped_rows=split.dropped_rows,
        duplicates_in_batch=split.duplicates_in_batch,
        duplicates_existing=split.duplicates_existing,
        quarantined_by_rule=split.quarantined_by_rule,
        dropped_by_rule=split.dropped_by_rule,
        warnings_by_rule=split.warnings_by_rule,
    )
