"""Kafka adapters outside Spark: the embedded broker, the producer helper, client settings.

The embedded broker is librdkafka's mock cluster. It lives inside the process that created it
and listens on 127.0.0.1, so other processes (Spark's Python workers, a second terminal) reach it
over TCP. It is for local runs and tests only; real brokers are set with
``kafka.bootstrap_servers``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipelines.config import KafkaSettings, Settings

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
STATE_FILE = "_embedded_kafka.json"


class KafkaUnavailableError(RuntimeError):
    """The configured brokers cannot be reached (message says which and how to fix it)."""


class EmbeddedKafka:
    """An in-memory Kafka-protocol broker on 127.0.0.1 (librdkafka's mock cluster).

    ``topics`` are created up front with ``partitions`` partitions through librdkafka's public
    mock API (``rd_kafka_mock_topic_create``); other topics are created on first produce with four
    partitions. The mock keeps about 5 MB of (compressed) batches per partition and drops the
    oldest beyond that, so more partitions hold more data; the Kafka source reports dropped offsets
    as data loss rather than skipping them. Use as a context manager or ``start()``/``stop()``.
    """

    def __init__(
        self, topics: Sequence[str] = (), partitions: int = 16, num_brokers: int = 1
    ) -> None:
        self._topics = list(dict.fromkeys(topics))
        self._partitions = partitions
        self._num_brokers = num_brokers
        self._native: _NativeMockCluster | None = None
        self._fallback: Producer | None = None
        self.bootstrap_servers = ""

    def start(self) -> EmbeddedKafka:
        try:
            self._native = _NativeMockCluster(self._num_brokers)
        except (OSError, AttributeError, RuntimeError) as exc:
            log.warning("librdkafka mock API unavailable (%s); topics will have 4 partitions", exc)
            conf: dict[str, Any] = {
                "test.mock.num.brokers": self._num_brokers,
                "log_level": 3,
                "logger": quiet_logger,
            }
            self._fallback = Producer(conf)
            metadata = self._fallback.list_topics(timeout=10)
            self.bootstrap_servers = ",".join(
                f"{b.host}:{b.port}" for b in sorted(metadata.brokers.values(), key=lambda b: b.id)
            )
            return self
        self.bootstrap_servers = self._native.bootstraps
        for topic in self._topics:
            self._native.create_topic(topic, self._partitions)
        return self

    def stop(self) -> None:
        if self._native is not None:
            self._native.destroy()
            self._native = None
        if self._fallback is not None:
            self._fallback.flush(1)
            self._fallback = None  # dropping the last reference shuts the mock cluster down

    @property
    def running(self) -> bool:
        return self._native is not None or self._fallback is not None

    def __enter__(self) -> EmbeddedKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _NativeMockCluster:
    """librdkafka's mock cluster through its C API (``rdkafka_mock.h``), via ctypes."""

    def __init__(self, num_brokers: int) -> None:
        lib = _librdkafka()
        errstr = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        lib.rd_kafka_conf_set(conf, b"log_level", b"3", errstr, len(errstr))
        self._lib = lib
        self._rk = lib.rd_kafka_new(0, conf, errstr, len(errstr))  # 0 = RD_KAFKA_PRODUCER
        if not self._rk:
            raise RuntimeError(f"rd_kafka_new failed: {errstr.value.decode()}")
        self._cluster = lib.rd_kafka_mock_cluster_new(self._rk, num_brokers)
        if not self._cluster:
            lib.rd_kafka_destroy(self._rk)
            raise RuntimeError("rd_kafka_mock_cluster_new failed")
        self.bootstraps = lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def create_topic(self, topic: str, partitions: int) -> None:
        code = self._lib.rd_kafka_mock_topic_create(self._cluster, topic.encode(), partitions, 1)
        if code != 0:
            raise KafkaUnavailableError(
                f"embedded broker could not create topic {topic!r} (error {code})"
            )

    def destroy(self) -> None:
        self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
        self._lib.rd_kafka_destroy(self._rk)


def _librdkafka() -> ctypes.CDLL:
    """The librdkafka that confluent-kafka ships (or the system one), with mock API signatures."""
    import confluent_kafka

    package_dir = Path(confluent_kafka.__file__).resolve().parent
    candidates = sorted(package_dir.parent.glob("confluent_kafka.libs/librdkafka*"))
    path = str(candidates[0]) if candidates else ctypes.util.find_library("rdkafka")
    if not path:
        raise OSError("librdkafka shared library not found")
    lib = ctypes.CDLL(path)
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    lib.rd_kafka_conf_new.restype = vp
    lib.rd_kafka_conf_set.argtypes = [vp, cp, cp, cp, ctypes.c_size_t]
    lib.rd_kafka_new.restype = vp
    lib.rd_kafka_new.argtypes = [i, vp, cp, ctypes.c_size_t]
    lib.rd_kafka_destroy.argtypes = [vp]
    lib.rd_kafka_mock_cluster_new.restype = vp
    lib.rd_kafka_mock_cluster_new.argtypes = [vp, i]
    lib.rd_kafka_mock_cluster_bootstraps.restype = cp
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [vp]
    lib.rd_kafka_mock_topic_create.restype = i
    lib.rd_kafka_mock_topic_create.argtypes = [vp, cp, i, i]
    lib.rd_kafka_mock_cluster_destroy.argtypes = [vp]
    return lib


def embedded_broker(settings: Settings) -> EmbeddedKafka:
    """An embedded broker with every configured topic (events, DLQ, identities) created up front."""
    topics = settings.kafka.topics
    return EmbeddedKafka(
        topics=[*topics.event_topics, topics.dlq, topics.identities],
        partitions=settings.kafka.embedded_partitions,
    )


def embedded_state_path(settings: Settings) -> Path:
    root = settings.storage.root
    if "://" in root:
        raise KafkaUnavailableError(
            f"kafka.bootstrap_servers is 'embedded' but storage.root {root} is remote; "
            "the embedded broker is for local runs; set kafka.bootstrap_servers to real brokers"
        )
    return Path(root).expanduser().resolve() / STATE_FILE


def write_embedded_state(settings: Settings, broker: EmbeddedKafka) -> Path:
    path = embedded_state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"bootstrap_servers": broker.bootstrap_servers, "pid": os.getpid()}))
    return path


