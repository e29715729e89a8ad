"""``lakehouse train``: retrain the recommender from a named snapshot, track it in MLflow, and
promote it only if it beats the champion.

Per run:

1. the point-in-time training set of the snapshot is built (same snapshot + seed = same digest);
2. the snapshot's silver interactions are split in event time (train before T, test after);
   the item-item model and the popularity baseline are fitted on the train part and evaluated
   side by side on the test part (precision/recall/NDCG/MAP@k, catalog coverage);
3. the model served is refitted on all of the snapshot's interactions;
4. MLflow records params, both models' metrics, the pyfunc model (top-k for a user, with the
   cold-start path) and its inputs: every pinned table as a Delta dataset source *with its
   version*, and the training set with its digest;
5. the new version is registered; it becomes ``champion`` if there is none or if its NDCG@k beats
   the champion's by ``mlflow.promotion_margin``, otherwise ``challenger``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.pandas_dataset import from_pandas
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.config import Settings
from pipelines.lake.catalog import Catalog
from pipelines.lake.snapshots import Snapshots
from pipelines.silver.tables import SILVER_EVENTS
from pipelines.tables import LAKE_TABLES
from pipelines.training.metrics import evaluate
from pipelines.training.recommenders import (
    ItemItemModel,
    PopularityModel,
    relevant_items,
    time_split,
)
from pipelines.training.sets import build_training_set
from pipelines.training.tables import GOLD_TRAINING_SETS

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class TrainingRun:
    run_id: str
    model_name: str
    model_version: str
    alias: str  # champion | challenger
    promoted: bool
    champion_ndcg: float | None
    metrics: dict[str, float]
    baseline: dict[str, float]
    snapshot: str
    versions: dict[str, int]
    training_set: str
    training_set_rows: int
    training_set_positives: int
    training_set_digest: str
    split_ts: str


def configure_mlflow(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured tracking store (a local SQLite file by default)."""
    uri = settings.mlflow.resolved_tracking_uri(settings.storage)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if settings.storage.root.startswith("s3://"):
        # MLflow's S3 artifact repository is boto3 configured through the environment.
        s3 = settings.storage.s3
        for name, value in (
            ("MLFLOW_S3_ENDPOINT_URL", s3.endpoint_url),
            ("AWS_DEFAULT_REGION", s3.region),
            ("AWS_ACCESS_KEY_ID", s3.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key),
            ("AWS_SESSION_TOKEN", s3.session_token),
        ):
            if value is not None:
                os.environ[name] = value if isinstance(value, str) else value.get_secret_value()
    if mlflow.get_experiment_by_name(settings.mlflow.experiment) is None:
        mlflow.create_experiment(
            settings.mlflow.experiment,
            artifact_location=settings.mlflow.artifact_root(settings.storage),
        )
    mlflow.set_experiment(settings.mlflow.experiment)
    return MlflowClient(uri, uri)


def interactions(
    spark: SparkSession, catalog: Catalog, version: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Silver interactions at ``version`` and each item's latest category, as pandas."""
    events = catalog.read(spark, SILVER_EVENTS.name, version=version).where(
        F.col("item_id").isNotNull() & (F.col("event_type") != "search")
    )
    selected = events.select(
        "user_id",
        "item_id",
        "event_type",
        "event_ts",
        F.col("properties.category").alias("category"),
    )
    frame = pd.DataFrame(selected.toPandas())
    frame["event_ts"] = pd.to_datetime(frame["event_ts"])
    items = (
        frame.dropna(subset=["category"])
        .sort_values(["item_id", "event_ts"])
        .groupby("item_id", as_index=False)
        .last()[["item_id", "category"]]
    )
    return frame.drop(columns=["category"]), items


def train(spark: SparkSession, settings: Settings, *, snapshot: str, seed: int = 42) -> TrainingRun:
    """Train, evaluate, log and (maybe) promote; see the module docstring."""
    conf = settings.mlflow
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    pinned = Snapshots(catalog).get(snapshot)
    training_set = build_training_set(
        spark, settings, snapshot=snapshot, label_event="purchase", horizon="24h", seed=seed
    )
    events, items = interactions(spark, catalog, pinned.versions[SILVER_EVENTS.name])
    train_part, test_part, split_ts = time_split(events, conf.test_fraction)
    relevant = relevant_items(train_part, test_part)
    model = ItemItemModel.fit(
        train_part, items, as_of=split_ts, neighbours=conf.neighbours, min_history=conf.min_history
    )
    baseline = PopularityModel.fit(train_part, items, as_of=split_ts)
    users = sorted(relevant)
    k, catalog_size = conf.k, int(items["item_id"].nunique())
    model_metrics = evaluate(
        {u: model.recommend(u, k)[0] for u in users}, relevant, k, catalog_size
    )
    seen = train_part.groupby("user_id")["item_id"].agg(set).to_dict()
    baseline_metrics = evaluate(
        {u: baseline.recommend(k, exclude=seen.get(u, set())) for u in users},
        relevant,
        k,
        catalog_size,
    )
    served = ItemItemModel.fit(
        events,
        items,
        as_of=events["event_ts"].max(),
        neighbours=conf.neighbours,
        min_history=conf.min_history,
    )

    client = configure_mlflow(settings)
    with mlflow.start_run(run_name=f"train-{snapshot}-s{seed}") as run:
        mlflow.log_params(
            {
                "snapshot": snapshot,
                "seed": seed,
                "k": k,
                "model": "item-item cosine co-occurrence",
                "neighbours": conf.neighbours,
                "min_history": conf.min_history,
                "test_fraction": conf.test_fraction,
                "split_ts": split_ts.isoformat(),
                "training_set": training_set.name,
                "training_set_digest": training_set.digest,
            }
        )
        mlflow.log_metrics({_metric(name): value for name, value in model_metrics.items()})
        mlflow.log_metrics({f"baseline_{_metric(n)}": v for n, v in baseline_metrics.items()})
        _log_inputs(
            catalog,
            pinned.versions,
            training_set.name,
            training_set.digest,
            training_set.table_version,
        )
        version = _log_model(served, conf.registered_model, run.info.run_id)
    ndcg = model_metrics[f"ndcg@{k}"]
    alias, promoted, champion_ndcg = _promote(
        client, conf.registered_model, version, ndcg=ndcg, k=k, margin=conf.promotion_margin
    )
    return TrainingRun(
        run_id=run.info.run_id,
        model_name=conf.registered_model,
        model_version=version,
        alias=alias,
        promoted=promoted,
        champion_ndcg=champion_ndcg,
        metrics=model_metrics,
        baseline=baseline_metrics,
        snapshot=snapshot,
        versions=dict(pinned.versions),
        training_set=training_set.name,
        training_set_rows=training_set.rows,
        training_set_positives=training_set.positives,
        training_set_digest=training_set.digest,
        split_ts=split_ts.isoformat(),
    )


class RecommenderPyfunc(PythonModel):
    """Top-k items for ``user_id`` rows (``k`` column optional); unknown or thin-history users
    get the popularity fallback and ``cold_start = True``."""

    def load_context(self, context: Any) -> None:
        self.model = ItemItemModel.from_dict(
            json.loads(Path(context.artifacts["model"]).read_text())
        )

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        rows = []
        for record in model_input.to_dict("records"):
            k = int(record.get("k") or (params or {}).get("k", 10))
            items, cold = self.model.recommend_scored(str(record["user_id"]), k)
            rows += [
                {
                    "user_id": record["user_id"],
                    "rank": rank,
                    "item_id": item,
                    "score": score,
                    "cold_start": cold,
                }
                for rank, (item, score) in enumerate(items, start=1)
            ]
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "cold_start"])


