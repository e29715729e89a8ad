"""Entry points of the scheduled jobs: one function per job, plain parameters in, JSON out.

A Databricks notebook task, a wheel task (``python -m pipelines.jobs bronze --env prod``) and the
local notebook runner all call these functions. Parameters arrive as widget or command-line
strings, so every function accepts strings as well as typed values and converts them here, once;
an empty string means "not set". Each function loads the environment's settings and its Spark
session itself, runs the same ``pipelines`` functions the CLI runs, and returns a small
JSON-serialisable summary (the notebook's exit value, the wheel task's last line of output).

Settings, Spark and the validators come from the ``Lakehouse`` runtime
(``pipelines.runtime.lakehouse``); the local notebook runner and tests swap its factory with
``pipelines.runtime.using(...)`` to point storage at a temporary folder or reuse a SparkSession.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipelines.bronze.job import run_bronze
from pipelines.config import ConfigError, Settings, TriggerSettings, spark_interval
from pipelines.contracts import ContractError
from pipelines.gold.job import run_gold
from pipelines.jvm import JarsMissingError
from pipelines.lake.catalog import CatalogConflictError
from pipelines.lake.maintenance import MaintenanceError
from pipelines.lake.maintenance import maintain as maintain_tables
from pipelines.lake.snapshots import Snapshots
from pipelines.monitoring.drift_job import check_drift
from pipelines.quality.expectations import QualityConfigError
from pipelines.quality.report import accounting_report, latest_results
from pipelines.runtime import Lakehouse, lakehouse
from pipelines.silver.job import run_silver
from pipelines.silver.sessions_job import run_sessions
from pipelines.streaming.kafka import KafkaUnavailableError, resolve_bootstrap
from pipelines.streaming.queries import StreamingJobError
from pipelines.training.point_in_time import LeakageError
from pipelines.training.recommendations import write_recommendations
from pipelines.training.sets import DEFAULT_SNAPSHOT_TABLES
from pipelines.training.train import train as train_model

if TYPE_CHECKING:
    pass

Summary = dict[str, Any]
TRIGGERS = ("available-now", "processing-time", "config")


def settings_for(env: str) -> Settings:
    """The settings jobs use for ``env`` (notebooks call this rather than ``load_settings`` so
    the local runner's overrides apply to them too)."""
    return lakehouse(_text("env", env)).settings


class AccountingBrokenError(RuntimeError):
    """The silver accounting does not add up: some input rows are not accounted for."""


# -- streaming jobs ----------------------------------------------------------------------------
def bronze(
    env: str,
    trigger: str = "available-now",
    interval: str | None = None,
    timeout: float | str | None = None,
) -> Summary:
    """Kafka -> ``bronze.events_raw``.

    Args:
        trigger: ``available-now`` (drain what Kafka holds, then stop: scheduled runs),
            ``processing-time`` (run continuously every ``interval``) or ``config`` (the
            environment's ``streaming.trigger``).
        interval: processing-time interval, e.g. ``30s`` (default: the environment's).
        timeout: stop a continuous run after this many seconds (default: run until stopped).
    """

    started = time.perf_counter()
    lake = lakehouse(_text("env", env))
    settings = lake.settings
    chosen, timeout_s = _trigger(settings, trigger, interval), _number("timeout", timeout)
    servers = resolve_bootstrap(settings)
    run = run_bronze(
        lake.spark, settings, servers, trigger=chosen, timeout_s=timeout_s, monitor=lake.monitor
    )
    return _summary(
        "bronze",
        settings,
        started,
        trigger=chosen.mode,
        table="bronze.events_raw",
        rows_written=run.stats.rows_written,
        batches_written=run.stats.batches_written,
        replayed_batches_skipped=run.stats.batches_skipped,
        table_version=run.table_version,
        query_id=run.query_id,
        skipped_lost_from_kafka=run.stats.skipped_events,
        data_loss=[gap.as_dict() for gap in run.stats.data_loss],
    )


def silver(
    env: str,
    trigger: str = "available-now",
    interval: str | None = None,
    timeout: float | str | None = None,
) -> Summary:
    """``bronze.events_raw`` -> gate -> ``silver.events`` + ``silver.quarantine``, validated by
    the Great Expectations suite when ``quality.great_expectations.enabled``."""

    started = time.perf_counter()
    lake = lakehouse(_text("env", env))
    settings = lake.settings
    chosen, timeout_s = _trigger(settings, trigger, interval), _number("timeout", timeout)
    gx = lake.great_expectations
    validator = lake.silver_validator()
    run = run_silver(
        lake.spark,
        settings,
        trigger=chosen,
        validator=validator,
        timeout_s=timeout_s,
        monitor=lake.monitor,
    )
    return _summary(
        "silver",
        settings,
        started,
        trigger=chosen.mode,
        great_expectations=gx,
        **run.stats.summary(),
        silver_version=run.silver_version,
        quarantine_version=run.quarantine_version,
        query_id=run.query_id,
    )


def sessions(
    env: str,
    trigger: str = "available-now",
    interval: str | None = None,
    timeout: float | str | None = None,
) -> Summary:
    """New ``silver.events`` -> ``silver.sessions`` (affected users recomputed, MERGEd)."""

    started = time.perf_counter()
    lake = lakehouse(_text("env", env))
    settings = lake.settings
    chosen, timeout_s = _trigger(settings, trigger, interval), _number("timeout", timeout)
    run = run_sessions(
        lake.spark, settings, trigger=chosen, timeout_s=timeout_s, monitor=lake.monitor
    )
    return _summary(
        "sessions",
        settings,
        started,
        trigger=chosen.mode,
        **asdict(run.stats),
        table_version=run.table_version,
        query_id=run.query_id,
    )


def gold(
    env: str,
    trigger: str = "available-now",
    interval: str | None = None,
    timeout: float | str | None = None,
) -> Summary:
    """New ``silver.events`` -> ``gold.user_features`` / ``gold.item_features`` (+ history),
    each batch gated by the gold suites when ``quality.great_expectations.enabled``."""

    started = time.perf_counter()
    lake = lakehouse(_text("env", env))
    settings = lake.settings
    chosen, timeout_s = _trigger(settings, trigger, interval), _number("timeout", timeout)
    gx = lake.great_expectations
    gate = lake.gold_gate()
    run = run_gold(
        lake.spark, settings, trigger=chosen, gate=gate, timeout_s=timeout_s, monitor=lake.monitor
    )
    stats = run.stats
    return _summary(
        "gold",
        settings,
        started,
        trigger=chosen.mode,
        great_expectations=gx,
        batches_published=stats.batches_published,
        batches_rejected=stats.batches_rejected,
        users_published=stats.users_published,
        items_published=stats.items_published,
        latest_feature_ts=max(stats.feature_ts).isoformat() if stats.feature_ts else None,
        rejections=stats.rejections,
        versions=run.versions,
        query_id=run.query_id,
    )


# -- batch jobs --------------------------------------------------------------------------------
def quality_report(env: str, limit: int | str = 10, fail_on_broken: bool | str = True) -> Summary:
    """The silver accounting check and the latest batch and suite results.

    Raises:
        AccountingBrokenError: with ``fail_on_broken``, when a batch's input rows are not all
            in silver, the quarantine or the duplicates (so the scheduled run fails and alerts).
    """

    started = time.perf_counter()
    lake = lakehouse(_text("env", env))
    settings = lake.settings
    top, fail = _integer("limit", limit), _flag("fail_on_broken", fail_on_broken)
    catalog = lake.catalog
    accounting = accounting_report(
        catalog, require_suites=settings.quality.great_expectations.enabled
    )
    latest = latest_results(catalog, settings, top)
    broken = [b["batch_id"] for b in accounting.broken_batches]
    if fail and not accounting.ok:
        raise AccountingBrokenError(
            f"silver accounting is broken in env {settings.env}: batches {broken or 'none'}, "
            f"table mismatches {accounting.mismatches or 'none'}, "
            f"suites {accounting.suite_problems or 'all ran and passed'}; see the details with "
            f"`lakehouse quality check --env {settings.env}`"
        )
    suites = latest["suites"]
    return _summary(
        "quality_report",
        settings,
        started,
        accounting={
            "ok": accounting.ok,
            "batches": accounting.batches,
            "totals": accounting.totals,
            "table_rows": accounting.table_rows,
            "broken_batches": broken,
            "mismatches": accounting.mismatches,
        },
        latest_batches=[
            {
                "batch_id": row["batch_id"],
                "input_rows": row["input_rows"],
                "written_rows": row["written_rows"],
                "quarantined_rows": row["quarantined_rows"],
                "invariant_holds": row["invariant_holds"],
                "processed_at": _iso(row["processed_at"]),
            }
            for row in latest["batches"]
        ],
        suites_checked=len(suites),
        suites_failed=[
            {"suite": r["suite"], "batch": r["batch_label"], "failed": list(r["failed"])}
            for r in suites
            if not r["success"]
        ],
        data_docs=latest["data_docs"],
    )


def train(env: str, snapshot: str | None = None, seed: int | str = 42) -> Summary:
    """Retrain the recommender from ``snapshot``; without one, first pin a fresh dated snapshot
    of silver and gold (``train-<UTC time>``), as the nightly run does."""

    started = time.perf_counter()
    lake = lakehouse(_text("env", env))
    settings = lake.settings
    name, seed_value = _optional("snapshot", snapshot), _integer("seed", seed)
    spark = lake.spark
    created = name is None
    if name is None:
        name = _create_snapshot(lake, f"train-{datetime.now(tz=UTC):%Y%m%dT%H%M%S}")
    run = train_model(spark, settings, snapshot=name, seed=seed_value)
    return _summary("train", settings, started, snapshot_created=created, **asdict(run))


def drift(env: str, snapshot: str | None = None, retrain_on_drift: bool | str = False) -> Summary:
    """PSI of ``gold.user_features`` now vs. ``snapshot`` (default: the champion's), recorded in
    ``quality.drift_results``; with ``retrain_on_drift`` a drifted feature triggers retraining.

    Raises:
        LookupError: no snapshot was given and there is no champion model yet (train first).
    """

    started = time.perf_counter()
    lake = lakehouse(_text("env", env))
    settings = lake.settings
    reference = _optional("snapshot", snapshot)
    retrain = _flag("retrain_on_drift", retrain_on_drift)
    report = check_drift(lake.spark, settings, snapshot=reference, retrain_on_drift=retrain)
    return _summary(
        "drift",
        settings,
        started,
        reference_snapshot=report.reference_snapshot,
        reference_version=report.reference_version,
        current_version=report.current_version,
        drifted=report.drifted,
        features={f.feature: {"psi": f.psi, "status": f.status} for f in report.features},
        retrained=report.retrained,
    )


def maintain(env: str, retention_hours: float | str = 168, dry_run: bool | str = False) -> Summary:
    """OPTIMIZE and VACUUM every table, keeping every file a named snapshot pins."""

    started = time.perf_counter()
    lake = lakehouse(_text("env", env))
    settings = lake.settings
    hours, dry = _number("retention_hours", retention_hours), _flag("dry_run", dry_run)
    report = maintain_tables(
        lake.spark,
        lake.catalog,
        retention_hours=168 if hours is None else hours,
        dry_run=dry,
    )
    tables = [
        {
            "table": row["table"],
            "version_before": row.get("version_before"),
            "version_after": row.get("version_after"),
            "files_compacted": (row.get("compaction") or {}).get("files_removed", 0),
            "files_vacuumed": row.get("vacuumed", 0),
            "bytes_freed": row.get("bytes_freed", 0),
            "pinned_versions": sorted(row.get("pinned_versions") or []),
        }
        for row in report.tables
        if row.get("exists")
    ]
    return _summary("maintain", settings, started, dry_run=report.dry_run, tables=tables)


def batch_recommendations(env: str, k: int | str = 10) -> Summary:
    """Replace ``gold.recommendations`` with the champion's top-k for every active user."""

    started = time.perf_counter()
    lake = lakehouse(_text("env", env))
    settings = lake.settings
    top = _integer("k", k)
    written = write_recommendations(lake.spark, settings, top)
    return _summary("batch_recommendations", settings, started, **written)


JOBS: dict[str, Callable[..., Summary]] = {
    "bronze": bronze,
    "silver": silver,
    "sessions": sessions,
    "gold": gold,
    "quality_report": quality_report,
    "train": train,
    "drift": drift,
    "maintain": maintain,
    "batch_recommendations": batch_recommendations,
}


# -- command line (python_wheel_task / python -m pipelines.jobs) --------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.jobs <job> --env prod [--param value ...]``: run one job and print
    its summary as one JSON line; a known failure prints one ``error:`` line and returns 1."""
    parser = _parser()
    args = vars(parser.parse_args(list(sys.argv[1:] if argv is None else argv)))
    job = JOBS[args.pop("job")]
    given = {name: value for name, value in args.items() if value is not None}
    try:
        summary = job(**given)
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, default=str))
    return 0


def _user_errors() -> tuple[type[Exception], ...]:
    """Failures whose message says what to fix: one line, not a traceback."""

    return (
        ConfigError,
        LookupError,  # unknown snapshot, table not written yet, no champion model
        QualityConfigError,
        ContractError,
        MaintenanceError,
        LeakageError,
        KafkaUnavailableError,
        JarsMissingError,
        CatalogConflictError,
        StreamingJobError,
        AccountingBrokenError,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.jobs", description="Run one scheduled lakehouse job."
    )
    jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    for name, function in JOBS.items():
        doc = (inspect.getdoc(function) or "").split("\n\n")[0]
        sub = jobs.add_parser(name, help=doc, description=doc)
        for param in inspect.signature(function).parameters.values():
            required = param.default is inspect.Parameter.empty
            sub.add_argument(
                f"--{param.name.replace('_', '-')}",
                dest=param.name,
                required=required,
                default=None,
                help="required" if required else f"default: {param.default}",
            )
    return parser


# -- helpers -----------------------------------------------------------------------------------
def _summary(job: str, settings: Settings, started: float, **fields: Any) -> Summary:
    summary: Summary = {"job": job, "env": settings.env, **fields}
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _create_snapshot(lake: Lakehouse, name: str) -> str:
    """Pin silver and gold under ``name``, validated by the gold suites when GX is enabled."""
    Snapshots(lake.catalog).create(
        name,
        DEFAULT_SNAPSHOT_TABLES,
        "created by the train job",
        lake.snapshot_validator(name),
        spark=lake.spark,
    )
    return name


def _trigger(settings: Settings, trigger: str, interval: str | None) -> TriggerSettings:
    mode = _text("trigger", trigger)
    every = _optional("interval", interval)
    if mode not in TRIGGERS:
        raise ConfigError(f"trigger {mode!r} is not one of {', '.join(TRIGGERS)}")
    if every is not None and mode != "processing-time":
        raise ConfigError(
            f"interval {every!r} only applies to trigger processing-time, not {mode}; "
            "drop the interval or set trigger=processing-time"
        )
    if mode == "config":
        return settings.streaming.trigger
    if mode == "available-now":
        return TriggerSettings(mode="available-now")
    if every is None:
        return TriggerSettings(mode="processing-time", interval=settings.streaming.trigger.interval)
    try:
        return TriggerSettings(mode="processing-time", interval=spark_interval(every))
    except ValueError as exc:
        raise ConfigError(f"interval: {exc}") from None


def _text(name: str, value: str) -> str:
    text = str(value).strip()
    if not text:
        raise ConfigError(f"parameter {name} is empty; pass a value (e.g. {name}=prod)")
    return text


def _optional(name: str, value: object) -> str | None:
    """A text parameter where ``None``, ``""`` or ``"none"`` mean "not set" (empty widgets)."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text.lower() in ("", "none", "null") else text


_TRUE, _FALSE = ("true", "1", "yes", "y", "on"), ("false", "0", "no", "n", "off", "")


def _flag(name: str, value: bool | str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"parameter {name}={value!r} is not a boolean; use true or false")


def _integer(name: str, value: int | str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(f"parameter {name}={value!r} is not a whole number") from None


def _number(name: str, value: float | str | None) -> float | None:
    text = _optional(name, value)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"parameter {name}={value!r} is not a number") from None


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


if __name__ == "__main__":
    raise SystemExit(main())
