"""Great Expectations suites run on Spark micro-batches, with results and Data Docs.

A ``SuiteRunner`` owns one GX *file* context rooted at a project folder and builds it once: the
streaming job validates every micro-batch (or every N) through the same context, so GX's
objects are created at ``register`` and reused by every ``validate``. Per suite there is one
dataframe asset, one whole-dataframe batch definition, one validation definition and one
checkpoint, all named after the suite, so repeated calls and restarts on the same folder reuse
them instead of piling up new names.

GX output is kept out of the job's logs and off the network through the context's own config:
``progress_bars`` off (the "Calculating Metrics" bars) and ``analytics_enabled`` off. (GX 1.24
has no usage-statistics sender left, so the flag only guards a future upgrade.) Every Data Docs
site other than ours is dropped, and the datasource does not cache batches.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.checkpoint import Checkpoint, UpdateDataDocsAction, ValidationAction
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.core.expectation_validation_result import (
    ExpectationSuiteValidationResult,
    ExpectationValidationResult,
)
from great_expectations.data_context import FileDataContext
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.datasource.fluent import SparkDatasource
from great_expectations.expectations import Expectation
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
from pyspark.sql import DataFrame

EARLIEST_EVENT_TS = datetime(2000, 1, 1, tzinfo=UTC)
DATA_DOCS_DIR = "data_docs"

_DATASOURCE = "micro_batches"
_BATCH_DEFINITION = "whole_dataframe"
_DOCS_SITE = "local_site"
# The index page loads every validation result it lists; capping the list keeps each rebuild's
# cost flat as results accumulate batch after batch. Older result pages stay on disk.
_DOCS_INDEXED_RESULTS = 100
# The keys GX's Expectation kwargs use for the column(s) an expectation checks.
_COLUMN_KWARGS = ("column", "column_A", "column_B")


@dataclass(frozen=True)
class SuiteResult:
    """The outcome of one suite on one batch, flattened for a results table."""

    suite: str
    batch_label: str
    success: bool
    evaluated: int
    successful: int
    failed: list[str]
    run_time: datetime
    data_docs_index: str | None

    def to_row(self) -> dict[str, Any]:
        """A flat, JSON-serialisable row (``run_time`` as ISO-8601 UTC)."""
        return {
            "suite": self.suite,
            "batch_label": self.batch_label,
            "success": self.success,
            "evaluated": self.evaluated,
            "successful": self.successful,
            "failed_count": len(self.failed),
            "failed": list(self.failed),
            "run_time": self.run_time.isoformat(),
            "data_docs_index": self.data_docs_index,
        }


def silver_events_expectations(event_types: Sequence[str], max_rows: int) -> list[Expectation]:
    """Expectations for a batch of silver.events.

    Keys and timestamp present, a known event type, a plausible timestamp (after
    ``EARLIEST_EVENT_TS``, at most one day after this call), ``event_id`` unique within the batch
    and between 1 and ``max_rows`` rows. The upper timestamp bound is fixed when this is called,
    so a long-running job should re-register the suite (cheap) at least daily.
    """
    if not event_types:
        raise ValueError("silver_events_expectations needs at least one event type")
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    latest = datetime.now(UTC) + timedelta(days=1)
    return [
        *(
            gxe.ExpectColumnValuesToNotBeNull(column=column)
            for column in ("event_id", "user_id", "event_type", "event_ts")
        ),
        gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(event_types)),
        gxe.ExpectColumnValuesToBeBetween(
            column="event_ts", min_value=EARLIEST_EVENT_TS, max_value=latest
        ),
        gxe.ExpectColumnValuesToBeUnique(column="event_id"),
        gxe.ExpectTableRowCountToBeBetween(min_value=1, max_value=max_rows),
    ]


def gold_features_expectations(
    key: str,
    non_negative: Sequence[str],
    rates: Sequence[str],
    max_staleness: timedelta,
    *,
    whole_table: bool = False,
) -> list[Expectation]:
    """Expectations for a candidate batch of a gold feature table, checked before it is published.

    Non-null unique keys, non-negative counts and amounts, rates in [0, 1], and freshness: the
    batch's ``feature_ts`` no older than ``max_staleness`` before this call (re-register per batch).
    For a ``whole_table`` (snapshot validation) freshness applies to the newest ``feature_ts``:
    a current table legitimately keeps old rows of users who stopped coming back.
    """
    # GX compares the column's min in Python, where Spark hands back naive UTC datetimes.
    oldest = (datetime.now(UTC) - max_staleness).replace(tzinfo=None)
    return [
        gxe.ExpectColumnValuesToNotBeNull(column=key),
        gxe.ExpectColumnValuesToBeUnique(column=key),
        gxe.ExpectColumnValuesToNotBeNull(column="feature_ts"),
        *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in non_negative),
        *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1) for c in rates),
        gxe.ExpectColumnMaxToBeBetween(column="feature_ts", min_value=oldest)
        if whole_table
        else gxe.ExpectColumnMinToBeBetween(column="feature_ts", min_value=oldest),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]


class SuiteRunner:
    """Registers suites once and validates Spark DataFrames against them, call after call.

    GX state lives under ``project_dir/gx``; Data Docs, when enabled, under
    ``project_dir/data_docs``. ``unexpected_samples`` is how many unexpected values each failed
    column expectation keeps for Data Docs (0: counts only, the fastest). Calls are serialised
    with a lock, so queries running in parallel threads can share one runner.
    """

    def __init__(
        self, project_dir: Path, data_docs: bool = True, *, unexpected_samples: int = 0
    ) -> None:
        if unexpected_samples < 0:
            raise ValueError(f"unexpected_samples must be 0 or more, got {unexpected_samples}")
        # SUMMARY gives the unexpected counts. Sampling values costs one more Spark job per
        # column expectation (about doubling a call on a small batch), so it is opt-in.
        self._result_format = {
            "result_format": "SUMMARY",
            "partial_unexpected_count": unexpected_samples,
        }
        project_dir = project_dir.resolve()
        self._docs_dir = project_dir / DATA_DOCS_DIR if data_docs else None
        self._lock = threading.Lock()
        self._context = _file_context(project_dir, self._docs_dir)
        self._source = _spark_datasource(self._context)
        self._checkpoints: dict[str, Checkpoint] = {}
        # Per suite, the id and label of each expectation, in suite order.
        self._expectations: dict[str, list[tuple[str | None, str]]] = {}

    @property
    def data_docs_index(self) -> Path | None:
        """Where the Data Docs index page is (or will be), or None when docs are disabled."""
        return None if self._docs_dir is None else self._docs_dir / "index.html"

    def register(self, suite_name: str, expectations: Sequence[Expectation]) -> None:
        """Create the suite ``suite_name``, or replace its expectations if it exists."""
        if not expectations:
            raise ValueError(f"suite {suite_name!r} needs at least one expectation")
        # GX binds an Expectation to the suite it is added to; copies leave the caller's
        # objects free to be registered again (copy() also clears the id).
        suite = gx.ExpectationSuite(
            name=suite_name, expectations=[copy.copy(e) for e in expectations]
        )
        with self._lock:
            context = self._context
            suite = context.suites.add_or_update(suite)
            validation = context.validation_definitions.add_or_update(
                gx.ValidationDefinition(
                    name=suite_name, data=self._batch_definition(suite_name), suite=suite
                )
            )
            actions: list[ValidationAction] = (
                [UpdateDataDocsAction(name="update_data_docs", site_names=[_DOCS_SITE])]
                if self._docs_dir is not None
                else []
            )
            self._checkpoints[suite_name] = context.checkpoints.add_or_update(
                Checkpoint(
                    name=suite_name,
                    validation_definitions=[validation],
                    actions=actions,
                    result_format=self._result_format,
                )
            )
            self._expectations[suite_name] = [
                (e.id, _label(e.configuration)) for e in suite.expectations
            ]

    def validate(self, df: DataFrame, suite_name: str, batch_label: str) -> SuiteResult:
        """Run the suite on ``df`` and, when enabled, add the result to Data Docs.

        An expectation GX could not evaluate (an error inside GX, a missing column) is reported
        as failed with the error, never as passed. GX runs several Spark jobs over ``df``:
        persist it first if it is expensive to recompute.
        """
        if not batch_label or "/" in batch_label or "\\" in batch_label:
            raise ValueError(
                f"batch label {batch_label!r} must be non-empty and free of '/' and '\\': GX "
                "uses it as a folder name (e.g. 'batch 12')"
            )
        run_id = gx.RunIdentifier(run_name=batch_label, run_time=datetime.now(UTC))
        with self._lock:
            checkpoint = self._checkpoint(suite_name)
            expected = self._expectations[suite_name]
            outcome = checkpoint.run(batch_parameters={"dataframe": df}, run_id=run_id)
        (validation,) = outcome.run_results.values()
        docs_index = self.data_docs_index
        return _suite_result(
            validation,
            expected,
            suite=suite_name,
            batch_label=batch_label,
            run_time=run_id.run_time.astimezone(UTC),
            docs_index=None if docs_index is None else str(docs_index),
        )

    def _checkpoint(self, suite_name: str) -> Checkpoint:
        try:
            return self._checkpoints[suite_name]
        except KeyError:
            known = ", ".join(sorted(self._checkpoints)) or "none"
            raise KeyError(
                f"suite {suite_name!r} is not registered with this runner (registered: {known}); "
                "call register() first"
            ) from None

    def _batch_definition(self, asset_name: str) -> BatchDefinition:
        try:
            asset = self._source.get_asset(asset_name)
        except LookupError:
            asset = self._source.add_dataframe_asset(name=asset_name)
        try:
            return asset.get_batch_definition(_BATCH_DEFINITION)
        except KeyError:
            return asset.add_batch_definition_whole_dataframe(_BATCH_DEFINITION)


def _file_context(project_dir: Path, docs_dir: Path | None) -> FileDataContext:
    """The project's GX file context (scaffolded on first use), configured for a quiet job."""
    project_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=project_dir)
    variables = context.variables
    variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    variables.analytics_enabled = False
    # Replaces GX's default site under gx/uncommitted, so only the folder we chose is written.
    variables.data_docs_sites = {} if docs_dir is None else {_DOCS_SITE: _docs_site(docs_dir)}
    variables.save()
    return context


