"""The silver events job: bronze.events_raw -> gate -> silver.events + silver.quarantine.

Per micro-batch (bronze change-feed versions), all in Spark — no batch row reaches the driver,
only a few aggregated counts (and, when a ``fail`` rule broke, one sample row for the error):

1. one Spark pass parses every row with the contract's Spark schema, evaluates every rule once
   (``Gate.evaluate``) and projects the columns both outputs need; it is persisted, so the batch
   is parsed and gated once;
2. one aggregation (``batch_tallies``) counts rows per disposition, per event date and per rule;
   a ``fail`` rule stops the query here, naming the rule and a sample row, before anything is
   written;
3. ``duplicate_events`` finds the duplicates by ``event_id`` on the narrow key columns: within
   the batch the earliest copy in bronze order wins, and ids already in silver on the batch's
   event dates, written by earlier batches (another ``load_id``), are duplicates — so a replay
   finds the same ones; they are persisted (a few rows) and counted per kind, and silver's rows
   are the valid rows without them (an anti-join that leaves the wide rows where they are);
4. the executors write quarantine and silver, then the batch's accounting row is appended; each
   is one idempotent Delta commit keyed by (query id, batch id), so a replayed batch skips every
   commit that already landed, and a batch whose accounting row (its last commit) landed is
   skipped as a whole;
5. every N batches, the Great Expectations suite validates the written rows (the DataFrame).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.config import Settings, TriggerSettings
from pipelines.contracts import ContractRegistry
from pipelines.lake.catalog import Catalog
from pipelines.lake.tables import TableSpec
from pipelines.quality.accounting import BatchAccount
from pipelines.quality.expectations import RuleSet, load_rule_set
from pipelines.quality.gate import Gate
from pipelines.quality.recording import SuiteRecorder
from pipelines.quality.suites import silver_events_expectations
from pipelines.quality.tables import QUALITY_BATCH_RESULTS
from pipelines.silver.events import (
    DUPLICATE_EXISTING,
    DUPLICATE_IN_BATCH,
    batch_tallies,
    classified_events,
    duplicate_events,
    earlier_event_ids,
    failing_events,
    parsed_events,
    quarantined_events,
    silver_events,
)
from pipelines.silver.tables import SILVER_EVENTS, SILVER_QUARANTINE
from pipelines.streaming.delta import BatchHandler, query_id_from_checkpoint
from pipelines.streaming.queries import QueryMonitor, StepClock, await_query, start_table_stream
from pipelines.streaming.sinks import AppendResult, DeltaWriter, ensure_table, table_writer
from pipelines.streaming.sources import delta_stream
from pipelines.tables import LAKE_TABLES

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

    def summary(self) -> dict[str, Any]:
        """Totals of the run's batch accounts (what the CLI, the jobs and the demo report)."""
        by_rule: Counter[str] = Counter()
        warnings: Counter[str] = Counter()
        for account in self.accounts:
            by_rule.update(account.quarantined_by_rule)
            warnings.update(account.warnings_by_rule)
        return {
            "batches": self.batches_written,
            "input": self.total("input_rows"),
            "written": self.total("written_rows"),
            "quarantined": self.total("quarantined_rows"),
            "dropped": self.total("dropped_rows"),
            "duplicates": self.total("duplicates_in_batch") + self.total("duplicates_existing"),
            "quarantined_by_rule": dict(by_rule.most_common()),
            "warnings_by_rule": dict(warnings.most_common()),
            "invariant_holds": all(a.invariant_holds for a in self.accounts),
        }


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
    writers = {spec.name: table_writer(catalog, spec) for spec in _WRITES}
    results = writers[QUALITY_BATCH_RESULTS.name]
    query: list[str] = []

    def app_id(spec: TableSpec) -> str:
        return f"{spec.name}:{query[0]}"

    def validate(batch_id: int) -> bool:
        return validator is not None and batch_id % validate_every == 0

    def handle(batch_df: DataFrame, batch_id: int) -> None:
        spark = batch_df.sparkSession
        if not query:
            query.append(query_id_from_checkpoint(checkpoint, spark))
        load_id = f"{query[0]}:{batch_id}"
        # The accounting row is the batch's last commit: once it landed, so did the others.
        if results.committed(app_id(QUALITY_BATCH_RESULTS), batch_id):
            stats.batches_skipped += 1
            log.warning("silver: batch %s already committed; skipping replay", batch_id)
            if validate(batch_id) and validator is not None:
                _validate_replayed(catalog, validator, spark, batch_id, load_id)
            return
        clock = StepClock()
        # A batch is often one Delta version read by one task: spread it over the cores first.
        spread = batch_df.repartition(spark.sparkContext.defaultParallelism)
        classified = classified_events(gate.evaluate(parsed_events(spread)), load_id)
        duplicates: DataFrame | None = None
        try:
            # Parsed and gated once: every step below reads the persisted rows.
            classified.persist(StorageLevel.MEMORY_AND_DISK)
            tallies = _Tallies.of(batch_tallies(classified))
            clock.lap("spark_classify")
            if tallies.rows("disposition", "fail"):
                _stop_on_fail_rules(classified, tallies, gate.rule_set, batch_id)
            earlier = earlier_event_ids(
                catalog.read(spark, SILVER_EVENTS.name), tallies.names("event_date"), load_id
            )
            duplicates = duplicate_events(classified, earlier).persist(StorageLevel.MEMORY_AND_DISK)
            routes = duplicates.groupBy("route").count().collect()
            clock.lap("dedup")
            account = _account(
                tallies,
                {r["route"]: int(r["count"]) for r in routes},
                query_id=query[0],
                batch_id=batch_id,
                load_id=load_id,
            )
            silver = silver_events(classified, duplicates)
            _write_batch(
                writers,
                {spec.name: app_id(spec) for spec in _WRITES},
                quarantine=quarantined_events(classified),
                silver=silver,
                account=account,
            )
            clock.lap("delta_writes")
            stats.batches_written += 1
            stats.accounts.append(account)
            if validator is not None and account.written_rows and validate(batch_id):
                validator(silver, batch_id, load_id)
                clock.lap("great_expectations")
            stats.timings.append(clock.laps)
        finally:
            classified.unpersist()
            if duplicates is not None:
                duplicates.unpersist()

    return handle