def resolve_bootstrap(settings: Settings) -> str:
    """The broker list to connect to; ``embedded`` is looked up from ``lakehouse kafka serve``."""
    servers = settings.kafka.bootstrap_servers.strip()
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
    state = json.loads(path.read_text())
    if not _pid_alive(int(state.get("pid", -1))):
        raise KafkaUnavailableError(
            f"the embedded Kafka broker recorded in {path} has stopped; {hint}"
        )
    return str(state["bootstrap_servers"])


def client_config(kafka: KafkaSettings, bootstrap_servers: str) -> dict[str, Any]:
    """Settings shared by every librdkafka client: brokers and security."""
    return {"bootstrap.servers": bootstrap_servers, **kafka.security.client_config()}


def check_reachable(conf: dict[str, Any], timeout_s: float) -> None:
    """Raise KafkaUnavailableError unless a metadata request succeeds within ``timeout_s``."""
    from confluent_kafka.admin import AdminClient

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

    def produce(self, topic: str, value: bytes, key: str | bytes | None = None) -> None:
        """Queue one message; delivery is confirmed asynchronously and counted in ``report``."""
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain, then retry
        self._since_poll += 1
        if self._since_poll >= 1000:
            self._producer.poll(0)
            self._since_poll = 0

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
        yield settings.kafka.bootstrap_servers
        return
    try:
        servers: str | None = resolve_bootstrap(settings)
    except KafkaUnavailableError:
        servers = None
    if servers:
        yield servers
        return
    with embedded_broker(settings) as broker:
        yield broker.bootstrap_servers


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _QuietLogger(logging.Logger):
    """librdkafka logs every mock-cluster disconnect at INFO; route them to DEBUG."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        logging.getLogger("librdkafka").debug(msg, *args)


quiet_logger = _QuietLogger("librdkafka-quiet")
