"""Kafka adapters outside Spark: the embedded broker's settings, the producer helper, clients.

The embedded broker (``pipelines.kafka.broker.EmbeddedKafka``, re-exported here) is Apache Kafka
itself, run as JVMs on 127.0.0.1. ``lakehouse kafka serve`` keeps one running with its data under
``<storage root>/_kafka`` and records its address in the storage root, where every other command
finds it when ``kafka.bootstrap_servers`` is ``embedded``. It is for local runs and tests only;
real brokers are set with ``kafka.bootstrap_servers``, as a list or as ``file:<path>`` naming a
file that holds the list. Both files are read again on every ``resolve_bootstrap``, which is how
the collector follows a broker that came back at another address.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from pipelines.config import KafkaSettings, Settings
from pipelines.kafka.broker import EmbeddedKafka, EmbeddedKafkaError, pid_alive

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
FILE_PREFIX = "file:"
STATE_FILE = "_embedded_kafka.json"
DATA_FOLDER = "_kafka"


class KafkaUnavailableError(RuntimeError):
    """The configured brokers cannot be reached (message says which and how to fix it)."""


def embedded_broker(
    settings: Settings, num_brokers: int = 1, data_dir: Path | None = None
) -> EmbeddedKafka:
    """An embedded broker with every configured topic (events, DLQ, identities) created up front.

    Its data lives in ``data_dir`` (kept across restarts; ``lakehouse kafka serve`` passes
    ``embedded_data_dir(settings)``), else in a temporary folder removed when it stops.
    """
    topics = settings.kafka.topics
    return EmbeddedKafka(
        topics=[*topics.event_topics, topics.dlq, topics.identities],
        partitions=settings.kafka.embedded_partitions,
        num_brokers=num_brokers,
        data_dir=data_dir,
    )


def _local_storage_root(settings: Settings) -> Path:
    root = settings.storage.root
    if "://" in root:
        raise KafkaUnavailableError(
            f"kafka.bootstrap_servers is 'embedded' but storage.root {root} is remote; "
            "the embedded broker is for local runs; set kafka.bootstrap_servers to real brokers"
        )
    return Path(root).expanduser().resolve()


def embedded_state_path(settings: Settings) -> Path:
    """Where ``lakehouse kafka serve`` records the running broker's address."""
    return _local_storage_root(settings) / STATE_FILE


def embedded_data_dir(settings: Settings) -> Path:
    """Where ``lakehouse kafka serve`` keeps the broker's topics and messages."""
    return _local_storage_root(settings) / DATA_FOLDER


def write_embedded_state(settings: Settings, bootstrap_servers: str) -> Path:
    """Record where the embedded broker of this process listens (atomically: a running
    collector may be reading the file to follow the broker)."""
    path = embedded_state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps({"bootstrap_servers": bootstrap_servers, "pid": os.getpid()}))
    partial.replace(path)
    return path


