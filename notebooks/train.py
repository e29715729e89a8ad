# Databricks notebook source
# MAGIC %md
# MAGIC # Train the recommender
# MAGIC
# MAGIC Builds the point-in-time training set of a snapshot, trains the item-item model and the
# MAGIC popularity baseline, logs both to MLflow with the Delta versions they read, registers the model
# MAGIC and promotes it to `champion` only if it beats the current one.
# MAGIC
# MAGIC Parameters:
# MAGIC
# MAGIC - `env`: the environment.
# MAGIC - `snapshot`: the snapshot to train from; empty pins a fresh one (`train-<UTC time>`) first,
# MAGIC   as the nightly run does.
# MAGIC - `seed`: the seed of the negative sampling (same snapshot and seed, same training set).

# COMMAND ----------

dbutils.widgets.text("env", "prod")
dbutils.widgets.text("snapshot", "")
dbutils.widgets.text("seed", "42")

# COMMAND ----------

import json

from pipelines import jobs

result = jobs.train(
    env=dbutils.widgets.get("env"),
    snapshot=dbutils.widgets.get("snapshot"),
    seed=dbutils.widgets.get("seed"),
)

# COMMAND ----------

print(json.dumps(result, indent=2))
dbutils.notebook.exit(json.dumps(result))
