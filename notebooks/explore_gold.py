# Databricks notebook source
# MAGIC %md
# MAGIC # Exploring the gold layer
# MAGIC
# MAGIC A tour for data scientists: which tables the lake holds, how to query the gold features
# MAGIC with Spark SQL, how to read an earlier version of a table (time travel), how to read a
# MAGIC named snapshot (what a training run reads), and how to load the latest point-in-time
# MAGIC training set into pandas.
# MAGIC
# MAGIC Every step is a call into `pipelines`; nothing here computes features itself. When a step
# MAGIC has nothing to show yet (no gold, no snapshot, no training set), the notebook says which
# MAGIC job or command creates it and stops there.
# MAGIC
# MAGIC On your laptop: `lakehouse notebook run notebooks/explore_gold.py --env local`.

# COMMAND ----------

dbutils.widgets.text("env", "prod")
dbutils.widgets.text("snapshot", "")

# COMMAND ----------

import json

import pandas as pd

from pipelines.lake.snapshots import Snapshots, read_table
from pipelines.runtime import lakehouse
from pipelines.training.sets import training_sets

lake = lakehouse(dbutils.widgets.get("env"))
settings, catalog = lake.settings, lake.catalog
print(f"env {settings.env}: tables under {catalog.storage.tables_root}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 1. The tables
# MAGIC
# MAGIC `catalog.infos()` lists every table the pipelines own, whether it exists yet, its current
# MAGIC Delta version, row and file counts and its last commit. Tables are named `<layer>.<table>`.

# COMMAND ----------

tables = pd.DataFrame([vars(info) for info in catalog.infos()]).convert_dtypes()
display(tables[["name", "exists", "version", "rows", "files", "last_commit"]])

# COMMAND ----------

# MAGIC %md
# MAGIC ## 2. Query gold with Spark SQL
# MAGIC
# MAGIC Every table is in the Spark catalog under its own name (`gold.user_features`,
# MAGIC `silver.events`, …), with Delta's SQL: `VERSION AS OF n`, `DESCRIBE HISTORY`.
# MAGIC `gold.user_features` holds the current features per user (`feature_ts` says as of when);
# MAGIC `gold.item_features` the same per item. Feature definitions: `docs/FEATURES.md`.

# COMMAND ----------

tables_in_catalog = catalog.register_all(spark)
print(f"tables: {', '.join(tables_in_catalog)}")
gold = catalog.info("gold.user_features")
if not gold.rows:
    print(
        "No gold features yet: run the streaming workflow (bronze -> silver -> sessions -> gold); "
        "locally `lakehouse run bronze --available-now`, then silver, sessions and gold."
    )
    dbutils.notebook.exit(json.dumps({"stopped_at": "gold", "next": "lakehouse run gold"}))

# COMMAND ----------

top_buyers = spark.sql(
    """
    SELECT user_id, purchase_count_30d, revenue_30d, sessions_7d, recency_s, feature_ts
    FROM gold.user_features
    ORDER BY revenue_30d DESC, user_id
    LIMIT 10
    """
)
display(top_buyers)
trending = spark.sql(
    """
    SELECT item_id, category, views_7d, clicks_7d, ctr_7d, trending_score
    FROM gold.item_features
    ORDER BY trending_score DESC, item_id
    LIMIT 10
    """
)
display(trending)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 3. Time travel
# MAGIC
# MAGIC Every write is a Delta commit. `catalog.history` lists them (newest first), and
# MAGIC `catalog.read(spark, name, version=N)` reads the table as it was at version N.

# COMMAND ----------

history = pd.DataFrame(catalog.history("gold.user_features", limit=10))
history["committed"] = pd.to_datetime(history["timestamp"], unit="ms", utc=True)
display(history[["version", "committed", "operation"]])
previous = gold.version - 1
previous_users = catalog.read(spark, "gold.user_features", version=previous).count()
print(
    f"gold.user_features: {gold.rows} users at version {gold.version} (now), "
    f"{previous_users} at version {previous}"
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 4. Named snapshots
# MAGIC
# MAGIC A snapshot pins one Delta version of each of several tables under a name, and maintenance
# MAGIC never vacuums what it needs, so `train-2026-11` reads the same rows forever. Training runs
# MAGIC read snapshots. Set the `snapshot` widget to pick one; empty means the newest.

# COMMAND ----------

snapshots = Snapshots(catalog).list()
print(f"snapshots: {', '.join(s.name for s in snapshots) or 'none yet'}")
if not snapshots:
    print(
        "No snapshot yet: pin one with `lakehouse snapshot create NAME`, "
        "or run the train job (it pins `train-<time>` first)."
    )
    dbutils.notebook.exit(
        json.dumps({"stopped_at": "snapshot", "next": "lakehouse snapshot create NAME"})
    )

# COMMAND ----------

snapshot = Snapshots(catalog).get(dbutils.widgets.get("snapshot") or snapshots[0].name)
pins = ", ".join(f"{table}@v{version}" for table, version in sorted(snapshot.versions.items()))
print(f"snapshot {snapshot.name} ({snapshot.created_at:%Y-%m-%d %H:%M} UTC): {pins}")
pinned = read_table(spark, catalog, "gold.user_features", snapshot=snapshot.name)
pinned_users = pinned.count()
print(f"gold.user_features in snapshot {snapshot.name}: {pinned_users} users")
display(pinned.select("user_id", "feature_ts", "purchase_count_30d", "revenue_30d"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 5. The latest training set, in pandas
# MAGIC
# MAGIC A training set joins each label (a purchase, or a sampled negative) with the user's and
# MAGIC the item's features as they were strictly before the label's time. `lake.training_sets`
# MAGIC records every build (snapshot, seed, digest, the `gold.training_sets` version it wrote);
# MAGIC reading that version of the set's partition gives exactly the rows the model saw.

# COMMAND ----------

built = training_sets(catalog)
if not built:
    print(
        "No training set yet: build one with "
        "`lakehouse training-set build --snapshot NAME` (the train job builds one too)."
    )
    dbutils.notebook.exit(
        json.dumps(
            {"stopped_at": "training_set", "next": "lakehouse training-set build --snapshot NAME"}
        )
    )

# COMMAND ----------

latest = built[0]
training = catalog.read_arrow(
    "gold.training_sets",
    version=latest["table_version"],
    partitions=[("training_set", "=", latest["name"])],
).to_pandas()
print(
    f"training set {latest['name']} from snapshot {latest['snapshot']}: {len(training)} rows, "
    f"{int(training['label'].sum())} positives, digest {latest['digest'][:16]}"
)
display(training[["user_id", "item_id", "label_ts", "label", "user_purchase_count_30d", "item_ctr_7d"]])

# COMMAND ----------

dbutils.notebook.exit(
    json.dumps(
        {
            "tables": int(tables["exists"].sum()),
            "gold_users": gold.rows,
            "gold_version": gold.version,
            "previous_version_users": previous_users,
            "snapshot": snapshot.name,
            "snapshot_users": pinned_users,
            "training_set": latest["name"],
            "training_rows": len(training),
        }
    )
)
