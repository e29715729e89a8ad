"""The tracking SDK against a scripted stand-in collector on 127.0.0.1.

The stand-in speaks the collector's wire protocol: it gunzips and records every request, answers
from a script of statuses (then 200), and judges events with the real contract registry, so a
200's accepted/rejected counts are what the real collector would say.
"""

from __future__ import annotations

import gzip
import http.server
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipelines.contracts import ContractError, ContractRegistry
from pipelines.tracking import SpoolLockedError, Tracker
from tests.conftest import free_port

WRITE_KEY = "test-write-key"
REGISTRY = ContractRegistry()
# Fast enough that every test runs in well under a second (bar the Retry-After one).
FAST: dict[str, Any] = {
    "flush_interval_s": 0.05,
    "backoff_base_s": 0.01,
    "backoff_max_s": 0.2,
    "max_retries": 2,
    "timeout_s": 2.0,
}


@dataclass
class Reply:
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hang_up: bool = False  # close the kept-alive connection after answering, without saying so


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    gzipped: bool
    raw: bytes
    body: dict[str, Any]
    client_port: int
    at: float
    status: int = 0

    @property
    def batch(self) -> list[Any]:
        return list(self.body["batch"])

    @property
    def event_ids(self) -> list[str | None]:
        return [e.get("event_id") if isinstance(e, dict) else None for e in self.batch]


class ScriptedCollector:
    """Answers POSTs with ``script`` replies in order, then ``default``; records every request."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script: list[Reply] = []
        self.default = Reply(200)
        self.too_large: Callable[[Request], bool] = lambda _request: False
        self._lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDK expects

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                gzipped = self.headers.get("Content-Encoding") == "gzip"
                raw = gzip.decompress(data) if gzipped else data
                request = Request(
                    path=self.path,
                    headers=dict(self.headers.items()),
                    gzipped=gzipped,
                    raw=raw,
                    body=orjson.loads(raw),
                    client_port=self.client_address[1],
                    at=time.monotonic(),
                )
                reply = collector.reply_to(request)
                time.sleep(reply.delay_s)
                payload = orjson.dumps(reply.body)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.close_connection = reply.hang_up

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def reply_to(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self.too_large(request):
                reply = Reply(413, {"error": "payload too large"})
            elif self.script:
                reply = self.script.pop(0)
            else:
                reply = self.default
        request.status = reply.status
        if reply.status == 200 and not reply.body:
            return replace(reply, body=judged(request.batch))
        return reply

    def delivered_ids(self) -> list[str | None]:
        """Event ids of every batch answered 200, in arrival order."""
        with self._lock:
            return [i for r in self.requests if r.status == 200 for i in r.event_ids]

    def start(self) -> ScriptedCollector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def judged(batch: list[Any]) -> dict[str, Any]:
    """The collector's 200 body: each event checked against the real contract."""
    results = []
    for event in batch:
        violations = REGISTRY.violations(event)
        results.append(
            {
                "event_id": event.get("event_id") if isinstance(event, dict) else None,
                "status": "rejected" if violations else "accepted",
                "errors": [{"rule": v.rule, "detail": v.detail} for v in violations],
            }
        )
    accepted = sum(r["status"] == "accepted" for r in results)
    return {"accepted": accepted, "rejected": len(results) - accepted, "results": results}


@pytest.fixture
def collector() -> Iterator[ScriptedCollector]:
    server = ScriptedCollector().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def closed_url() -> str:
    """An endpoint where nothing listens: connections are refused."""
    port = free_port()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_tracker(spool_dir: Path) -> Iterator[Callable[..., Tracker]]:
    made: list[Tracker] = []

    def make(endpoint: str, **overrides: Any) -> Tracker:
        tracker = Tracker(endpoint, WRITE_KEY, **{**FAST, "spool_dir": spool_dir, **overrides})
        made.append(tracker)
        return tracker

    yield make
    for tracker in made:
        tracker.close(timeout_s=2)


def track_clicks(tracker: Tracker, n: int, **properties: Any) -> list[str]:
    return [
        tracker.track("click", f"user-{i}", f"item-{i}", properties={"position": i, **properties})
        for i in range(n)
    ]


