"""Silver transforms: bronze rows -> parsed events -> silver.events / silver.quarantine rows.

Pure functions of DataFrames; the job (``pipelines/silver/job.py``) joins them to IO.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.contracts import ContractRegistry, unified_event_schema
from pipelines.contracts.registry import MAX_EVENT_TIME_MS, RFC3339_DATE_TIME
from pipelines.lake.tables import SILVER_EVENTS, SILVER_QUARANTINE

# Parses every event type and version; derived from the contract files, never retyped.
EVENT_SCHEMA = unified_event_schema(ContractRegistry())


def event_time(raw: Column) -> Column:
    """The contract's ``timestamp`` (its JSON text) as a Spark timestamp, NULL when it is not an
    event time: the definition of ``contracts.event_time_ms`` (integer epoch ms in
    ``0..MAX_EVENT_TIME_MS`` or an RFC 3339 date-time) in Spark SQL."""
    millis = raw.try_cast("bigint")
    return (
        F.when(
            raw.rlike(r"^[0-9]{1,15}$") & (millis <= F.lit(MAX_EVENT_TIME_MS)),
            F.timestamp_millis(millis),
        )
        .when(raw.rlike(f"^{RFC3339_DATE_TIME}$"), F.try_to_timestamp(F.upper(raw)))
        .otherwise(F.lit(None).cast("timestamp"))
    )


def parsed_events(bronze: DataFrame) -> DataFrame:
    """Bronze rows plus the event's typed fields (NULL where absent, unparseable or mistyped)."""
    parsed = bronze.select("*", F.from_json("value", EVENT_SCHEMA).alias("_event"))
    return (
        parsed.select("*", "_event.*")
        .drop("_event")
        .withColumns(
            {
                "event_ts": event_time(F.col("timestamp")),
                "received_at": F.try_to_timestamp(F.col("received_at")),
            }
        )
    )


def classified_events(evaluated: DataFrame, load_id: str) -> DataFrame:
    """Gate-evaluated rows with every column silver *and* quarantine need, plus the verdict.

    One projection, collected once per micro-batch; ``split_batch`` then routes each row.
    """
    columns = {
        "quality_warnings": F.col("warnings"),
        "source_topic": F.col("topic"),
        "source_partition": F.col("partition"),
        "source_offset": F.col("offset"),
        "bronze_version": F.col("_commit_version"),
        "load_id": F.lit(load_id),
        "processed_at": F.current_timestamp(),
        "quarantined_at": F.current_timestamp(),
        "event_date": F.to_date("event_ts"),
        # The raw message is only kept for rows that go to quarantine.
        "raw_key": F.when(F.col("disposition") != "ok", F.col("key")),
        "raw_value": F.when(F.col("disposition") != "ok", F.col("value")),
    }
    wanted = dict.fromkeys(
        [*SILVER_EVENTS.schema.fieldNames(), *SILVER_QUARANTINE.schema.fieldNames(), *_VERDICT]
    )
    return evaluated.withColumns(columns).select(*wanted)


_VERDICT = ("disposition", "failed_rules", "warnings")
_BRONZE_ORDER = ["bronze_version", "source_topic", "source_partition", "source_offset"]


@dataclass
class BatchSplit:
    """Where every row of one classified micro-batch goes, and the counts for the accounting."""

    silver: pa.Table
    quarantine: pa.Table
    input_rows: int
    dropped_rows: int
    failing: pa.Table  # rows a `fail` rule stopped (the batch must not be written)
    duplicates_in_batch: int
    duplicates_existing: int
    quarantined_by_rule: Counter[str] = field(default_factory=Counter)
    dropped_by_rule: Counter[str] = field(default_factory=Counter)
    warnings_by_rule: Counter[str] = field(default_factory=Counter)


def split_batch(classified: pa.Table, existing_ids: pa.Array) -> BatchSplit:
    """Route classified rows: quarantine, dropped, silver (deduplicated), duplicates.

    Deduplication by ``event_id``: within the batch the earliest copy in bronze order
    (version, topic, partition, offset) wins; a row whose id is in ``existing_ids`` (already in
    silver) is a duplicate. Pure and deterministic, so a replayed batch splits identically.
    """
    disposition = classified.column("disposition")
    quarantine = classified.filter(pc.equal(disposition, "quarantine"))
    dropped = classified.filter(pc.equal(disposition, "drop"))
    # Deduplicate on the narrow key columns, then take the wide rows once.
    keys = classified.select(["event_id", *_BRONZE_ORDER]).append_column(
        "_row", pa.array(range(classified.num_rows), pa.int64())
    )
    valid_keys = keys.filter(pc.equal(disposition, "ok"))
    ordered = valid_keys.sort_by(
        [("event_id", "ascending")] + [(c, "ascending") for c in _BRONZE_ORDER]
    )
    first = ordered.filter(_first_of_runs(ordered.column("event_id").combine_chunks()))
    fresh = first.filter(pc.invert(pc.is_in(first.column("event_id"), value_set=existing_ids)))
    rows = pc.sort_indices(fresh.column("_row"))  # keep the batch's row order
    silver = classified.select(SILVER_EVENTS.schema.fieldNames()).take(
        pc.take(fresh.column("_row"), rows)
    )
    return BatchSplit(
        silver=silver,
        quarantine=quarantine.select(SILVER_QUARANTINE.schema.fieldNames()),
        input_rows=classified.num_rows,
        dropped_rows=dropped.num_rows,
        failing=classified.filter(pc.equal(disposition, "fail")),
        duplicates_in_batch=valid_keys.num_rows - first.num_rows,
        duplicates_existing=first.num_rows - fresh.num_rows,
        quarantined_by_rule=_count_rules(quarantine, "failed_rules"),
        dropped_by_rule=_count_rules(dropped, "failed_rules"),
        warnings_by_rule=_count_rules(classified, "warnings"),
    )


def event_dates(classified: pa.Table) -> list[str]:
    """The event dates (ISO) of the batch's valid rows: where earlier copies could be in silver."""
    valid = classified.filter(pc.equal(classified.column("disposition"), "ok"))
    dates = pc.unique(valid.column("event_date").combine_chunks()).drop_null()
    return sorted(d.isoformat() for d in dates.to_pylist())


def _first_of_runs(ids: pa.Array) -> pa.Array:
    """True where a sorted id differs from the previous one (the first row of each id)."""
    if len(ids) == 0:
        return pa.array([], pa.bool_())
    previous = pa.concat_arrays([pa.array([None], ids.type), ids.slice(0, len(ids) - 1)])
    return pc.fill_null(pc.not_equal(ids, previous), True)


def _count_rules(table: pa.Table, column: str) -> Counter[str]:
    flat = pc.list_flatten(table.column(column))
    if len(flat) == 0:
        return Counter()
    counts = pc.value_counts(flat)
    return Counter(
        {v["values"]: v["counts"] for v in counts.to_pylist() if v["values"] is not None}
    )