def resolve_bootstrap(settings: Settings) -> str:
    """The broker list to connect to now: the configured list, the list in ``file:<path>``, or
    for ``embedded`` the address ``lakehouse kafka serve`` recorded. Files are read on every call.

    Raises:
        KafkaUnavailableError: the file is missing, empty or unreadable, or the embedded broker
            it records has stopped.
    """
    servers = settings.kafka.bootstrap_servers.strip()
    if servers.startswith(FILE_PREFIX):
        return _servers_in_file(Path(servers.removeprefix(FILE_PREFIX)).expanduser())
    if servers != EMBEDDED:
        return servers
    path = embedded_state_path(settings)
    hint = (
        "start it with `lakehouse kafka serve` in another terminal (same --env), "
        "or set kafka.bootstrap_servers to real brokers"
    )
    if not path.is_file():
        raise KafkaUnavailableError(
            f"no embedded Kafka broker is running ({path} is missing); {hint}"
        )
    try:
        state = json.loads(path.read_text())
        pid, recorded = int(state.get("pid", -1)), str(state["bootstrap_servers"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KafkaUnavailableError(
            f"{path} does not hold an embedded broker's address ({type(exc).__name__}: {exc}); "
            f"restart `lakehouse kafka serve`, which rewrites it"
        ) from None
    if not pid_alive(pid):
        raise KafkaUnavailableError(
            f"the embedded Kafka broker recorded in {path} has stopped; {hint}"
        )
    return recorded


def _servers_in_file(path: Path) -> str:
    """``host:port`` entries of a bootstrap file (separated by commas, spaces or newlines)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KafkaUnavailableError(
            f"kafka.bootstrap_servers names the file {path}, which cannot be read "
            f"({exc.strerror or exc}); write the broker list into it, e.g. kafka-1:9092"
        ) from None
    entries = [entry for entry in text.replace(",", " ").split() if entry]
    if not entries:
        raise KafkaUnavailableError(
            f"kafka.bootstrap_servers names the file {path}, which is empty; write the broker "
            "list into it, e.g. kafka-1:9092"
        )
    return ",".join(entries)


def client_config(kafka: KafkaSettings, bootstrap_servers: str) -> dict[str, Any]:
    """Settings shared by every librdkafka client: brokers and security."""
    return {"bootstrap.servers": bootstrap_servers, **kafka.security.client_config()}


def check_reachable(conf: dict[str, Any], timeout_s: float) -> None:
    """Raise KafkaUnavailableError unless a metadata request succeeds within ``timeout_s``."""

    admin_conf: dict[str, Any] = {**conf, "logger": quiet_logger}
    admin = AdminClient(admin_conf)
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailableError(
            f"Kafka brokers {conf['bootstrap.servers']} did not answer within {timeout_s:.0f}s "
            f"({exc.args[0].str() if exc.args else exc}); check kafka.bootstrap_servers, "
            "or start the embedded broker with `lakehouse kafka serve`"
        ) from None


@dataclass
class DeliveryReport:
    """What the producer has sent, as acknowledged by the broker."""

    delivered: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def total_delivered(self) -> int:
        return sum(self.delivered.values())

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())


class EventProducer:
    """Producer helper: lz4, batching/linger, keyed messages, delivery reports counted per topic."""

    def __init__(self, kafka: KafkaSettings, bootstrap_servers: str) -> None:
        p = kafka.producer
        conf: dict[str, Any] = {
            **client_config(kafka, bootstrap_servers),
            "compression.type": p.compression,
            "linger.ms": p.linger_ms,
            "batch.num.messages": p.batch_num_messages,
            "acks": p.acks,
            "enable.idempotence": p.enable_idempotence,
            "delivery.timeout.ms": p.delivery_timeout_ms,
            "queue.buffering.max.messages": 500_000,
            "logger": quiet_logger,
        }
        self._producer = Producer(conf)
        self.report = DeliveryReport()
        self._lock = threading.Lock()
        self._since_poll = 0

    def produce(
        self,
        topic: str,
        value: bytes,
        key: str | bytes | None = None,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        """Queue one message; delivery is confirmed asynchronously and counted in ``report``
        (then passed to ``on_delivery``, from ``produce``, ``poll`` or ``flush``)."""
        callback = self._on_delivery
        if on_delivery is not None:

            def callback(err: KafkaError | None, msg: Message) -> None:
                self._on_delivery(err, msg)
                on_delivery(err, msg)

        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=callback)
                break
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain, then retry
        self._since_poll += 1
        if self._since_poll >= 1000:
            self._producer.poll(0)
            self._since_poll = 0

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery reports that arrived (waiting up to ``timeout_s`` for one)."""
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 60.0) -> DeliveryReport:
        """Wait for every queued message; raise if some could not be delivered in time."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise KafkaUnavailableError(
                f"{remaining} messages were still undelivered after {timeout_s:.0f}s; "
                "is the broker up?"
            )
        return self.report

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        topic = msg.topic() or "?"
        with self._lock:
            if err is None:
                self.report.delivered[topic] += 1
            else:
                self.report.failed[topic] += 1
                if len(self.report.errors) < 20:
                    self.report.errors.append(f"{topic}: {err.str()}")

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._producer.flush(10)


@contextmanager
def embedded_or_configured(settings: Settings) -> Iterator[str]:
    """Yield a bootstrap address: the configured brokers, the running embedded broker, or (when
    config says ``embedded`` and none runs) a fresh embedded broker for the duration."""
    if settings.kafka.bootstrap_servers.strip() != EMBEDDED:
        yield resolve_bootstrap(settings)
        return
    try:
        servers: str | None = resolve_bootstrap(settings)
    except KafkaUnavailableError:
        servers = None
    if servers:
        yield servers
        return
    broker = embedded_broker(settings)
    try:
        broker.start()
    except EmbeddedKafkaError as exc:
        raise KafkaUnavailableError(str(exc)) from None
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


class _QuietLogger(logging.Logger):
    """librdkafka logs every idle disconnect and refused connection; route them to DEBUG."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        logging.getLogger("librdkafka").debug(msg, *args)


quiet_logger = _QuietLogger("librdkafka-quiet")
