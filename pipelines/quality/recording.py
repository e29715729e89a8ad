"""Great Expectations suites run on candidate batches, with every result kept in
``quality.suite_results`` (one idempotent commit per validated batch) and Data Docs on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
from great_expectations.expectations import Expectation
from pyspark.sql import DataFrame

from pipelines.config import Settings
from pipelines.lake.catalog import Catalog
from pipelines.lake.objects import ObjectStore
from pipelines.quality.accounting import query_of
from pipelines.quality.suites import DATA_DOCS_DIR, SuiteResult, SuiteRunner
from pipelines.quality.tables import QUALITY_SUITE_RESULTS
from pipelines.streaming.sinks import table_writer

GX_KEY = "quality/gx"


def gx_project_dir(settings: Settings) -> Path:
    """Where the GX project and its Data Docs are built: ``<storage root>/quality/gx``.

    GX writes through the local filesystem, so with object storage the project lives in a local
    working folder (keyed by the root) and its Data Docs are published to
    ``<storage root>/quality/gx/data_docs`` after each validation.
    """
    storage = settings.storage.resolved()
    if not storage.remote:
        return Path(storage.root) / GX_KEY
    digest = hashlib.sha1(storage.root.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "lakehouse-gx" / digest


class SuiteRecorder:
    """Validates a batch with a suite and records the result; one per job."""

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        gx = settings.quality.great_expectations
        self.project_dir = gx_project_dir(settings)
        self.runner = SuiteRunner(self.project_dir, data_docs=gx.data_docs)
        self.appender = table_writer(catalog, QUALITY_SUITE_RESULTS)
        self.objects = ObjectStore(settings.storage) if settings.storage.remote else None
        self._published: dict[str, float] = {}

    def validate(
        self,
        table: str,
        expectations: Sequence[Expectation],
        frame: DataFrame,
        *,
        batch_id: int,
        load_id: str,
    ) -> SuiteResult:
        """Run ``expectations`` (re-registered each time: time bounds are set at registration)
        on ``frame`` and append the result row, keyed by (query of ``load_id``, batch id)."""
        self.runner.register(table, expectations)
        result = self.runner.validate(frame, table, f"batch {batch_id}")
        if self.objects is not None and result.data_docs_index:
            result = self._publish(result)
        row = {
            "table": table,
            "suite": result.suite,
            "load_id": load_id,
            "batch_id": batch_id,
            "batch_label": result.batch_label,
            "success": result.success,
            "evaluated": result.evaluated,
            "successful": result.successful,
            "failed": list(result.failed),
            "run_time": result.run_time,
            "data_docs_index": result.data_docs_index,
        }
        data = pa.Table.from_pylist([row], schema=QUALITY_SUITE_RESULTS.arrow_schema)
        self.appender.append(data, _app_id(table, load_id), batch_id, spark=frame.sparkSession)
        return result

    def recorded(self, table: str, *, batch_id: int, load_id: str) -> bool:
        """Whether the result of ``table``'s batch (of the query of ``load_id``) is recorded."""
        return self.appender.committed(_app_id(table, load_id), batch_id)

    def _publish(self, result: SuiteResult) -> SuiteResult:
        """Copy new Data Docs pages to object storage; the result points at the published index."""
        assert self.objects is not None and result.data_docs_index is not None
        docs = self.project_dir / DATA_DOCS_DIR
        key = f"{GX_KEY}/{DATA_DOCS_DIR}"
        self.objects.put_tree(docs, key, since=self._published)
        relative = Path(result.data_docs_index).resolve().relative_to(docs.resolve()).as_posix()
        return dataclasses.replace(result, data_docs_index=self.objects.uri(f"{key}/{relative}"))


def _app_id(table: str, load_id: str) -> str:
    """The idempotent-append id of a table's suite results: one per (table, query)."""
    return f"{QUALITY_SUITE_RESULTS.name}:{table}:{query_of(load_id)}"