def spooled_events(directory: Path) -> list[Any]:
    """Every event in the spool's batch files (gzipped JSON lines), oldest file first."""
    events = []
    for path in sorted(directory.glob("*.batch")):
        events += [orjson.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    return events


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(0.01)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_track_sends_contract_events_with_headers(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker]
) -> None:
    tracker = make_tracker(collector.url)
    before = now_ms()
    click_id = tracker.track(
        "click",
        "user-1",
        "item-9",
        properties={"position": 2, "list_type": "home"},
        context={"device": "mobile", "page": "/home"},
        session_id="session-1",
    )
    view_id = tracker.track("page_view", "user-2", properties={"page_type": "home"})
    after = now_ms()

    assert tracker.flush(timeout_s=5)

    [request] = collector.requests
    assert request.path == "/v1/events"
    assert request.headers["Authorization"] == f"Bearer {WRITE_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.headers["User-Agent"].startswith("lakehouse-tracker/")
    assert "X-Retry-Count" not in request.headers
    sent_at = request.body["sent_at"]
    assert sent_at.endswith("Z")
    assert before - 1000 <= datetime.fromisoformat(sent_at).timestamp() * 1000 <= now_ms()

    click, view = request.batch
    for event_id in (click_id, view_id):
        assert str(uuid.UUID(event_id)) == event_id
        assert uuid.UUID(event_id).version == 4
    assert click_id != view_id
    for event in (click, view):
        assert type(event["timestamp"]) is int
        assert before <= event["timestamp"] <= after
    assert click == {
        "event_id": click_id,
        "event_type": "click",
        "user_id": "user-1",
        "timestamp": click["timestamp"],
        "schema_version": REGISTRY.get("click").version,
        "session_id": "session-1",
        "item_id": "item-9",
        "properties": {"position": 2, "list_type": "home"},
        "context": {"device": "mobile", "page": "/home"},
    }
    assert view == {
        "event_id": view_id,
        "event_type": "page_view",
        "user_id": "user-2",
        "timestamp": view["timestamp"],
        "schema_version": REGISTRY.get("page_view").version,
        "properties": {"page_type": "home"},
    }
    assert REGISTRY.validate(click) == []
    assert REGISTRY.validate(view) == []

    stats = tracker.stats
    assert (stats.tracked, stats.sent, stats.accepted, stats.rejected) == (2, 2, 2, 0)
    assert (stats.batches_sent, stats.retried, stats.spooled, stats.dropped) == (1, 0, 0, 0)
    assert stats.last_error is None


def test_schema_versions_timestamp_and_plain_json(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker]
) -> None:
    tracker = make_tracker(collector.url, gzip=False, schema_versions={"click": 7})
    fixed_id = "0b7c6a1e-2d3f-4a5b-8c9d-0e1f2a3b4c5d"
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)

    assert tracker.track("click", "u", "i", timestamp=at, event_id=fixed_id) == fixed_id
    tracker.track("click", "u", "i", timestamp="2026-01-02T03:04:05Z")
    with pytest.raises(ContractError, match=r"unknown event type 'clik' \(known: .*click"):
        tracker.track("clik", "u", "i")
    with pytest.raises(ValueError, match="no time zone"):
        tracker.track("click", "u", "i", timestamp=datetime(2026, 1, 2))
    assert tracker.flush(timeout_s=5)

    [request] = collector.requests
    assert not request.gzipped
    assert "Content-Encoding" not in request.headers
    first, second = request.batch
    assert first["event_id"] == fixed_id
    assert first["schema_version"] == 7
    assert first["timestamp"] == 1_767_323_045_678
    assert second["timestamp"] == "2026-01-02T03:04:05Z"
    assert tracker.stats.tracked == 2  # the two that raised were never queued


def test_batches_by_size_on_one_kept_alive_connection(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker]
) -> None:
    tracker = make_tracker(collector.url, batch_size=10, flush_interval_s=30)
    ids = track_clicks(tracker, 25)

    wait_until(lambda: len(collector.requests) == 2)
    time.sleep(0.2)
    assert len(collector.requests) == 2, "the last 5 must wait for a full batch or the interval"
    assert tracker.flush(timeout_s=5)

    assert [len(r.batch) for r in collector.requests] == [10, 10, 5]
    assert collector.delivered_ids() == ids
    assert len({r.client_port for r in collector.requests}) == 1
    assert tracker.stats.batches_sent == 3


