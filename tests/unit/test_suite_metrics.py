"""The one-pass suite evaluation gives GX's own verdicts and results from one aggregation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import great_expectations.expectations as gxe
import pytest
from great_expectations.expectations import Expectation
from pyspark.sql import SparkSession
from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType
from pyspark.sql.types import TimestampType as Timestamp

from pipelines.config import EVENT_TYPES
from pipelines.quality.suite_metrics import one_pass_supported
from pipelines.quality.suites import (
    SuiteResult,
    SuiteRunner,
    gold_features_expectations,
    silver_events_expectations,
)

NOW = datetime.now(UTC).replace(microsecond=0)
FRESH = (NOW - timedelta(minutes=5)).replace(tzinfo=None)
STALE = (NOW - timedelta(days=9)).replace(tzinfo=None)

GOLD = StructType(
    [
        StructField("user_id", StringType(), True),
        StructField("feature_ts", Timestamp(), True),
        StructField("clicks", LongType(), True),
        StructField("revenue", DoubleType(), True),
        StructField("ctr", DoubleType(), True),
    ]
)
SILVER = StructType(
    [
        StructField("event_id", StringType(), True),
        StructField("user_id", StringType(), True),
        StructField("event_type", StringType(), True),
        StructField("event_ts", Timestamp(), True),
    ]
)


def gold_suite(*, whole_table: bool = False) -> list[Expectation]:
    return gold_features_expectations(
        "user_id", ["clicks", "revenue", "ctr"], ["ctr"], timedelta(days=7), whole_table=whole_table
    )


GOOD_GOLD = [(f"u{i}", FRESH, i, 1.5 * i, i / 10) for i in range(6)]
BAD_GOLD = [
    (None, FRESH, 1, 1.0, 0.5),  # null key
    ("u1", FRESH, -2, 1.0, 0.5),  # negative count
    ("u1", STALE, 3, None, 1.5),  # duplicated key, stale, rate above 1, null amount
    ("u2", FRESH, None, -0.5, -0.1),  # null count, negative amount and rate
    ("u3", FRESH, 4, math.nan, 0.0),  # NaN: Spark orders it above every number
    ("u4", FRESH, 0, 0.0, 1.0),
]
SILVER_ROWS = [
    (f"e{i}", f"u{i % 3}", EVENT_TYPES[i % len(EVENT_TYPES)], NOW - timedelta(minutes=i))
    for i in range(6)
]
BAD_SILVER = [
    *SILVER_ROWS[:2],
    (None, "u1", "click", NOW),
    ("e0", "u2", "click", NOW),
    ("e3", None, "teleport", NOW),
    ("e4", "u1", "click", datetime(2100, 1, 1, tzinfo=UTC)),
    ("e5", "u1", "click", datetime(1999, 1, 1, tzinfo=UTC)),
]

CASES: dict[str, tuple[StructType, list[tuple[Any, ...]], list[Expectation]]] = {
    "good gold": (GOLD, GOOD_GOLD, gold_suite()),
    "bad gold": (GOLD, BAD_GOLD, gold_suite()),
    "bad gold, whole table": (GOLD, BAD_GOLD, gold_suite(whole_table=True)),
    "empty gold": (GOLD, [], gold_suite()),
    "good silver": (SILVER, SILVER_ROWS, silver_events_expectations(EVENT_TYPES, 100)),
    "bad silver": (SILVER, BAD_SILVER, silver_events_expectations(EVENT_TYPES, 5)),
}


@contextmanager
def jobs_counted(spark: SparkSession) -> Iterator[list[int]]:
    """The ids of the Spark jobs that ran while the block did (nothing else runs meanwhile)."""
    tracker = spark.sparkContext.statusTracker()
    before = set(tracker.getJobIdsForGroup())
    jobs: list[int] = []
    yield jobs
    jobs.extend(sorted(set(tracker.getJobIdsForGroup()) - before))


def results_by_expectation(runner: SuiteRunner, suite: str) -> dict[str, tuple[Any, ...]]:
    """Per expectation (type and kwargs) of the suite's last stored result: success, result."""
    store = runner._context.validation_results_store
    (key,) = sorted(store.list_keys(), key=lambda k: k.run_id.run_time)[-1:]
    stored = store.get(key)
    return {
        f"{r.expectation_config.type}{sorted(r.expectation_config.kwargs.items())}": (
            r.success,
            _comparable(r.result),
        )
        for r in stored.results
    }


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    # NaN != NaN; GX's percentages are floats computed the same way.
    return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_pass_gives_gx_verdicts_and_results_from_one_aggregation(
    spark: SparkSession, tmp_path: Path, case: str
) -> None:
    schema, rows, expectations = CASES[case]
    frame = spark.createDataFrame(rows, schema).persist()
    frame.count()
    gx_runner = SuiteRunner(tmp_path / "gx", data_docs=False)
    one_runner = SuiteRunner(tmp_path / "one", data_docs=True)
    for runner in (gx_runner, one_runner):
        runner.register("suite", expectations)
    assert one_pass_supported([e.configuration for e in expectations])

    with jobs_counted(spark) as gx_jobs:
        by_gx = gx_runner.validate(frame, "suite", "batch 1", one_pass=False)
    with jobs_counted(spark) as jobs:
        in_one_pass = one_runner.validate(frame, "suite", "batch 1")

    assert verdicts(in_one_pass) == verdicts(by_gx)
    assert results_by_expectation(one_runner, "suite") == results_by_expectation(gx_runner, "suite")
    # One aggregation: adaptive execution runs the shuffle by the unique column, the partial
    # aggregate and the final row as one job each. GX runs a round of jobs per metric level.
    assert len(jobs) <= 3 < len(gx_jobs), (jobs, gx_jobs)
    assert (tmp_path / "one" / "data_docs" / "index.html").is_file()
    frame.unpersist()


