"""SDK -> collector -> Kafka end to end: exact delivery, outages, crashes, zero loss."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from pipelines.benchmarks.collector import bench_collector
from pipelines.collector import BackgroundCollector
from pipelines.config import Settings
from pipelines.tracking import Tracker
from tests.conftest import make_settings
from tests.streaming.helpers import read_topic

pytestmark = pytest.mark.streaming

KEY = "test-write-key"


def event_ids(settings: Settings, *topics: str) -> Counter[str]:
    """event_id -> how many messages carry it, over ``topics``."""
    counts: Counter[str] = Counter()
    for topic in topics:
        for _key, value in read_topic(settings.kafka.bootstrap_servers, topic):
            counts[orjson.loads(value)["event_id"]] += 1
    return counts


def wait_until_settled(tracker: Tracker, timeout_s: float) -> None:
    """Until nothing is queued or spooled (the spool drains after the sender's backoff)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tracker.flush(timeout_s=2)
        stats = tracker.stats
        if stats.queued == 0 and stats.in_spool == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"tracker did not settle: {tracker.stats}")


def test_sdk_events_arrive_exactly_once_and_bad_ones_in_the_dlq_with_reasons(
    lake_settings: Settings, tmp_path: Path
) -> None:
    topics = lake_settings.kafka.topics
    with (
        BackgroundCollector(lake_settings, lake_settings.kafka.bootstrap_servers) as collector,
        Tracker(collector.url, KEY, spool_dir=tmp_path / "spool", batch_size=50) as tracker,
    ):
        sent = [
            tracker.track("click", f"user-{i % 13}", item_id=f"item-{i % 7}") for i in range(400)
        ]
        sent += [
            tracker.track("page_view", f"user-{i}", properties={"page_type": "product"})
            for i in range(100)
        ]
        bad = [
            tracker.track("click", "user-1"),  # no item_id
            tracker.track("add_to_cart", "user-2", item_id="item-1", properties={"quantity": 0}),
        ]
        assert tracker.flush(timeout_s=30)
        stats = tracker.stats
    assert (stats.tracked, stats.accepted, stats.rejected, stats.dropped) == (502, 500, 2, 0)
    delivered = event_ids(lake_settings, topics.click, topics.page_view)
    assert delivered == Counter(sent)  # every event exactly once, nothing else
    dlq = [
        orjson.loads(v) for _k, v in read_topic(lake_settings.kafka.bootstrap_servers, topics.dlq)
    ]
    reasons = {d["event"]["event_id"]: [e["rule"] for e in d["errors"]] for d in dlq}
    assert reasons == {bad[0]: ["required:item_id"], bad[1]: ["range:properties.quantity"]}


def test_collector_outage_mid_run_loses_nothing(lake_settings: Settings, tmp_path: Path) -> None:
    topics = lake_settings.kafka.topics
    collector = BackgroundCollector(lake_settings, lake_settings.kafka.bootstrap_servers).start()
    tracker = Tracker(
        collector.url,
        KEY,
        spool_dir=tmp_path / "spool",
        batch_size=20,
        flush_interval_s=0.05,
        backoff_base_s=0.05,
        backoff_max_s=0.5,
    )
    sent: list[str] = []
    try:
        for phase in range(3):
            for i in range(300):
                sent.append(tracker.track("click", f"user-{i % 17}", item_id=f"item-{phase}"))
                if i % 50 == 0:
                    time.sleep(0.01)  # spread the traffic so the outage falls mid-run
            if phase == 0:
                collector.stop()  # the app keeps tracking while the collector is down
            elif phase == 1:
                assert not tracker.flush(timeout_s=10)  # phase 1 could only be spooled
                assert tracker.stats.spooled > 0
                collector.start()  # same port: the SDK's endpoint is unchanged
        wait_until_settled(tracker, timeout_s=60)
        stats = tracker.stats
    finally:
        tracker.close()
        collector.stop()
    assert stats.dropped == 0 and stats.unspooled > 0
    delivered = event_ids(lake_settings, topics.click)
    assert set(delivered) == set(sent)  # zero loss
    assert len(sent) == 900
    # Any duplicate (a batch Kafka took but whose answer was lost) carries the same event_id,
    # which silver removes; nothing arrives that was not sent.
    assert sum(delivered.values()) >= 900


SPOOLING_APP = textwrap.dedent(
    """
    import sys, time
    from pipelines.tracking import Tracker
    endpoint, spool, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tracker = Tracker(endpoint, "test-write-key", spool_dir=spool, batch_size=25,
                      flush_interval_s=0.05, backoff_base_s=0.05, backoff_max_s=60)
    ids = [tracker.track("click", f"user-{i}", item_id="item-1") for i in range(n)]
    tracker.flush(timeout_s=30)
    assert tracker.stats.spooled == n, tracker.stats
    print(" ".join(ids), flush=True)
    time.sleep(3600)  # killed here, mid-life, with its events only on disk
    """
)


def test_killed_sdk_process_delivers_its_spool_after_restart(
    lake_settings: Settings, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    with BackgroundCollector(lake_settings, lake_settings.kafka.bootstrap_servers) as collector:
        port = collector.port
    # The collector is down: the app's events can only go to its spool.
    app = subprocess.Popen(
        [sys.executable, "-c", SPOOLING_APP, f"http://127.0.0.1:{port}", str(spool), "120"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert app.stdout is not None
        ids = app.stdout.readline().split()
        assert len(ids) == 120, f"app printed {ids!r}"
    finally:
        app.send_signal(signal.SIGKILL)
        app.wait(10)
    assert list(spool.glob("*.batch")), "the killed process left no spool"

    with (
        BackgroundCollector(lake_settings, lake_settings.kafka.bootstrap_servers, port=port),
        Tracker(f"http://127.0.0.1:{port}", KEY, spool_dir=spool) as restarted,
    ):
        wait_until_settled(restarted, timeout_s=30)
        assert restarted.stats.unspooled == 120
    assert not list(spool.glob("*.batch"))
    assert event_ids(lake_settings, lake_settings.kafka.topics.click) == Counter(ids)


@pytest.mark.slow
def test_bench_collector_reports_measured_figures(tmp_path: Path) -> None:

    result = bench_collector(
        make_settings(tmp_path), seconds=1.0, concurrency=4, latency_rate=500, sdk_calls=2_000
    )
    assert result["accepted_events_per_s"] > 0 and result["non_200_responses"] == 0
    assert result["latency_requests"] == 5 and result["latency_errors"] == 0
    assert 0 < result["latency_p50_ms"] <= result["latency_p99_ms"] <= result["latency_max_ms"]
    assert result["sdk_track_us"] > 0
