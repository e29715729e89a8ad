# Databricks notebook source
# MAGIC %md
# MAGIC # Batch recommendations
# MAGIC
# MAGIC Scores every active user with the champion model and replaces `gold.recommendations` with their
# MAGIC top-k items (unknown users get the cold-start fallback). Runs after training.
# MAGIC
# MAGIC Parameters:
# MAGIC
# MAGIC - `env`: the environment.
# MAGIC - `k`: items per user.

# COMMAND ----------

dbutils.widgets.text("env", "prod")
dbutils.widgets.text("k", "10")

# COMMAND ----------

import json

from pipelines import jobs

result = jobs.batch_recommendations(
    env=dbutils.widgets.get("env"),
    k=dbutils.widgets.get("k"),
)

# COMMAND ----------

print(json.dumps(result, indent=2))
dbutils.notebook.exit(json.dumps(result))