def verdicts(result: SuiteResult) -> tuple[Any, ...]:
    return (result.success, result.evaluated, result.successful, result.failed)


def test_the_bad_gold_batch_fails_with_gx_messages(spark: SparkSession, tmp_path: Path) -> None:
    runner = SuiteRunner(tmp_path / "gx", data_docs=False)
    runner.register("gold.user_features", gold_suite())

    result = runner.validate(spark.createDataFrame(BAD_GOLD, GOLD), "gold.user_features", "b 1")

    oldest = result.failed[-1].split("min_value=")[1].rstrip(")")
    assert result.failed == [
        "expect_column_values_to_not_be_null(user_id): 1 of 6 rows unexpected",
        "expect_column_values_to_be_unique(user_id): 2 of 6 rows unexpected",
        "expect_column_values_to_be_between(clicks): 1 of 6 rows unexpected",
        "expect_column_values_to_be_between(revenue): 1 of 6 rows unexpected",
        "expect_column_values_to_be_between(ctr): 1 of 6 rows unexpected",
        "expect_column_values_to_be_between(ctr): 2 of 6 rows unexpected",
        f"expect_column_min_to_be_between(feature_ts): observed {STALE} (expected "
        f"min_value={oldest})",
    ]


def test_suites_the_one_pass_cannot_compile_go_to_gx(spark: SparkSession, tmp_path: Path) -> None:
    sampled = SuiteRunner(tmp_path / "sampled", data_docs=False, unexpected_samples=3)
    regex = SuiteRunner(tmp_path / "regex", data_docs=False)
    sampled.register("s", gold_suite())
    regex.register("s", [gxe.ExpectColumnValuesToMatchRegex(column="user_id", regex="^u")])
    frame = spark.createDataFrame(BAD_GOLD, GOLD)
    assert not one_pass_supported(
        [gxe.ExpectColumnValuesToMatchRegex(column="user_id", regex="^u").configuration]
    )

    with jobs_counted(spark) as sampled_jobs:
        samples = sampled.validate(frame, "s", "batch 1")
    matched = regex.validate(frame, "s", "batch 1")

    assert len(sampled_jobs) > 1  # GX's metric rounds
    assert "expect_column_values_to_be_unique(user_id): 2 of 6 rows unexpected" in samples.failed
    assert matched.success is True
