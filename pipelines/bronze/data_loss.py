"""Offsets Kafka deleted before bronze read them: found before the query starts, said loudly.

Bronze resumes every partition where its checkpoint stands: the end offsets of the last committed
micro-batch (``<checkpoint>/offsets/<N>`` for the highest ``commits/<N>``). When retention (or
``kafka-delete-records``) has moved a partition's earliest offset past that point, the events in
between are gone from Kafka. With ``kafka.consumer.fail_on_data_loss: true`` (the default) bronze
refuses to start and says which fix applies; with ``false`` it goes on, as Spark would, but logs
each gap (topic, partition, checkpoint offset, earliest offset, events skipped) and reports them
in the run's result and the CLI summary, instead of the silent "+0 rows" of Spark's own warning.

Only gaps present when the query starts are seen: data deleted while a continuous run is between
two batches is skipped by Spark with its own warning in the job's log.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipelines.streaming.kafka import quiet_logger

log = logging.getLogger(__name__)


class DataLossError(RuntimeError):
    """Kafka no longer holds offsets bronze has not read, and the config forbids skipping them."""


@dataclass(frozen=True)
class OffsetGap:
    """Events of one partition deleted from Kafka before bronze read them."""

    topic: str
    partition: int
    checkpoint_offset: int  # where bronze resumes
    earliest_offset: int  # the first offset Kafka still holds

    @property
    def skipped(self) -> int:
        return self.earliest_offset - self.checkpoint_offset

    def describe(self) -> str:
        return (
            f"{self.topic}[{self.partition}]: offsets {self.checkpoint_offset:,}.."
            f"{self.earliest_offset - 1:,} ({self.skipped:,} events) were deleted before bronze "
            f"read them; the checkpoint stands at {self.checkpoint_offset:,}, Kafka starts at "
            f"{self.earliest_offset:,}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "skipped": self.skipped}


def committed_offsets(
    checkpoint: str, filesystem: pafs.FileSystem | None = None
) -> dict[tuple[str, int], int]:
    """Per partition, the offset bronze resumes from (empty before the first committed batch).

    ``filesystem``: the storage root's (``Catalog.filesystem()``), for object storage.
    """
    fs, root = _filesystem(checkpoint, filesystem)
    commits = _batch_ids(fs, f"{root}/commits")
    if not commits:
        return {}
    with fs.open_input_stream(f"{root}/offsets/{max(commits)}") as stream:
        lines = stream.read().decode().splitlines()
    # Line 1 is the log version, line 2 the batch metadata, then one line per source.
    resume: dict[tuple[str, int], int] = {}
    for line in lines[2:]:
        if not line.strip().startswith("{"):
            continue
        for topic, partitions in json.loads(line).items():
            for partition, offset in partitions.items():
                resume[(topic, int(partition))] = int(offset)
    return resume


def offset_gaps(
    checkpoint: str,
    client_conf: dict[str, Any],
    filesystem: pafs.FileSystem | None = None,
    timeout_s: float = 10.0,
) -> list[OffsetGap]:
    """Partitions whose earliest offset in Kafka lies past bronze's checkpoint."""
    resume = committed_offsets(checkpoint, filesystem)
    if not resume:
        return []
    consumer = Consumer(
        {**client_conf, "group.id": "lakehouse-bronze-offset-check", "logger": quiet_logger}
    )
    gaps: list[OffsetGap] = []
    try:
        for (topic, partition), offset in sorted(resume.items()):
            try:
                low, _high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout_s
                )
            except KafkaException as exc:  # a deleted topic: Spark reports it itself
                log.warning("bronze: no watermarks for %s[%s]: %s", topic, partition, exc)
                continue
            if low > offset:
                gaps.append(OffsetGap(topic, partition, offset, low))
    finally:
        consumer.close()
    return gaps


def check_data_loss(
    checkpoint: str,
    client_conf: dict[str, Any],
    *,
    fail_on_data_loss: bool,
    filesystem: pafs.FileSystem | None = None,
) -> list[OffsetGap]:
    """Find the gaps; raise ``DataLossError`` (naming the fixes) or log each one loudly."""
    gaps = offset_gaps(checkpoint, client_conf, filesystem)
    if not gaps:
        return []
    total = sum(g.skipped for g in gaps)
    listed = "; ".join(g.describe() for g in gaps)
    if fail_on_data_loss:
        raise DataLossError(
            f"bronze: Kafka no longer holds {total:,} events bronze has not read ({listed}). "
            "Those events are lost from Kafka (retention or deleted records). To skip them and "
            "go on, set kafka.consumer.fail_on_data_loss: false (each gap is then reported); to "
            "avoid it, keep Kafka's retention longer than bronze can be stopped."
        )
    for gap in gaps:
        log.error("bronze: DATA LOSS, skipping: %s", gap.describe())
    log.error(
        "bronze: skipping %s events deleted from Kafka before bronze read them "
        "(kafka.consumer.fail_on_data_loss is false)",
        f"{total:,}",
    )
    return gaps


def _filesystem(checkpoint: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, checkpoint.split("://", 1)[-1].rstrip("/")
    uri = checkpoint if "://" in checkpoint else f"file://{checkpoint}"
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


def _batch_ids(fs: pafs.FileSystem, folder: str) -> list[int]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except (pa.ArrowException, OSError):
        return []
    return [int(i.base_name) for i in infos if i.base_name.isdigit()]
