from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from pipelines.contracts import ContractRegistry, event_time_ms
from pipelines.synthetic.clickstream import (
    BAD_KINDS,
    CATEGORIES,
    USER_AGENTS,
    ClickstreamGenerator,
    GeneratedEvent,
)

END = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
END_MS = 1_795_680_000_000
DAY_MS = 86_400_000
SESSION_GAP_MS = 30 * 60 * 1000
EXPECTED_RULE = {
    "malformed_json": "json_parse",
    "missing_required": "required:",
    "wrong_type": "type:",
    "unknown_event_type": "unknown_event_type",
    "future_timestamp": "timestamp_in_future",
}


@dataclass
class Run:
    generator: ClickstreamGenerator
    events: list[GeneratedEvent]

    def good(self) -> list[dict[str, Any]]:
        return [json.loads(e.value) for e in self.events if e.kind == "good"]


def run(
    *,
    n: int = 3_000,
    users: int = 300,
    items: int = 400,
    seed: int = 7,
    bad_fraction: float = 0.0,
    days: float = 1.0,
) -> Run:
    generator = ClickstreamGenerator(
        users=users, items=items, seed=seed, bad_fraction=bad_fraction, end=END, days=days
    )
    return Run(generator, list(generator.events(n)))


@pytest.fixture(scope="module")
def registry() -> ContractRegistry:
    return ContractRegistry()


@pytest.fixture(scope="module")
def mixed() -> Run:
    """20% bad events of every kind, over two days."""
    return run(bad_fraction=0.2, days=2.0)


@pytest.fixture(scope="module")
def clean() -> Run:
    """Only good events, enough of them for the behavioural signals to show."""
    return run(n=8_000, users=300, items=500, seed=11)


def test_end_is_the_window_edge() -> None:
    generator = ClickstreamGenerator(users=1, items=1, end=END, days=2.0)
    assert generator.end_ms == END_MS
    assert generator.start_ms == END_MS - 2 * DAY_MS


def test_good_events_follow_the_contract(mixed: Run, registry: ContractRegistry) -> None:
    good = [e for e in mixed.events if e.kind == "good"]
    assert len(good) == 2_400
    for event in good:
        assert registry.validate_json(event.value, now_ms=END_MS) == []
        payload = json.loads(event.value)
        assert payload["event_type"] == event.event_type
        assert payload["user_id"] == event.key
        assert payload["schema_version"] == 1
    assert {e.event_type for e in good} == {
        "page_view",
        "click",
        "search",
        "add_to_cart",
        "purchase",
    }


@pytest.mark.parametrize("kind", sorted(EXPECTED_RULE))
def test_each_bad_kind_breaks_its_rule(mixed: Run, registry: ContractRegistry, kind: str) -> None:
    bad = [e for e in mixed.events if e.kind == kind]
    assert len(bad) >= 60
    for event in bad:
        rules = [v.rule for v in registry.validate_json(event.value, now_ms=END_MS)]
        assert any(r.startswith(EXPECTED_RULE[kind]) for r in rules), (rules, event.value)


def test_bad_events_keep_their_routing_type_and_key(mixed: Run) -> None:
    unknown = [e for e in mixed.events if e.kind == "unknown_event_type"]
    for event in unknown:
        payload = json.loads(event.value)
        assert payload["event_type"] not in {
            "page_view",
            "click",
            "search",
            "add_to_cart",
            "purchase",
        }
        assert event.event_type in {"page_view", "click", "search", "add_to_cart", "purchase"}
        assert event.key == payload["user_id"]
    for event in (e for e in mixed.events if e.kind == "malformed_json"):
        assert event.value.startswith(b'{"event_id":"')
        assert event.key is not None and event.key.startswith("user-")
    for event in (e for e in mixed.events if e.kind in ("missing_required", "wrong_type")):
        payload = json.loads(event.value)
        usable = isinstance(payload.get("user_id"), str)
        assert event.key == (payload["user_id"] if usable else None)


