"""A hostile but authenticated client cannot exhaust the collector or wedge its SDK: expanded
events are counted, dead-letter records are bounded, retries publish nothing twice."""

from __future__ import annotations

import http.client
import json
import logging
import math
import select
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from pipelines.collector import BackgroundCollector
from pipelines.config import ConfigError, Settings
from pipelines.streaming.kafka import (
    EmbeddedKafka,
    KafkaUnavailableError,
    resolve_bootstrap,
    write_embedded_state,
)
from tests.conftest import SharedBroker, make_settings, unique_topics
from tests.streaming.helpers import read_topic

pytestmark = pytest.mark.streaming

AUTH = {"Authorization": "Bearer test-write-key"}


@pytest.fixture
def collector(lake_settings: Settings) -> Iterator[BackgroundCollector]:
    with BackgroundCollector(lake_settings, lake_settings.kafka.bootstrap_servers) as running:
        yield running


def click(**extra: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": "click",
        "user_id": "user-1",
        "item_id": "item-1",
        "timestamp": int(time.time() * 1000),
        "schema_version": 1,
    } | extra


def order(lines: int, bad_every: int = 1) -> dict[str, Any]:
    products = [
        {"product_id": f"sku-{i}", "price": 5.0, "quantity": 0 if i % bad_every == 0 else 1}
        for i in range(lines)
    ]
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": "user-1",
        "messageId": str(uuid.uuid4()),
        "timestamp": "2026-11-28T10:00:00Z",
        "properties": {"order_id": "o-1", "currency": "EUR", "products": products},
    }


def resident_bytes() -> int:
    """This process's resident memory (the collector runs in a thread of it)."""
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def post_json(collector: BackgroundCollector, body: str) -> requests.Response:
    """POST a JSON text as it is (the test controls every byte, e.g. float literals)."""
    return requests.post(
        f"{collector.url}/v1/events",
        data=body,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )


def values(settings: Settings, topic: str) -> list[bytes]:
    return [v for _k, v in read_topic(settings.kafka.bootstrap_servers, topic)]


def test_an_order_is_counted_by_its_product_lines_against_the_event_cap(
    collector: BackgroundCollector, lake_settings: Settings
) -> None:
    cap = lake_settings.collector.max_events_per_request
    response = requests.post(
        f"{collector.url}/v1/batch", json={"batch": [order(cap + 1)]}, headers=AUTH, timeout=30
    )
    assert response.status_code == 413, response.text
    assert f"{cap + 1:,} events" in response.json()["error"]
    assert values(lake_settings, lake_settings.kafka.topics.dlq) == []


def test_dead_letter_records_are_bounded_whatever_the_request_holds(
    collector: BackgroundCollector, lake_settings: Settings
) -> None:
    # 1,500 rejected lines of one ~100 KB order: each line's DLQ record once copied the whole
    # order (1.5 GB resident for 8,000 lines); now each holds an excerpt and a digest.
    big = order(1_500)
    big["properties"]["note"] = "x" * 60_000
    before = resident_bytes()
    response = requests.post(
        f"{collector.url}/v1/batch", json={"batch": [big]}, headers=AUTH, timeout=60
    )
    grew = resident_bytes() - before
    assert response.status_code == 200, response.text
    dlq = values(lake_settings, lake_settings.kafka.topics.dlq)
    assert len(dlq) == 1_500
    limit = lake_settings.collector.max_dlq_excerpt_bytes
    assert max(len(v) for v in dlq) < 2 * limit + 4_096
    record = orjson.loads(dlq[0])
    assert record["event_bytes"] > limit and len(record["event_sha256"]) == 64
    assert len(record["event_excerpt"]) <= limit and "event" not in record
    assert record["mapped"]["event_type"] == "purchase"
    assert grew < 256 * 1024 * 1024, f"resident memory grew by {grew / 2**20:.0f} MB"


