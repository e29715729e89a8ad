"""Alerts: thresholds from ``monitoring.alerts`` evaluated against the health snapshot.

Each rule looks at one kind of trouble and names what crossed which threshold, so the message is
actionable on its own (in a terminal, a cron mail, or a chat webhook).
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import asdict, dataclass

from pipelines.config import AlertSettings
from pipelines.monitoring.health import Health


@dataclass(frozen=True)
class Alert:
    rule: str  # freshness | quarantine_rate | backlog | query_stalled | suite_failures | drift
    subject: str  # the table, query or feature
    value: float
    threshold: float
    message: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def evaluate(health: Health, thresholds: AlertSettings) -> list[Alert]:
    """Every alert that fires now, in a stable order."""
    fired: list[Alert] = []
    for table in health.tables:
        freshness = table.freshness_s if table.name in thresholds.freshness_tables else None
        if freshness is not None and freshness > thresholds.freshness_s:
            fired.append(
                Alert(
                    "freshness",
                    table.name,
                    freshness,
                    thresholds.freshness_s,
                    f"{table.name} is {freshness:,.0f}s behind its newest event "
                    f"(threshold {thresholds.freshness_s:,.0f}s); check the queries feeding it",
                )
            )
    q = health.quarantine
    if q.get("batches"):
        series = q["series"][-thresholds.recent_batches :]
        inputs = sum(s["input_rows"] for s in series)
        rate = sum(s["quarantined_rows"] for s in series) / inputs if inputs else 0.0
        if rate > thresholds.quarantine_rate:
            top = ", ".join(f"{k}={v}" for k, v in list(q["by_rule"].items())[:3])
            fired.append(
                Alert(
                    "quarantine_rate",
                    "silver.quarantine",
                    rate,
                    thresholds.quarantine_rate,
                    f"{rate:.1%} of the last {len(series)} batches' rows were quarantined "
                    f"(threshold {thresholds.quarantine_rate:.1%}); top rules: {top or '-'}; "
                    "see `lakehouse quality report`",
                )
            )
    for query in health.queries:
        if query.backlog is not None and query.backlog > thresholds.backlog:
            fired.append(
                Alert(
                    "backlog",
                    query.name,
                    query.backlog,
                    thresholds.backlog,
                    f"query {query.name} has {query.backlog:,} records waiting (threshold "
                    f"{thresholds.backlog:,}); scale it or raise maxOffsetsPerTrigger",
                )
            )
        waiting = query.backlog is None or query.backlog > 0
        if waiting and query.seconds_since_progress > thresholds.stalled_after_s:
            fired.append(
                Alert(
                    "query_stalled",
                    query.name,
                    query.seconds_since_progress,
                    thresholds.stalled_after_s,
                    f"query {query.name} made no progress for {query.seconds_since_progress:,.0f}s "
                    f"with {query.backlog if query.backlog is not None else 'unknown'} records "
                    f"waiting (threshold {thresholds.stalled_after_s:,.0f}s); is it running?",
                )
            )
    failures = health.suites.get("recent_failures", 0)
    if failures > thresholds.suite_failures:
        suites = ", ".join(f"{k}={v}" for k, v in health.suites["failures_by_suite"].items())
        fired.append(
            Alert(
                "suite_failures",
                "great_expectations",
                failures,
                thresholds.suite_failures,
                f"{failures} Great Expectations suite run(s) failed in 24 h ({suites}); "
                "see `lakehouse quality report` and the Data Docs",
            )
        )
    for feature in health.drift:
        if feature["psi"] > thresholds.drift_psi:
            fired.append(
                Alert(
                    "drift",
                    feature["feature"],
                    feature["psi"],
                    thresholds.drift_psi,
                    f"feature {feature['feature']} drifted: PSI {feature['psi']:.3f} (threshold "
                    f"{thresholds.drift_psi}); `lakehouse drift check --retrain-on-drift`",
                )
            )
    return fired


def post_webhook(url: str, alerts: list[Alert], env: str, timeout_s: float = 10.0) -> int:
    """POST the alerts as JSON (with a Slack-compatible ``text``); returns the HTTP status."""
    text = "\n".join(f"[{a.rule}] {a.message}" for a in alerts)
    body = json.dumps(
        {
            "env": env,
            "text": f"lakehouse ({env}): {len(alerts)} alert(s)\n{text}",
            "alerts": [a.to_dict() for a in alerts],
        }
    ).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return int(response.status)
