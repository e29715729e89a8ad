"""Kafka for an asyncio server: produce a request's messages, await the broker's acknowledgement.

librdkafka delivers acknowledgements through callbacks served by ``poll()``; a dedicated thread
polls, counts a request's outstanding messages down and resolves that request's future on the
event loop once, when the last one is acknowledged (or any fails). The HTTP handler answers 2xx
only after that, which is what makes the collector at-least-once.
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
from pipelines.streaming.kafka import client_config, quiet_logger

log = logging.getLogger(__name__)


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
    """An idempotent, lz4, acks=all producer whose ``publish`` can be awaited."""

    def __init__(
        self,
        kafka: KafkaSettings,
        bootstrap_servers: str,
        *,
        linger_ms: int,
        timeout_s: float,
    ) -> None:
        p = kafka.producer
        conf: dict[str, Any] = {
            **client_config(kafka, bootstrap_servers),
            "compression.type": p.compression,
            "linger.ms": linger_ms,
            "acks": p.acks,
            "enable.idempotence": p.enable_idempotence,
            "delivery.timeout.ms": max(1_000, int(timeout_s * 1000)),
            "queue.buffering.max.messages": 1_000_000,
            "logger": quiet_logger,
        }
        self._producer = Producer(conf)
        self._timeout_s = timeout_s
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
            for message in messages:
                self._producer.produce(
                    message.topic,
                    message.value,
                    message.key,
                    on_delivery=pending.callback(message.event_id),
                )
                produced += 1
        except (BufferError, KafkaException) as exc:
            # What was queued will still be delivered; the client retries the whole request and
            # silver removes the duplicates by event_id.
            raise PublishError(f"producer queue refused a message: {exc}") from None
        try:
            await asyncio.wait_for(asyncio.shield(pending.future), self._timeout_s)
        except TimeoutError:
            raise PublishError(
                f"Kafka did not acknowledge {pending.remaining} of {produced} messages within "
                f"{self._timeout_s:.0f}s"
            ) from None
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
        self._ready_at = time.monotonic()
        return self._ready

    def close(self, timeout_s: float = 10.0) -> int:
        """Deliver what is queued (up to ``timeout_s``), stop polling; returns undelivered count."""
        remaining = self._producer.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout=5)
        if remaining:
            log.warning("collector stopped with %d messages unacknowledged by Kafka", remaining)
        return int(remaining)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)
