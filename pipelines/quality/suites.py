"""Great Expectations suites run on Spark micro-batches, with results and Data Docs.

A ``SuiteRunner`` owns one GX *file* context rooted at a project folder and builds it once: the
streaming job validates every micro-batch (or every N) through the same context, so GX's
objects are created at ``register`` and reused by every ``validate``. Per suite there is one
dataframe asset, one whole-dataframe batch definition, one validation definition and one
checkpoint, all named after the suite, so repeated calls and restarts on the same folder reuse
them instead of piling up new names.

A suite is evaluated from one Spark aggregation over the batch when ``suite_metrics`` compiles
all its metrics (every suite here does): GX's expectation code turns the values into its usual
results, which are stored and rendered like a checkpoint run's. Otherwise GX's own validator
runs its rounds of metric jobs.

GX output is kept out of the job's logs and off the network through the context's own config:
``progress_bars`` off (the "Calculating Metrics" bars) and ``analytics_enabled`` off. (GX 1.24
has no usage-statistics sender left, so the flag only guards a future upgrade.) Every Data Docs
site other than ours is dropped, and the datasource does not cache batches.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.checkpoint import Checkpoint, UpdateDataDocsAction, ValidationAction
from great_expectations.constants import DATAFRAME_REPLACEMENT_STR
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.core.expectation_validation_result import (
    ExpectationSuiteValidationResult,
    ExpectationValidationResult,
)
from great_expectations.data_context import FileDataContext
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from great_expectations.datasource.fluent import SparkDatasource
from great_expectations.expectations import Expectation
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
from great_expectations.util import convert_to_json_serializable
from great_expectations.validator.validation_statistics import calc_validation_statistics
from pyspark.sql import DataFrame

from pipelines.quality.suite_metrics import evaluate_in_one_pass, one_pass_supported

log = logging.getLogger(__name__)

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
        self._unexpected_samples = unexpected_samples
        project_dir = project_dir.resolve()
        self._docs_dir = project_dir / DATA_DOCS_DIR if data_docs else None
        self._lock = threading.Lock()
        self._context = _file_context(project_dir, self._docs_dir)
        self._source = _spark_datasource(self._context)
        self._checkpoints: dict[str, Checkpoint] = {}
        self._validations: dict[str, gx.ValidationDefinition] = {}
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
            self._validations[suite_name] = validation
            self._expectations[suite_name] = [
                (e.id, _label(e.configuration)) for e in suite.expectations
            ]

    def validate(
        self,
        df: DataFrame,
        suite_name: str,
        batch_label: str,
        *,
        one_pass: bool | None = None,
    ) -> SuiteResult:
        """Run the suite on ``df`` and, when enabled, add the result to Data Docs.

        By default (``one_pass`` None) a suite whose metrics ``suite_metrics`` compiles, with no
        unexpected-value samples asked for, is evaluated from one Spark aggregation over ``df``
        (``evaluate_in_one_pass``); otherwise, or with ``one_pass=False``, GX's validator runs
        its own metric rounds (several Spark jobs: persist ``df`` first if it is expensive to
        recompute). Either way the results are GX's (stored, and rendered in Data Docs, the
        same way). An expectation that could not be evaluated (an error inside GX, a missing
        column) is reported as failed with the error, never as passed.
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
            validation_definition = self._validations[suite_name]
            configurations = validation_definition.suite.expectation_configurations
            if one_pass is None:
                one_pass = self._unexpected_samples == 0 and one_pass_supported(
                    configurations, self._result_format
                )
            validation = (
                self._validate_in_one_pass(df, checkpoint, validation_definition, run_id)
                if one_pass
                else None
            )
            if validation is None:
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

    def _validate_in_one_pass(
        self,
        df: DataFrame,
        checkpoint: Checkpoint,
        validation_definition: gx.ValidationDefinition,
        run_id: gx.RunIdentifier,
    ) -> ExpectationSuiteValidationResult | None:
        """What ``checkpoint.run`` does, with the metrics from one aggregation: the results,
        stored in the project's validation results store and rendered in Data Docs. None when
        the aggregation failed: the caller then runs GX's validator."""
        suite = validation_definition.suite
        # The batch GX would validate: its id and metadata, without any Spark job.
        batch = validation_definition.batch_definition.get_batch(batch_parameters={"dataframe": df})
        configurations = []
        for configuration in suite.expectation_configurations:
            evaluated = copy.deepcopy(configuration)
            evaluated.kwargs.update({"batch_id": batch.id})
            configurations.append(evaluated)
        try:
            results = evaluate_in_one_pass(df, configurations, self._result_format)
        except Exception as error:  # e.g. a bound Spark cannot compare with the column's type
            # GX's validator pins an error on the expectation that raised it, not the suite.
            log.warning("one-pass validation of %s failed (%s); using GX", suite.name, error)
            return None
        statistics = calc_validation_statistics(results)
        validation = ExpectationSuiteValidationResult(
            results=results,
            success=statistics.success,
            suite_name=suite.name,
            statistics={
                "evaluated_expectations": statistics.evaluated_expectations,
                "successful_expectations": statistics.successful_expectations,
                "unsuccessful_expectations": statistics.unsuccessful_expectations,
                "success_percent": statistics.success_percent,
            },
            meta={
                "great_expectations_version": gx.__version__,
                "batch_spec": convert_to_json_serializable(batch.batch_spec),
                "batch_markers": batch.batch_markers,
                "active_batch_definition": convert_to_json_serializable(batch.batch_definition),
                "validation_id": validation_definition.id,
                "checkpoint_id": checkpoint.id,
                "run_id": run_id,
                "validation_time": run_id.run_time,
                "batch_parameters": {"dataframe": DATAFRAME_REPLACEMENT_STR},
            },
            batch_id=batch.id,
        )
        suite_key = ExpectationSuiteIdentifier(name=suite.name)
        key = ValidationResultIdentifier(
            expectation_suite_identifier=suite_key, run_id=run_id, batch_identifier=batch.id
        )
        self._context.validation_results_store.store_validation_results(
            suite_validation_result=validation,
            suite_validation_result_identifier=key,
            expectation_suite_identifier=suite_key,
        )
        if self._docs_dir is not None:
            # As GX's UpdateDataDocsAction: the result's page, its suite's page and the index
            # (GX's annotation admits one kind of identifier per list; the action mixes both).
            pages: list[Any] = [key, suite_key]
            self._context.build_data_docs(site_names=[_DOCS_SITE], resource_identifiers=pages)
        return validation

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