def test_batches_by_interval(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker]
) -> None:
    tracker = make_tracker(collector.url, batch_size=1000, flush_interval_s=0.3)
    started = time.monotonic()
    ids = track_clicks(tracker, 3)

    wait_until(lambda: len(collector.requests) == 1)  # no flush(): the interval sends it
    waited = collector.requests[0].at - started

    assert 0.25 <= waited < 2.0
    assert collector.delivered_ids() == ids


def test_retries_503_then_delivers_same_events(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker]
) -> None:
    unavailable = Reply(503, {"error": "Kafka could not acknowledge"})
    collector.script = [unavailable, unavailable]
    tracker = make_tracker(collector.url, max_retries=3)
    ids = track_clicks(tracker, 5)

    assert tracker.flush(timeout_s=5)

    assert [r.event_ids for r in collector.requests] == [ids, ids, ids]
    assert [r.headers.get("X-Retry-Count") for r in collector.requests] == [None, "1", "2"]
    assert [r.status for r in collector.requests] == [503, 503, 200]
    stats = tracker.stats
    assert (stats.sent, stats.accepted, stats.retried) == (5, 5, 10)
    assert (stats.spooled, stats.dropped, stats.batches_sent) == (0, 0, 1)


def test_retry_after_is_the_minimum_wait(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker]
) -> None:
    collector.script = [Reply(429, {"error": "slow down"}, headers={"Retry-After": "1"})]
    tracker = make_tracker(collector.url, backoff_max_s=5)
    ids = track_clicks(tracker, 2)

    assert tracker.flush(timeout_s=10)

    first, second = collector.requests
    assert second.at - first.at >= 1.0
    assert second.headers["X-Retry-Count"] == "1"
    assert first.event_ids == second.event_ids == ids


def test_retries_exhausted_spools_then_delivers_when_collector_recovers(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker], spool_dir: Path
) -> None:
    collector.script = [Reply(503, {"error": "Kafka could not acknowledge"})] * 3
    # backoff_base_s keeps the spool's first retry well after flush() returns.
    tracker = make_tracker(collector.url, max_retries=1, backoff_base_s=0.3, backoff_max_s=1)
    ids = track_clicks(tracker, 5)

    assert not tracker.flush(timeout_s=5), "the batch went to the spool, not the collector"
    stats = tracker.stats
    assert stats.spooled == 5
    assert stats.last_error is not None
    assert "failed 2 attempts (last: HTTP 503: Kafka could not acknowledge)" in stats.last_error
    assert f"5 events kept in the spool at {spool_dir}" in stats.last_error

    wait_until(lambda: tracker.stats.unspooled == 5)
    assert collector.delivered_ids() == ids
    assert [r.status for r in collector.requests] == [503, 503, 503, 200]
    assert not list(spool_dir.glob("*.batch"))
    assert (tracker.stats.sent, tracker.stats.in_spool, tracker.stats.dropped) == (5, 0, 0)


def test_413_splits_the_batch_and_parks_only_an_event_too_large_alone(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker]
) -> None:
    collector.too_large = lambda r: len(r.batch) > 3 or b"x" * 1000 in r.raw
    tracker = make_tracker(collector.url, batch_size=8)
    ids = track_clicks(tracker, 8)

    assert tracker.flush(timeout_s=5)
    assert [len(r.batch) for r in collector.requests] == [8, 4, 2, 2, 4, 2, 2]
    assert collector.delivered_ids() == ids
    assert (tracker.stats.sent, tracker.stats.dropped, tracker.stats.batches_sent) == (8, 0, 4)

    small, huge, other = (
        tracker.track("click", "u", "i"),
        tracker.track("click", "u", "i", properties={"category": "x" * 5000}),
        tracker.track("click", "u", "i"),
    )
    assert not tracker.flush(timeout_s=5)

    assert collector.delivered_ids() == [*ids, small, other]
    stats = tracker.stats
    assert (stats.sent, stats.dropped, stats.parked) == (10, 0, 1)
    assert stats.last_error is not None
    assert f"event {huge} is too large for the collector even alone" in stats.last_error
    assert "HTTP 413" in stats.last_error
    # The poison is parked with its reason, and what came after it was delivered.
    (parked,) = [orjson.loads(line) for line in (tracker.spool_dir / "parked.jsonl").open("rb")]
    assert orjson.loads(parked["event"])["event_id"] == huge
    assert "too large for the collector even alone" in parked["reason"]