def _docs_site(docs_dir: Path) -> dict[str, Any]:
    return {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir),
        },
        "site_index_builder": {
            "class_name": "DefaultSiteIndexBuilder",
            "validation_results_limit": _DOCS_INDEXED_RESULTS,
        },
        "site_section_builders": {
            # No profiling runs here, and GX's default filter would hide any batch whose label
            # contains "profiling" from the validations section.
            "profiling": "None",
            "validations": {"run_name_filter": {"matches_regex": "."}},
        },
    }


def _spark_datasource(context: FileDataContext) -> SparkDatasource:
    """The runner's Spark datasource, reused when the project already has one.

    Not ``add_or_update_spark``: that drops the assets the stored validation definitions
    point to, and GX then fails to load them.
    """
    if _DATASOURCE not in context.data_sources.all():
        # persist=False: GX would cache every batch and never unpersist it.
        return context.data_sources.add_spark(name=_DATASOURCE, persist=False)
    source = context.data_sources.get(_DATASOURCE)
    if not isinstance(source, SparkDatasource):
        raise TypeError(
            f"GX project {context.root_directory} has a {type(source).__name__} named "
            f"{_DATASOURCE!r}; this runner needs it to be a Spark datasource (delete it)"
        )
    return source


def _suite_result(
    validation: ExpectationSuiteValidationResult,
    expected: Sequence[tuple[str | None, str]],
    *,
    suite: str,
    batch_label: str,
    run_time: datetime,
    docs_index: str | None,
) -> SuiteResult:
    """Count and describe results in suite order; an expectation with no result has failed."""
    by_id = {r.expectation_config.id: r for r in validation.results if r.expectation_config}
    failed: list[str] = []
    successful = 0
    for expectation_id, label in expected:
        result = by_id.get(expectation_id)
        if result is None:
            failed.append(f"{label}: not evaluated (GX returned no result)")
        elif result.success is True:
            successful += 1
        else:
            failed.append(_failure(label, result))
    return SuiteResult(
        suite=suite,
        batch_label=batch_label,
        success=not failed,
        evaluated=len(expected),
        successful=successful,
        failed=failed,
        run_time=run_time,
        data_docs_index=docs_index,
    )


