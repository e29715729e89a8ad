"""Kafka for an asyncio server: produce a request's messages, await the broker's acknowledgement.

librdkafka delivers acknowledgements through callbacks served by ``poll()``; a dedicated thread
polls, counts a request's outstanding messages down and resolves that request's future on the
event loop once, when the last one is acknowledged (or any fails). The HTTP handler answers 2xx
only after that, which is what makes the collector at-least-once.

**Following the brokers.** librdkafka reconnects by itself to the addresses it was given, but
it cannot learn that the broker came back somewhere else (the embedded broker restarted on
another port, a new address in a bootstrap file). So once every broker is down (librdkafka's
``_ALL_BROKERS_DOWN``), or a request was not acknowledged, the poll thread reads the address
source again every ``reresolve_s`` until a request succeeds. When the address changed, new
requests go to a new producer, and the old one's unacknowledged messages are purged: each one
reports a failure, so the request waiting for it answers 503 and its client sends it again,
this time to the new brokers. Nothing acknowledged is affected; nothing is dropped unreported.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipelines.config import KafkaSettings
from pipelines.streaming.kafka import KafkaUnavailableError, client_config, quiet_logger

log = logging.getLogger(__name__)

BrokerSource = Callable[[], str]
"""Where the brokers are now: returns a bootstrap list, or raises KafkaUnavailableError."""


class PublishError(RuntimeError):
    """Kafka did not acknowledge every message of a request (the client should retry)."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to produce."""

    topic: str
    value: bytes
    key: str | None
    event_id: str | None = None  # set for accepted events: what the edge deduplicates on


