from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import great_expectations.expectations as gxe
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from pipelines.config import EVENT_TYPES
from pipelines.quality.suites import SuiteRunner, silver_events_expectations
from pipelines.silver.tables import SILVER_EVENTS

pytestmark = pytest.mark.streaming

SUITE = SILVER_EVENTS.name
SCHEMA = StructType(
    [SILVER_EVENTS.schema[c] for c in ("event_id", "user_id", "event_type", "event_ts")]
)
NOW = datetime.now(UTC).replace(microsecond=0)
MAX_ROWS = 100

Row = tuple[str | None, str | None, str | None, datetime | None]


def clean_rows(n: int = 6) -> list[Row]:
    return [
        (f"e{i}", f"u{i % 3}", EVENT_TYPES[i % len(EVENT_TYPES)], NOW - timedelta(minutes=i))
        for i in range(n)
    ]


def bad_rows() -> list[Row]:
    """Six rows: one null event_id, one duplicate event_id, one unknown type, one in 2100."""
    rows = clean_rows(6)
    rows[1] = (None, "u1", "click", NOW)
    rows[2] = ("e0", "u2", "click", NOW)
    rows[3] = ("e3", "u0", "teleport", NOW)
    rows[4] = ("e4", "u1", "click", datetime(2100, 1, 1, tzinfo=UTC))
    return rows


def events(spark: SparkSession, rows: list[Row]) -> DataFrame:
    return spark.createDataFrame(rows, SCHEMA)


def runner_for(
    project: Path, max_rows: int = MAX_ROWS, data_docs: bool = True, samples: int = 0
) -> SuiteRunner:
    runner = SuiteRunner(project, data_docs=data_docs, unexpected_samples=samples)
    runner.register(SUITE, silver_events_expectations(EVENT_TYPES, max_rows))
    return runner