def test_refused_write_key_keeps_every_event_in_the_spool(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker], spool_dir: Path
) -> None:
    collector.default = Reply(401, {"error": "unknown write key"})
    tracker = make_tracker(collector.url, batch_size=10, backoff_max_s=60)
    ids = track_clicks(tracker, 25)

    assert not tracker.flush(timeout_s=5)
    ids += track_clicks(tracker, 5)  # still accepted while refused, straight to the spool
    assert not tracker.flush(timeout_s=5)

    assert len(collector.requests) == 1, "a refused key pauses sending until backoff_max_s"
    assert sorted(e["event_id"] for e in spooled_events(spool_dir)) == sorted(ids)
    stats = tracker.stats
    assert (stats.tracked, stats.spooled, stats.in_spool) == (30, 30, 30)
    assert (stats.sent, stats.dropped) == (0, 0)
    assert stats.last_error == (
        "collector refused the write key (HTTP 401: unknown write key); fix it and restart "
        f"— 30 events kept in the spool at {spool_dir}"
    )


def test_unreachable_collector_spools_on_close_and_next_tracker_delivers_exactly(
    collector: ScriptedCollector,
    closed_url: str,
    make_tracker: Callable[..., Tracker],
    spool_dir: Path,
) -> None:
    first = make_tracker(closed_url, batch_size=10)
    ids = track_clicks(first, 30)
    started = time.monotonic()
    first.close(timeout_s=5)

    assert time.monotonic() - started < 2.0, "an unreachable collector must not stall close()"
    assert [e["event_id"] for e in spooled_events(spool_dir)] == ids
    assert not list(spool_dir.glob("*.tmp"))
    stats = first.stats
    assert (stats.spooled, stats.dropped, stats.sent) == (30, 0, 0)
    assert stats.last_error is not None
    assert "unreachable" in stats.last_error

    second = make_tracker(collector.url, batch_size=10)
    live = track_clicks(second, 3)
    assert second.flush(timeout_s=5)

    assert collector.delivered_ids() == ids + live  # each once; the spool first, oldest first
    assert not list(spool_dir.glob("*.batch"))
    stats = second.stats
    assert (stats.tracked, stats.sent, stats.unspooled, stats.in_spool) == (3, 33, 30, 0)


def test_close_during_a_retry_wait_spools_the_batch_in_hand_and_the_queue(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker], spool_dir: Path
) -> None:
    collector.default = Reply(503, {"error": "busy"}, headers={"Retry-After": "5"})
    tracker = make_tracker(collector.url, batch_size=5, backoff_max_s=10, flush_interval_s=30)
    ids = track_clicks(tracker, 5)
    wait_until(lambda: len(collector.requests) == 1)  # the sender now waits 5 s to retry
    ids += track_clicks(tracker, 12)

    started = time.monotonic()
    tracker.close(timeout_s=0.3)

    assert time.monotonic() - started < 3.0
    assert sorted(e["event_id"] for e in spooled_events(spool_dir)) == sorted(ids)
    stats = tracker.stats
    assert (stats.spooled, stats.dropped, stats.sent) == (17, 0, 0)
    assert len(collector.requests) == 1


def test_close_does_not_wait_out_a_hung_collector(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker], spool_dir: Path
) -> None:
    collector.script = [Reply(200, delay_s=3)]
    tracker = make_tracker(collector.url, timeout_s=10)
    ids = track_clicks(tracker, 4)
    wait_until(lambda: len(collector.requests) == 1)

    started = time.monotonic()
    tracker.close(timeout_s=0.3)

    assert time.monotonic() - started < 2.0
    # The collector may yet take them: kept anyway, duplicates are removed downstream.
    assert [e["event_id"] for e in spooled_events(spool_dir)] == ids
    assert (tracker.stats.spooled, tracker.stats.dropped) == (4, 0)


