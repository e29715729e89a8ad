"""``lakehouse drift check``: gold.user_features now vs. the snapshot the champion was trained on.

The reference is ``gold.user_features`` at the version pinned by the champion's snapshot (from
its MLflow run's ``snapshot`` param, or ``--snapshot``); the current side is the table's latest
version. Every configured numeric feature gets a PSI and a status, written to
``quality.drift_results``. With ``retrain_on_drift`` a feature at ``drift`` status triggers a fresh
snapshot and a training run (promoted only if it beats the champion).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from mlflow.exceptions import MlflowException
from pyspark.sql import SparkSession

from pipelines.config import Settings
from pipelines.gold.job import gold_snapshot_validator
from pipelines.gold.tables import GOLD_USER_FEATURES
from pipelines.lake.catalog import Catalog
from pipelines.lake.snapshots import Snapshots, read_pandas
from pipelines.monitoring.drift import DriftThresholds, FeatureDrift, feature_drift
from pipelines.monitoring.tables import QUALITY_DRIFT_RESULTS
from pipelines.streaming.sinks import table_writer
from pipelines.tables import LAKE_TABLES
from pipelines.training.sets import DEFAULT_SNAPSHOT_TABLES
from pipelines.training.train import CHAMPION, configure_mlflow, train


@dataclass
class DriftReport:
    checked_at: datetime
    reference_snapshot: str
    reference_version: int
    current_version: int
    features: list[FeatureDrift]
    retrained: dict[str, Any] | None = None

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.status == "drift"]


def check_drift(
    spark: SparkSession,
    settings: Settings,
    *,
    snapshot: str | None = None,
    retrain_on_drift: bool = False,
) -> DriftReport:
    """Compare, record, and optionally retrain (see the module docstring)."""
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    reference_snapshot = snapshot or _champion_snapshot(settings)
    pinned = Snapshots(catalog).get(reference_snapshot)
    table = GOLD_USER_FEATURES.name
    if table not in pinned.versions:
        raise LookupError(f"snapshot {reference_snapshot!r} does not pin {table}")
    columns = list(settings.drift.features)
    reference = read_pandas(catalog, table, snapshot=reference_snapshot, columns=columns)
    current_version = catalog.info(table).version or 0
    current = read_pandas(catalog, table, version=current_version, columns=columns)
    thresholds = DriftThresholds(warn=settings.drift.warn, alert=settings.drift.alert)
    results = feature_drift(reference, current, columns, thresholds, bins=settings.drift.bins)
    report = DriftReport(
        checked_at=datetime.now(tz=UTC),
        reference_snapshot=reference_snapshot,
        reference_version=pinned.versions[table],
        current_version=current_version,
        features=results,
    )
    _record(spark, catalog, report)
    if retrain_on_drift and report.drifted:
        name = f"drift-{report.checked_at:%Y%m%dT%H%M%S}"
        Snapshots(catalog).create(
            name,
            DEFAULT_SNAPSHOT_TABLES,
            f"drift in {', '.join(report.drifted)}",
            gold_snapshot_validator(spark, settings, catalog, name),
            spark=spark,
        )
        run = train(spark, settings, snapshot=name)
        report.retrained = {
            "snapshot": name,
            "run_id": run.run_id,
            "model_version": run.model_version,
            "alias": run.alias,
            "promoted": run.promoted,
        }
    return report


def _champion_snapshot(settings: Settings) -> str:

    client = configure_mlflow(settings)
    try:
        champion = client.get_model_version_by_alias(settings.mlflow.registered_model, CHAMPION)
    except MlflowException:
        raise LookupError(
            "no champion model to compare with; pass --snapshot or train one first"
        ) from None
    if not champion.run_id:
        raise LookupError("the champion model version has no MLflow run; pass --snapshot")
    snapshot = client.get_run(champion.run_id).data.params.get("snapshot")
    if not snapshot:
        raise LookupError(f"champion run {champion.run_id} has no snapshot param; pass --snapshot")
    return str(snapshot)


def _record(spark: SparkSession, catalog: Catalog, report: DriftReport) -> None:

    rows = [
        {
            "checked_at": report.checked_at,
            "feature": f.feature,
            "psi": float(f.psi),
            "status": f.status,
            "reference_snapshot": report.reference_snapshot,
            "reference_version": report.reference_version,
            "current_version": report.current_version,
            "reference_rows": f.reference_rows,
            "current_rows": f.current_rows,
            "reference_mean": f.reference_mean,
            "current_mean": f.current_mean,
            "note": f.note,
        }
        for f in report.features
    ]
    # One commit per check, keyed by its time: a retried write of the same report adds nothing.
    table_writer(catalog, QUALITY_DRIFT_RESULTS).append(
        pa.Table.from_pylist(rows, schema=QUALITY_DRIFT_RESULTS.arrow_schema),
        f"{QUALITY_DRIFT_RESULTS.name}:{report.checked_at.isoformat()}",
        0,
        spark=spark,
    )