def page_text(page: Path) -> str:
    """The visible text of a Data Docs page, whitespace collapsed."""
    markup = re.sub(r"<(script|style).*?</\1>", " ", page.read_text(), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", markup)))


def validation_pages(project: Path) -> list[Path]:
    return sorted((project / "data_docs" / "validations").rglob("*.html"))


def test_clean_batch_passes_every_expectation(spark: SparkSession, tmp_path: Path) -> None:
    runner = runner_for(tmp_path / "gx-project")
    expectations = silver_events_expectations(EVENT_TYPES, MAX_ROWS)

    result = runner.validate(events(spark, clean_rows()), SUITE, "batch 1")

    assert result.success is True
    assert result.evaluated == len(expectations) == 8
    assert result.successful == 8
    assert result.failed == []
    index = tmp_path / "gx-project" / "data_docs" / "index.html"
    assert runner.data_docs_index == index
    assert result.data_docs_index == str(index)
    assert index.is_file()
    assert result.run_time.utcoffset() == timedelta(0)
    assert abs(result.run_time - datetime.now(UTC)) < timedelta(minutes=5)
    assert result.to_row() == {
        "suite": "silver.events",
        "batch_label": "batch 1",
        "success": True,
        "evaluated": 8,
        "successful": 8,
        "failed_count": 0,
        "failed": [],
        "run_time": result.run_time.isoformat(),
        "data_docs_index": str(index),
    }


def test_bad_batch_fails_exactly_the_broken_expectations_and_docs_show_them(
    spark: SparkSession, tmp_path: Path
) -> None:
    project = tmp_path / "gx-project"
    runner = runner_for(project, samples=5)

    result = runner.validate(events(spark, bad_rows()), SUITE, "batch 7")

    assert result.success is False
    assert (result.evaluated, result.successful) == (8, 4)
    assert result.failed == [
        "expect_column_values_to_not_be_null(event_id): 1 of 6 rows unexpected",
        "expect_column_values_to_be_in_set(event_type): 1 of 6 rows unexpected",
        "expect_column_values_to_be_between(event_ts): 1 of 6 rows unexpected",
        # Both rows carrying the duplicated id are unexpected; the null id is not counted.
        "expect_column_values_to_be_unique(event_id): 2 of 6 rows unexpected",
    ]
    assert result.to_row()["failed_count"] == 4

    assert (project / "data_docs" / "index.html").is_file()
    (page,) = validation_pages(project)
    assert "batch 7" in page.parts
    text = page_text(page)
    assert "Status: Failed" in text
    assert "Evaluated Expectations 8 Successful Expectations 4 Unsuccessful Expectations 4" in text
    assert "values must never be null. 1 unexpected values found." in text
    assert "values must be unique. 2 unexpected values found." in text
    assert "Unexpected Value Count teleport 1" in text
    assert "Unexpected Value Count 2100-01-01T00:00:00 1" in text


def test_expectation_gx_cannot_evaluate_counts_as_failed(
    spark: SparkSession, tmp_path: Path
) -> None:
    runner = SuiteRunner(tmp_path / "gx-project", data_docs=False)
    runner.register(
        "silver.events_broken",
        [
            gxe.ExpectColumnValuesToNotBeNull(column="event_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="no_such_column"),
        ],
    )

    result = runner.validate(events(spark, clean_rows()), "silver.events_broken", "batch 1")

    assert result.success is False
    assert (result.evaluated, result.successful) == (2, 1)
    (failure,) = result.failed
    assert failure.startswith(
        "expect_column_values_to_not_be_null(no_such_column): not evaluated ("
    )
    assert 'The column "no_such_column" in BatchData does not exist' in failure


def test_empty_batch_fails_only_the_row_count(spark: SparkSession, tmp_path: Path) -> None:
    runner = runner_for(tmp_path / "gx-project")

    result = runner.validate(events(spark, []), SUITE, "batch 0")

    assert result.success is False
    assert (result.evaluated, result.successful) == (8, 7)
    assert result.failed == [
        "expect_table_row_count_to_be_between: observed 0 (expected min_value=1, max_value=100)"
    ]


def test_one_runner_validates_repeatedly_and_register_replaces_the_suite(
    spark: SparkSession, tmp_path: Path
) -> None:
    project = tmp_path / "gx-project"
    runner = runner_for(project)
    df = events(spark, clean_rows(4))

    first = [runner.validate(df, SUITE, f"batch {i}") for i in range(2)]
    runner.register(SUITE, silver_events_expectations(EVENT_TYPES, max_rows=3))
    capped = runner.validate(df, SUITE, "batch 2")
    runner.register(SUITE, [gxe.ExpectColumnValuesToBeUnique(column="event_id")])
    reduced = runner.validate(df, SUITE, "batch 3")

    assert [(r.batch_label, r.success, r.evaluated) for r in first] == [
        ("batch 0", True, 8),
        ("batch 1", True, 8),
    ]
    assert first[0].run_time < first[1].run_time
    assert capped.evaluated == 8
    assert capped.failed == [
        "expect_table_row_count_to_be_between: observed 4 (expected min_value=1, max_value=3)"
    ]
    assert (reduced.success, reduced.evaluated, reduced.failed) == (True, 1, [])
    # GX's Spark datasource caches each batch by default and never releases it.
    assert (df.storageLevel.useMemory, df.storageLevel.useDisk) == (False, False)
    # One of each GX object per suite, reused across calls: nothing accumulates but results.
    gx_dir = project / "gx"
    assert sorted(p.name for p in (gx_dir / "checkpoints").iterdir()) == ["silver.events.json"]
    assert sorted(p.name for p in (gx_dir / "validation_definitions").iterdir()) == [
        "silver.events.json"
    ]
    assert [p.parts[-3] for p in validation_pages(project)] == [f"batch {i}" for i in range(4)]


def test_a_runner_keeps_its_project_when_others_exist_and_after_a_restart(
    spark: SparkSession, tmp_path: Path
) -> None:
    df = events(spark, clean_rows())
    runner_a = runner_for(tmp_path / "a")
    runner_a.validate(df, SUITE, "batch 1")
    # A second project becomes GX's process-wide current context...
    runner_for(tmp_path / "b")
    after_b = runner_a.validate(events(spark, bad_rows()), SUITE, "batch 2")
    # ...and a new runner on an existing project reuses what is stored there.
    restarted = runner_for(tmp_path / "a")
    after_restart = restarted.validate(df, SUITE, "batch 3")

    assert (after_b.success, len(after_b.failed)) == (False, 4)
    assert after_restart.success is True
    assert [p.parts[-3] for p in validation_pages(tmp_path / "a")] == [
        "batch 1",
        "batch 2",
        "batch 3",
    ]
    assert validation_pages(tmp_path / "b") == []


def test_without_data_docs_nothing_is_rendered(spark: SparkSession, tmp_path: Path) -> None:
    project = tmp_path / "gx-project"
    runner = runner_for(project, data_docs=False)

    result = runner.validate(events(spark, bad_rows()), SUITE, "batch 1")

    assert runner.data_docs_index is None
    assert (result.success, result.data_docs_index) == (False, None)
    assert not (project / "data_docs").exists()
    assert not list((project / "gx" / "uncommitted" / "data_docs").rglob("*.html"))


def test_unknown_suite_and_unusable_labels_are_rejected(
    spark: SparkSession, tmp_path: Path
) -> None:
    runner = runner_for(tmp_path / "gx-project", data_docs=False)
    df = events(spark, clean_rows(1))

    with pytest.raises(KeyError, match=r"'gold\.nothing' is not registered .*silver\.events"):
        runner.validate(df, "gold.nothing", "batch 1")
    with pytest.raises(ValueError, match="folder name"):
        runner.validate(df, SUITE, "2026/11/26 batch 1")
    with pytest.raises(ValueError, match="at least one expectation"):
        runner.register("silver.empty", [])
