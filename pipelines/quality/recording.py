"""Great Expectations suites run on candidate batches, with every result kept in
``quality.suite_results`` (one idempotent commit per validated batch) and Data Docs on disk."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
from great_expectations.expectations import Expectation
from pyspark.sql import DataFrame

from pipelines.config import Settings
from pipelines.lake.catalog import Catalog
from pipelines.lake.tables import QUALITY_SUITE_RESULTS
from pipelines.quality.suites import SuiteResult, SuiteRunner
from pipelines.streaming.delta_sink import DeltaAppender


def gx_project_dir(settings: Settings) -> Path:
    """Where the GX project and its Data Docs live: ``<storage root>/quality/gx``."""
    root = settings.storage.resolved().root
    if "://" in root:
        raise ValueError("Great Expectations Data Docs need a local storage root")
    return Path(root) / "quality" / "gx"


class SuiteRecorder:
    """Validates a batch with a suite and records the result; one per job."""

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        gx = settings.quality.great_expectations
        self.runner = SuiteRunner(gx_project_dir(settings), data_docs=gx.data_docs)
        self.appender = DeltaAppender(catalog, QUALITY_SUITE_RESULTS)

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
        query_id = load_id.split(":", maxsplit=1)[0]
        self.appender.append(data, f"{QUALITY_SUITE_RESULTS.name}:{table}:{query_id}", batch_id)
        return result
