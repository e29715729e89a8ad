# Databricks notebook source
# MAGIC %md
# MAGIC # Bronze: Kafka → `bronze.events_raw`
# MAGIC
# MAGIC Every event topic is read from Kafka and appended, as received, to `bronze.events_raw` (value,
# MAGIC key, topic/partition/offset, Kafka and ingest time). The checkpoint lives at
# MAGIC `<checkpoint root>/bronze.events_raw`; a rerun adds nothing that is already there.
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

result = jobs.bronze(
    env=dbutils.widgets.get("env"),
    trigger=dbutils.widgets.get("trigger"),
    interval=dbutils.widgets.get("interval"),
    timeout=dbutils.widgets.get("timeout"),
)

# COMMAND ----------

print(json.dumps(result, indent=2))
dbutils.notebook.exit(json.dumps(result))