def champion_model(settings: Settings) -> tuple[Any, str]:
    """The loaded champion pyfunc and its version."""
    client = configure_mlflow(settings)
    name = settings.mlflow.registered_model
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        raise LookupError(
            f"model {name} has no champion yet; train one with `lakehouse train --snapshot NAME`"
        ) from None
    return mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}"), str(version.version)


def _log_inputs(
    catalog: Catalog, versions: dict[str, int], training_set: str, digest: str, table_version: int
) -> None:
    for table, version in sorted(versions.items()):
        source = DeltaDatasetSource(path=catalog.location(table), delta_table_version=version)
        dataset = from_pandas(pd.DataFrame(), source=source, name=table, digest=f"v{version}")
        mlflow.log_input(dataset, context="snapshot")
    source = DeltaDatasetSource(
        path=catalog.location(GOLD_TRAINING_SETS.name), delta_table_version=table_version
    )
    dataset = from_pandas(pd.DataFrame(), source=source, name=training_set, digest=digest[:36])
    mlflow.log_input(dataset, context="training")


def _log_model(model: ItemItemModel, name: str, run_id: str) -> str:
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        # MLflow hints that the example's integer `k` cannot hold missing values; it never does.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        path = Path(folder) / "model.json"
        path.write_text(json.dumps(model.to_dict()))
        info = mlflow.pyfunc.log_model(
            name="recommender",
            python_model=RecommenderPyfunc(),
            artifacts={"model": str(path)},
            registered_model_name=name,
            pip_requirements=["pandas<3", "numpy", "scipy", "mlflow"],
            input_example=pd.DataFrame({"user_id": ["user-00001"], "k": [10]}),
        )
    version = info.registered_model_version
    if version is None:
        raise RuntimeError(f"model of run {run_id} was not registered as {name}")
    return str(version)


def _promote(
    client: MlflowClient, name: str, version: str, *, ndcg: float, k: int, margin: float
) -> tuple[str, bool, float | None]:
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        client.set_registered_model_alias(name, CHAMPION, version)
        return CHAMPION, True, None
    champion_ndcg = (
        client.get_run(champion.run_id).data.metrics.get(_metric(f"ndcg@{k}"))
        if champion.run_id
        else None
    )
    if champion_ndcg is None or (ndcg > champion_ndcg and ndcg >= champion_ndcg * (1 + margin)):
        client.set_registered_model_alias(name, CHAMPION, version)
        return CHAMPION, True, champion_ndcg
    client.set_registered_model_alias(name, CHALLENGER, version)
    log.info(
        "model %s v%s (NDCG %.4f) did not beat champion (%.4f); kept as challenger",
        name,
        version,
        ndcg,
        champion_ndcg,
    )
    return CHALLENGER, False, champion_ndcg


def _metric(name: str) -> str:
    """MLflow metric names cannot hold '@': ``ndcg@10`` is logged as ``ndcg_at_10``."""
    return name.replace("@", "_at_")
