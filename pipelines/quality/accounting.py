"""Where every input row of a gated batch went, and the check that nothing went missing.

The invariant, per micro-batch: ``input = written + quarantined + dropped + duplicates``
(duplicates within the batch plus those already in the table). ``dropped`` is only ever non-zero
when a rule file uses the explicit ``drop`` action.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class BatchAccount:
    """One row of ``quality.batch_results``."""

    table: str
    load_id: str
    query_id: str
    batch_id: int
    source_table: str
    source_start_version: int | None
    source_end_version: int | None
    input_rows: int
    written_rows: int
    quarantined_rows: int
    dropped_rows: int
    duplicates_in_batch: int
    duplicates_existing: int
    quarantined_by_rule: Counter[str] = field(default_factory=Counter)
    dropped_by_rule: Counter[str] = field(default_factory=Counter)
    warnings_by_rule: Counter[str] = field(default_factory=Counter)
    processed_at: datetime = field(default_factory=lambda: datetime.now(tz=UTC))

    @property
    def duplicates(self) -> int:
        return self.duplicates_in_batch + self.duplicates_existing

    @property
    def invariant_holds(self) -> bool:
        return self.input_rows == (
            self.written_rows + self.quarantined_rows + self.dropped_rows + self.duplicates
        )

    def to_row(self) -> dict[str, Any]:
        row = {k: v for k, v in self.__dict__.items() if not isinstance(v, Counter)}
        for name in ("quarantined_by_rule", "dropped_by_rule", "warnings_by_rule"):
            row[name] = list(sorted(getattr(self, name).items()))
        row["invariant_holds"] = self.invariant_holds
        return row


@dataclass
class AccountingReport:
    """``lakehouse quality check``: per-batch invariants plus totals against the tables."""

    batches: int
    broken_batches: list[dict[str, Any]]
    totals: dict[str, int]
    table_rows: dict[str, int]
    mismatches: list[str]
    suite_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.broken_batches and not self.mismatches and not self.suite_problems


def reconcile(results: list[dict[str, Any]], table_rows: dict[str, int]) -> AccountingReport:
    """Check every batch row's invariant, and that the batch totals match the tables' row counts.

    Args:
        results: rows of ``quality.batch_results`` for one table (``silver.events``).
        table_rows: current row counts of the written, quarantine and source tables, keyed
            ``written``, ``quarantined``, ``source``.
    """
    broken = []
    totals = Counter[str]()
    for row in results:
        expected = (
            row["written_rows"]
            + row["quarantined_rows"]
            + row["dropped_rows"]
            + row["duplicates_in_batch"]
            + row["duplicates_existing"]
        )
        if row["input_rows"] != expected or not row["invariant_holds"]:
            broken.append(
                {"batch_id": row["batch_id"], "input": row["input_rows"], "accounted": expected}
            )
        for key in (
            "input_rows",
            "written_rows",
            "quarantined_rows",
            "dropped_rows",
            "duplicates_in_batch",
            "duplicates_existing",
        ):
            totals[key] += int(row[key])
    mismatches = []
    if "written" in table_rows and totals["written_rows"] != table_rows["written"]:
        mismatches.append(
            f"batches wrote {totals['written_rows']} rows "
            f"but the table holds {table_rows['written']}"
        )
    if "quarantined" in table_rows and totals["quarantined_rows"] != table_rows["quarantined"]:
        mismatches.append(
            f"batches quarantined {totals['quarantined_rows']} rows but the quarantine holds "
            f"{table_rows['quarantined']}"
        )
    if "source" in table_rows and totals["input_rows"] > table_rows["source"]:
        mismatches.append(
            f"batches read {totals['input_rows']} rows "
            f"but the source holds only {table_rows['source']}"
        )
    return AccountingReport(len(results), broken, dict(totals), table_rows, mismatches)


def suite_problems(
    batches: list[dict[str, Any]], suites: list[dict[str, Any]], gated: str
) -> list[str]:
    """What the suite results say against the batches: never green when a check failed or did
    not run.

    Args:
        batches: ``quality.batch_results`` rows of the ``gated`` table.
        suites: every ``quality.suite_results`` row.
        gated: the table whose every batch that wrote rows must have a suite result
            (``silver.events``: its rows are published before the suite runs, so any failure
            counts). For other tables (gold, whose failing batches are not published) only each
            table's latest result counts.
    """
    problems = []
    latest: dict[str, dict[str, Any]] = {}
    for row in sorted(suites, key=lambda r: r["run_time"]):
        latest[row["table"]] = row
        if row["table"] == gated and not row["success"]:
            problems.append(_suite_failure(row))
    problems += [_suite_failure(r) for t, r in latest.items() if t != gated and not r["success"]]
    validated = {(r["table"], query_of(r["load_id"]), r["batch_id"]) for r in suites}
    for batch in batches:
        key = (batch["table"], query_of(batch["load_id"]), batch["batch_id"])
        if batch["table"] == gated and batch["written_rows"] > 0 and key not in validated:
            problems.append(
                f"{gated} batch {batch['batch_id']} (query {key[1]}) wrote "
                f"{batch['written_rows']} rows but has no suite result: its suite did not run"
            )
    return problems


def _suite_failure(row: dict[str, Any]) -> str:
    failed = ", ".join(row["failed"]) or "unknown expectations"
    return f"suite {row['suite']} failed on {row['table']} batch {row['batch_id']}: {failed}"


def query_of(load_id: str | None) -> str | None:
    """The streaming query id in a load id (``<query id>:<batch id>``)."""
    return None if load_id is None else load_id.split(":", maxsplit=1)[0]
