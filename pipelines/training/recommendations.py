"""``lakehouse recommend --batch``: the champion's top-k for every active user, in one table.

Active users are those with any event in the 7 days before their features' ``feature_ts`` in
``gold.user_features``. The table is replaced as a whole, so it always holds one model
version's recommendations; its Delta history keeps the earlier ones.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.config import Settings
from pipelines.gold.tables import GOLD_USER_FEATURES
from pipelines.lake.catalog import Catalog
from pipelines.streaming.sinks import table_writer
from pipelines.tables import LAKE_TABLES
from pipelines.training.tables import GOLD_RECOMMENDATIONS
from pipelines.training.train import champion_model

_ACTIVITY = ("page_view_count_7d", "click_count_7d", "add_to_cart_count_7d", "purchase_count_7d")


def write_recommendations(spark: SparkSession, settings: Settings, k: int) -> dict[str, Any]:
    """Score every active user with the champion and replace ``gold.recommendations``."""
    catalog = Catalog.for_settings(settings, LAKE_TABLES)
    model, version = champion_model(settings)
    activity = sum((F.col(c) for c in _ACTIVITY), F.lit(0))
    active = [
        r.user_id
        for r in catalog.read(spark, GOLD_USER_FEATURES.name)
        .where(activity > 0)
        .select("user_id")
        .orderBy("user_id")
        .collect()
    ]
    ranked = model.predict(pd.DataFrame({"user_id": active, "k": [k] * len(active)}))
    if "score" not in ranked.columns:
        ranked["score"] = None
    ranked["model_name"] = settings.mlflow.registered_model
    ranked["model_version"] = version
    ranked["generated_at"] = datetime.now(tz=UTC)
    data = pa.Table.from_pandas(ranked, preserve_index=False)
    gold_version = catalog.delta_table(GOLD_USER_FEATURES.name).version()
    # One idempotent overwrite per (model version, gold version): a retried run adds nothing.
    result = table_writer(catalog, GOLD_RECOMMENDATIONS).append(
        data,
        f"{GOLD_RECOMMENDATIONS.name}:{settings.mlflow.registered_model}:{version}",
        gold_version,
        spark=spark,
        replace_where="true",
    )
    return {
        "users": len(active),
        "rows": data.num_rows,
        "model_name": settings.mlflow.registered_model,
        "model_version": version,
        "table_version": result.version,
    }