def test_answers_are_bounded_however_many_rules_or_fields_a_request_breaks(
    collector: BackgroundCollector, lake_settings: Settings
) -> None:
    # Found by the chaos suite: one event with 80,000 unknown context keys got a 7.3 MB answer
    # naming every one, and a Segment track with 80,000 unknown properties a 1.6 MB "ignored".
    event = click(context={f"c{i}": 0 for i in range(5_000)})
    answer = post_json(collector, json.dumps({"batch": [event]}))
    assert answer.status_code == 200, answer.text[:300]
    errors = answer.json()["results"][0]["errors"]
    assert len(errors) == 21 and errors[-1]["rule"] == "more"
    assert len(answer.content) < 16_384
    track = {
        "type": "track",
        "event": "Product Clicked",
        "userId": "user-1",
        "messageId": str(uuid.uuid4()),
        "properties": {"product_id": "sku-1", **{f"p{i}": i for i in range(5_000)}},
    }
    answer = requests.post(f"{collector.url}/v1/track", json=track, headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text[:300]
    ignored = answer.json()["results"][0]["ignored"]
    assert len(ignored) == 21 and ignored[-1] == "... 4980 more"
    assert len(answer.content) < 16_384


def test_a_huge_string_or_deep_nesting_is_dead_lettered_and_the_rest_accepted(
    collector: BackgroundCollector, lake_settings: Settings
) -> None:
    # Once: the DLQ record of a 400 KB string exceeded Kafka's message limit (503 forever) and
    # 253 levels of nesting gave 500, with the valid events of the request re-sent each retry.
    huge = click(properties={"position": "p" * 400_000})
    nested: Any = {}
    for _ in range(300):
        nested = {"a": nested}
    deep = click(context=nested)
    good = [click() for _ in range(3)]
    body = json.dumps({"batch": [huge, *good, deep]})
    for _attempt in range(3):  # the SDK's retries of the same request
        response = post_json(collector, body)
        assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["rejected", *["accepted"] * 3, "rejected"]
    assert results[-1]["errors"][0]["rule"] == "too_deep"
    clicks = [
        orjson.loads(v)["event_id"] for v in values(lake_settings, lake_settings.kafka.topics.click)
    ]
    assert sorted(clicks) == sorted(e["event_id"] for e in good)  # once, not once per retry
    assert response.json()["already_acknowledged"] == 3
    for raw in values(lake_settings, lake_settings.kafka.topics.dlq):
        assert len(raw) < 64 * 1024


def test_float_timestamps_are_refused_at_the_edge(
    collector: BackgroundCollector, lake_settings: Settings
) -> None:
    events = [
        json.dumps(click()).replace('"timestamp": ', f'"timestamp": {ts}, "_t": ')
        for ts in ("4100000000000.0", "1e30")
    ]
    response = post_json(collector, '{"batch": [' + ", ".join(events) + "]}")
    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        assert result["status"] == "rejected"
        assert "type:timestamp" in {e["rule"] for e in result["errors"]}


def raw_request(url: str, header_lines: list[bytes], body: bytes = b"[]") -> bytes:
    host, port = url.removeprefix("http://").split(":")
    head = [b"POST /v1/events HTTP/1.1", f"Host: {host}".encode(), *header_lines]
    head += [b"Content-Type: application/json", f"Content-Length: {len(body)}".encode()]
    head.append(b"Connection: close")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "authorization",
    [
        b"Authorization: Bearer test-write-key\rX-Injected: 1",  # a bare CR
        b"Authorization: Bearer test-write-key" + b"A" * 9_000,  # over aiohttp's 8 KiB line
    ],
    ids=["bare-cr", "over-8-kib"],
)
def test_the_write_key_never_reaches_a_log_or_a_response(
    collector: BackgroundCollector, caplog: pytest.LogCaptureFixture, authorization: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = raw_request(collector.url, [authorization])
    assert answer.split(b" ", 2)[1].startswith(b"4"), answer[:200]
    assert b"test-write-key" not in answer
    assert "test-write-key" not in caplog.text


def test_a_non_utf8_authorization_header_is_refused_not_a_server_error(
    collector: BackgroundCollector,
) -> None:
    answer = raw_request(collector.url, [b"Authorization: Bearer \xff\xfe\xfa-key"])
    assert answer.split(b" ", 2)[1] == b"401", answer[:200]


@pytest.mark.parametrize(
    "headers",
    [
        [b"Authorization: Bearer not-a-key", b"Authorization: Bearer test-write-key"],
        [b"Authorization: Bearer test-write-key", b"Authorization: Bearer not-a-key"],
        [b"X-Write-Key: test-write-key", b"X-Write-Key: test-write-key"],
    ],
    ids=["bad-then-good", "good-then-bad", "x-write-key-twice"],
)
def test_a_repeated_credential_header_is_refused_whichever_comes_first(
    collector: BackgroundCollector, headers: list[bytes]
) -> None:
    body = orjson.dumps([{"event_id": "x"}])
    answer = raw_request(collector.url, headers, body)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split(b" ", 2)[1] == b"400", answer[:300]
    assert b"more than one" in rest and b"test-write-key" not in answer
    assert b"connection: close" in rest.lower()


def test_a_body_that_is_not_json_is_refused_by_its_content_type(
    collector: BackgroundCollector, lake_settings: Settings
) -> None:
    response = requests.post(
        f"{collector.url}/v1/events",
        data=b"<xml/>",
        headers={**AUTH, "Content-Type": "application/xml"},
        timeout=10,
    )
    assert response.status_code == 415 and "application/json" in response.json()["error"]


def test_a_trickling_body_times_out_and_the_collector_keeps_serving(
    lake_settings: Settings,
) -> None:
    settings = lake_settings.model_copy(
        update={"collector": lake_settings.collector.model_copy(update={"body_timeout_s": 1.0})}
    )
    with BackgroundCollector(settings, settings.kafka.bootstrap_servers) as running:
        host, port = running.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(
                b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-write-key\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{"
            )
            answer = slow.recv(65536)
        assert answer.split(b" ", 2)[1] == b"408", answer[:200]
        ok = requests.post(f"{running.url}/v1/events", json=[click()], headers=AUTH, timeout=10)
        assert ok.status_code == 200


def with_collector(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with some ``collector`` settings changed."""
    return settings.model_copy(update={"collector": settings.collector.model_copy(update=changes)})


def address(collector: BackgroundCollector) -> tuple[str, int]:
    host, port = collector.url.removeprefix("http://").split(":")
    return host, int(port)


def kept_alive_after_healthz(collector: BackgroundCollector) -> socket.socket:
    """A connection whose one request (``GET /healthz``) was answered; it stays open."""
    idle = socket.create_connection(address(collector), timeout=10)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"status": "ok"}'):
        chunk = idle.recv(65536)
        assert chunk, f"keep-alive request not answered: {answer!r}"
        answer += chunk
    return idle


def seconds_to_accept_a_click(collector: BackgroundCollector) -> float:
    """How long the collector takes to answer 200 to a one-click batch."""
    t0 = time.monotonic()
    ok = requests.post(f"{collector.url}/v1/events", json=[click()], headers=AUTH, timeout=10)
    assert ok.status_code == 200, ok.text
    return time.monotonic() - t0


def test_slow_silent_and_idle_connections_are_closed_at_the_header_timeout(
    lake_settings: Settings,
) -> None:
    timeout_s = 1.0
    settings = with_collector(lake_settings, header_timeout_s=timeout_s)
    # A request head that never ends: one byte per round, never the blank line.
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-write-key\r\n"
        b"X-Padding: " + b"p" * 400
    )
    with BackgroundCollector(settings, settings.kafka.bootstrap_servers) as running:
        warm = requests.post(f"{running.url}/v1/events", json=[click()], headers=AUTH, timeout=30)
        assert warm.status_code == 200, warm.text  # the topic exists: what follows is serving
        opened = time.monotonic()
        trickling = [socket.create_connection(address(running), timeout=10) for _ in range(12)]
        silent = [socket.create_connection(address(running), timeout=10) for _ in range(4)]
        idle = kept_alive_after_healthz(running)
        answered = time.monotonic()
        everyone = [*trickling, *silent, idle]
        closed_at: dict[socket.socket, float] = {}
        served_in: float | None = None
        sent = 0
        try:
            while len(closed_at) < len(everyone) and time.monotonic() - opened < timeout_s + 5:
                for conn in trickling:
                    if conn not in closed_at:
                        try:
                            conn.sendall(head[sent : sent + 1])
                        except (BrokenPipeError, ConnectionResetError):
                            closed_at[conn] = time.monotonic()
                sent += 1
                waiting = [c for c in everyone if c not in closed_at]
                # The pace of the trickle: wait a tenth of a second for the server to close one.
                readable, _, _ = select.select(waiting, [], [], 0.1)
                for conn in readable:
                    try:
                        data = conn.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    assert data == b"", f"the server answered a request it never got: {data!r}"
                    closed_at[conn] = time.monotonic()
                if served_in is None and sent == 5:  # while all of them hold a connection
                    served_in = seconds_to_accept_a_click(running)
        finally:
            for conn in everyone:
                conn.close()
    assert served_in is not None and served_in < timeout_s, f"served in {served_in}"
    assert sent < len(head)  # the head really was still incomplete
    slow = [closed_at.get(c, math.inf) - opened for c in [*trickling, *silent]]
    assert all(0.8 * timeout_s <= s <= timeout_s + 1.5 for s in slow), slow
    kept_alive = closed_at.get(idle, math.inf) - answered
    assert 0.8 * timeout_s <= kept_alive <= timeout_s + 1.5, kept_alive


def answer_then_close(conn: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends on ``conn``, once it closed it within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    received = b""
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([conn], [], [], left)
        if not readable:
            break
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open; it sent {received[:300]!r}")


def request_head(*lines: bytes) -> bytes:
    return b"\r\n".join([b"POST /v1/events HTTP/1.1", b"Host: x", *lines, b"", b""])


@pytest.mark.parametrize(
    "authorization",
    [[b"Authorization: Bearer not-a-key"], [b"X-Write-Key: not-a-key"], []],
    ids=["unknown-bearer", "unknown-x-write-key", "no-key"],
)
def test_a_request_without_a_valid_key_is_refused_from_its_headers_alone(
    collector: BackgroundCollector, authorization: list[bytes]
) -> None:
    # 50 MB announced, not a byte sent: the 401 must not wait for the body, and the connection
    # must close rather than wait for (or read) a body nobody authorised.
    with socket.create_connection(address(collector), timeout=10) as conn:
        started = time.monotonic()
        conn.sendall(
            request_head(
                *authorization, b"Content-Type: application/json", b"Content-Length: 50000000"
            )
        )
        answer = answer_then_close(conn, timeout_s=5)
        took = time.monotonic() - started
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split(b" ", 2)[1] == b"401", answer[:300]
    assert b"connection: close" in rest.lower()
    assert b"write key" in answer
    assert took < 2.0, f"answered and closed after {took:.1f}s"


def test_the_unread_body_of_a_refused_request_is_never_served_as_a_request(
    collector: BackgroundCollector,
) -> None:
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(address(collector), timeout=10) as conn:
        conn.sendall(
            request_head(
                b"Authorization: Bearer not-a-key",
                b"Content-Type: application/json",
                f"Content-Length: {len(smuggled)}".encode(),
            )
            + smuggled
        )
        answer = answer_then_close(conn, timeout_s=5)
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert answer.startswith(b"HTTP/1.1 401"), answer[:300]


def test_a_write_key_in_the_body_still_works_within_the_body_limit(
    collector: BackgroundCollector, lake_settings: Settings
) -> None:
    # analytics.js sends its key in the body as text/plain (no Authorization header).
    def track(write_key: str) -> requests.Response:
        message = {
            "type": "track",
            "event": "Product Clicked",
            "userId": "user-7",
            "messageId": str(uuid.uuid4()),
            "properties": {"product_id": "item-3"},
            "writeKey": write_key,
        }
        return requests.post(
            f"{collector.url}/v1/track",
            data=orjson.dumps(message),
            headers={"Content-Type": "text/plain"},
            timeout=10,
        )

    accepted = track("test-write-key")
    assert accepted.status_code == 200, accepted.text
    refused = track("not-a-key")
    assert refused.status_code == 401, refused.text
    assert refused.headers["Connection"] == "close"
    (clicked,) = values(lake_settings, lake_settings.kafka.topics.click)
    assert orjson.loads(clicked)["user_id"] == "user-7"
    limit = lake_settings.collector.max_body_bytes
    padded = b'{"writeKey": "test-write-key", "type": "track", "pad": "' + b"x" * limit + b'"}'
    over = requests.post(
        f"{collector.url}/v1/track",
        data=padded,
        headers={"Content-Type": "text/plain"},
        timeout=10,
    )
    assert over.status_code == 401, over.text  # a body over the limit is not read for its key


def test_an_authenticated_client_still_sending_a_big_body_reads_its_413(
    collector: BackgroundCollector, lake_settings: Settings
) -> None:
    # http.client (the SDK's transport) sends the whole body before reading the answer; a
    # server that hung up on it mid-body would turn this 413 (split the batch) into a reset.
    body = b"[" + b" " * (4 * lake_settings.collector.max_body_bytes) + b"]"
    conn = http.client.HTTPConnection(*address(collector), timeout=30)
    try:
        conn.request("POST", "/v1/events", body, {**AUTH, "Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 413, response.read()[:300]
        assert response.getheader("Connection") == "close"
    finally:
        conn.close()


def post_events(collector: BackgroundCollector, events: list[dict[str, Any]]) -> requests.Response:
    return requests.post(f"{collector.url}/v1/events", json=events, headers=AUTH, timeout=30)


def retried_until_accepted(
    collector: BackgroundCollector, events: list[dict[str, Any]], timeout_s: float
) -> requests.Response:
    """Send the same request again on 503, as every client of the collector does."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = post_events(collector, events)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response


def test_the_collector_follows_the_broker_to_its_new_address(
    tmp_path: Path, kafka_broker: SharedBroker
) -> None:
    # As `lakehouse collector serve` with kafka.bootstrap_servers: embedded, the collector finds
    # the broker where `lakehouse kafka serve` recorded it.
    settings = make_settings(
        tmp_path / "lake",
        kafka={"bootstrap_servers": "embedded", "topics": unique_topics()},
        collector={"produce_timeout_s": 2.0, "broker_reresolve_s": 0.2},
    )
    topic = settings.kafka.topics.click
    before, during, after = ([click() for _ in range(3)] for _ in range(3))
    with EmbeddedKafka(partitions=1) as first:
        write_embedded_state(settings, first.bootstrap_servers)
        with BackgroundCollector(settings, lambda: resolve_bootstrap(settings)) as running:
            assert post_events(running, before).status_code == 200
            acknowledged = [
                orjson.loads(v)["event_id"] for _k, v in read_topic(first.bootstrap_servers, topic)
            ]
            assert sorted(acknowledged) == sorted(e["event_id"] for e in before)

            first.stop()
            down = post_events(running, during)
            assert down.status_code == 503, down.text  # not acknowledged: the client retries
            # The broker is back at another address (the session's broker stands in for the
            # restarted one: a broker takes ~8 s to start) and says so where it always does.
            assert kafka_broker.bootstrap_servers != resolve_bootstrap(settings)
            write_embedded_state(settings, kafka_broker.bootstrap_servers)

            retried = retried_until_accepted(running, during, timeout_s=30)
            assert retried.status_code == 200, retried.text
            assert retried.json()["accepted"] == 3
            later = post_events(running, after)
            assert later.status_code == 200, later.text
            assert requests.get(f"{running.url}/readyz", timeout=10).status_code == 200
    landed = Counter(
        orjson.loads(v)["event_id"] for _k, v in read_topic(kafka_broker.bootstrap_servers, topic)
    )
    # Every event the client was told went unacknowledged arrived once at the new broker; the
    # ones acknowledged before the move were not sent again.
    assert landed == Counter(e["event_id"] for e in during + after)


def test_a_bootstrap_file_is_read_again_on_every_resolve(tmp_path: Path) -> None:
    path = tmp_path / "brokers"
    settings = make_settings(tmp_path / "lake", kafka={"bootstrap_servers": f"file:{path}"})
    with pytest.raises(KafkaUnavailableError, match=r"names the file .*brokers, which cannot be"):
        resolve_bootstrap(settings)
    path.write_text("kafka-1:9092, kafka-2:9092\nkafka-3:9092\n")
    assert resolve_bootstrap(settings) == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    path.write_text("kafka-9:9092\n")  # moved: the next read says so
    assert resolve_bootstrap(settings) == "kafka-9:9092"
    path.write_text(" \n")
    with pytest.raises(KafkaUnavailableError, match=r"names the file .*brokers, which is empty"):
        resolve_bootstrap(settings)
    with pytest.raises(ConfigError, match="'file:' needs the path"):
        make_settings(tmp_path / "lake", kafka={"bootstrap_servers": "file:"})


def test_a_torn_embedded_broker_address_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "lake", kafka={"bootstrap_servers": "embedded"})
    state = write_embedded_state(settings, "127.0.0.1:9092")
    assert resolve_bootstrap(settings) == "127.0.0.1:9092"
    state.write_text('{"bootstrap_serv')
    with pytest.raises(KafkaUnavailableError, match="does not hold an embedded broker's address"):
        resolve_bootstrap(settings)
