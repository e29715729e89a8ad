"""What a chaos part found (``ChaosResult``) and the table ``lakehouse chaos`` ends with.

The definitions every part counts by (also in docs/CHAOS.md):

- ``lost``: events that were acknowledged (by Kafka to a producer, by the collector to a client,
  or handed to the SDK) and are not found where they must be: their topic, the dead-letter topic,
  or (for the job crashes) silver.
- ``duplicated``: distinct event ids that survive more than once where they must not: twice in
  silver, or, in Kafka-only parts, one id under two *different* contents. A copy with the same id
  and the same content is a redelivery (at-least-once), reported as ``redelivered`` in the details
  and removed by silver's exact deduplication.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# The detail keys the final lines read (set by the hostile-inputs part).
PEAK_RSS = "peak_collector_rss_bytes"
MAX_REQUEST_RISE = "max_request_rss_rise_bytes"
MAX_REQUEST_RISE_KIND = "max_request_rss_rise_kind"
BY_KIND = "by_kind"
# Detail keys shown as table columns rather than in the notes.
SECONDS = "seconds"
REDELIVERED = "redelivered"


@dataclass
class ChaosResult:
    """One part of the chaos suite, counted by the definitions in this module's docstring."""

    part: str  # e.g. "job crashes", "broker failover", "collector+broker restart", "hostile inputs"
    injected: int  # crashes / failovers / restarts / hostile requests
    events: int  # events sent or produced in this part
    lost: int  # acknowledged events not found where they must be
    duplicated: int  # duplicates that survive where they must not (distinct ids counted once)
    details: dict[str, Any] = field(default_factory=dict)  # peak memory, per-kind counts, timings
    error: str | None = None  # set when the part could not finish: the suite then fails

    @property
    def failed(self) -> bool:
        """The part broke a rule: something lost or duplicated, or it did not finish."""
        return self.lost > 0 or self.duplicated > 0 or self.error is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def totals(results: Sequence[ChaosResult]) -> dict[str, Any]:
    """The suite's verdict: lost and duplicated over every part, failed parts, peak memory."""
    peaks = [r.details[PEAK_RSS] for r in results if PEAK_RSS in r.details]
    rises = [r for r in results if MAX_REQUEST_RISE in r.details]
    worst = max(rises, key=lambda r: r.details[MAX_REQUEST_RISE], default=None)
    return {
        "lost": sum(r.lost for r in results),
        "duplicated": sum(r.duplicated for r in results),
        "failed_parts": [r.part for r in results if r.failed],
        PEAK_RSS: max(peaks) if peaks else None,
        MAX_REQUEST_RISE: worst.details[MAX_REQUEST_RISE] if worst else None,
        MAX_REQUEST_RISE_KIND: worst.details.get(MAX_REQUEST_RISE_KIND) if worst else None,
    }


def render(results: Sequence[ChaosResult]) -> str:
    """The table of parts, a table of hostile inputs by kind (when that part ran), each part's
    notes, then the lines ``lost N``, ``duplicated N`` and the peak collector memory."""
    rows = [
        [
            r.part,
            f"{r.injected:,}",
            f"{r.events:,}",
            f"{r.lost:,}",
            f"{r.duplicated:,}",
            f"{r.details.get(REDELIVERED, 0):,}",
            f"{r.details[SECONDS]:.0f}" if SECONDS in r.details else "",
            "FAILED" if r.failed else "ok",
        ]
        for r in results
    ]
    lines = [
        _table(
            ["part", "injected", "events", "lost", "duplicated", "redelivered", "seconds", ""],
            rows,
        )
    ]
    for r in results:
        if isinstance(r.details.get(BY_KIND), Mapping) and r.details[BY_KIND]:
            lines += ["", f"{r.part} by kind:", _by_kind_table(r.details[BY_KIND])]
    notes = [(r.part, _notes(r)) for r in results]
    if any(text for _part, text in notes):
        lines.append("")
        lines += [f"{part}: {text}" for part, text in notes if text]
    for r in results:
        if r.error:
            lines.append(f"{r.part} FAILED: {r.error}")
    summary = totals(results)
    lines += ["", f"lost {summary['lost']}", f"duplicated {summary['duplicated']}"]
    lines.append(_memory_line(summary))
    return "\n".join(lines)


def _memory_line(summary: Mapping[str, Any]) -> str:
    peak = summary[PEAK_RSS]
    if peak is None:
        return "peak collector memory: not measured (the hostile-inputs part did not run)"
    line = f"peak collector memory {_mib(peak)}"
    rise = summary[MAX_REQUEST_RISE]
    if rise is not None:
        kind = summary[MAX_REQUEST_RISE_KIND]
        line += f" (largest rise from one request {_mib(rise)}" + (f", {kind})" if kind else ")")
    return line


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _notes(result: ChaosResult) -> str:
    """The details worth a line: scalars and small collections, not the by-kind table."""
    shown = []
    for key, value in result.details.items():
        if key in (BY_KIND, SECONDS, REDELIVERED, PEAK_RSS, MAX_REQUEST_RISE):
            continue
        text = _shown(value)
        if text is not None:
            shown.append(f"{key.replace('_', ' ')}: {text}")
    return "; ".join(shown)


def _shown(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {v}" for k, v in value.items()) if 0 < len(value) <= 12 else None
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) if 0 < len(value) <= 8 else None
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _by_kind_table(by_kind: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for kind, counts in by_kind.items():
        statuses = counts.get("statuses", {})
        rows.append(
            [
                kind,
                f"{counts.get('requests', 0):,}",
                " ".join(f"{status}x{n}" for status, n in sorted(statuses.items())),
                f"{counts.get('events', 0):,}",
                f"{counts.get('to_topic', 0):,}",
                f"{counts.get('to_dlq', 0):,}",
                f"{counts.get('lost', 0):,}",
                _mib(counts["max_rss_rise_bytes"]) if "max_rss_rise_bytes" in counts else "",
            ]
        )
    header = ["kind", "requests", "answers", "events", "topic", "dlq", "lost", "rss rise"]
    return _table(header, rows)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: text columns left-aligned, numeric ones right-aligned."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    numeric = [
        all(_is_number(row[i]) for row in rows if row[i]) and any(row[i] for row in rows)
        for i in range(len(header))
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if num else str(c).ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _is_number(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace(" MiB", "").isdigit()