def _write_batch(
    writers: dict[str, DeltaWriter],
    app_ids: dict[str, str],
    *,
    quarantine: DataFrame,
    silver: DataFrame,
    account: BatchAccount,
) -> None:
    """Quarantine, silver, then the accounting row, each one idempotent commit; an empty output
    makes no commit, and the accounting row is last, so once it landed every write did."""
    batch_id = account.batch_id
    metadata = {"lakehouse.load_id": account.load_id}
    if account.quarantined_rows:
        writers[SILVER_QUARANTINE.name].append_frame(
            quarantine, app_ids[SILVER_QUARANTINE.name], batch_id, metadata
        )
    if account.written_rows:
        written = writers[SILVER_EVENTS.name].append_frame(
            silver, app_ids[SILVER_EVENTS.name], batch_id, metadata
        )
        _check_written(written, account)
    writers[QUALITY_BATCH_RESULTS.name].append(
        pa.Table.from_pylist([account.to_row()], schema=QUALITY_BATCH_RESULTS.arrow_schema),
        app_ids[QUALITY_BATCH_RESULTS.name],
        batch_id,
        metadata,
        spark=silver.sparkSession,
    )


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
    monitor: QueryMonitor | None = None,
) -> tuple[StreamingQuery, SilverStats]:
    """Start the silver query and return it without waiting (see ``run_silver``)."""
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
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
        monitor=monitor,
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
    monitor: QueryMonitor | None = None,
) -> SilverRun:
    """Run the silver query: drain bronze and return (available-now) or run until stopped.

    Raises:
        StreamingJobError: the query failed (including a ``fail`` rule, named in the message).
        QualityConfigError: the rule file is wrong.
    """
    query, stats = start_silver(
        spark, settings, trigger=trigger, validator=validator, rule_set=rule_set, monitor=monitor
    )
    await_query(
        query,
        on_progress=(lambda q: on_progress(q, stats)) if on_progress else None,
        timeout_s=timeout_s,
        monitor=monitor,
    )
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
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

        self.recorder = SuiteRecorder(settings, catalog)
        self.event_types = ContractRegistry().event_types

    def __call__(self, written: DataFrame, batch_id: int, load_id: str) -> None:

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


