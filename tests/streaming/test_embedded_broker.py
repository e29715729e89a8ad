"""The embedded broker is real Apache Kafka: data survives restarts, 3 brokers replicate, and
what it needs (jars, java) is asked for by name when missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

import pipelines.kafka.broker as broker_module
from pipelines.kafka.broker import EmbeddedKafka, EmbeddedKafkaError
from pipelines.streaming.kafka import quiet_logger

pytestmark = pytest.mark.streaming

# partition -> [(offset, key, value)] in offset order
Partitions = dict[int, list[tuple[int, str, str]]]


def produce_all(bootstrap: str, topic: str, messages: list[tuple[str, str]]) -> Partitions:
    """Produce with ``acks=all``; returns where the broker put each message."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "logger": quiet_logger,
        }
    )
    placed: Partitions = {}
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err.str())
            return
        key, value = msg.key(), msg.value()
        assert key is not None and value is not None
        placed.setdefault(msg.partition() or 0, []).append(
            (msg.offset() or 0, key.decode(), value.decode())
        )

    for key, value in messages:
        producer.produce(topic, value.encode(), key=key.encode(), on_delivery=on_delivery)
    assert producer.flush(60) == 0
    assert errors == []
    return {p: sorted(rows) for p, rows in placed.items()}


def read_all(bootstrap: str, topic: str, timeout_s: float = 60.0) -> Partitions:
    """Every message of ``topic``, per partition, read from offset 0 to the high watermark."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{topic}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "logger": quiet_logger,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            assert low == 0
            if high > 0:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        read: Partitions = {}
        deadline = time.monotonic() + timeout_s
        while sum(len(rows) for rows in read.values()) < sum(ends.values()):
            assert time.monotonic() < deadline, f"read {read} of {ends}"
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            key, value = msg.key(), msg.value()
            assert key is not None and value is not None
            read.setdefault(msg.partition() or 0, []).append(
                (msg.offset() or 0, key.decode(), value.decode())
            )
        return read
    finally:
        consumer.close()


def messages(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"user-{i % 7}", f'{{"n": {i}}}') for i in range(start, start + n)]


def replication(bootstrap: str, topic: str) -> tuple[list[int], list[int], str, int]:
    """Replicas and in-sync replicas per partition, ``min.insync.replicas``, partition 0's
    leader."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": quiet_logger})
    description = admin.describe_topics(TopicCollection([topic]))[topic].result()
    resource = ConfigResource(ResourceType.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result()
    return (
        [len(p.replicas) for p in description.partitions],
        [len(p.isr) for p in description.partitions],
        config["min.insync.replicas"].value,
        description.partitions[0].leader.id,
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_broker_on_a_data_dir_keeps_topics_and_messages_across_restarts_and_crashes(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "kafka"
    sent = messages(300)
    with EmbeddedKafka(topics=["orders"], partitions=3, data_dir=data_dir) as first:
        placed = produce_all(first.bootstrap_servers, "orders", sent)
        pids = first.pids
    assert not any(pid_alive(pid) for pid in pids)
    assert (data_dir / "broker-1" / "data" / "meta.properties").is_file()

    with EmbeddedKafka(topics=["orders"], partitions=3, data_dir=data_dir) as second:
        read = read_all(second.bootstrap_servers, "orders")
        # A crash and a revive of the one broker: same port, same data.
        address, crashed = second.bootstrap_servers, second.pids[0]
        second.kill(0)
        assert not second.running
        assert second.revive(0) > 0
        assert second.running and second.bootstrap_servers == address
        assert second.pids[0] != crashed
        with pytest.raises(EmbeddedKafkaError, match="is running; kill it first"):
            second.revive(0)
        placed_later = produce_all(second.bootstrap_servers, "orders", messages(30, start=300))

    # Every partition reads back what it was given, offsets 0..n-1, values exact.
    assert sorted(placed) == [0, 1, 2]
    assert read == placed
    assert sorted(v for rows in read.values() for _o, _k, v in rows) == sorted(v for _k, v in sent)
    for partition, rows in read.items():
        assert [offset for offset, _k, _v in rows] == list(range(len(rows)))
        # New messages continue each partition's offsets instead of starting over.
        later = [offset for offset, _k, _v in placed_later.get(partition, [])]
        assert later == list(range(len(rows), len(rows) + len(later)))
    assert sum(len(rows) for rows in placed_later.values()) == 30

    with pytest.raises(EmbeddedKafkaError, match=r"holds a 1-broker embedded Kafka cluster"):
        EmbeddedKafka(num_brokers=3, data_dir=data_dir).start()


@pytest.mark.slow
def test_a_three_broker_cluster_replicates_and_survives_losing_a_broker() -> None:
    with EmbeddedKafka(topics=["replicated"], partitions=2, num_brokers=3) as cluster:
        replicas, isr, min_isr, leader = replication(cluster.bootstrap_servers, "replicated")
        assert replicas == [3, 3]
        assert isr == [3, 3]
        assert min_isr == "2"

        before = produce_all(cluster.bootstrap_servers, "replicated", messages(100))
        cluster.kill(leader - 1)  # node ids are 1..3, in start order
        assert not cluster.running
        after = produce_all(cluster.bootstrap_servers, "replicated", messages(100, start=100))
        read = read_all(cluster.bootstrap_servers, "replicated")
        pids = cluster.pids

    expected = {p: sorted(before.get(p, []) + after.get(p, [])) for p in {*before, *after}}
    assert read == expected
    assert sum(len(rows) for rows in read.values()) == 200
    assert not any(pid_alive(pid) for pid in pids)


def test_missing_jars_are_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_JARS", str(tmp_path / "no-jars"))
    with pytest.raises(EmbeddedKafkaError) as caught:
        EmbeddedKafka().start()
    message = str(caught.value)
    assert "broker jars" in message
    assert str(tmp_path / "no-jars" / "broker") in message
    assert "pipelines.jvm resolve" in message


def test_missing_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedKafkaError, match=r"java was not found.*Java 17.*JAVA_HOME"):
        EmbeddedKafka().start()


def test_a_broker_that_exits_while_starting_names_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "JVM_OPTIONS", ("-XX:+NoSuchOption",))
    broker = EmbeddedKafka(data_dir=tmp_path / "kafka")
    with pytest.raises(EmbeddedKafkaError) as caught:
        broker.start()
    log_file = tmp_path / "kafka" / "broker-1" / "broker.log"
    assert f"exited with code 1 while starting; its log {log_file} ends with" in str(caught.value)
    assert "Unrecognized VM option 'NoSuchOption'" in str(caught.value)
    assert not broker.running
    assert broker.pids == []


# A parent that starts a broker on argv[1], prints the JVM pids, then exits without stop().
PARENT = """
import sys
from pipelines.kafka.broker import EmbeddedKafka
broker = EmbeddedKafka(data_dir=sys.argv[1]).start()
print(*broker.pids, flush=True)
if sys.argv[2] == "hang":
    sys.stdin.read()
"""


def start_parent(data_dir: Path, mode: str) -> tuple[subprocess.Popen[str], list[int]]:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(data_dir), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    return parent, [int(pid) for pid in parent.stdout.readline().split()]


def test_a_parent_that_forgets_to_stop_leaves_no_jvm(tmp_path: Path) -> None:
    parent, pids = start_parent(tmp_path / "kafka", "exit")
    assert parent.wait(60) == 0
    assert pids
    assert not any(pid_alive(pid) for pid in pids)  # the atexit hook stopped them


@pytest.mark.slow
def test_jvms_of_a_killed_parent_are_reaped_by_the_next_start(tmp_path: Path) -> None:
    parent, orphans = start_parent(tmp_path / "kafka", "hang")
    try:
        parent.kill()  # no atexit: the JVMs outlive their parent
        parent.wait()
        assert all(pid_alive(pid) for pid in orphans)
        with EmbeddedKafka(data_dir=tmp_path / "kafka") as broker:
            assert not any(pid_alive(pid) for pid in orphans)
            assert broker.running
    finally:
        for pid in orphans:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
