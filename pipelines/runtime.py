"""The Lakehouse runtime: one environment's settings and everything built from them, once.

``Lakehouse`` is the one place that decides what runs: the settings of an environment, its
SparkSession (built on first use, by ``pipelines.spark.build_spark`` unless a factory is given),
the catalog, the contract registry, and the validators config switches on (the Great
Expectations suites of silver and gold, the snapshot check). The CLI, the scheduled jobs, the
demo and the local notebook runner all get theirs from ``lakehouse(env)``; nothing else chooses
a session or reads ``quality.great_expectations.enabled``.

``lakehouse(env)`` builds a ``Lakehouse`` with the current ``LakehouseFactory``: by default
``conf/<env>.yaml`` and ``build_spark`` (which returns the cluster's session on Databricks). The
local notebook runner and tests swap it with ``using(factory)`` to point storage at a temporary
folder or to share one SparkSession.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property

from pyspark.sql import SparkSession

from pipelines.config import DEFAULT_ENV, ENV_VAR, Settings, load_settings
from pipelines.contracts import ContractRegistry
from pipelines.gold.job import GoldGate, gold_snapshot_validator, gold_suite_gate
from pipelines.lake.catalog import Catalog
from pipelines.lake.snapshots import Validator as SnapshotValidator
from pipelines.monitoring.progress import ProgressRecorder, progress_recorder
from pipelines.silver.job import BatchValidator, silver_suite_validator
from pipelines.spark import build_spark
from pipelines.streaming.kafka import resolve_bootstrap
from pipelines.tables import LAKE_TABLES

SparkFactory = Callable[[Settings], SparkSession]


class Lakehouse:
    """An environment's settings, and its session, catalog and validators made from them once."""

    def __init__(self, settings: Settings, spark: SparkFactory = build_spark) -> None:
        self.settings = settings
        self.spark_factory = spark

    @cached_property
    def spark(self) -> SparkSession:
        """The SparkSession, built on first use (commands that need none never start a JVM)."""
        return self.spark_factory(self.settings)

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog.for_settings(self.settings, LAKE_TABLES)

    @cached_property
    def monitor(self) -> ProgressRecorder:
        """Records every query's progress into ``monitoring.query_progress`` (a listener on the
        session, registered once); the jobs are handed it when they start their queries."""
        return progress_recorder(self.spark, self.catalog)

    @cached_property
    def contracts(self) -> ContractRegistry:
        return ContractRegistry()

    @property
    def great_expectations(self) -> bool:
        """Whether the Great Expectations suites gate silver, gold and snapshots."""
        return self.settings.quality.great_expectations.enabled

    def silver_validator(self) -> BatchValidator | None:
        """The silver.events suite run on every written batch, when enabled."""
        return (
            silver_suite_validator(self.settings, self.catalog) if self.great_expectations else None
        )

    def gold_gate(self) -> GoldGate | None:
        """The gold suites every candidate batch must pass before it is published, when enabled."""
        return gold_suite_gate(self.settings, self.catalog) if self.great_expectations else None

    def snapshot_validator(
        self, snapshot: str, *, enabled: bool | None = None
    ) -> SnapshotValidator | None:
        """The gold suites a table must pass at the version a snapshot pins: when ``enabled``,
        or by default when the Great Expectations suites are."""
        if not (self.great_expectations if enabled is None else enabled):
            return None
        return gold_snapshot_validator(self.spark, self.settings, self.catalog, snapshot)

    def kafka_bootstrap(self) -> str:
        """The brokers' addresses (the embedded broker's, found from its state file, if so
        configured); raises ``KafkaUnavailableError`` naming the fix when none answer."""
        return resolve_bootstrap(self.settings)


@dataclass(frozen=True)
class LakehouseFactory:
    """How ``lakehouse(env)`` makes settings and a SparkSession (swapped with ``using``)."""

    load_settings: Callable[[str], Settings] = load_settings
    spark: SparkFactory = build_spark

    def lakehouse(self, env: str | None) -> Lakehouse:
        return Lakehouse(
            self.load_settings(env or os.environ.get(ENV_VAR) or DEFAULT_ENV), self.spark
        )


_DEFAULT = LakehouseFactory()
_CURRENT: ContextVar[LakehouseFactory | None] = ContextVar("pipelines_lakehouse", default=None)


@contextmanager
def using(factory: LakehouseFactory) -> Iterator[LakehouseFactory]:
    """Build every ``lakehouse(env)`` inside the ``with`` block with ``factory``."""
    token = _CURRENT.set(factory)
    try:
        yield factory
    finally:
        _CURRENT.reset(token)


def lakehouse(env: str | None = None) -> Lakehouse:
    """The ``Lakehouse`` of ``env`` (default ``$LAKEHOUSE_ENV`` or ``local``)."""
    return (_CURRENT.get() or _DEFAULT).lakehouse(env)
