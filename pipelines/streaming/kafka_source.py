"""Kafka as a Spark streaming source, in Python, on confluent-kafka (format ``lakehouse-kafka``).

The embedded replacement for Spark's ``format("kafka")`` where its jar cannot be fetched.

* Offsets are ``{topic: {partition: next_offset}}`` and live only in the Spark checkpoint: no
  consumer group commits, so a restarted query resumes exactly where its checkpoint says.
* Each micro-batch reads exactly the planned ``[start, end)`` range of every partition, so a
  replayed batch reads the same records.
* ``maxOffsetsPerTrigger`` caps a micro-batch (spread over partitions by lag), including under
  ``Trigger.AvailableNow``, which drains up to the offsets seen when the query started.
* A micro-batch's ranges are packed into at least ``minPartitions`` Spark tasks of at most
  ``maxRecordsPerPartition`` records; each task reads its ranges with one consumer.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import (
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

FORMAT = "lakehouse-kafka"

KAFKA_SOURCE_SCHEMA = StructType(
    [
        StructField("key", StringType(), True),
        StructField("value", StringType(), True),
        StructField("topic", StringType(), False),
        StructField("partition", IntegerType(), False),
        StructField("offset", LongType(), False),
        StructField("timestamp", TimestampType(), True),
    ]
)
_ARROW_SCHEMA = to_arrow_schema(KAFKA_SOURCE_SCHEMA, timezone="UTC")

Offsets = dict[str, dict[str, int]]
_CLIENT_PREFIX = "kafka."


class KafkaSourceError(RuntimeError):
    """A Kafka read cannot proceed; the message names the broker, topic and the fix."""


@dataclass(frozen=True)
class KafkaSourceOptions:
    """The source's options, parsed and checked once."""

    bootstrap_servers: str
    topics: tuple[str, ...]
    starting_offsets: str | Offsets = "earliest"
    max_offsets_per_trigger: int | None = None
    min_partitions: int = 2
    max_records_per_partition: int = 100_000
    poll_timeout_s: float = 30.0
    metadata_timeout_s: float = 10.0
    fail_on_data_loss: bool = True
    client_conf: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> KafkaSourceOptions:
        opts = {k.lower(): v for k, v in options.items()}
        servers = opts.get("kafka.bootstrap.servers") or opts.get("bootstrap.servers")
        if not servers:
            raise KafkaSourceError(
                f"{FORMAT}: option 'kafka.bootstrap.servers' is required (host:port[,host:port])"
            )
        topics = tuple(
            dict.fromkeys(t.strip() for t in opts.get("subscribe", "").split(",") if t.strip())
        )
        if not topics:
            raise KafkaSourceError(
                f"{FORMAT}: option 'subscribe' needs a comma-separated topic list"
            )
        starting: str | Offsets = opts.get("startingoffsets", "earliest").strip()
        if starting not in ("earliest", "latest"):
            try:
                starting = _parse_offsets(json.loads(str(starting)))
            except (ValueError, TypeError) as exc:
                raise KafkaSourceError(
                    f"{FORMAT}: startingOffsets must be 'earliest', 'latest' or JSON like "
                    f'{{"topic": {{"0": 42}}}}: {exc}'
                ) from None
        client_conf = {
            k[len(_CLIENT_PREFIX) :]: v
            for k, v in options.items()
            if k.lower().startswith(_CLIENT_PREFIX) and k.lower() != "kafka.bootstrap.servers"
        }
        return cls(
            bootstrap_servers=servers,
            topics=topics,
            starting_offsets=starting,
            max_offsets_per_trigger=_positive_int(opts, "maxoffsetspertrigger"),
            min_partitions=_positive_int(opts, "minpartitions") or 2,
            max_records_per_partition=_positive_int(opts, "maxrecordsperpartition") or 100_000,
            poll_timeout_s=float(opts.get("polltimeoutms", 30_000)) / 1000,
            metadata_timeout_s=float(opts.get("metadatatimeoutms", 10_000)) / 1000,
            fail_on_data_loss=opts.get("failondataloss", "true").lower() != "false",
            client_conf=client_conf,
        )

    def consumer_conf(self, purpose: str) -> dict[str, Any]:
        return {
            **self.client_conf,
            "bootstrap.servers": self.bootstrap_servers,
            # Offsets are Spark's; the group id only names the client and is never committed.
            "group.id": f"lakehouse-{purpose}-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "enable.partition.eof": False,
            "log_level": 3,
        }


OffsetRange = tuple[str, int, int, int]  # topic, partition, from (inclusive), until (exclusive)