@dataclass
class _Pending:
    """The messages of one request still waiting for the broker."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    remaining: int
    errors: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)

    def callback(self, event_id: str | None) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None and event_id is not None:
                self.delivered.append(event_id)
            self.on_delivery(err, msg)

        return on_delivery

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        # Runs on the poll thread only, so the countdown needs no lock.
        if err is not None and len(self.errors) < 5:
            self.errors.append(err.str())
        self.remaining -= 1
        if self.remaining == 0:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if self.future.done():  # the request timed out meanwhile
            return
        if self.errors:
            self.future.set_exception(PublishError("; ".join(self.errors)))
        else:
            self.future.set_result(None)


class AsyncPublisher:
    """An idempotent, lz4, acks=all producer whose ``publish`` can be awaited.

    ``bootstrap`` is a fixed broker list, or a ``BrokerSource`` read at start and again while
    Kafka is unreachable (see the module docstring).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        bootstrap: str | BrokerSource,
        *,
        linger_ms: int,
        timeout_s: float,
        reresolve_s: float = 2.0,
    ) -> None:
        p = kafka.producer
        self._kafka = kafka
        self._conf: dict[str, Any] = {
            "compression.type": p.compression,
            "linger.ms": linger_ms,
            "acks": p.acks,
            "enable.idempotence": p.enable_idempotence,
            "delivery.timeout.ms": max(1_000, int(timeout_s * 1000)),
            "queue.buffering.max.messages": 1_000_000,
            "logger": quiet_logger,
        }
        self._source = bootstrap if callable(bootstrap) else None
        self.bootstrap_servers = bootstrap() if callable(bootstrap) else bootstrap
        self._producer = self._new_producer(self.bootstrap_servers)
        # Held while a request's messages are handed to a producer, so that none is handed to a
        # producer after it was replaced (and purged).
        self._handover = threading.Lock()
        self._retired: list[Producer] = []  # replaced; polled until every callback has run
        self._timeout_s = timeout_s
        self._reresolve_s = reresolve_s
        self._unreachable = False  # every broker down, or a request went unacknowledged
        self._next_resolve = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="collector-kafka", daemon=True)
        self._thread.start()
        self._ready_at = 0.0
        self._ready = False

    async def publish(
        self, messages: Sequence[Outgoing], on_acknowledged: Callable[[str], None] | None = None
    ) -> None:
        """Produce ``messages`` and return once Kafka acknowledged all of them.

        ``on_acknowledged`` gets the ``event_id`` of every message Kafka acknowledged, also when
        others failed (so a retried request can skip them).

        Raises:
            PublishError: a message failed, the local queue is full, or no acknowledgement
                arrived within the timeout.
        """
        if not messages:
            return
        loop = asyncio.get_running_loop()
        pending = _Pending(loop, loop.create_future(), len(messages))
        produced = 0
        try:
            with self._handover:
                producer = self._producer
                for message in messages:
                    producer.produce(
                        message.topic,
                        message.value,
                        message.key,
                        on_delivery=pending.callback(message.event_id),
                    )
                    produced += 1
        except (BufferError, KafkaException) as exc:
            # What was queued will still be delivered or reported; the client retries the whole
            # request and silver removes the duplicates by event_id.
            self._unreachable = True
            raise PublishError(f"producer queue refused a message: {exc}") from None
        try:
            await asyncio.wait_for(asyncio.shield(pending.future), self._timeout_s)
        except TimeoutError:
            self._unreachable = True
            pending.future.cancel()  # its late reports are counted, not awaited by anyone
            raise PublishError(
                f"Kafka did not acknowledge {pending.remaining} of {produced} messages within "
                f"{self._timeout_s:.0f}s"
            ) from None
        except PublishError:
            self._unreachable = True
            raise
        else:
            self._unreachable = False
        finally:
            if on_acknowledged is not None:
                for event_id in list(pending.delivered):
                    on_acknowledged(event_id)

    def ready(self, timeout_s: float = 2.0, cache_s: float = 2.0) -> bool:
        """Whether a broker answers a metadata request (cached for ``cache_s``; blocking)."""
        now = time.monotonic()
        if now - self._ready_at < cache_s:
            return self._ready
        try:
            self._producer.list_topics(timeout=timeout_s)
            self._ready = True
        except KafkaException:
            self._ready = False
            self._unreachable = True
        self._ready_at = time.monotonic()
        return self._ready

    def close(self, timeout_s: float = 10.0) -> int:
        """Deliver what is queued (up to ``timeout_s``), stop polling; returns undelivered count."""
        self._stop.set()
        self._thread.join(timeout=5)
        # From here on this thread alone serves callbacks, as the poll thread did.
        remaining = self._producer.flush(timeout_s)
        for retired in self._retired:
            retired.flush(0)  # purged: only their failure reports are left to serve
        if remaining:
            log.warning("collector stopped with %d messages unacknowledged by Kafka", remaining)
        return int(remaining)

    def _new_producer(self, bootstrap_servers: str) -> Producer:
        def on_error(error: KafkaError) -> None:
            if bootstrap_servers != self.bootstrap_servers:
                return  # a replaced producer's news
            if error.code() == KafkaError._ALL_BROKERS_DOWN:
                # Reported once, when the last broker connection goes down.
                self._unreachable = True
                log.warning("Kafka: every broker of %s is down", bootstrap_servers)
            elif error.fatal():
                log.error("the Kafka producer failed for good: %s", error.str())
            # Other errors (a refused connection, …) librdkafka retries by itself.

        conf = {**client_config(self._kafka, bootstrap_servers), **self._conf}
        return Producer({**conf, "error_cb": on_error})

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)
            for retired in list(self._retired):
                retired.poll(0)
                if len(retired) == 0:
                    self._retired.remove(retired)
            if (
                self._unreachable
                and self._source is not None
                and time.monotonic() >= self._next_resolve
            ):
                self._next_resolve = time.monotonic() + self._reresolve_s
                self._follow_brokers(self._source)

    def _follow_brokers(self, source: BrokerSource) -> None:
        """If the address source names other brokers now, move to them (poll thread only)."""
        try:
            servers = source()
        except KafkaUnavailableError as exc:
            log.debug("Kafka address not readable yet: %s", exc)
            return
        if servers == self.bootstrap_servers:
            return  # same place: librdkafka keeps reconnecting there by itself
        producer = self._new_producer(servers)
        with self._handover:
            old, self._producer = self._producer, producer
            previous, self.bootstrap_servers = self.bootstrap_servers, servers
        # Every message the old producer still holds gets a failure report (its request answers
        # 503 and is retried by the client); the poll loop serves those reports.
        unacknowledged = len(old)
        old.purge(in_queue=True, in_flight=True, blocking=False)
        self._retired.append(old)
        self._ready_at = 0.0  # readyz asks the new brokers
        log.warning(
            "Kafka moved from %s to %s: producing there now; %d unacknowledged messages "
            "reported as failed (their requests get 503 and are retried)",
            previous,
            servers,
            unacknowledged,
        )