def test_future_timestamps_are_days_ahead_of_end(mixed: Run) -> None:
    future = [json.loads(e.value) for e in mixed.events if e.kind == "future_timestamp"]
    for payload in future:
        ts = event_time_ms(payload["timestamp"])
        assert ts is not None
        assert END_MS + DAY_MS <= ts <= END_MS + 5 * DAY_MS


def test_duplicates_repeat_a_recent_good_event(mixed: Run, registry: ContractRegistry) -> None:
    recent_good: list[GeneratedEvent] = []
    seen_ids: set[str] = set()
    duplicates = 0
    for event in mixed.events:
        if event.kind == "duplicate":
            duplicates += 1
            # Same routing, key and bytes as one of the last few good events.
            recent = [(e.event_type, e.key, e.value) for e in recent_good[-3:]]
            assert (event.event_type, event.key, event.value) in recent
            assert json.loads(event.value)["event_id"] in seen_ids
            assert registry.validate_json(event.value, now_ms=END_MS) == []
        elif event.kind == "good":
            recent_good.append(event)
            seen_ids.add(json.loads(event.value)["event_id"])
    assert duplicates >= 60


def test_report_counts_what_was_emitted(mixed: Run) -> None:
    report = mixed.generator.report
    kinds = Counter(e.kind for e in mixed.events)
    assert len(mixed.events) == report.events == 3_000
    assert report.good == kinds["good"]
    assert report.by_kind == Counter({k: c for k, c in kinds.items() if k != "good"})
    assert report.by_event_type == Counter(e.event_type for e in mixed.events)
    assert report.good + sum(report.by_kind.values()) == 3_000
    assert sum(report.by_kind.values()) == 600  # exactly the bad fraction
    assert set(report.by_kind) == set(BAD_KINDS)
    assert max(report.by_kind.values()) - min(report.by_kind.values()) <= 2  # even spread
    assert (report.users, report.items) == (300, 400)
    assert json.loads(json.dumps(report.to_dict())) == {
        "events": 3_000,
        "good": 2_400,
        "bad": 600,
        "by_kind": dict(sorted(report.by_kind.items())),
        "by_event_type": dict(sorted(report.by_event_type.items())),
        "users": 300,
        "items": 400,
    }


def test_report_counts_a_stream_stopped_early() -> None:
    generator = ClickstreamGenerator(users=50, items=60, seed=1, bad_fraction=0.5, end=END)
    taken = [e for _, e in zip(range(40), generator.events(1_000), strict=False)]
    assert generator.report.events == 40
    assert generator.report.good == sum(e.kind == "good" for e in taken)


def test_same_seed_and_end_give_the_same_bytes() -> None:
    first = run(n=1_000, bad_fraction=0.2)
    second = run(n=1_000, bad_fraction=0.2)
    assert first.events == second.events
    again = list(first.generator.events(1_000))  # a second call replays the stream
    assert again == first.events
    assert first.generator.report.events == 1_000
    other = run(n=1_000, bad_fraction=0.2, seed=8)
    assert [e.value for e in other.events] != [e.value for e in first.events]
    assert sum(a.value == b.value for a, b in zip(other.events, first.events, strict=True)) == 0


def test_events_are_in_time_order_within_the_window(mixed: Run) -> None:
    ordered: list[int] = []  # every event whose timestamp is a real, current event time
    good: list[int] = []
    for event in mixed.events:
        if event.kind in ("malformed_json", "future_timestamp", "duplicate"):
            continue
        ts = event_time_ms(json.loads(event.value).get("timestamp"))
        if ts is not None:
            ordered.append(ts)
        if event.kind == "good":
            assert ts is not None
            good.append(ts)
    assert ordered == sorted(ordered)
    start_ms = END_MS - 2 * DAY_MS
    assert start_ms <= min(good) < start_ms + 3_600_000
    assert END_MS - 3_600_000 < max(good) <= END_MS
    first_day = sum(ts < start_ms + DAY_MS for ts in good)
    assert 0.4 < first_day / len(good) < 0.6  # spread over the window, not bunched


