# Databricks notebook source
# MAGIC %md
# MAGIC # Feature drift
# MAGIC
# MAGIC PSI of every monitored feature of `gold.user_features` now against the snapshot the champion
# MAGIC model was trained on, written to `quality.drift_results`.
# MAGIC
# MAGIC Parameters:
# MAGIC
# MAGIC - `env`: the environment.
# MAGIC - `snapshot`: the reference snapshot; empty means the champion's.
# MAGIC - `retrain_on_drift`: `true` snapshots and retrains when a feature drifts.

# COMMAND ----------

dbutils.widgets.text("env", "prod")
dbutils.widgets.text("snapshot", "")
dbutils.widgets.dropdown("retrain_on_drift", "false", ["true", "false"])

# COMMAND ----------

import json

from pipelines import jobs

result = jobs.drift(
    env=dbutils.widgets.get("env"),
    snapshot=dbutils.widgets.get("snapshot"),
    retrain_on_drift=dbutils.widgets.get("retrain_on_drift"),
)

# COMMAND ----------

print(json.dumps(result, indent=2))
dbutils.notebook.exit(json.dumps(result))
