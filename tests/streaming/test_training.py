"""Retraining from snapshots with MLflow, promotion, recommendations, drift — on one real lake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from typer.testing import CliRunner

from pipelines.cli.main import app
from pipelines.config import Settings, TriggerSettings
from pipelines.gold.job import run_gold
from pipelines.gold.tables import GOLD_USER_FEATURES
from pipelines.lake.catalog import Catalog
from pipelines.lake.snapshots import SnapshotError, Snapshots
from pipelines.monitoring.drift_job import check_drift
from pipelines.monitoring.tables import QUALITY_DRIFT_RESULTS
from pipelines.silver.job import run_silver
from pipelines.silver.sessions_job import run_sessions
from pipelines.streaming.sinks import table_writer
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.tables import LAKE_TABLES
from pipelines.training.recommendations import write_recommendations
from pipelines.training.tables import GOLD_RECOMMENDATIONS
from pipelines.training.train import TrainingRun, champion_model, configure_mlflow, train
from tests.conftest import make_settings
from tests.streaming.test_silver_job import land_in_bronze

pytestmark = [pytest.mark.streaming, pytest.mark.slow]

AVAILABLE_NOW = TriggerSettings(mode="available-now")
TABLES = [
    "silver.events",
    "silver.sessions",
    "gold.user_features",
    "gold.user_features_history",
    "gold.item_features",
    "gold.item_features_history",
]


@pytest.fixture(scope="module")
def lake(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, TrainingRun, TrainingRun]]:
    settings = make_settings(tmp_path_factory.mktemp("training") / "lake")
    catalog = Catalog(settings.storage, LAKE_TABLES)
    # The generator's daily traffic cycle depends on the time of day of `end`: pin it (noon UTC
    # yesterday, within the allowed lateness) so the metrics do not change with the clock.
    end = datetime.combine(datetime.now(tz=UTC).date() - timedelta(days=1), time(12), tzinfo=UTC)
    generator = ClickstreamGenerator(users=400, items=150, seed=5, end=end, days=5)
    land_in_bronze(catalog, [e.value.decode() for e in generator.events(20_000)])
    run_silver(spark, settings, trigger=AVAILABLE_NOW)
    run_sessions(spark, settings, trigger=AVAILABLE_NOW)
    run_gold(spark, settings, trigger=AVAILABLE_NOW)
    Snapshots(catalog).create("s1", TABLES, spark=spark)
    first = train(spark, settings, snapshot="s1", seed=3)
    second = train(spark, settings, snapshot="s1", seed=3)
    yield settings, first, second


def test_same_snapshot_and_seed_give_the_same_training_set_and_metrics(
    lake: tuple[Settings, TrainingRun, TrainingRun],
) -> None:
    _, first, second = lake
    assert second.training_set_digest == first.training_set_digest
    assert second.metrics == first.metrics
    assert second.baseline == first.baseline


def test_the_collaborative_model_beats_popularity_by_the_observed_margin(
    lake: tuple[Settings, TrainingRun, TrainingRun],
) -> None:
    _, first, _ = lake
    model, baseline = first.metrics["ndcg@10"], first.baseline["ndcg@10"]
    # Observed on this (pinned) data: NDCG@10 0.333 for item-item vs 0.107 for popularity
    # (3.12x); asserted with a little slack below the observed ratio.
    assert model >= 2.9 * baseline, (model, baseline)
    assert first.metrics["recall@10"] > first.baseline["recall@10"]
    assert first.metrics["coverage"] > first.baseline["coverage"]


def test_mlflow_run_lists_every_input_table_with_its_snapshot_version(
    lake: tuple[Settings, TrainingRun, TrainingRun],
) -> None:
    settings, first, _ = lake
    client: MlflowClient = configure_mlflow(settings)
    run = client.get_run(first.run_id)
    inputs: dict[str, dict[str, Any]] = {}
    for item in run.inputs.dataset_inputs:
        source = json.loads(item.dataset.source)
        inputs[item.dataset.name] = {
            "version": source["delta_table_version"],
            "path": source["path"],
        }
    pinned = Snapshots(Catalog(settings.storage, LAKE_TABLES)).get("s1").versions
    assert {t: inputs[t]["version"] for t in TABLES} == pinned
    assert inputs[first.training_set]["path"].endswith("gold/training_sets")
    assert run.data.params["snapshot"] == "s1"
    assert run.data.params["training_set_digest"] == first.training_set_digest
    assert float(run.data.metrics["ndcg_at_10"]) == pytest.approx(first.metrics["ndcg@10"])
    assert "baseline_ndcg_at_10" in run.data.metrics


def test_a_challenger_that_does_not_beat_the_champion_is_not_promoted(
    lake: tuple[Settings, TrainingRun, TrainingRun],
) -> None:
    settings, first, second = lake
    assert (first.alias, first.promoted) == ("champion", True)
    assert (second.alias, second.promoted) == ("challenger", False)
    client = configure_mlflow(settings)
    name = settings.mlflow.registered_model
    assert str(client.get_model_version_by_alias(name, "champion").version) == first.model_version
    assert (
        str(client.get_model_version_by_alias(name, "challenger").version) == second.model_version
    )


def test_recommendations_for_known_and_unknown_users(
    spark: SparkSession, lake: tuple[Settings, TrainingRun, TrainingRun]
) -> None:
    settings, first, _ = lake
    model, version = champion_model(settings)
    assert version == first.model_version
    picks = model.predict(pd.DataFrame({"user_id": ["user-00001", "somebody-new"], "k": [7, 7]}))
    unknown = picks[picks["user_id"] == "somebody-new"]
    assert len(unknown) == 7 and unknown["cold_start"].all()
    assert unknown["item_id"].is_unique and unknown["score"].isna().all()
    written = write_recommendations(spark, settings, k=5)
    table = Catalog(settings.storage, LAKE_TABLES).read(spark, GOLD_RECOMMENDATIONS.name)
    assert table.count() == written["rows"] == 5 * written["users"] > 0
    assert {r.model_version for r in table.select("model_version").distinct().collect()} == {
        version
    }


def test_drift_flags_only_the_shifted_feature(
    spark: SparkSession, lake: tuple[Settings, TrainingRun, TrainingRun]
) -> None:
    settings, _, _ = lake
    calm = check_drift(spark, settings)
    assert calm.reference_snapshot == "s1"
    assert calm.drifted == []
    assert all(f.psi == 0.0 for f in calm.features if f.status != "skipped")

    catalog = Catalog(settings.storage, LAKE_TABLES)
    current = catalog.read(spark, GOLD_USER_FEATURES.name)
    shifted = current.withColumn("page_view_count_7d", F.col("page_view_count_7d") * 4)
    table_writer(catalog, GOLD_USER_FEATURES).append_frame(
        shifted.localCheckpoint(), "test-shift", 0, replace_where="true"
    )

    drift = check_drift(spark, settings)
    assert drift.drifted == ["page_view_count_7d"]
    assert drift.current_version > drift.reference_version
    recorded = catalog.read(spark, QUALITY_DRIFT_RESULTS.name).where("status = 'drift'").collect()
    assert [r.feature for r in recorded] == ["page_view_count_7d"]


def test_train_refuses_an_unknown_snapshot(
    lake: tuple[Settings, TrainingRun, TrainingRun], spark: SparkSession, tmp_path: Path
) -> None:
    settings, _, _ = lake

    with pytest.raises(SnapshotError, match="no snapshot 'nope'"):
        train(spark, settings, snapshot="nope")


def test_recommend_cli_flags_an_unknown_user_as_cold_start(
    lake: tuple[Settings, TrainingRun, TrainingRun], monkeypatch: pytest.MonkeyPatch
) -> None:

    settings, first, _ = lake
    monkeypatch.setenv("LAKEHOUSE_DATA", settings.storage.root)
    result = CliRunner().invoke(
        app, ["recommend", "--user", "brand-new", "-k", "4", "--env", "test", "--json"]
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output.strip().splitlines()[-1])
    assert answer["cold_start"] is True
    assert answer["model_version"] == first.model_version
    assert len(answer["items"]) == len(set(answer["items"])) == 4
    both = CliRunner().invoke(app, ["recommend", "--env", "test"])
    assert both.exit_code == 2
    assert "pass --user USER, or --batch" in both.output