def test_full_spool_counts_every_dropped_event(
    closed_url: str, make_tracker: Callable[..., Tracker], tmp_path: Path, caplog: Any
) -> None:
    sizing = make_tracker(closed_url, batch_size=10, spool_dir=tmp_path / "sizing")
    track_clicks(sizing, 10)
    sizing.close()
    [one_batch] = (tmp_path / "sizing").glob("*.batch")
    bound = int(one_batch.stat().st_size * 2.5)  # room for two batches of ten, not three

    tracker = make_tracker(closed_url, batch_size=10, flush_interval_s=1, max_spool_bytes=bound)
    with caplog.at_level(logging.WARNING, logger="pipelines.tracking"):
        track_clicks(tracker, 50)
        tracker.close()

    stats = tracker.stats
    assert (stats.tracked, stats.spooled, stats.dropped) == (50, 20, 30)
    assert len(spooled_events(tracker.spool_dir)) == 20
    assert sum(p.stat().st_size for p in tracker.spool_dir.glob("*.batch")) <= bound
    # The drops are logged; last_error may since hold a later retry's error (a loaded machine).
    assert f"max_spool_bytes={bound}); dropped 10 events" in caplog.text
    assert sum("raise max_spool_bytes" in r.getMessage() for r in caplog.records) == 3


def test_full_memory_queue_spools_oldest_events_instead_of_losing_them(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker]
) -> None:
    collector.script = [Reply(200, delay_s=0.5)]
    tracker = make_tracker(collector.url, batch_size=5, max_queue=10)
    ids = track_clicks(tracker, 1)
    wait_until(lambda: len(collector.requests) == 1)  # the sender now waits on a slow reply

    ids += track_clicks(tracker, 30)
    assert tracker.stats.spooled == 20  # 4 overflows of the 5 oldest; 10 still in memory
    assert tracker.stats.queued == 10

    assert tracker.flush(timeout_s=10)
    assert Counter(collector.delivered_ids()) == Counter(ids)  # each exactly once
    stats = tracker.stats
    assert (stats.sent, stats.unspooled, stats.dropped, stats.in_spool) == (31, 20, 0, 0)


def test_corrupt_spool_files_are_moved_aside_and_the_rest_delivered(
    collector: ScriptedCollector,
    closed_url: str,
    make_tracker: Callable[..., Tracker],
    spool_dir: Path,
    caplog: Any,
) -> None:
    earlier = make_tracker(closed_url, batch_size=5)
    ids = track_clicks(earlier, 5)
    earlier.close()
    not_gzip = spool_dir / "00000000000000000001-3.batch"
    not_gzip.write_bytes(b"not gzip at all")
    wrong_count = spool_dir / "00000000000000000002-5.batch"
    wrong_count.write_bytes(gzip.compress(b'{"a":1}\n{"b":2}'))
    half_written = spool_dir / "00000000000000000003-1.batch.tmp"
    half_written.write_bytes(b"killed mid-write")

    with caplog.at_level(logging.WARNING, logger="pipelines.tracking"):
        tracker = make_tracker(collector.url)
        assert tracker.flush(timeout_s=5)

    assert (spool_dir / "00000000000000000001-3.corrupt").read_bytes() == b"not gzip at all"
    assert (spool_dir / "00000000000000000002-5.corrupt").exists()
    assert not not_gzip.exists()
    assert not wrong_count.exists()
    assert not half_written.exists()
    assert collector.delivered_ids() == ids
    warnings = [r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage()]
    assert len(warnings) == 2
    assert str(not_gzip) in warnings[0]
    assert "holds 2 events but its name says 5" in warnings[1]


def test_partly_delivered_spool_file_keeps_only_the_rest(
    collector: ScriptedCollector,
    closed_url: str,
    make_tracker: Callable[..., Tracker],
    spool_dir: Path,
) -> None:
    earlier = make_tracker(closed_url, batch_size=4)
    ids = track_clicks(earlier, 4)
    earlier.close()
    collector.too_large = lambda r: len(r.batch) > 2
    collector.script = [Reply(200)]  # the first half goes through, then the collector fails
    collector.default = Reply(503, {"error": "Kafka could not acknowledge"})

    tracker = make_tracker(collector.url, max_retries=1)
    assert not tracker.flush(timeout_s=5)

    [left] = spool_dir.glob("*.batch")
    assert left.name.endswith("-2.batch")
    assert [e["event_id"] for e in spooled_events(spool_dir)] == ids[2:]
    assert (tracker.stats.unspooled, tracker.stats.in_spool) == (2, 2)

    collector.default = Reply(200)
    wait_until(lambda: tracker.stats.in_spool == 0)
    assert collector.delivered_ids() == ids
    assert not list(spool_dir.glob("*.batch"))