@dataclass(frozen=True)
class _Tallies:
    """The collected ``batch_tallies`` of a batch: ``(tally, name) -> rows`` and bronze versions."""

    rows_by_name: dict[tuple[str, str], int]
    first_version: int | None
    last_version: int | None

    @classmethod
    def of(cls, tallies: DataFrame) -> _Tallies:
        collected = tallies.collect()
        versions = [r for r in collected if r["tally"] == "disposition"]
        return cls(
            rows_by_name={(r["tally"], r["name"]): int(r["rows"]) for r in collected if r["name"]},
            first_version=min((r["first_version"] for r in versions), default=None),
            last_version=max((r["last_version"] for r in versions), default=None),
        )

    def rows(self, tally: str, name: str) -> int:
        return self.rows_by_name.get((tally, name), 0)

    def names(self, tally: str) -> list[str]:
        return sorted(k for t, k in self.rows_by_name if t == tally)

    def counts(self, tally: str) -> Counter[str]:
        return Counter({k: n for (t, k), n in self.rows_by_name.items() if t == tally})


def _stop_on_fail_rules(
    classified: DataFrame, tallies: _Tallies, rule_set: RuleSet, batch_id: int
) -> None:
    """Raise ``QualityRuleFailedError`` naming the broken ``fail`` rules and one sample row."""
    row = failing_events(classified).first()
    if row is None:  # the tallies counted one: only a changed input could lose it
        raise QualityRuleFailedError(f"a fail rule broke in silver batch {batch_id}")
    business = {r.name: r.action for r in rule_set.rules}
    broken = [r for r in row["failed_rules"] if business.get(r, rule_set.contract_action) == "fail"]
    raise QualityRuleFailedError(
        f"rule {', '.join(broken)} (action fail) broke on {tallies.rows('disposition', 'fail')} "
        f"row(s) of silver batch {batch_id}; nothing of the batch was written. Sample: "
        f"{row['source_topic']}[{row['source_partition']}] offset {row['source_offset']}: "
        f"{row['first_error']}; value={str(row['raw_value'])[:300]!r}. Fix the data or change "
        f"the rule's action in {rule_set.source}, then restart the query."
    )


def _account(
    tallies: _Tallies, duplicates: dict[str, int], *, query_id: str, batch_id: int, load_id: str
) -> BatchAccount:
    in_batch = duplicates.get(DUPLICATE_IN_BATCH, 0)
    existing = duplicates.get(DUPLICATE_EXISTING, 0)
    return BatchAccount(
        table=SILVER_EVENTS.name,
        load_id=load_id,
        query_id=query_id,
        batch_id=batch_id,
        source_table=BRONZE_EVENTS_RAW.name,
        source_start_version=tallies.first_version,
        source_end_version=tallies.last_version,
        input_rows=sum(tallies.counts("disposition").values()),
        written_rows=tallies.rows("disposition", "ok") - in_batch - existing,
        quarantined_rows=tallies.rows("disposition", "quarantine"),
        dropped_rows=tallies.rows("disposition", "drop"),
        duplicates_in_batch=in_batch,
        duplicates_existing=existing,
        quarantined_by_rule=tallies.counts("quarantined_by_rule"),
        dropped_by_rule=tallies.counts("dropped_by_rule"),
        warnings_by_rule=tallies.counts("warnings_by_rule"),
    )


def _check_written(written: AppendResult, account: BatchAccount) -> None:
    """The silver commit holds exactly the rows the accounting counts, or the batch stops before
    its accounting row: nothing is lost silently."""
    if not written.skipped and written.rows != account.written_rows:
        raise RuntimeError(
            f"silver batch {account.batch_id} wrote {written.rows} rows to {SILVER_EVENTS.name} "
            f"(version {written.version}) but counted {account.written_rows}: two rows of the "
            f"batch share a bronze position (version, topic, partition, offset), which the "
            "dedup assumes unique. Check bronze.events_raw for repeated Kafka coordinates."
        )
