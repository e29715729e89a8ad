"""The HTTP collector against the embedded broker: routing, DLQ, auth and limits, Segment API."""

from __future__ import annotations

import base64
import gzip
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
from pydantic import SecretStr
from segment.analytics import Client

from pipelines.collector import BackgroundCollector
from pipelines.collector.access import RateLimiter, WriteKeys, presented_key, truncate_ip
from pipelines.config import ConfigError, RateLimitSettings, Settings
from pipelines.streaming.kafka import EmbeddedKafka
from tests.conftest import SharedBroker, make_settings
from tests.streaming.helpers import metric_samples, read_topic

pytestmark = pytest.mark.streaming

KEY = "test-write-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def event(event_type: str = "click", user: str = "user-1", **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "user_id": user,
        "timestamp": int(time.time() * 1000),
        "schema_version": 1,
    }
    if event_type == "click":
        base["item_id"] = "item-7"
    if event_type == "page_view":
        base["properties"] = {"page_type": "home"}
    return base | extra


@pytest.fixture
def collector(lake_settings: Settings) -> Iterator[BackgroundCollector]:
    with BackgroundCollector(lake_settings, lake_settings.kafka.bootstrap_servers) as running:
        yield running


def topic_values(settings: Settings, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(v) for _k, v in read_topic(settings.kafka.bootstrap_servers, topic)]


