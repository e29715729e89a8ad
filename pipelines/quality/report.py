"""Reading the quality tables back: the accounting check and the latest results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.config import Settings
from pipelines.lake.catalog import Catalog
from pipelines.quality.accounting import AccountingReport, reconcile, suite_problems
from pipelines.quality.tables import QUALITY_BATCH_RESULTS, QUALITY_SUITE_RESULTS
from pipelines.silver.tables import SILVER_EVENTS, SILVER_QUARANTINE


def accounting_report(catalog: Catalog, *, require_suites: bool) -> AccountingReport:
    """``lakehouse quality check``: every silver batch's invariant, totals vs. the tables and,
    with ``require_suites`` (Great Expectations enabled), the suite results: a failed suite, or
    a silver batch that wrote rows without a suite result, breaks the check."""
    results = _rows(catalog, QUALITY_BATCH_RESULTS.name)
    silver_rows = [r for r in results if r["table"] == SILVER_EVENTS.name]
    table_rows = {
        "written": _count(catalog, SILVER_EVENTS.name),
        "quarantined": _count(catalog, SILVER_QUARANTINE.name),
        "source": _count(catalog, BRONZE_EVENTS_RAW.name),
    }
    report = reconcile(silver_rows, table_rows)
    if require_suites:
        suites = _rows(catalog, QUALITY_SUITE_RESULTS.name)
        report.suite_problems.extend(suite_problems(silver_rows, suites, SILVER_EVENTS.name))
    return report


def latest_results(catalog: Catalog, settings: Settings, limit: int) -> dict[str, Any]:
    """The latest batch results and suite results, newest first, and the Data Docs location."""
    batches = sorted(
        _rows(catalog, QUALITY_BATCH_RESULTS.name), key=lambda r: r["processed_at"], reverse=True
    )
    suites = sorted(
        _rows(catalog, QUALITY_SUITE_RESULTS.name), key=lambda r: r["run_time"], reverse=True
    )
    docs = next((r["data_docs_index"] for r in suites if r["data_docs_index"]), None)
    if docs is not None and not Path(docs).is_file():
        docs = None
    return {"batches": batches[:limit], "suites": suites[:limit], "data_docs": docs}


def _rows(catalog: Catalog, name: str) -> list[dict[str, Any]]:
    if not catalog.exists(name):
        return []
    return list(catalog.read_arrow(name).to_pylist())


def _count(catalog: Catalog, name: str) -> int:
    info = catalog.info(name)
    return int(info.rows or 0)
