# Databricks notebook source
# MAGIC %md
# MAGIC # Table maintenance
# MAGIC
# MAGIC OPTIMIZE (compacts the small files streaming leaves) and VACUUM every table; files that a named
# MAGIC snapshot still needs are never deleted.
# MAGIC
# MAGIC Parameters:
# MAGIC
# MAGIC - `env`: the environment.
# MAGIC - `retention_hours`: removed files younger than this are kept (time travel window).
# MAGIC - `dry_run`: `true` reports what would be removed and changes nothing.

# COMMAND ----------

dbutils.widgets.text("env", "prod")
dbutils.widgets.text("retention_hours", "168")
dbutils.widgets.dropdown("dry_run", "false", ["true", "false"])

# COMMAND ----------

import json

from pipelines import jobs

result = jobs.maintain(
    env=dbutils.widgets.get("env"),
    retention_hours=dbutils.widgets.get("retention_hours"),
    dry_run=dbutils.widgets.get("dry_run"),
)

# COMMAND ----------

print(json.dumps(result, indent=2))
dbutils.notebook.exit(json.dumps(result))