def test_valid_events_reach_their_topics_and_rejects_the_dlq_with_reasons(
    collector: BackgroundCollector, lake_settings: Settings
) -> None:
    clicks = [event("click", user=f"user-{i}") for i in range(5)]
    views = [event("page_view", user="user-9")]
    missing = {k: v for k, v in event("click").items() if k != "item_id"}
    future = event("click", timestamp=int(time.time() * 1000) + 3_600_000)
    batch = [*clicks, missing, *views, "not-an-event", future]
    response = requests.post(
        f"{collector.url}/v1/events",
        json={"batch": batch, "sent_at": "2026-11-26T10:00:00Z"},
        headers={**AUTH, "User-Agent": "Mozilla/5.0 test"},
        timeout=10,
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (6, 3)
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["accepted"] * 5 + ["rejected", "accepted", "rejected", "rejected"]
    assert body["results"][5]["errors"] == [
        {"rule": "required:item_id", "detail": "'item_id' is a required field"}
    ]
    assert body["results"][8]["errors"][0]["rule"] == "timestamp_in_future"

    topics = lake_settings.kafka.topics
    in_clicks = topic_values(lake_settings, topics.click)
    assert sorted(e["event_id"] for e in in_clicks) == sorted(e["event_id"] for e in clicks)
    first = next(e for e in in_clicks if e["event_id"] == clicks[0]["event_id"])
    # Exactly the sent event plus what the collector adds: received_at, truncated IP, user agent.
    assert first == clicks[0] | {
        "received_at": first["received_at"],
        "context": {"ip": "127.0.0.0", "user_agent": "Mozilla/5.0 test"},
    }
    assert first["received_at"].endswith("Z")
    keys = {k for k, _v in read_topic(lake_settings.kafka.bootstrap_servers, topics.click)}
    assert keys == {f"user-{i}" for i in range(5)}  # keyed by user id
    assert [e["event_id"] for e in topic_values(lake_settings, topics.page_view)] == [
        views[0]["event_id"]
    ]
    dlq = topic_values(lake_settings, topics.dlq)
    assert len(dlq) == 3
    by_rule = {d["errors"][0]["rule"]: d for d in dlq}
    assert set(by_rule) == {"required:item_id", "not_an_object", "timestamp_in_future"}
    assert by_rule["not_an_object"]["event"] == "not-an-event"
    assert by_rule["required:item_id"]["event"]["event_id"] == missing["event_id"]
    assert by_rule["required:item_id"]["write_key"] == "test"


def test_gzip_bodies_are_accepted(collector: BackgroundCollector, lake_settings: Settings) -> None:
    events = [event("click") for _ in range(3)]
    response = requests.post(
        f"{collector.url}/v1/events",
        data=gzip.compress(orjson.dumps(events)),
        headers={**AUTH, "Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 3
    assert len(topic_values(lake_settings, lake_settings.kafka.topics.click)) == 3


def test_refused_requests_never_reach_kafka(tmp_path: Any, kafka_broker: SharedBroker) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = make_settings(
        tmp_path,
        kafka={
            "bootstrap_servers": kafka_broker.bootstrap_servers,
            "topics": {"click": f"click-{suffix}", "dlq": f"dlq-{suffix}"},
        },
        collector={
            "rate_limit": {"events_per_second": 1, "burst": 20},
            "max_body_bytes": 4096,
        },
    )
    url = None
    with BackgroundCollector(settings, kafka_broker.bootstrap_servers) as running:
        url = f"{running.url}/v1/events"
        ok = [event("click")]
        wrong = requests.post(url, json=ok, headers={"Authorization": "Bearer nope"}, timeout=5)
        assert wrong.status_code == 401
        assert "write key" in wrong.json()["error"]
        assert requests.post(url, json=ok, timeout=5).status_code == 401
        big = orjson.dumps([event("click", user="x" * 100) for _ in range(40)])
        too_big = requests.post(url, data=big, headers=AUTH, timeout=5)
        assert too_big.status_code == 413
        assert "4,096 bytes" in too_big.json()["error"]
        bomb = gzip.compress(b"[" + b" " * 100_000 + b"]")  # small on the wire, big inflated
        inflated = requests.post(
            url, data=bomb, headers={**AUTH, "Content-Encoding": "gzip"}, timeout=5
        )
        assert inflated.status_code == 413
        malformed = requests.post(url, data=b'{"batch": [', headers=AUTH, timeout=5)
        assert malformed.status_code == 400
        assert malformed.json()["error"].startswith("malformed JSON")
        not_a_batch = requests.post(url, json={"hello": 1}, headers=AUTH, timeout=5)
        assert not_a_batch.status_code == 400
        over_rate = requests.post(url, json=[event("click") for _ in range(21)], headers=AUTH)
        assert over_rate.status_code == 429
        first = requests.post(url, json=[event("click") for _ in range(15)], headers=AUTH)
        assert first.status_code == 200  # within the burst
        limited = requests.post(url, json=[event("click") for _ in range(10)], headers=AUTH)
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
    assert url is not None
    # Only the one accepted request of 15 events reached Kafka; nothing refused did.
    assert len(read_topic(kafka_broker.bootstrap_servers, f"click-{suffix}")) == 15
    assert read_topic(kafka_broker.bootstrap_servers, f"dlq-{suffix}") == []


def test_503_when_kafka_cannot_acknowledge(tmp_path: Any) -> None:
    # Its own broker, stopped halfway (the session's broker stays up for the other tests).
    with EmbeddedKafka(topics=["user_clicks", "events_dlq"], partitions=1) as broker:
        settings = make_settings(
            tmp_path,
            kafka={"bootstrap_servers": broker.bootstrap_servers},
            collector={"produce_timeout_s": 3.0},
        )
        with BackgroundCollector(settings, broker.bootstrap_servers) as running:
            # Ready first: on a loaded machine the producer's first metadata round trip to a
            # fresh broker can outlast the short produce timeout this test sets.
            deadline = time.monotonic() + 60
            while requests.get(f"{running.url}/readyz", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "the collector never became ready"
                time.sleep(0.2)
            healthy = requests.post(f"{running.url}/v1/events", json=[event()], headers=AUTH)
            assert healthy.status_code == 200
            assert requests.get(f"{running.url}/readyz", timeout=10).status_code == 200
            broker.stop()
            assert not broker.running
            down = requests.post(
                f"{running.url}/v1/events", json=[event()], headers=AUTH, timeout=15
            )
            assert down.status_code == 503
            assert down.headers["Retry-After"] == "1"
            assert "retry" in down.json()["error"]
            time.sleep(2.1)  # past the readiness cache
            assert requests.get(f"{running.url}/readyz", timeout=15).status_code == 503
            assert requests.get(f"{running.url}/healthz", timeout=5).status_code == 200


def test_official_segment_client_delivers_track_page_and_identify(
    collector: BackgroundCollector, lake_settings: Settings
) -> None:

    client = Client(write_key=KEY, host=collector.url, sync_mode=True, gzip=True)
    client.track(
        user_id="seg-user",
        event="Product Clicked",
        properties={"product_id": "item-42", "position": 3, "brand": "Acme"},
        context={"ip": "10.1.2.3", "userAgent": "Mozilla/5.0 (iPhone)"},
    )
    client.page(user_id="seg-user", name="Home", properties={"url": "https://shop.example.com/"})
    client.track(
        user_id="seg-user",
        event="Order Completed",
        properties={
            "order_id": "o-1",
            "currency": "EUR",
            "products": [
                {"product_id": "item-1", "price": 2.5, "quantity": 2},
                {"product_id": "item-2", "price": 10.0},
            ],
        },
    )
    client.identify(user_id="seg-user", anonymous_id="anon-1", traits={"plan": "pro"})
    client.track(user_id="seg-user", event="Wishlist Shared", properties={})
    client.flush()

    topics = lake_settings.kafka.topics
    (click,) = topic_values(lake_settings, topics.click)
    assert click["item_id"] == "item-42"
    assert click["properties"] == {"position": 3}
    assert click["context"] == {"ip": "10.1.2.0", "user_agent": "Mozilla/5.0 (iPhone)"}
    uuid.UUID(click["event_id"])  # Segment's messageId is the contract's event_id
    (page,) = topic_values(lake_settings, topics.page_view)
    assert page["properties"] == {"page_type": "home"}
    assert page["context"]["page"] == "https://shop.example.com/"
    purchases = sorted(topic_values(lake_settings, topics.purchase), key=lambda e: e["item_id"])
    assert [(p["item_id"], p["properties"]) for p in purchases] == [
        ("item-1", {"order_id": "o-1", "currency": "EUR", "quantity": 2, "revenue": 5.0}),
        ("item-2", {"order_id": "o-1", "currency": "EUR", "quantity": 1, "revenue": 10.0}),
    ]
    assert len({p["event_id"] for p in purchases}) == 2
    (identity,) = topic_values(lake_settings, topics.identities)
    assert (identity["user_id"], identity["anonymous_id"], identity["traits"]) == (
        "seg-user",
        "anon-1",
        {"plan": "pro"},
    )
    (dead,) = topic_values(lake_settings, topics.dlq)
    assert dead["errors"][0]["rule"] == "segment_unmapped_event"
    assert dead["event"]["event"] == "Wishlist Shared"


def test_segment_batch_reports_ignored_fields_and_keeps_message_ids(
    collector: BackgroundCollector,
) -> None:
    message_id = "client-retry-7"
    body = {
        "batch": [
            {
                "type": "track",
                "event": "click",
                "userId": "u1",
                "messageId": message_id,
                "timestamp": "2026-11-26T09:00:00.000Z",
                "properties": {"item_id": "item-1", "colour": "red"},
            },
            {"type": "screen", "userId": "u1", "name": "Home"},
        ]
    }
    basic = base64.b64encode(f"{KEY}:".encode()).decode()
    headers = {"Authorization": f"Basic {basic}"}
    first = requests.post(f"{collector.url}/v1/batch", json=body, headers=headers, timeout=10)
    again = requests.post(f"{collector.url}/v1/batch", json=body, headers=headers, timeout=10)
    assert first.status_code == again.status_code == 200
    results = first.json()["results"]
    assert results[0]["status"] == "accepted"
    assert results[0]["ignored"] == ["properties.colour"]
    assert results[1]["status"] == "rejected"
    assert results[1]["errors"][0]["rule"] == "segment_unsupported_call"
    assert first.json()["accepted"] == 1


def test_metrics_are_prometheus_text_with_counts(collector: BackgroundCollector) -> None:
    requests.post(f"{collector.url}/v1/events", json=[event(), {"x": 1}], headers=AUTH, timeout=5)
    requests.post(f"{collector.url}/v1/events", json=[event()], headers={"X-Write-Key": "bad"})
    text = requests.get(f"{collector.url}/metrics", timeout=5).text
    samples = metric_samples(text)
    assert (
        samples[
            ("lakehouse_collector_events_total", (("event_type", "click"), ("outcome", "accepted")))
        ]
        == 1
    )
    assert (
        samples[
            (
                "lakehouse_collector_events_total",
                (("event_type", "unknown"), ("outcome", "rejected")),
            )
        ]
        == 1
    )
    assert (
        samples[("lakehouse_collector_rejections_total", (("rule", "required:event_type"),))] == 1
    )
    assert (
        samples[
            ("lakehouse_collector_requests_total", (("endpoint", "/v1/events"), ("status", "401")))
        ]
        == 1
    )
    assert samples[("lakehouse_collector_produce_seconds_count", ())] == 1


def test_write_keys_rate_limiter_and_ip_truncation() -> None:

    keys = WriteKeys({"web": SecretStr("k-web"), "app": SecretStr("k-app")})
    assert keys.match("k-app") == "app"
    assert keys.match("k-ap") is None
    assert keys.match(None) is None
    with pytest.raises(ConfigError, match=r"collector\.write_keys is empty"):
        WriteKeys({})
    basic = base64.b64encode(b"k-web:").decode()
    assert presented_key({"Authorization": f"Basic {basic}"}) == "k-web"
    assert presented_key({"Authorization": "Bearer k-app"}) == "k-app"
    assert presented_key({"X-Write-Key": "k"}) == "k"
    assert presented_key({"Authorization": "Basic !!!"}) is None
    limiter = RateLimiter(RateLimitSettings(events_per_second=10, burst=20))
    assert limiter.take("web", 20, now=0.0) == 0
    assert limiter.take("web", 5, now=0.0) == pytest.approx(0.5)
    assert limiter.take("web", 5, now=0.5) == 0  # refilled 5 tokens in 0.5 s
    assert limiter.take("app", 20, now=0.5) == 0  # buckets are per key
    assert limiter.take("web", 21, now=100.0) == float("inf")
    assert truncate_ip("203.0.113.77") == "203.0.113.0"
    assert truncate_ip("2001:db8:abcd:12::1") == "2001:db8:abcd::"
    assert truncate_ip("not an ip") == ""