def test_reconnects_when_the_collector_dropped_the_kept_alive_connection(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker]
) -> None:
    collector.script = [Reply(200, hang_up=True)]
    tracker = make_tracker(collector.url)
    ids = track_clicks(tracker, 2)
    assert tracker.flush(timeout_s=5)
    ids += track_clicks(tracker, 2)
    assert tracker.flush(timeout_s=5)

    assert collector.delivered_ids() == ids
    first, second = collector.requests
    assert first.client_port != second.client_port
    assert (tracker.stats.retried, tracker.stats.spooled, tracker.stats.last_error) == (0, 0, None)


def test_enqueue_sends_strings_verbatim_and_fills_only_missing_fields(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker]
) -> None:
    tracker = make_tracker(collector.url)
    malformed = '{"event_type": "click", "user_id": oops'
    given_id = "6d0f3b8e-1c2a-4e5f-9a7b-3c4d5e6f7a8b"
    complete = {
        "event_id": given_id,
        "event_type": "click",
        "user_id": "u",
        "item_id": "i",
        "timestamp": 5,
        "schema_version": 1,
    }

    assert tracker.enqueue(malformed) is None
    filled_id = tracker.enqueue({"event_type": "click", "user_id": "u", "item_id": "i"})
    assert tracker.enqueue(complete) == given_id
    unknown_id = tracker.enqueue({"event_type": "nope", "user_id": "u"})
    broken = {"event_type": "click", "user_id": "u"}  # replayed as is: nothing filled in
    assert tracker.enqueue(broken, complete=False) is None
    assert tracker.flush(timeout_s=5)

    [request] = collector.requests
    assert orjson.dumps(malformed) in request.raw
    sent, filled, kept, unknown, as_given = request.batch
    assert as_given == broken
    assert sent == malformed
    assert filled == {
        "event_type": "click",
        "user_id": "u",
        "item_id": "i",
        "event_id": filled_id,
        "timestamp": filled["timestamp"],
        "schema_version": REGISTRY.get("click").version,
    }
    assert type(filled["timestamp"]) is int
    assert kept == complete
    assert unknown == {
        "event_type": "nope",
        "user_id": "u",
        "event_id": unknown_id,
        "timestamp": unknown["timestamp"],
    }
    stats = tracker.stats
    assert (stats.tracked, stats.sent, stats.accepted, stats.rejected) == (5, 5, 2, 3)


def test_one_spool_dir_per_tracker_across_threads_and_processes(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker], spool_dir: Path
) -> None:
    first = make_tracker(collector.url)
    with pytest.raises(SpoolLockedError, match=f"spool directory {spool_dir} is already in use"):
        Tracker(collector.url, WRITE_KEY, spool_dir=spool_dir)

    other_process = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from pipelines.tracking import Spool; Spool({str(spool_dir)!r}, 1000)",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert other_process.returncode != 0
    assert f"spool directory {spool_dir} is already in use" in other_process.stderr

    first.close()
    make_tracker(collector.url).close()  # the lock went with close()


def test_close_is_idempotent_flushes_and_refuses_new_events(
    collector: ScriptedCollector, make_tracker: Callable[..., Tracker]
) -> None:
    with make_tracker(collector.url, flush_interval_s=30) as tracker:
        ids = track_clicks(tracker, 3)
    tracker.close()

    assert collector.delivered_ids() == ids
    with pytest.raises(RuntimeError, match="closed; create a new Tracker"):
        tracker.track("click", "u", "i")
    assert tracker.flush(timeout_s=1)  # nothing pending


@pytest.mark.parametrize(
    ("endpoint", "settings", "message"),
    [
        ("ftp://collector", {}, "not an http\\(s\\) URL"),
        ("http://127.0.0.1:1", {"batch_size": 50, "max_queue": 10}, "raise max_queue"),
        ("http://127.0.0.1:1", {"backoff_base_s": 5, "backoff_max_s": 1}, "backoff_max_s"),
    ],
)
def test_bad_settings_are_named(
    endpoint: str, settings: dict[str, Any], message: str, spool_dir: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        Tracker(endpoint, WRITE_KEY, spool_dir=spool_dir, **settings)