def _label(config: ExpectationConfiguration) -> str:
    """``expect_x(column)``, or just ``expect_x`` for table-level expectations."""
    kwargs = config.kwargs
    columns = [str(kwargs[k]) for k in _COLUMN_KWARGS if k in kwargs]
    columns += [str(c) for c in kwargs.get("column_list") or []]
    return f"{config.type}({', '.join(columns)})" if columns else config.type


def _failure(label: str, result: ExpectationValidationResult) -> str:
    error = _error_message(result.exception_info)
    if error is not None:
        return f"{label}: not evaluated ({error})"
    details = result.result or {}
    if details.get("unexpected_count") is not None and "element_count" in details:
        return (
            f"{label}: {details['unexpected_count']} of {details['element_count']} rows unexpected"
        )
    if "observed_value" in details:
        kwargs = result.expectation_config.kwargs if result.expectation_config else {}
        bounds = [f"{k}={kwargs[k]}" for k in ("min_value", "max_value") if k in kwargs]
        expected = f" (expected {', '.join(bounds)})" if bounds else ""
        return f"{label}: observed {details['observed_value']}{expected}"
    return f"{label}: failed"


def _error_message(exception_info: Mapping[str, Any] | None) -> str | None:
    """The first error GX caught for an expectation, or None when it ran cleanly.

    GX reports an error in the expectation itself as one ``{raised_exception, ...}`` mapping,
    and errors in the metrics it needs as a mapping of metric id to such mappings.
    """
    if not exception_info:
        return None
    candidates = (
        [exception_info]
        if "raised_exception" in exception_info
        else [v for v in exception_info.values() if isinstance(v, Mapping)]
    )
    for info in candidates:
        if info.get("raised_exception"):
            message = str(info.get("exception_message") or "unknown error").strip()
            return message.splitlines()[0] if message else "unknown error"
    return None