class KafkaReadTask(InputPartition):
    """One Spark task: offset ranges of one or more topic-partitions, read by one consumer."""

    def __init__(self, ranges: list[OffsetRange], options: KafkaSourceOptions) -> None:
        super().__init__(ranges)
        self.ranges = ranges
        self.options = options

    @property
    def records(self) -> int:
        return sum(hi - lo for _, _, lo, hi in self.ranges)


class KafkaSource(DataSource):
    """``spark.readStream.format("lakehouse-kafka").option("subscribe", "a,b")…``"""

    @classmethod
    def name(cls) -> str:
        return FORMAT

    def schema(self) -> StructType:
        return KAFKA_SOURCE_SCHEMA

    def streamReader(self, schema: StructType) -> KafkaStreamReader:
        return KafkaStreamReader(KafkaSourceOptions.parse(self.options))


class KafkaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Driver side: plans offset ranges. ``read`` runs in the executors' Python workers."""

    def __init__(self, options: KafkaSourceOptions) -> None:
        self.options = options
        self._consumer: Consumer | None = None
        self._target: Offsets | None = None
        self._latest: Offsets | None = None

    # -- offsets ---------------------------------------------------------------------------
    def initialOffset(self) -> dict[str, Any]:
        starting = self.options.starting_offsets
        if isinstance(starting, dict):
            return dict(starting)
        low_high = self._watermarks()
        index = 0 if starting == "earliest" else 1
        return {t: {p: marks[index] for p, marks in parts.items()} for t, parts in low_high.items()}

    def getDefaultReadLimit(self) -> ReadLimit:
        cap = self.options.max_offsets_per_trigger
        return ReadMaxRows(cap) if cap else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        self._target = self._high_watermarks()

    def latestOffset(self, start: dict[str, Any], limit: ReadLimit) -> dict[str, Any]:
        begin = _parse_offsets(start)
        available = self._high_watermarks()
        self._latest = available
        if self._target is not None:
            available = bound_offsets(available, self._target, begin)
        available = self._check_data_loss(begin, available)
        max_rows = limit.max_rows if isinstance(limit, ReadMaxRows) else None
        return plan_end_offsets(begin, available, max_rows)

    def reportLatestOffset(self) -> dict[str, Any] | None:
        return dict(self._latest) if self._latest is not None else None

    def partitions(self, start: dict[str, Any], end: dict[str, Any]) -> Sequence[InputPartition]:
        tasks = plan_tasks(
            _parse_offsets(start),
            _parse_offsets(end),
            self.options.min_partitions,
            self.options.max_records_per_partition,
        )
        return [KafkaReadTask(ranges, self.options) for ranges in tasks]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, KafkaReadTask)
        return read_task(partition)

    def commit(self, end: dict[str, Any]) -> None:
        """Nothing to do: offsets are kept in the Spark checkpoint, not in Kafka."""

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    # -- broker metadata -------------------------------------------------------------------
    def _metadata_consumer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self.options.consumer_conf("planner"))
        return self._consumer

    def _watermarks(self) -> dict[str, dict[str, tuple[int, int]]]:
        consumer = self._metadata_consumer()
        timeout = self.options.metadata_timeout_s
        try:
            metadata = consumer.list_topics(timeout=timeout)
            out: dict[str, dict[str, tuple[int, int]]] = {}
            for topic in self.options.topics:
                topic_md = metadata.topics.get(topic)
                if topic_md is None or topic_md.error is not None:
                    continue  # not created yet: picked up from offset 0 once it appears
                out[topic] = {
                    str(p): consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=timeout
                    )
                    for p in sorted(topic_md.partitions)
                }
            return out
        except KafkaException as exc:
            raise KafkaSourceError(
                f"Kafka brokers {self.options.bootstrap_servers} did not answer within "
                f"{timeout:.0f}s ({_kafka_reason(exc)}); check kafka.bootstrap_servers and that "
                "the broker is running (`lakehouse kafka serve` for the embedded one)"
            ) from None

    def _high_watermarks(self) -> Offsets:
        return {
            t: {p: hi for p, (_, hi) in parts.items()} for t, parts in self._watermarks().items()
        }

    def _check_data_loss(self, start: Offsets, available: Offsets) -> Offsets:
        out: Offsets = {t: dict(parts) for t, parts in available.items()}
        for topic, parts in start.items():
            for part, offset in parts.items():
                latest = out.get(topic, {}).get(part)
                if latest is None or latest >= offset:
                    continue
                if self.options.fail_on_data_loss:
                    raise KafkaSourceError(
                        f"{topic}[{part}] is at offset {latest} but the checkpoint has read up to "
                        f"{offset}: the topic was recreated or truncated. Set "
                        "failOnDataLoss=false to continue from the current offsets, or reset the "
                        "query's checkpoint."
                    )
                out[topic][part] = offset
        return out


