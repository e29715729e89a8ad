# Databricks notebook source
# MAGIC %md
# MAGIC # Silver: `bronze.events_raw` → gate → `silver.events` + `silver.quarantine`
# MAGIC
# MAGIC New bronze rows are parsed with the event contract, checked by the row rules, deduplicated by
# MAGIC `event_id` and written to `silver.events`; rows that break a rule go to `silver.quarantine` with
# MAGIC the rule names, and every batch's accounting goes to `quality.batch_results`. With Great
# MAGIC Expectations enabled in config, each batch is also validated by the silver suite.
# MAGIC
# MAGIC Parameters (widgets, or `base_parameters` of the job task):
# MAGIC
# MAGIC - `env`: the environment, `conf/<env>.yaml` over `conf/base.yaml`.
# MAGIC - `trigger`: `available-now` drains what is there and stops (scheduled runs); `processing-time`
# MAGIC   runs continuously every `interval` (e.g. `30s`); `config` uses the environment's `streaming.trigger`.
# MAGIC - `interval`: the processing-time interval (empty: the environment's).
# MAGIC - `timeout`: stop a continuous run after this many seconds (empty: run until cancelled).
# MAGIC
# MAGIC The notebook only reads its widgets and calls `pipelines.jobs`; the result is the run's exit value.

# COMMAND ----------

dbutils.widgets.text("env", "prod")
dbutils.widgets.dropdown("trigger", "available-now", ["available-now", "processing-time", "config"])
dbutils.widgets.text("interval", "")
dbutils.widgets.text("timeout", "")

# COMMAND ----------

import json

from pipelines import jobs

result = jobs.silver(
    env=dbutils.widgets.get("env"),
    trigger=dbutils.widgets.get("trigger"),
    interval=dbutils.widgets.get("interval"),
    timeout=dbutils.widgets.get("timeout"),
)

# COMMAND ----------

print(json.dumps(result, indent=2))
dbutils.notebook.exit(json.dumps(result))
