"""The one write helper every streaming sink goes through, and how queries are run.

It takes the trigger from config (or the CLI), puts the checkpoint at
``<checkpoint root>/<table>``, names the query after the table, and waits for it in the way the
trigger implies: ``available-now`` drains and returns, ``processing-time`` runs until stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame
from pyspark.sql.streaming import StreamingQuery

from pipelines.config import TriggerSettings
from pipelines.lake.catalog import Catalog
from pipelines.streaming.delta import BatchHandler


class QueryMonitor(Protocol):
    """Something that watches queries (e.g. ``monitoring.progress.ProgressRecorder``): told of
    each query right after it starts, and asked to settle once it has ended."""

    def watch(self, query_id: str) -> None: ...

    def settle(self, query_id: str) -> None: ...


class StreamingJobError(RuntimeError):
    """A streaming query failed; the message carries Spark's reason without the JVM stack."""


def start_table_stream(
    frame: DataFrame,
    *,
    catalog: Catalog,
    table: str,
    handler: BatchHandler,
    trigger: TriggerSettings,
    monitor: QueryMonitor | None = None,
) -> StreamingQuery:
    """Start ``frame`` into ``handler`` with the checkpoint at ``<checkpoint root>/<table>``,
    watched by ``monitor`` if given."""
    writer = (
        frame.writeStream.queryName(table.replace(".", "_"))
        .option("checkpointLocation", catalog.checkpoint(table))
        .foreachBatch(handler)
    )
    if trigger.mode == "available-now":
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=trigger.interval)
    query = writer.start()
    if monitor is not None:
        monitor.watch(str(query.id))
    return query


def await_query(
    query: StreamingQuery,
    *,
    on_progress: Callable[[StreamingQuery], None] | None = None,
    timeout_s: float | None = None,
    poll_s: int = 1,
    monitor: QueryMonitor | None = None,
) -> None:
    """Wait until the query ends (available-now) or ``timeout_s`` passes / Ctrl-C (continuous);
    then let ``monitor`` settle (record the query's last progress).

    Raises:
        StreamingJobError: the query failed.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while query.isActive:
            query.awaitTermination(poll_s)
            if on_progress is not None:
                on_progress(query)
            if deadline is not None and time.monotonic() > deadline:
                stop_gracefully(query)
                break
    except KeyboardInterrupt:
        stop_gracefully(query)
    except StreamingQueryException as exc:
        raise StreamingJobError(_reason(exc)) from None
    if on_progress is not None:
        on_progress(query)
    if monitor is not None:
        monitor.settle(str(query.id))
    failure = query.exception()
    if failure is not None:
        raise StreamingJobError(_reason(failure))


class StepClock:
    """Seconds spent in each named step of a micro-batch (reported by jobs and benchmarks)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


def stop_gracefully(query: StreamingQuery, wait_s: float = 120.0) -> None:
    """Stop between micro-batches: wait until no trigger is running, then stop.

    ``StreamingQuery.stop()`` interrupts the stream thread, but a ``foreachBatch`` handler that is
    running in Python cannot be interrupted; stopping mid-batch would leave it writing while a
    restarted query replays the same batch. Waiting for the trigger to go idle avoids that (the
    idempotent commits make it safe either way).
    """
    deadline = time.monotonic() + wait_s
    while query.isActive and time.monotonic() < deadline:
        if not query.status.get("isTriggerActive", False):
            break
        time.sleep(0.05)
    query.stop()


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "desc", None) or str(exc)
    head = text.split("\n=== Streaming Query ===")[0]
    return head.strip()
