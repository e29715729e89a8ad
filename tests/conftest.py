"""Shared fixtures: one local SparkSession, one embedded Kafka broker, per-test settings.

Every table, checkpoint and topic a test touches is its own: storage lives under ``tmp_path`` and
topic names carry a per-test suffix, so tests never see each other's data.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from pipelines.config import EVENT_TYPES, Settings, load_settings
from pipelines.spark import build_spark
from pipelines.streaming.kafka import EmbeddedKafka

REPO = Path(__file__).resolve().parent.parent


def make_settings(root: Path, **overrides: Any) -> Settings:
    merged: dict[str, Any] = {"storage": {"root": str(root)}}
    for key, value in overrides.items():
        merged[key] = value
    return load_settings("test", conf_dir=REPO / "conf", overrides=merged, environ={})


def unique_topics(suffix: str | None = None) -> dict[str, str]:
    """``kafka.topics`` no other test uses: every event type, the DLQ and identities."""
    suffix = suffix or uuid.uuid4().hex[:8]
    return {t: f"{t}-{suffix}" for t in EVENT_TYPES} | {
        "dlq": f"dlq-{suffix}",
        "identities": f"identities-{suffix}",
    }


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on right now (for a server to take, or to refuse)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def conf_folder(root: Path, base_yaml: str, env: str) -> dict[str, str]:
    """A config folder with ``base.yaml`` and an empty ``<env>.yaml``; returns the environment
    variables that point the CLI at it."""
    conf = root / "conf"
    conf.mkdir()
    (conf / "base.yaml").write_text(base_yaml)
    (conf / f"{env}.yaml").write_text("{}\n")
    return {"LAKEHOUSE_CONF_DIR": str(conf)}


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:

    settings = make_settings(tmp_path_factory.mktemp("spark"))
    session = build_spark(settings, app_name="lakehouse-tests")
    yield session
    session.stop()


@dataclass(frozen=True)
class SharedBroker:
    """Where the session's Apache Kafka broker listens (all a test needs of it)."""

    bootstrap_servers: str


_BROKER_KEY = "lakehouse_kafka_bootstrap"
_broker_stash = pytest.StashKey[EmbeddedKafka]()


def _distributed(config: pytest.Config) -> bool:
    """True in the pytest-xdist controller of a run with workers (``-n N``)."""
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", 0))


def pytest_configure(config: pytest.Config) -> None:
    # With xdist, the controller owns the one broker of the run and hands its address to every
    # worker (pytest_configure_node), so two workers share a broker as one process would.
    if _distributed(config):
        broker = EmbeddedKafka(partitions=4)
        broker.start()
        config.stash[_broker_stash] = broker


def pytest_unconfigure(config: pytest.Config) -> None:
    broker = config.stash.get(_broker_stash, None)
    if broker is not None:
        broker.stop()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    broker = node.config.stash.get(_broker_stash, None)
    if broker is not None:
        node.workerinput[_BROKER_KEY] = broker.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[SharedBroker]:
    """One Apache Kafka broker (a JVM, ~5 s to start) for the whole run, shared by the xdist
    workers. Test topics are created on first produce with 4 partitions: enough to exercise
    multi-partition reads, few enough to keep Spark's tasks per micro-batch low on two cores."""
    shared = getattr(request.config, "workerinput", {}).get(_BROKER_KEY)
    if shared:
        yield SharedBroker(shared)
        return
    with EmbeddedKafka(partitions=4) as broker:
        yield SharedBroker(broker.bootstrap_servers)


@pytest.fixture
def lake_settings(tmp_path: Path, kafka_broker: SharedBroker) -> Settings:
    """Test settings on the embedded broker, with topics no other test uses."""
    topics = unique_topics()
    return make_settings(
        tmp_path / "lake",
        kafka={"bootstrap_servers": kafka_broker.bootstrap_servers, "topics": topics},
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tests first, pure-Python tests last, so the short tests fill the workers' gaps at the
    end instead of one worker finishing a long test alone.

    A module whose tests share a module-scoped fixture (a lake built once) stays in one piece,
    ranked by its longest test: interleaved with other modules, pytest would tear the fixture
    down and build it again each time the module came back (the training lake was built three
    times a run). ``--dist worksteal`` steals from the end of a worker's queue, so such a module
    near the front stays on one worker. (``--dist loadgroup`` would pin it, but xdist 3.8 marks
    groups through ``Item._nodeid``, which pytest 9 no longer reads.)
    """
    weight = {"slow": 0, "streaming": 1}

    def rank(item: pytest.Item) -> int:
        marked = min((weight.get(m.name, 3) for m in item.iter_markers()), default=3)
        uses_spark = "spark" in getattr(item, "fixturenames", ())
        return min(marked, 2) if uses_spark else marked

    def shares_a_module_fixture(item: pytest.Item) -> bool:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        return any(d.scope == "module" for chain in defs for d in chain)

    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]

    ranks = {item.nodeid: rank(item) for item in items}
    kept_whole = {module(item) for item in items if shares_a_module_fixture(item)}
    module_rank: dict[str, int] = {}
    for item in items:
        if module(item) in kept_whole:
            module_rank[module(item)] = min(module_rank.get(module(item), 3), ranks[item.nodeid])

    def key(item: pytest.Item) -> tuple[int, str]:
        if module(item) in kept_whole:
            return module_rank[module(item)], module(item)
        return ranks[item.nodeid], ""

    items.sort(key=key)
