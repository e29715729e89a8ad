# Databricks notebook source
# MAGIC %md
# MAGIC # Quality report
# MAGIC
# MAGIC Checks the silver accounting (every bronze row is in silver, the quarantine or the counted
# MAGIC duplicates) and summarises the latest batch and Great Expectations suite results.
# MAGIC
# MAGIC Parameters:
# MAGIC
# MAGIC - `env`: the environment.
# MAGIC - `limit`: how many of the latest batches and suite results to include.
# MAGIC - `fail_on_broken`: `true` makes the run fail when the accounting is broken, so the job alerts.

# COMMAND ----------

dbutils.widgets.text("env", "prod")
dbutils.widgets.text("limit", "10")
dbutils.widgets.dropdown("fail_on_broken", "true", ["true", "false"])

# COMMAND ----------

import json

from pipelines import jobs

result = jobs.quality_report(
    env=dbutils.widgets.get("env"),
    limit=dbutils.widgets.get("limit"),
    fail_on_broken=dbutils.widgets.get("fail_on_broken"),
)

# COMMAND ----------

print(json.dumps(result, indent=2))
dbutils.notebook.exit(json.dumps(result))
