"""Every streaming query's progress, recorded in ``monitoring.query_progress``.

A ``StreamingQueryListener`` registered once per session turns each micro-batch's progress event
into one row: input rows and rates, the batch duration and its breakdown, state rows, and each
source's offsets with the backlog (latest available offset minus the batch's end offset, summed
over partitions; for a Delta source, table versions). Rows are buffered and appended with one
delta-rs commit per flush (on query termination, every ``flush_every_s``, or on demand), so the
recorder adds no commit per micro-batch to the table it watches.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql.streaming.listener import (
    QueryIdleEvent,
    QueryProgressEvent,
    QueryStartedEvent,
    QueryTerminatedEvent,
    StreamingQueryListener,
)

from pipelines.lake.catalog import Catalog
from pipelines.monitoring.tables import MONITORING_QUERY_PROGRESS
from pipelines.streaming.sinks import ensure_table, table_writer

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 30.0
_RECORDERS: dict[tuple[int, str], ProgressRecorder] = {}
_LOCK = threading.Lock()


def backlog(end_offset: Any, latest_offset: Any) -> int | None:
    """Records (or versions) available but not yet read: ``latest - end`` summed over the
    offsets' leaves; None when either side is unknown or their shapes differ."""
    end, latest = _parsed(end_offset), _parsed(latest_offset)
    if end is None or latest is None:
        return None
    if isinstance(end, dict) and isinstance(latest, dict):
        total = 0
        for key, value in latest.items():
            part = backlog(end.get(key, 0 if not isinstance(value, dict) else {}), value)
            if part is None:
                return None
            total += part
        return total
    if _is_number(end) and _is_number(latest):
        return max(int(latest) - int(end), 0)
    return None


def progress_row(progress: Any, recorded_at: datetime | None = None) -> dict[str, Any]:
    """One ``monitoring.query_progress`` row from a ``StreamingQueryProgress``."""
    recorded_at = recorded_at or datetime.now(tz=UTC)
    sources = list(progress.sources or [])
    state = list(progress.stateOperators or [])
    backlogs = [backlog(s.endOffset, s.latestOffset) for s in sources]
    known = [b for b in backlogs if b is not None]
    timestamp = datetime.fromisoformat(progress.timestamp.replace("Z", "+00:00"))
    sink = progress.sink
    return {
        "query_id": str(progress.id),
        "run_id": str(progress.runId),
        "query_name": progress.name or str(progress.id),
        "batch_id": int(progress.batchId),
        "progress_ts": timestamp,
        "num_input_rows": int(progress.numInputRows or 0),
        "input_rows_per_s": _number(progress.inputRowsPerSecond),
        "processed_rows_per_s": _number(progress.processedRowsPerSecond),
        "batch_duration_ms": int(progress.batchDuration or 0),
        "duration_ms": {k: int(v) for k, v in (progress.durationMs or {}).items()},
        "state_rows_total": sum(int(s.numRowsTotal or 0) for s in state),
        "state_rows_updated": sum(int(s.numRowsUpdated or 0) for s in state),
        "state_memory_bytes": sum(int(s.memoryUsedBytes or 0) for s in state),
        "sources": [
            {
                "description": s.description,
                "start_offset": _text(s.startOffset),
                "end_offset": _text(s.endOffset),
                "latest_offset": _text(s.latestOffset),
                "num_input_rows": int(s.numInputRows or 0),
                "backlog": b,
            }
            for s, b in zip(sources, backlogs, strict=True)
        ],
        "backlog": sum(known) if known else None,
        "sink": sink.description if sink is not None else None,
        "num_output_rows": int(sink.numOutputRows)
        if sink is not None and sink.numOutputRows is not None and sink.numOutputRows >= 0
        else None,
        "recorded_at": recorded_at,
        "progress_date": timestamp.date(),
    }


