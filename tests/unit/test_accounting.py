"""``lakehouse quality check`` never reports green when a suite failed or did not run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pipelines.quality.accounting import reconcile, suite_problems

T0 = datetime(2026, 11, 28, tzinfo=UTC)


def batch(batch_id: int, written: int, load_id: str = "q1:r1") -> dict[str, Any]:
    return {
        "table": "silver.events",
        "load_id": load_id,
        "batch_id": batch_id,
        "input_rows": written,
        "written_rows": written,
        "quarantined_rows": 0,
        "dropped_rows": 0,
        "duplicates_in_batch": 0,
        "duplicates_existing": 0,
        "invariant_holds": True,
    }


def suite(
    table: str, batch_id: int, success: bool, minutes: int = 0, load_id: str = "q1:r1"
) -> dict[str, Any]:
    return {
        "table": table,
        "suite": f"{table}_suite",
        "load_id": load_id,
        "batch_id": batch_id,
        "success": success,
        "failed": [] if success else ["expect_column_values_to_not_be_null(event_ts)"],
        "run_time": T0 + timedelta(minutes=minutes),
    }


def test_every_batch_validated_and_passing_is_green() -> None:
    batches = [batch(0, 10), batch(1, 5)]
    suites = [suite("silver.events", 0, True), suite("silver.events", 1, True, 1)]
    assert suite_problems(batches, suites, "silver.events") == []


def test_a_failed_silver_suite_breaks_the_check_and_names_the_expectation() -> None:
    batches = [batch(0, 10), batch(1, 5)]
    suites = [suite("silver.events", 0, True), suite("silver.events", 1, False, 1)]
    (problem,) = suite_problems(batches, suites, "silver.events")
    assert "batch 1" in problem and "expect_column_values_to_not_be_null(event_ts)" in problem

    report = reconcile(batches, {"written": 15})
    assert report.ok
    report.suite_problems.extend(suite_problems(batches, suites, "silver.events"))
    assert not report.ok


def test_a_batch_that_wrote_rows_without_a_suite_result_breaks_the_check() -> None:
    # e.g. a replayed batch that skipped its suite: nothing else would notice
    batches = [batch(0, 10), batch(1, 5), batch(2, 0)]
    suites = [suite("silver.events", 0, True)]
    (problem,) = suite_problems(batches, suites, "silver.events")
    assert "batch 1" in problem and "no suite result" in problem  # batch 2 wrote nothing


def test_a_restarted_run_of_the_same_query_matches_its_suite_results() -> None:
    batches = [batch(3, 7, load_id="q1:r2")]
    same_query = [suite("silver.events", 3, True, load_id="q1:r1")]
    assert suite_problems(batches, same_query, "silver.events") == []
    other_query = [suite("silver.events", 3, True, load_id="q2:r1")]
    assert suite_problems(batches, other_query, "silver.events")


def test_gold_counts_only_its_latest_result() -> None:
    healed = [suite("gold.user_features", 0, False), suite("gold.user_features", 1, True, 5)]
    assert suite_problems([], healed, "silver.events") == []
    failing = [suite("gold.user_features", 0, True), suite("gold.user_features", 1, False, 5)]
    (problem,) = suite_problems([], failing, "silver.events")
    assert problem.startswith("suite gold.user_features_suite failed on gold.user_features")
