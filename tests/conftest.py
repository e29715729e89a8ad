"""Shared fixtures: one local SparkSession, one embedded Kafka broker, per-test settings.

Every table, checkpoint and topic a test touches is its own: storage lives under ``tmp_path`` and
topic names carry a per-test suffix, so tests never see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from pipelines.config import EVENT_TYPES, Settings, load_settings
from pipelines.streaming.kafka import EmbeddedKafka

REPO = Path(__file__).resolve().parent.parent


def make_settings(root: Path, **overrides: Any) -> Settings:
    merged: dict[str, Any] = {"storage": {"root": str(root)}}
    for key, value in overrides.items():
        merged[key] = value
    return load_settings("test", conf_dir=REPO / "conf", overrides=merged, environ={})


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    from pipelines.spark import build_spark

    settings = make_settings(tmp_path_factory.mktemp("spark"))
    session = build_spark(settings, app_name="lakehouse-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[EmbeddedKafka]:
    with EmbeddedKafka() as broker:
        yield broker


@pytest.fixture
def lake_settings(tmp_path: Path, kafka_broker: EmbeddedKafka) -> Settings:
    """Test settings on the embedded broker, with topics no other test uses."""
    suffix = uuid.uuid4().hex[:8]
    topics = {t: f"{t}-{suffix}" for t in EVENT_TYPES} | {
        "dlq": f"dlq-{suffix}",
        "identities": f"identities-{suffix}",
    }
    return make_settings(
        tmp_path / "lake",
        kafka={"bootstrap_servers": kafka_broker.bootstrap_servers, "topics": topics},
    )
