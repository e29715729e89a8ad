"""The driver of ``test_cluster``: bronze -> silver -> sessions -> gold in one process, as a
scheduled workflow runs its tasks, then where the work ran (the session's master and the
executors registered with it). One JSON line each; the settings come from ``LAKEHOUSE_ENV`` and
``LAKEHOUSE_CONF_DIR``.

A module run with ``python -m``, not ``python -c``: pyspark's Spark Connect check takes a
``__main__`` without a file for a doctest run and exits the process (status 0) when it is first
imported, which Great Expectations does.
"""

from __future__ import annotations

import json
import sys

from pipelines import jobs
from pipelines.spark import build_spark

LAYERS = ("bronze", "silver", "sessions", "gold")


def main() -> int:
    env = sys.argv[1] if len(sys.argv) > 1 else "test"
    for job in LAYERS:
        print(json.dumps(jobs.JOBS[job](env), default=str), flush=True)
    spark = build_spark(jobs.settings_for(env))
    executors = spark.sparkContext._jsc.sc().getExecutorIds().size()
    print(json.dumps({"master": spark.sparkContext.master, "executors": executors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