class ProgressRecorder(StreamingQueryListener):
    """Buffers each query's progress rows and appends them to ``monitoring.query_progress``."""

    def __init__(
        self, spark: SparkSession, catalog: Catalog, flush_every_s: float = FLUSH_EVERY_S
    ) -> None:
        self.session = spark
        self.catalog = catalog
        self.flush_every_s = flush_every_s
        self.writer = table_writer(catalog, MONITORING_QUERY_PROGRESS)
        # Each flush is one idempotent commit: (this recorder, flush number).
        self._app_id = f"{MONITORING_QUERY_PROGRESS.name}:{uuid.uuid4()}"
        self._flushes = 0
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._terminated: set[str] = set()
        self._watched: set[str] = set()
        self._changed = threading.Condition(self._lock)
        self._write_lock = threading.Lock()
        self.recorded = 0

    def onQueryStarted(self, event: QueryStartedEvent) -> None:
        pass

    def watch(self, query_id: str) -> None:
        with self._lock:
            self._watched.add(query_id)

    def watching(self, query_id: str) -> bool:
        with self._lock:
            return query_id in self._watched

    def onQueryProgress(self, event: QueryProgressEvent) -> None:
        if not self.watching(str(event.progress.id)):
            return
        try:
            row = progress_row(event.progress)
        except Exception:  # a listener must never break the query it watches
            log.exception("could not record the progress of query %s", event.progress.id)
            return
        with self._lock:
            self._rows.append(row)
            due = time.monotonic() - self._last_flush >= self.flush_every_s
        if due:
            self.flush()

    def onQueryIdle(self, event: QueryIdleEvent) -> None:
        pass

    def onQueryTerminated(self, event: QueryTerminatedEvent) -> None:
        if not self.watching(str(event.id)):
            return
        self.flush()
        with self._changed:
            self._terminated.add(str(event.id))
            self._changed.notify_all()

    def flush(self) -> int:
        """Append the buffered rows (one commit); returns how many were written."""
        with self._lock:
            rows, self._rows = self._rows, []
            self._last_flush = time.monotonic()
        if not rows:
            return 0
        try:
            data = pa.Table.from_pylist(rows, schema=MONITORING_QUERY_PROGRESS.arrow_schema)
            with self._write_lock:
                ensure_table(self.session, self.catalog, MONITORING_QUERY_PROGRESS)
                self.writer.append(data, self._app_id, self._flushes, spark=self.session)
                self._flushes += 1
        except Exception:
            log.exception(
                "could not write %d progress rows; keeping them for the next flush", len(rows)
            )
            with self._lock:
                self._rows = rows + self._rows
            return 0
        self.recorded += len(rows)
        return len(rows)

    def settle(self, query_id: str, timeout_s: float = 30.0) -> None:
        """After the query ended: wait until its last progress rows are committed."""
        if not self.watching(query_id):
            return
        if not self.wait_terminated(query_id, timeout_s):
            log.warning("progress of query %s not settled after %.0fs", query_id, timeout_s)
        self.flush()

    def wait_terminated(self, query_id: str, timeout_s: float = 30.0) -> bool:
        """Wait until the listener has seen ``query_id`` terminate (and flushed its rows)."""
        with self._changed:
            return self._changed.wait_for(lambda: query_id in self._terminated, timeout_s)


def progress_recorder(spark: SparkSession, catalog: Catalog) -> ProgressRecorder:
    """The recorder for ``catalog``'s lake on this session, registered on first use.

    One per (session, storage root): a process that runs jobs against two lakes (tests, the
    object-storage comparison) records each query's progress in its own lake.
    """
    key = (id(spark), catalog.storage.root)
    with _LOCK:
        recorder = _RECORDERS.get(key)
        if recorder is None:
            recorder = _RECORDERS[key] = ProgressRecorder(spark, catalog)
            spark.streams.addListener(recorder)
        return recorder


def _parsed(offset: Any) -> Any:
    if offset is None:
        return None
    if isinstance(offset, str):
        try:
            return json.loads(offset)
        except ValueError:
            return None
    return offset


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and value.lstrip("-").isdigit()


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _text(offset: Any) -> str | None:
    if offset is None:
        return None
    return offset if isinstance(offset, str) else json.dumps(offset, sort_keys=True)
