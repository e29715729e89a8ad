"""Reading what Kafka holds after a chaos part, and counting it against what was acknowledged."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from pipelines.streaming.kafka import quiet_logger


class ReadBackError(RuntimeError):
    """A topic could not be read to its end in time (the message names the partitions)."""


def read_topics(
    conf: Mapping[str, Any], topics: Sequence[str], timeout_s: float = 180.0
) -> dict[str, list[bytes]]:
    """Every message of ``topics`` from offset 0 to the high watermark each partition had when
    the read started, as ``topic -> [value]``. Missing topics read as empty.

    Raises:
        ReadBackError: a partition had no leader, or was not read to its end, in ``timeout_s``.
    """
    consumer = Consumer(
        {
            **conf,
            "group.id": f"chaos-read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "logger": quiet_logger,
        }
    )
    deadline = time.monotonic() + timeout_s
    try:
        ends = _high_watermarks(consumer, topics, deadline)
        out: dict[str, list[bytes]] = {t: [] for t in topics}
        if not ends:
            return out
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
        while ends:
            if time.monotonic() > deadline:
                raise ReadBackError(
                    f"timed out reading {sorted(ends)} to their end (offsets {dict(ends)})"
                )
            for msg in consumer.consume(10_000, timeout=0.5):
                if msg.error() is not None:
                    continue
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                if topic is None or partition is None or offset is None:
                    continue
                end = ends.get((topic, partition))
                if end is None or offset >= end:
                    continue  # written after the read started
                out[topic].append(msg.value() or b"")
                if offset + 1 >= end:
                    del ends[(topic, partition)]
        return out
    finally:
        consumer.close()


def _high_watermarks(
    consumer: Consumer, topics: Sequence[str], deadline: float
) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> high watermark`` of the non-empty partitions (retried while a
    partition is between leaders)."""
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        while True:
            try:
                metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
                partitions = [] if metadata is None or metadata.error else metadata.partitions
                for p in partitions:
                    _low, high = consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=10
                    )
                    if high > 0:
                        ends[(topic, p)] = high
                break
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise ReadBackError(f"could not read the offsets of {topic}: {exc}") from None
                time.sleep(0.5)
    return ends


@dataclass(frozen=True)
class Tally:
    """Expected event ids against the copies found (see ``pipelines.chaos.report``)."""

    expected: int
    found: int  # expected ids found at least once
    lost: int  # expected ids not found
    duplicated: int  # ids found more than once with different content
    redelivered: int  # extra copies with the same id and the same content
    unexpected: int  # ids found that were never expected


def tally(expected: Iterable[str], found: Mapping[str, Sequence[bytes]]) -> Tally:
    """Count ``expected`` ids against ``found`` (id -> the normalised content of each copy)."""
    wanted = set(expected)
    duplicated = redelivered = 0
    for copies in found.values():
        if len(copies) > 1:
            if len(set(copies)) > 1:
                duplicated += 1
            else:
                redelivered += len(copies) - 1
    present = sum(1 for event_id in wanted if event_id in found)
    return Tally(
        expected=len(wanted),
        found=present,
        lost=len(wanted) - present,
        duplicated=duplicated,
        redelivered=redelivered,
        unexpected=sum(1 for event_id in found if event_id not in wanted),
    )


def by_event_id(
    values: Iterable[bytes], normalise: Callable[[dict[str, Any]], bytes] | None = None
) -> dict[str, list[bytes]]:
    """``event_id -> [content of each copy]`` of JSON event messages; ``normalise`` turns a
    parsed event into the content copies are compared by (default: the raw bytes)."""
    found: dict[str, list[bytes]] = {}
    for value in values:
        event = orjson.loads(value)
        event_id = str(event.get("event_id"))
        found.setdefault(event_id, []).append(normalise(event) if normalise else value)
    return found


def without_received_at(event: dict[str, Any]) -> bytes:
    """An event as the client sent it: the collector stamps ``received_at`` on every publish, so
    a retried request's copy differs only there."""
    event.pop("received_at", None)
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
