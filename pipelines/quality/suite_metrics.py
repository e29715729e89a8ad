"""A Great Expectations suite evaluated from one Spark pass over the data.

GX's Spark engine resolves an expectation's metrics level by level: every dependency level is
its own round of Spark jobs and py4j calls (about nine jobs and over a thousand py4j calls for a
gold candidate batch). Here every metric the suite's expectations depend on is compiled to one
Spark aggregate expression and all of them are computed by a single aggregation over the frame;
GX's own expectation code (``Expectation.metrics_validate``) then turns those values into the
usual ``ExpectationValidationResult``s, so the verdicts, the result dictionaries and the Data
Docs are GX's own. The suite stays the definition.

A metric is compiled exactly as GX's Spark engine defines it: a map metric's unexpected rows
are the non-null rows failing the condition (nulls are the ``not_null`` expectation's business),
``unique`` counts every non-null row whose value occurs more than once, ``column.min``/``max``
ignore nulls. Supported: ``table.row_count``, ``column.min``, ``column.max`` and the
``unexpected_count`` of ``nonnull``, ``unique``, ``between`` and ``in_set`` (what the lakehouse
suites use), with the SUMMARY result format and no unexpected-value samples. Anything else
raises ``UnsupportedMetricError`` and the caller validates with GX itself.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from great_expectations.core.expectation_validation_result import ExpectationValidationResult
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
from great_expectations.validator.exception_info import ExceptionInfo
from great_expectations.validator.metric_configuration import MetricConfiguration
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

# The result format the one-pass path produces: GX's SUMMARY, counts only.
ONE_PASS_RESULT_FORMAT: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 0}

_UNEXPECTED_COUNT = ".unexpected_count"
# The map conditions whose unexpected count is compiled (``column_values.<name>``).
_CONDITIONS = ("nonnull", "unique", "between", "in_set")
# Metrics GX asks for that carry nothing when no samples and no row indices are requested.
_EMPTY_SUFFIXES: dict[str, list[Any] | None] = {
    ".unexpected_values": [],
    ".unexpected_index_list": None,
    ".unexpected_index_query": None,
}


class UnsupportedMetricError(ValueError):
    """An expectation needs a metric the one-pass path does not compile."""


@dataclass(frozen=True)
class _Planned:
    """One expectation: its configuration and, unless it cannot be evaluated, its metrics."""

    configuration: ExpectationConfiguration
    metrics: tuple[MetricConfiguration, ...]
    error: str | None = None  # why it cannot be evaluated (a missing column), as GX says it


def one_pass_supported(
    configurations: Sequence[ExpectationConfiguration],
    result_format: Mapping[str, Any] = ONE_PASS_RESULT_FORMAT,
) -> bool:
    """Whether every expectation can be evaluated from one pass (else use GX's validator)."""
    try:
        for configuration in configurations:
            for metric in _dependencies(configuration, result_format):
                _check_supported(metric, result_format)
    except UnsupportedMetricError:
        return False
    return True


def evaluate_in_one_pass(
    frame: DataFrame,
    configurations: Sequence[ExpectationConfiguration],
    result_format: Mapping[str, Any] = ONE_PASS_RESULT_FORMAT,
) -> list[ExpectationValidationResult]:
    """Validate ``frame`` against ``configurations`` with one aggregation (one Spark action).

    Returns one result per configuration, in order, as GX's validator builds them; an
    expectation on a missing column, or whose evaluation raises, fails with the error in its
    ``exception_info`` (as GX reports it), never passes.

    Raises:
        UnsupportedMetricError: an expectation needs a metric this module does not compile.
    """
    columns = set(frame.columns)
    planned = [_plan(c, result_format, columns) for c in configurations]
    aggregates: dict[Any, Column] = {}
    windowed: dict[str, str] = {}  # column -> the name of its per-value row count
    for plan in planned:
        for metric in plan.metrics:
            if metric.id not in aggregates and _value_of_nothing(metric) is _COMPUTED:
                aggregates[metric.id] = _aggregate(metric, windowed)
    names = {metric_id: f"_m{i}" for i, metric_id in enumerate(aggregates)}
    source = frame
    for column, counted in windowed.items():
        source = source.withColumn(counted, F.count(F.lit(1)).over(Window.partitionBy(column)))
    row = (
        source.agg(*(expr.alias(names[i]) for i, expr in aggregates.items())).first()
        if aggregates
        else None
    )
    values: dict[Any, Any] = {}
    for plan in planned:
        for metric in plan.metrics:
            empty = _value_of_nothing(metric)
            values[metric.id] = row[names[metric.id]] if empty is _COMPUTED and row else empty
    return [_result(plan, values, result_format) for plan in planned]


_COMPUTED = object()  # marks a metric whose value comes from the aggregation


def _plan(
    configuration: ExpectationConfiguration,
    result_format: Mapping[str, Any],
    columns: set[str],
) -> _Planned:
    metrics = _dependencies(configuration, result_format)
    for metric in metrics:
        _check_supported(metric, result_format)
        column = metric.metric_domain_kwargs.get("column")
        if column is not None and column not in columns:
            return _Planned(
                configuration, (), f'The column "{column}" in BatchData does not exist.'
            )
    return _Planned(configuration, tuple(metrics))


def _dependencies(
    configuration: ExpectationConfiguration, result_format: Mapping[str, Any]
) -> list[MetricConfiguration]:
    expectation = configuration.to_domain_obj()
    dependencies = expectation.get_validation_dependencies(
        execution_engine=None, runtime_configuration={"result_format": dict(result_format)}
    )
    return list(dependencies.get_metric_configurations())


def _check_supported(metric: MetricConfiguration, result_format: Mapping[str, Any]) -> None:
    name = metric.metric_name
    domain = metric.metric_domain_kwargs
    if domain.get("row_condition") is not None:
        raise UnsupportedMetricError(f"{name}: row conditions are not compiled")
    if result_format.get("result_format") != "SUMMARY" or result_format.get(
        "partial_unexpected_count"
    ):
        raise UnsupportedMetricError(f"{name}: only SUMMARY without samples is compiled")
    if name in ("table.row_count", "column.min", "column.max"):
        return
    if any(name.endswith(suffix) for suffix in _EMPTY_SUFFIXES):
        return
    if name.endswith(_UNEXPECTED_COUNT) and _condition_name(name) in _CONDITIONS:
        return
    raise UnsupportedMetricError(f"metric {name} is not compiled to one Spark pass")


def _value_of_nothing(metric: MetricConfiguration) -> Any:
    """The value of a metric that needs no data (samples not asked for), else ``_COMPUTED``."""
    for suffix, value in _EMPTY_SUFFIXES.items():
        if metric.metric_name.endswith(suffix):
            return value
    return _COMPUTED


def _condition_name(metric_name: str) -> str:
    return metric_name.removeprefix("column_values.").removesuffix(_UNEXPECTED_COUNT)


def _aggregate(metric: MetricConfiguration, windowed: dict[str, str]) -> Column:
    """The Spark aggregate computing ``metric`` as GX's Spark engine defines it."""
    name = metric.metric_name
    if name == "table.row_count":
        return F.count(F.lit(1))
    column_name = str(metric.metric_domain_kwargs["column"])
    column = F.col(column_name)
    if name == "column.min":
        return F.min(column)
    if name == "column.max":
        return F.max(column)
    kwargs = metric.metric_value_kwargs
    condition = _condition_name(name)
    if condition == "unique":
        # Every non-null row whose value occurs more than once. GX counts a window condition's
        # rows (0 on an empty frame) ...
        counted = windowed.setdefault(column_name, f"_n{len(windowed)}")
        return F.count_if(column.isNotNull() & (F.col(counted) > 1))
    if condition == "nonnull":  # GX does not leave nulls out of this one
        unexpected = column.isNull()
    elif condition == "in_set":
        unexpected = column.isNotNull() & ~column.isin(list(kwargs["value_set"]))
    else:
        unexpected = column.isNotNull() & ~_between(column, kwargs)
    # ... and sums a map condition's flags (null on an empty frame).
    return F.sum(F.when(unexpected, 1).otherwise(0))


def _between(column: Column, kwargs: Mapping[str, Any]) -> Column:
    """GX's ``column_values.between`` condition (inclusive unless ``strict_*``)."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is None and high is None:
        raise ValueError("min_value and max_value cannot both be None")
    if low is not None and high is not None and low > high:
        raise ValueError("min_value cannot be greater than max_value")
    expected = F.lit(True)
    if low is not None:
        expected = expected & (column > low if kwargs.get("strict_min") else column >= low)
    if high is not None:
        expected = expected & (column < high if kwargs.get("strict_max") else column <= high)
    return expected


def _result(
    plan: _Planned, values: Mapping[Any, Any], result_format: Mapping[str, Any]
) -> ExpectationValidationResult:
    if plan.error is not None:
        return _failed(plan.configuration, plan.error, "")
    try:
        expectation = plan.configuration.to_domain_obj()
        return expectation.metrics_validate(
            metrics={m.id: values[m.id] for m in plan.metrics},
            runtime_configuration={"result_format": dict(result_format)},
            execution_engine=None,
        )
    except Exception as error:  # GX's validator turns any evaluation error into a failure
        return _failed(plan.configuration, str(error), traceback.format_exc())


def _failed(
    configuration: ExpectationConfiguration, message: str, trace: str
) -> ExpectationValidationResult:
    return ExpectationValidationResult(
        success=False,
        expectation_config=configuration,
        exception_info=ExceptionInfo(exception_traceback=trace, exception_message=message),
    )