def test_traffic_follows_the_time_of_day(clean: Run) -> None:
    hours = Counter(
        datetime.fromtimestamp(ts / 1000, tz=UTC).hour
        for ts in (event_time_ms(e["timestamp"]) for e in clean.good())
        if ts is not None
    )
    afternoon = sum(hours[h] for h in range(12, 18))
    night = sum(hours[h] for h in range(0, 6))
    assert afternoon > 1.5 * night


def test_timestamps_use_both_contract_forms(clean: Run) -> None:
    stamps = [e["timestamp"] for e in clean.good()]
    as_int = sum(isinstance(ts, int) for ts in stamps)
    assert 0.65 < as_int / len(stamps) < 0.75
    strings = [ts for ts in stamps if isinstance(ts, str)]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts) for ts in strings)


def test_catalog_has_categories_ids_and_prices() -> None:
    generator = ClickstreamGenerator(users=10, items=2_000, seed=3, end=END)
    catalog = generator.catalog
    assert len(catalog) == 2_000
    assert [i.item_id for i in catalog[:3]] == ["item-00000", "item-00001", "item-00002"]
    assert {i.category for i in catalog} == set(CATEGORIES)
    assert len(CATEGORIES) == 12
    assert all(i.price >= 0.5 and round(i.price, 2) == i.price for i in catalog)
    electronics = sorted(i.price for i in catalog if i.category == "electronics")
    grocery = sorted(i.price for i in catalog if i.category == "grocery")
    assert electronics[len(electronics) // 2] > 5 * grocery[len(grocery) // 2]


def test_item_popularity_is_zipf_like(clean: Run) -> None:
    views = Counter(
        e["item_id"] for e in clean.good() if e["event_type"] == "page_view" and "item_id" in e
    )
    top = sum(count for _, count in views.most_common(500 // 10))
    assert top / sum(views.values()) > 0.4  # uniform popularity would give about 0.1


def test_users_concentrate_on_their_preferred_categories(clean: Run) -> None:
    category = {i.item_id: i.category for i in clean.generator.catalog}
    users = {u.user_id: u for u in clean.generator.users}
    seen: dict[str, list[str]] = defaultdict(list)
    for event in clean.good():
        if "item_id" in event:
            seen[event["user_id"]].append(category[event["item_id"]])
    active = {u: cats for u, cats in seen.items() if len(cats) >= 10}
    assert len(active) >= 50

    def mean_top_share(by_user: dict[str, list[str]]) -> float:
        shares = [Counter(c).most_common(1)[0][1] / len(c) for c in by_user.values()]
        return sum(shares) / len(shares)

    pooled = [c for cats in active.values() for c in cats]
    random.Random(0).shuffle(pooled)
    shuffled, i = {}, 0
    for user, cats in active.items():
        shuffled[user], i = pooled[i : i + len(cats)], i + len(cats)
    assert mean_top_share(active) > 0.5
    assert mean_top_share(active) > mean_top_share(shuffled) + 0.25
    # The observed favourite is one of the user's latent top-3 categories.
    hits = 0
    for user, cats in active.items():
        latent = sorted(users[user].preferences, key=users[user].preferences.__getitem__)[-3:]
        hits += Counter(cats).most_common(1)[0][0] in latent
    assert hits / len(active) > 0.85


def test_funnel_narrows_and_converts_more_on_preferred_categories(clean: Run) -> None:
    events = clean.good()
    product_views = [e for e in events if e["event_type"] == "page_view" and "item_id" in e]
    counts = Counter(e["event_type"] for e in events)
    assert len(product_views) > counts["click"] > counts["add_to_cart"] > counts["purchase"] > 50
    users = {u.user_id: u for u in clean.generator.users}

    def preferred(event: dict[str, Any]) -> bool:
        return users[event["user_id"]].preferences[event["properties"]["category"]] >= 0.2

    views_hi = sum(preferred(e) for e in product_views)
    clicks = [e for e in events if e["event_type"] == "click"]
    clicks_hi = sum(preferred(e) for e in clicks)
    ctr_hi = clicks_hi / views_hi
    ctr_lo = (len(clicks) - clicks_hi) / (len(product_views) - views_hi)
    assert ctr_hi > ctr_lo + 0.15


def test_sessions_of_one_user_are_more_than_30_minutes_apart(clean: Run) -> None:
    by_user: dict[str, list[tuple[int, str | None]]] = defaultdict(list)
    kinds_of_session_id: Counter[str] = Counter()
    for event in clean.good():
        ts = event_time_ms(event["timestamp"])
        assert ts is not None
        if "session_id" not in event:
            kinds_of_session_id["absent"] += 1
        elif event["session_id"] is None:
            kinds_of_session_id["null"] += 1
        by_user[event["user_id"]].append((ts, event.get("session_id")))
    assert kinds_of_session_id["absent"] > 0 and kinds_of_session_id["null"] > 0
    sessions = 0
    for stream in by_user.values():
        # Split the user's events at 30-minute silences, as sessionization does downstream.
        segments: list[list[str | None]] = []
        last = None
        for ts, session_id in sorted(stream, key=lambda pair: pair[0]):
            if last is None or ts - last > SESSION_GAP_MS:
                segments.append([])
            segments[-1].append(session_id)
            last = ts
        ids_per_segment = [{s for s in segment if s is not None} for segment in segments]
        assert all(len(ids) <= 1 for ids in ids_per_segment)  # never two sessions merged
        flat = [s for ids in ids_per_segment for s in ids]
        assert len(flat) == len(set(flat))  # never one session split
        sessions += len(segments)
    assert sessions > 500


def test_purchases_and_carts_carry_consistent_money(clean: Run) -> None:
    items = {i.item_id: i for i in clean.generator.catalog}
    purchases = [e for e in clean.good() if e["event_type"] == "purchase"]
    for event in purchases:
        props = event["properties"]
        item = items[event["item_id"]]
        assert props["revenue"] == round(item.price * props["quantity"], 2) >= 0
        assert props["category"] == item.category
        assert props["order_id"].startswith("ord-")
    currencies = Counter(e["properties"]["currency"] for e in purchases)
    assert (currencies["EUR"] + currencies["USD"]) / len(purchases) > 0.8
    carts = [e for e in clean.good() if e["event_type"] == "add_to_cart"]
    assert all(e["properties"]["price"] == items[e["item_id"]].price for e in carts)


def test_context_is_plausible(clean: Run) -> None:
    events = clean.good()
    for event in events:
        context = event["context"]
        assert context["user_agent"] in USER_AGENTS[context["device"]]
        if event["event_type"] == "page_view" and "item_id" in event:
            assert context["page"] == f"/p/{event['item_id']}"
    referrers = Counter(e["context"]["referrer"] is None for e in events)
    assert referrers[True] > 0 and referrers[False] > referrers[True]
    assert len({e["context"]["locale"] for e in events}) >= 5
    searches = [e for e in events if e["event_type"] == "search"]
    assert len({e["properties"]["query"] for e in searches}) > 30


@pytest.mark.parametrize(("users", "items", "n"), [(1, 1, 300), (3, 20, 2_000), (50, 80, 0)])
def test_tiny_worlds_still_give_exactly_n_valid_events(
    registry: ContractRegistry, users: int, items: int, n: int
) -> None:
    generator = ClickstreamGenerator(users=users, items=items, seed=5, end=END, days=0.5)
    events = list(generator.events(n))
    assert len(events) == n == generator.report.good
    for event in events:
        assert registry.validate_json(event.value, now_ms=END_MS) == []


@pytest.mark.parametrize(
    "arguments",
    [
        {"users": 0, "items": 5},
        {"users": 5, "items": 5, "bad_fraction": 1.5},
        {"users": 5, "items": 5, "days": 0.0},
    ],
)
def test_nonsense_arguments_are_refused(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        ClickstreamGenerator(**arguments)