def plan_end_offsets(start: Offsets, available: Offsets, max_rows: int | None) -> Offsets:
    """End offsets for the next micro-batch: all of ``available``, or at most ``max_rows`` records
    shared between partitions in proportion to their lag (every lagging partition progresses)."""
    lag = {
        (t, p): max(0, hi - start.get(t, {}).get(p, 0))
        for t, parts in available.items()
        for p, hi in parts.items()
    }
    total = sum(lag.values())
    end: Offsets = {t: dict(start.get(t, {})) for t in start}
    for (t, p), _ in lag.items():
        end.setdefault(t, {})[p] = start.get(t, {}).get(p, 0)
    if total == 0:
        return end
    if max_rows is None or total <= max_rows:
        take = dict(lag)
    else:
        take = {tp: (max_rows * n) // total for tp, n in lag.items()}
        spare = max_rows - sum(take.values())
        for tp in sorted(lag, key=lambda k: lag[k] - take[k], reverse=True):
            if spare == 0:
                break
            if take[tp] < lag[tp]:
                take[tp] += 1
                spare -= 1
    for (t, p), n in take.items():
        end[t][p] += n
    return end


def bound_offsets(available: Offsets, target: Offsets, start: Offsets) -> Offsets:
    """Never read past ``target`` (the offsets seen when an AvailableNow run began)."""
    out: Offsets = {}
    for topic, parts in available.items():
        for part, hi in parts.items():
            if part in target.get(topic, {}):
                cap = target[topic][part]
            else:
                cap = start.get(topic, {}).get(part, 0)
            out.setdefault(topic, {})[part] = min(hi, max(cap, start.get(topic, {}).get(part, 0)))
    return out


def plan_tasks(
    start: Offsets, end: Offsets, min_tasks: int, max_records: int
) -> list[list[OffsetRange]]:
    """Pack the batch's ranges into tasks of equal size: at least ``min_tasks`` (when there are
    that many records) and at most ``max_records`` records each. Deterministic, so a replayed
    batch is planned identically."""
    ranges = [
        (topic, int(part), start.get(topic, {}).get(part, 0), hi)
        for topic in sorted(end)
        for part, hi in sorted(end[topic].items(), key=lambda kv: int(kv[0]))
        if hi > start.get(topic, {}).get(part, 0)
    ]
    total = sum(hi - lo for _, _, lo, hi in ranges)
    if total == 0:
        return []
    count = max(min_tasks, -(-total // max_records))
    target = -(-total // count)
    tasks: list[list[OffsetRange]] = []
    current: list[OffsetRange] = []
    size = 0
    for topic, part, first, hi in ranges:
        lo = first
        while lo < hi:
            take = min(hi - lo, target - size)
            current.append((topic, part, lo, lo + take))
            size, lo = size + take, lo + take
            if size == target:
                tasks.append(current)
                current, size = [], 0
    if current:
        tasks.append(current)
    return tasks


def read_task(task: KafkaReadTask) -> Iterator[pa.RecordBatch]:
    """Yield Arrow batches holding exactly the task's offset ranges."""
    if task.records == 0:
        return
    consumer = Consumer(task.options.consumer_conf("reader"))
    try:
        consumer.assign([TopicPartition(t, p, lo) for t, p, lo, _ in task.ranges])
        yield from _drain(consumer, task)
    finally:
        consumer.close()


def _drain(consumer: Consumer, task: KafkaReadTask) -> Iterator[pa.RecordBatch]:
    opts = task.options
    ends = {(t, p): hi for t, p, _, hi in task.ranges}
    positions = {(t, p): lo for t, p, lo, _ in task.ranges}
    remaining = task.records
    idle_since = time.monotonic()
    while remaining > 0:
        messages = consumer.consume(min(10_000, remaining), timeout=0.5)
        columns = _Columns()
        for msg in messages:
            tp = (msg.topic() or "", msg.partition() or 0)
            err = msg.error()
            if err is not None:
                _on_read_error(consumer, err, tp, positions, opts)
                continue
            offset = msg.offset()
            if offset is None or offset < positions[tp]:
                continue  # re-delivered after a seek
            if offset >= ends[tp]:
                positions[tp] = ends[tp]
                consumer.pause([TopicPartition(*tp)])
                continue
            columns.add(msg, tp, offset)
            positions[tp] = offset + 1
            if offset + 1 == ends[tp]:
                consumer.pause([TopicPartition(*tp)])  # don't fetch past the planned end
        if columns.offsets:
            idle_since = time.monotonic()
            yield columns.to_batch()
        else:
            # Offsets may be skipped (transaction markers, compaction): trust fetch positions.
            for tp_pos in consumer.position([TopicPartition(*tp) for tp in ends]):
                key = (tp_pos.topic, tp_pos.partition)
                if tp_pos.offset >= ends[key]:
                    positions[key] = ends[key]
        remaining = sum(max(0, ends[tp] - positions[tp]) for tp in ends)
        if remaining and time.monotonic() - idle_since > opts.poll_timeout_s:
            behind = {
                f"{t}[{p}]": f"{positions[(t, p)]}..{ends[(t, p)] - 1}"
                for t, p in ends
                if positions[(t, p)] < ends[(t, p)]
            }
            raise KafkaSourceError(
                f"no records for {opts.poll_timeout_s:.0f}s from {opts.bootstrap_servers} while "
                f"reading {behind}; is the broker up? (pollTimeoutMs)"
            )


def _on_read_error(
    consumer: Consumer,
    err: KafkaError,
    tp: tuple[str, int],
    positions: dict[tuple[str, int], int],
    opts: KafkaSourceOptions,
) -> None:
    if err.code() not in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
        raise KafkaSourceError(
            f"reading {tp[0]}[{tp[1]}] at offset {positions.get(tp)}: {err.str()}"
        )
    low, _ = consumer.get_watermark_offsets(TopicPartition(*tp), timeout=opts.metadata_timeout_s)
    if opts.fail_on_data_loss:
        raise KafkaSourceError(
            f"{tp[0]}[{tp[1]}] offsets {positions[tp]}..{low - 1} were deleted by retention "
            "before they were read; set failOnDataLoss=false (kafka.consumer.fail_on_data_loss) "
            "to skip them"
        )
    positions[tp] = max(positions[tp], low)
    consumer.seek(TopicPartition(tp[0], tp[1], positions[tp]))


class _Columns:
    """Record fields gathered column by column, then turned into one Arrow batch."""

    def __init__(self) -> None:
        self.keys: list[bytes | None] = []
        self.values: list[bytes | None] = []
        self.topics: list[str] = []
        self.partitions: list[int] = []
        self.offsets: list[int] = []
        self.stamps: list[int | None] = []

    def add(self, msg: Any, tp: tuple[str, int], offset: int) -> None:
        ts_type, ts = msg.timestamp()
        self.keys.append(msg.key())
        self.values.append(msg.value())
        self.topics.append(tp[0])
        self.partitions.append(tp[1])
        self.offsets.append(offset)
        self.stamps.append(ts * 1000 if ts_type else None)

    def to_batch(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays(
            [
                _utf8(self.keys),
                _utf8(self.values),
                pa.array(self.topics, pa.string()),
                pa.array(self.partitions, pa.int32()),
                pa.array(self.offsets, pa.int64()),
                pa.array(self.stamps, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            ],
            schema=_ARROW_SCHEMA,
        )


def _utf8(raw: list[bytes | None]) -> pa.Array:
    """Bytes to strings, validated in C; invalid UTF-8 becomes U+FFFD rather than failing."""
    binary = pa.array(raw, pa.binary())
    try:
        return binary.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array(
            [None if b is None else b.decode("utf-8", errors="replace") for b in raw], pa.string()
        )


def _parse_offsets(raw: Any) -> Offsets:
    if not isinstance(raw, dict):
        raise TypeError(f"offsets must be a JSON object, got {type(raw).__name__}")
    out: Offsets = {}
    for topic, parts in raw.items():
        if not isinstance(parts, dict):
            raise TypeError(f"offsets of topic {topic!r} must be an object of partition -> offset")
        out[str(topic)] = {str(int(p)): int(o) for p, o in parts.items()}
    return out


def _positive_int(opts: Mapping[str, str], key: str) -> int | None:
    if key not in opts or opts[key] in ("", "none", "None"):
        return None
    value = int(opts[key])
    if value <= 0:
        raise KafkaSourceError(f"{FORMAT}: option {key} must be a positive integer, got {value}")
    return value


def _kafka_reason(exc: KafkaException) -> str:
    if exc.args and isinstance(exc.args[0], KafkaError):
        return str(exc.args[0].str())
    return str(exc)
