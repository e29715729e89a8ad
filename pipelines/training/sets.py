"""Building a point-in-time training set from a named snapshot (the job that joins the pure
transforms of ``point_in_time.py`` to the lake).

Everything is read at the snapshot's pinned versions, so the same snapshot, labels, horizon,
negatives and seed always give the same rows and the same digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.config import Settings, parse_duration
from pipelines.gold.tables import (
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_FEATURES_HISTORY,
    GOLD_USER_FEATURES,
    GOLD_USER_FEATURES_HISTORY,
)
from pipelines.lake.catalog import Catalog
from pipelines.lake.snapshots import SnapshotError, Snapshots
from pipelines.silver.tables import SILVER_EVENTS, SILVER_SESSIONS
from pipelines.streaming.sinks import table_writer
from pipelines.tables import LAKE_TABLES
from pipelines.training.point_in_time import (
    check_no_leakage,
    labels,
    point_in_time_join,
    sampled_negatives,
    training_set_digest,
)
from pipelines.training.tables import GOLD_TRAINING_SETS, LAKE_TRAINING_SETS

REQUIRED_TABLES = (
    SILVER_EVENTS.name,
    GOLD_USER_FEATURES_HISTORY.name,
    GOLD_ITEM_FEATURES_HISTORY.name,
)
# What a snapshot pins unless told otherwise: everything a training set or drift check reads.
DEFAULT_SNAPSHOT_TABLES = (
    SILVER_EVENTS.name,
    SILVER_SESSIONS.name,
    GOLD_USER_FEATURES.name,
    GOLD_USER_FEATURES_HISTORY.name,
    GOLD_ITEM_FEATURES.name,
    GOLD_ITEM_FEATURES_HISTORY.name,
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class TrainingSet:
    name: str
    snapshot: str
    label_event: str
    horizon: str
    seed: int
    negatives_per_positive: int
    rows: int
    positives: int
    digest: str
    versions: dict[str, int]
    table_version: int


def build_training_set(
    spark: SparkSession,
    settings: Settings,
    *,
    snapshot: str,
    label_event: str,
    horizon: str,
    seed: int = 42,
    negatives_per_positive: int = 4,
    name: str | None = None,
) -> TrainingSet:
    """Labels from silver, negatives sampled with ``seed``, features joined as of each label,
    all at the snapshot's versions; checked for leakage, written to ``gold.training_sets``
    (partition ``name``, replaced if it exists) and recorded in ``lake.training_sets``.

    Raises:
        SnapshotError: unknown snapshot, or one that does not pin the tables a training set needs.
        LeakageError: a feature timestamp is not strictly before its label's.
    """
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    pinned = Snapshots(catalog).get(snapshot)
    missing = [t for t in REQUIRED_TABLES if t not in pinned.versions]
    if missing:
        raise SnapshotError(
            f"snapshot {snapshot!r} does not pin {', '.join(missing)}; create one that does, e.g. "
            f"`lakehouse snapshot create NAME` (default tables include them)"
        )
    name = name or f"{snapshot}-{label_event}-{horizon.replace(' ', '')}-s{seed}"
    if not _NAME.match(name):
        raise ValueError(f"training set name {name!r} must match {_NAME.pattern}")
    versions = {t: pinned.versions[t] for t in REQUIRED_TABLES}
    events = catalog.read(spark, SILVER_EVENTS.name, version=versions[SILVER_EVENTS.name])
    drop = ("published_at", "load_id")
    users = catalog.read(
        spark, GOLD_USER_FEATURES_HISTORY.name, version=versions[GOLD_USER_FEATURES_HISTORY.name]
    ).drop(*drop)
    items = catalog.read(
        spark, GOLD_ITEM_FEATURES_HISTORY.name, version=versions[GOLD_ITEM_FEATURES_HISTORY.name]
    ).drop(*drop)

    exposures = labels(events, label_event=label_event, horizon=parse_duration(horizon)).cache()
    joined = None
    try:
        negatives = sampled_negatives(
            exposures, events, per_positive=negatives_per_positive, seed=seed
        )
        joined = point_in_time_join(exposures.unionByName(negatives), users, items).cache()
        check_no_leakage(joined)
        digest = training_set_digest(joined)
        rows = int(joined.count())
        positives = int(joined.filter(F.col("label") == 1).count())
        # Replaces the set's partition in one commit; a rebuild with the same digest is a no-op.
        quoted = name.replace("'", "''")
        written = table_writer(catalog, GOLD_TRAINING_SETS).append_frame(
            joined.withColumn("training_set", F.lit(name)),
            f"{GOLD_TRAINING_SETS.name}:{name}:{digest}",
            0,
            replace_where=f"training_set = '{quoted}'",
        )
    finally:
        exposures.unpersist()
        if joined is not None:
            joined.unpersist()
    table_version = written.version
    result = TrainingSet(
        name=name,
        snapshot=snapshot,
        label_event=label_event,
        horizon=horizon,
        seed=seed,
        negatives_per_positive=negatives_per_positive,
        rows=rows,
        positives=positives,
        digest=digest,
        versions=versions,
        table_version=table_version,
    )
    _record(spark, catalog, result)
    return result


def _record(spark: SparkSession, catalog: Catalog, result: TrainingSet) -> None:
    row = {
        **result.__dict__,
        "versions": list(result.versions.items()),
        "created_at": datetime.now(UTC),
    }
    table_writer(catalog, LAKE_TRAINING_SETS).append(
        pa.Table.from_pylist([row], schema=LAKE_TRAINING_SETS.arrow_schema),
        f"{LAKE_TRAINING_SETS.name}:{result.name}:{result.digest}",
        0,
        spark=spark,
    )


def training_sets(catalog: Catalog) -> list[dict[str, object]]:
    """Every recorded training set build, newest first."""
    if not catalog.exists(LAKE_TRAINING_SETS.name):
        return []
    rows = catalog.read_arrow(LAKE_TRAINING_SETS.name).to_pylist()
    return sorted(rows, key=lambda r: r["created_at"], reverse=True)
