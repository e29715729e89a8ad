"""Chaos at the ingestion edge: a broker of three killed mid-stream, and the collector and the
broker stopped and restarted under SDK load. The hostile-input corpus is in ``hostile.py``.

Both parts start what they break (brokers, collector) under ``workdir`` on free 127.0.0.1
ports, stop all of it on the way out, and count by the definitions in ``report.py``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, TopicCollection
from confluent_kafka.admin import AdminClient

from pipelines.chaos.processes import CollectorProcess, chaos_settings, free_port
from pipelines.chaos.readback import (
    by_event_id,
    read_topics,
    tally,
    without_received_at,
)
from pipelines.chaos.report import REDELIVERED, ChaosResult
from pipelines.config import Settings
from pipelines.kafka.broker import EmbeddedKafka
from pipelines.streaming.kafka import (
    EventProducer,
    client_config,
    embedded_broker,
    quiet_logger,
)
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.tracking import Tracker, TrackerStats

Log = Callable[[str], None]

FAILOVER = "broker failover"
RESTARTS = "collector+broker restart"
WAIT_TIMEOUT_S = 120.0


# -- broker failover ----------------------------------------------------------------------------
def run_broker_failover(
    workdir: Path,
    settings: Settings,
    *,
    rate: int,
    kills: int,
    seed: int,
    log: Log,
) -> ChaosResult:
    """Produce clickstream events at ``rate``/s (acks=all, idempotent) to a 3-broker cluster
    (replication factor 3, min.insync.replicas 2) while ``kills`` (1 to 3) brokers are
    SIGKILLed one after the other. A killed broker is revived and must catch up (back in every
    partition's ISR) before the next kill; the last of several stays dead, so the read-back is
    served by the others. Then every acknowledged event must be in its topic.

    What the app does on a failed delivery is what an app should: produce it again, same id.
    """
    rng = random.Random(f"{seed}/failover")
    folder = workdir / "broker-failover"
    topics = list(settings.kafka.topics.event_topics)
    cluster = embedded_broker(settings, num_brokers=3, data_dir=folder / "kafka")
    details: dict[str, Any] = {}
    log(f"{FAILOVER}: starting 3 brokers (RF 3, min ISR 2) in {folder}")
    cluster.start()
    load: _SteadyLoad | None = None
    try:
        details["cluster_start_s"] = round(cluster.start_seconds, 1)
        admin_conf: dict[str, Any] = {
            **client_config(settings.kafka, cluster.bootstrap_servers),
            "logger": quiet_logger,
        }
        admin = AdminClient(admin_conf)
        producer = EventProducer(settings.kafka, cluster.bootstrap_servers)
        events = _clickstream(seed, settings)
        load = _SteadyLoad(producer, events, rate)
        load.start()
        load.wait_acknowledged(rate, WAIT_TIMEOUT_S)  # a second's worth before the first kill
        for k, victim in enumerate(rng.sample(range(3), kills)):
            led = _leaders(admin, topics).get(victim + 1, 0)
            log(
                f"{FAILOVER}: kill -9 broker {victim + 1} (leads {led} partitions) after "
                f"{load.produced:,} events"
            )
            before = load.produced
            cluster.kill(victim)
            took = load.wait_settled_before(before, WAIT_TIMEOUT_S)
            details[f"kill_{k + 1}"] = f"broker {victim + 1}, led {led} partitions"
            details[f"failover_{k + 1}_s"] = round(took, 1)
            log(f"{FAILOVER}: events produced before the kill all acknowledged {took:.1f}s after")
            if k < kills - 1 or kills == 1:  # a last of several stays dead for the read-back
                revived = cluster.revive(victim)
                caught_up = _wait_in_sync(admin, topics, WAIT_TIMEOUT_S)
                details[f"revive_{k + 1}_s"] = round(revived, 1)
                details[f"catch_up_{k + 1}_s"] = round(caught_up, 1)
                log(
                    f"{FAILOVER}: broker {victim + 1} revived in {revived:.1f}s, back in every "
                    f"ISR {caught_up:.1f}s later"
                )
        load.run_more(max(rate, 1_000))  # production carries on after the last failover
        unacknowledged = load.finish(WAIT_TIMEOUT_S)
        log(f"{FAILOVER}: {load.produced:,} events produced; reading every topic back")
        found = read_topics(client_config(settings.kafka, cluster.bootstrap_servers), topics)
    finally:
        if load is not None:
            load.abort()
        cluster.stop()
    counted = tally(load.acknowledged, by_event_id(v for vs in found.values() for v in vs))
    details |= {
        "acknowledged": counted.expected,
        REDELIVERED: counted.redelivered,
        "resent_by_app": load.resent,
        "unacknowledged": unacknowledged,
        "not_produced_here": counted.unexpected,
        "longest_ack_gap_s": round(load.longest_gap(), 1),
    }
    return ChaosResult(
        part=FAILOVER,
        injected=kills,
        events=load.produced,
        lost=counted.lost,
        duplicated=counted.duplicated,
        details=details,
        error=None if unacknowledged == 0 else f"{unacknowledged} events never acknowledged",
    )


def _clickstream(seed: int, settings: Settings) -> Iterator[tuple[str, str | None, bytes]]:
    """(topic, key, value) of valid clickstream events, endlessly (a new generation each
    million; ids stay unique as each generation has its own seed)."""
    for generation in itertools.count():
        generator = ClickstreamGenerator(2_000, 500, seed=seed * 1_000 + generation)
        for event in generator.events(1_000_000):
            yield settings.kafka.topics.for_event_type(event.event_type), event.key, event.value


class _SteadyLoad:
    """Produces at a fixed rate on its own thread (which alone touches the producer), keeps
    every acknowledged event id, and re-produces what failed, with the same id."""

    def __init__(
        self,
        producer: EventProducer,
        events: Iterator[tuple[str, str | None, bytes]],
        rate: int,
    ) -> None:
        self._producer = producer
        self._events = events
        self._rate = rate
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._outstanding: dict[int, tuple[str, str | None, bytes]] = {}
        self._retry: list[int] = []
        self._ack_times: list[float] = []
        self._produce_until: float | None = None
        self._stopping = threading.Event()  # no new events; settle what is outstanding
        self._aborting = threading.Event()  # leave now
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="failover-load", daemon=True)
        self.acknowledged: dict[str, int] = {}  # event id -> sequence number
        self.produced = 0
        self.resent = 0

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def wait_acknowledged(self, count: int, timeout_s: float) -> None:
        self._wait(lambda: len(self.acknowledged) >= count, timeout_s, f"{count} acknowledged")

    def wait_settled_before(self, sequence: int, timeout_s: float) -> float:
        """Until every event numbered below ``sequence`` is acknowledged; returns seconds."""
        started = time.monotonic()
        self._wait(
            lambda: not any(s < sequence for s in self._outstanding),
            timeout_s,
            f"every event before #{sequence} acknowledged",
        )
        return time.monotonic() - started

    def run_more(self, count: int) -> None:
        """Produce ``count`` more events, then stop producing new ones."""
        target = self.produced + count
        self._wait(lambda: self.produced >= target, WAIT_TIMEOUT_S, f"{target} produced")
        self._stopping.set()

    def finish(self, timeout_s: float) -> int:
        """Stop producing, wait for what is outstanding; returns events never acknowledged."""
        self._stopping.set()
        with contextlib.suppress(TimeoutError):
            self._wait(lambda: not self._outstanding, timeout_s, "everything acknowledged")
        with self._lock:
            return len(self._outstanding)

    def abort(self) -> None:
        self._stopping.set()
        self._aborting.set()
        self._thread.join(timeout=10)

    def longest_gap(self) -> float:
        times = sorted(self._ack_times)
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def _wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not condition():
                if self._error is not None:
                    raise RuntimeError(f"the producer thread failed: {self._error}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"broker failover: not {what} within {timeout_s:.0f}s")
                self._changed.wait(min(remaining, 0.5))

    def _run(self) -> None:
        try:
            while not self._aborting.is_set():
                with self._lock:
                    retry, self._retry = self._retry, []
                    if self._stopping.is_set() and not self._outstanding and not retry:
                        return
                for sequence in retry:
                    self._send(sequence, self._outstanding[sequence])
                    self.resent += 1
                if not self._stopping.is_set():
                    due = int((time.monotonic() - self._started) * self._rate) - self.produced
                    for _ in range(min(max(due, 0), 1_000)):
                        topic, key, value = next(self._events)
                        with self._lock:
                            sequence = self.produced
                            self._outstanding[sequence] = (topic, key, value)
                            self.produced += 1
                        self._send(sequence, (topic, key, value))
                self._producer.poll(0.01)
        except BaseException as exc:  # surfaced to the waiting thread
            with self._changed:
                self._error = exc
                self._changed.notify_all()

    def _send(self, sequence: int, message: tuple[str, str | None, bytes]) -> None:
        topic, key, value = message

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            with self._changed:
                if err is None:
                    self.acknowledged[orjson.loads(value)["event_id"]] = sequence
                    self._ack_times.append(time.monotonic())
                    self._outstanding.pop(sequence, None)
                else:
                    self._retry.append(sequence)
                self._changed.notify_all()

        self._producer.produce(topic, value, key=key, on_delivery=on_delivery)


def _leaders(admin: AdminClient, topics: Sequence[str]) -> Counter[int]:
    """Partitions each broker id leads, over ``topics``."""
    led: Counter[int] = Counter()
    for future in admin.describe_topics(TopicCollection(list(topics))).values():
        for partition in future.result().partitions:
            if partition.leader is not None:
                led[partition.leader.id] += 1
    return led


def _wait_in_sync(admin: AdminClient, topics: Sequence[str], timeout_s: float) -> float:
    """Until every partition of ``topics`` has all three replicas in sync; returns seconds."""
    started = time.monotonic()
    while True:
        try:
            described = admin.describe_topics(TopicCollection(list(topics)))
            if all(
                len(p.isr) == len(p.replicas)
                for future in described.values()
                for p in future.result().partitions
            ):
                return time.monotonic() - started
        except KafkaException:
            pass  # metadata moving: ask again
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the revived broker was not back in every ISR in {timeout_s:.0f}s")
        time.sleep(0.2)


# -- collector and broker restarts under SDK load -------------------------------------------------
# What can happen to the edge, in the order a full run does it; a quick run takes the first two.
RESTART_SCHEDULE = (
    "collector kill -9",
    "broker kill -9",
    "collector SIGTERM",
    "broker SIGTERM",
    "collector kill -9 + broker kill -9",
    "collector kill -9",
)


def run_collector_broker_restarts(
    workdir: Path,
    settings: Settings,
    *,
    events: int,
    restarts: int,
    senders: int,
    rate: int,
    seed: int,
    log: Log,
) -> ChaosResult:
    """``senders`` app threads, each with its own Tracker (SDK) and spool, track clickstream
    events at ``rate``/s in total to a collector process on one broker, while the collector and
    the broker are killed or stopped and restarted (same port, same data) ``restarts`` times,
    spread over the first ``events`` (traffic goes on through every outage and two seconds
    after the last). Then the trackers flush, and every event the SDK was given must be in its
    topic (at-least-once: a redelivery carries the same id, which silver removes). The SDK's
    own warnings about the outages are silenced for the part; its counters are reported.
    """
    rng = random.Random(f"{seed}/restarts")
    folder = workdir / "collector-broker-restart"
    broker = embedded_broker(settings, num_brokers=1, data_dir=folder / "kafka")
    log(f"{RESTARTS}: starting a broker and a collector process in {folder}")
    collector: CollectorProcess | None = None
    trackers: list[Tracker] = []
    details: dict[str, Any] = {}
    with _sdk_warnings_silenced():
        broker.start()
        try:
            key = secrets.token_urlsafe(16)
            port = free_port()
            edge = _edge_settings(settings, folder, broker, key, port)
            collector = CollectorProcess(folder / "conf", port, folder / "collector.log")
            collector.start()
            trackers = _app_trackers(collector.url, key, folder, senders)
            load = _TrackingLoad(trackers, seed, rate)
            load.start()
            schedule = [RESTART_SCHEDULE[i % len(RESTART_SCHEDULE)] for i in range(restarts)]
            actions: Counter[str] = Counter()
            for n, action in enumerate(schedule, start=1):
                load.wait_tracked(events * n // (restarts + 1), WAIT_TIMEOUT_S)
                # Down while the app tracks 0.5 to 3 seconds' worth of events.
                outage = rng.randint(rate // 2, rate * 3)
                log(f"{RESTARTS}: {action} after {load.tracked:,} events, down for {outage:,} more")
                broker_moved = _restart(
                    action,
                    collector,
                    broker,
                    functools.partial(load.wait_tracked, load.tracked + outage, WAIT_TIMEOUT_S),
                    log,
                )
                if broker_moved:
                    # The collector's config names the broker: a broker on new ports needs a
                    # collector restart, as it would in a deployment.
                    details["broker_moved"] = details.get("broker_moved", 0) + 1
                    edge = _edge_settings(settings, folder, broker, key, port)
                    collector.stop()
                    collector.start()
                actions[action] += 1
            # Traffic goes on for a while after the last restart, and to at least ``events``.
            load.wait_tracked(max(events, load.tracked + rate * 2), WAIT_TIMEOUT_S + events / rate)
            load.stop()
            settle_s = _settle(trackers, WAIT_TIMEOUT_S * 2)
            tracked = f"{load.tracked:,} events tracked"
            log(f"{RESTARTS}: {tracked}; the SDK settled {settle_s:.1f}s later")
            stats = [t.stats for t in trackers]
            found = read_topics(
                client_config(edge.kafka, broker.bootstrap_servers),
                [*edge.kafka.topics.event_topics, edge.kafka.topics.dlq],
            )
            collector_code = collector.stop()
        finally:
            for tracker in trackers:
                tracker.close(timeout_s=5)
            if collector is not None:
                collector.stop()
            broker.stop()
    dlq = found.pop(edge.kafka.topics.dlq)
    counted = tally(
        load.ids, by_event_id((v for vs in found.values() for v in vs), without_received_at)
    )
    details |= {
        "restarts": dict(actions),
        REDELIVERED: counted.redelivered,
        "in_dlq": len(dlq),
        "settle_s": round(settle_s, 1),
        "sdk": _sdk_counters(stats),
        "collector_exit_code": collector_code,
    }
    return ChaosResult(
        part=RESTARTS,
        injected=restarts,
        events=load.tracked,
        lost=counted.lost,
        duplicated=counted.duplicated,
        details=details,
    )


@contextlib.contextmanager
def _sdk_warnings_silenced() -> Iterator[None]:
    """Only errors from the SDK's logger: its warnings about the outages a part causes on
    purpose would flood the log."""
    sdk_log = logging.getLogger("pipelines.tracking")
    level = sdk_log.level
    sdk_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        sdk_log.setLevel(level)


def _app_trackers(url: str, key: str, folder: Path, senders: int) -> list[Tracker]:
    """One SDK per app thread, each with its own spool, tuned for quick recoveries."""
    return [
        Tracker(
            url,
            key,
            spool_dir=folder / f"spool-{i}",
            batch_size=100,
            flush_interval_s=0.2,
            backoff_base_s=0.1,
            backoff_max_s=2.0,  # an app on a flaky network would pick seconds, not 30
        )
        for i in range(senders)
    ]


def _edge_settings(
    settings: Settings, folder: Path, broker: EmbeddedKafka, key: str, port: int
) -> Settings:
    return chaos_settings(
        settings,
        folder / "conf",
        {
            "storage": {"root": str(folder / "lake")},
            "kafka": {"bootstrap_servers": broker.bootstrap_servers},
            "collector": {"host": "127.0.0.1", "port": port},
        },
        key,
    )


def _restart(
    action: str,
    collector: CollectorProcess,
    broker: EmbeddedKafka,
    outage: Callable[[], None],
    log: Log,
) -> bool:
    """Do ``action``, stay down for ``outage`` (the app keeps tracking), bring it all back;
    returns whether the broker came back on other ports."""
    address = broker.bootstrap_servers
    if "collector kill -9" in action:
        collector.kill()
    elif "collector SIGTERM" in action:
        collector.stop()
    if "broker kill -9" in action:
        broker.kill(0)
    elif "broker SIGTERM" in action:
        broker.stop()
    outage()
    moved = False
    if "broker" in action:
        broker.restart()
        moved = broker.bootstrap_servers != address
        log(
            f"{RESTARTS}: broker back on {broker.bootstrap_servers}"
            + (" (moved)" if moved else " (same port)")
        )
    if "collector" in action:
        took = collector.start()
        log(f"{RESTARTS}: collector back on port {collector.port} in {took:.1f}s")
    return moved


class _TrackingLoad:
    """App threads, one per Tracker, tracking clickstream events at a fixed total rate until
    stopped; every event id handed to the SDK is kept."""

    def __init__(self, trackers: Sequence[Tracker], seed: int, rate: int) -> None:
        self._trackers = trackers
        self._events = _clickstream_events(seed)
        self._rate = rate
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"app-{i}", daemon=True)
            for i in range(len(trackers))
        ]
        self.ids: list[str] = []
        self.errors: list[str] = []

    @property
    def tracked(self) -> int:
        return len(self.ids)

    def start(self) -> None:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def wait_tracked(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.tracked < count:
            if self.errors:
                raise RuntimeError(f"an app thread failed: {self.errors[0]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.tracked} of {count} events tracked in time")
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, index: int) -> None:
        per_thread = self._rate / len(self._trackers)
        tracker = self._trackers[index]
        try:
            for n in itertools.count():
                wait = self._started + n / per_thread - time.monotonic()
                if self._stop.wait(max(wait, 0.0)):
                    return
                with self._lock:
                    event = next(self._events)
                    self.ids.append(event["event_id"])
                tracker.enqueue(event, complete=False)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")


def _clickstream_events(seed: int) -> Iterator[dict[str, Any]]:
    """Valid clickstream events, as an app passes them to the SDK, endlessly."""
    for generation in itertools.count():
        generator = ClickstreamGenerator(2_000, 500, seed=seed * 1_000 + generation)
        for event in generator.events(1_000_000):
            yield orjson.loads(event.value)


def _settle(trackers: Sequence[Tracker], timeout_s: float) -> float:
    """Until every tracker has nothing queued or spooled (spooled batches wait out a backoff);
    returns the seconds that took."""
    started = time.monotonic()
    deadline = started + timeout_s
    for tracker in trackers:
        while True:
            tracker.flush(timeout_s=max(0.1, min(5.0, deadline - time.monotonic())))
            stats = tracker.stats
            if stats.queued == 0 and stats.in_spool == 0:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the SDK still holds {stats.queued} queued and {stats.in_spool} spooled "
                    f"events after {timeout_s:.0f}s (last error: {stats.last_error})"
                )
    return time.monotonic() - started


def _sdk_counters(stats: Sequence[TrackerStats]) -> dict[str, int]:
    """What the trackers retried, spooled, unspooled, dropped and parked, summed over all."""
    total: Counter[str] = Counter()
    for s in stats:
        total.update({k: v for k, v in asdict(s).items() if isinstance(v, int)})
    return {k: total[k] for k in ("retried", "spooled", "unspooled", "dropped", "parked")}
