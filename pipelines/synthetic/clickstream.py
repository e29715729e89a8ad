"""A deterministic synthetic clickstream with real signal, for ``lakehouse generate`` and ``demo``.

The world: a catalog of items in twelve categories with lognormal prices and Zipf-like popularity,
and users with a few preferred categories and a heavy-tailed activity level. Users act in
sessions (more than 30 minutes apart for one user); a session walks home, category, search and
product pages, and each product view may go on to click -> add_to_cart -> purchase, more likely
the more the user likes the item's category.

The stream is one timeline in event-time order: sessions start in time order and their events are
merged through a heap, so memory holds only the sessions in progress. A feedback rate on session
starts spreads exactly ``n`` events over ``[end - days, end]``. A chosen fraction of the slots
carries a bad event instead (malformed JSON, a missing field, a wrong type, an unknown type, a
future timestamp or a duplicate), so the quality gate downstream has something to catch.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import time
import uuid
from bisect import bisect
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any
from urllib.parse import quote_plus

BAD_KINDS = (
    "malformed_json",
    "missing_required",
    "wrong_type",
    "unknown_event_type",
    "future_timestamp",
    "duplicate",
)
GOOD = "good"

SITE = "https://shop.example.com"
SESSION_GAP_MS = 30 * 60 * 1000
MAX_THINK_MS = 10 * 60 * 1000
ZIPF_EXPONENT = 1.1
RFC3339_SHARE = 0.3
# Events a session holds on average; the start-rate feedback corrects for the true mean.
PRIOR_EVENTS_PER_SESSION = 8.0
# Sessions one user can fit per hour of window before the 30-minute gap makes users scarce.
USER_SESSIONS_PER_HOUR = 0.3
UNKNOWN_EVENT_TYPES = ("wishlist_add", "share", "review_submitted", "video_play")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENCODER = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class _CategorySpec:
    name: str
    share: float  # of the catalog
    median_price: float
    price_sigma: float
    queries: tuple[str, ...]


_CATEGORIES = (
    _CategorySpec(
        "electronics",
        0.12,
        180.0,
        0.9,
        (
            "wireless headphones",
            "usb-c charger",
            "4k tv",
            "gaming laptop",
            "smartwatch",
            "bluetooth speaker",
            "mechanical keyboard",
            "phone case",
        ),
    ),
    _CategorySpec(
        "books",
        0.11,
        16.0,
        0.45,
        (
            "crime novel",
            "cookbook",
            "science fiction",
            "children's books",
            "biography",
            "fantasy series",
            "self help",
            "graphic novel",
        ),
    ),
    _CategorySpec(
        "fashion",
        0.12,
        45.0,
        0.6,
        (
            "running shoes",
            "winter jacket",
            "jeans",
            "summer dress",
            "leather belt",
            "wool scarf",
            "sneakers",
            "t-shirt",
        ),
    ),
    _CategorySpec(
        "home_garden",
        0.10,
        60.0,
        0.8,
        (
            "coffee table",
            "garden hose",
            "bed linen",
            "led lamp",
            "plant pot",
            "kitchen knife",
            "storage box",
            "rug",
        ),
    ),
    _CategorySpec(
        "beauty",
        0.08,
        22.0,
        0.6,
        ("face cream", "perfume", "shampoo", "lipstick", "sunscreen", "hair dryer", "nail polish"),
    ),
    _CategorySpec(
        "sports",
        0.08,
        55.0,
        0.8,
        (
            "yoga mat",
            "dumbbells",
            "bike helmet",
            "tennis racket",
            "football",
            "running watch",
            "camping tent",
        ),
    ),
    _CategorySpec(
        "toys",
        0.07,
        28.0,
        0.7,
        ("lego", "board game", "puzzle", "doll", "remote control car", "plush toy"),
    ),
    _CategorySpec(
        "grocery",
        0.09,
        7.0,
        0.6,
        ("coffee beans", "olive oil", "green tea", "dark chocolate", "pasta", "protein bar"),
    ),
    _CategorySpec(
        "automotive",
        0.05,
        40.0,
        0.9,
        ("car charger", "wiper blades", "motor oil", "dash cam", "car seat cover"),
    ),
    _CategorySpec(
        "music",
        0.06,
        25.0,
        1.0,
        ("vinyl record", "guitar strings", "headphone amp", "jazz cd", "ukulele"),
    ),
    _CategorySpec(
        "movies", 0.06, 15.0, 0.5, ("blu-ray", "box set", "documentary", "4k movie", "anime series")
    ),
    _CategorySpec(
        "health",
        0.06,
        20.0,
        0.7,
        ("vitamin d", "first aid kit", "blood pressure monitor", "toothbrush", "protein powder"),
    ),
)
CATEGORIES = tuple(c.name for c in _CATEGORIES)
_SEARCH_PAGES = {q: f"/search?q={quote_plus(q)}" for c in _CATEGORIES for q in c.queries}

DEVICES = ("desktop", "mobile", "tablet", "tv", "other")
_DEVICE_WEIGHTS = (0.42, 0.44, 0.09, 0.03, 0.02)
USER_AGENTS: dict[str, tuple[str, ...]] = {
    "desktop": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1 Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    ),
    "mobile": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
    ),
    "tablet": (
        "Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
    ),
    "tv": (
        "Mozilla/5.0 (SMART-TV; Linux; Tizen 7.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/5.0 TV Safari/537.36",
        "Mozilla/5.0 (Web0S; Linux/SmartTV) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/108.0.0.0 Safari/537.36 WebAppManager",
    ),
    "other": (
        "Mozilla/5.0 (X11; CrOS x86_64 15917.71.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Mobile; LYF/F300B/LYF-F300B-001-01-15-130718-i;Android; rv:48.0) "
        "Gecko/48.0 Firefox/48.0 KAIOS/2.5",
    ),
}
# (locale, currency, share of users): mostly EUR and USD shoppers.
_LOCALES = (
    ("en-US", "USD", 0.34),
    ("de-DE", "EUR", 0.18),
    ("fr-FR", "EUR", 0.12),
    ("en-GB", "GBP", 0.07),
    ("es-ES", "EUR", 0.08),
    ("it-IT", "EUR", 0.06),
    ("nl-NL", "EUR", 0.05),
    ("de-AT", "EUR", 0.03),
    ("en-CA", "USD", 0.04),
    ("pt-PT", "EUR", 0.03),
)
_EXTERNAL_REFERRERS: tuple[tuple[str | None, float], ...] = (
    (None, 0.38),
    ("https://www.google.com/", 0.33),
    ("https://www.bing.com/", 0.05),
    ("https://duckduckgo.com/", 0.03),
    ("https://www.facebook.com/", 0.07),
    ("https://www.instagram.com/", 0.05),
    ("https://t.co/", 0.03),
    ("https://newsletter.shop.example.com/", 0.06),
)
_REFERRER_CUM = list(accumulate(w for _, w in _EXTERNAL_REFERRERS))


@dataclass(frozen=True, slots=True)
class Item:
    """One catalog item: its id, its one category and its list price."""

    item_id: str
    category: str
    price: float


@dataclass(frozen=True, slots=True)
class User:
    """One synthetic user: latent category tastes, activity level and usual device."""

    user_id: str
    preferences: dict[str, float]  # category -> share of attention, sums to 1
    activity: float  # relative session rate, heavy-tailed
    device: str
    user_agent: str
    locale: str
    currency: str


@dataclass(frozen=True)
class GeneratedEvent:
    """One record to produce: routing type, Kafka key, JSON bytes and what kind of event it is."""

    event_type: str
    key: str | None
    value: bytes
    kind: str


@dataclass
class GenerationReport:
    """What one ``events(n)`` run emitted, counted as it was emitted."""

    events: int = 0
    good: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_event_type: Counter[str] = field(default_factory=Counter)
    users: int = 0  # configured population
    items: int = 0  # configured catalog size

    @property
    def bad(self) -> int:
        return sum(self.by_kind.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "good": self.good,
            "bad": self.bad,
            "by_kind": dict(sorted(self.by_kind.items())),
            "by_event_type": dict(sorted(self.by_event_type.items())),
            "users": self.users,
            "items": self.items,
        }


class ClickstreamGenerator:
    """Builds a catalog and a user population from ``seed``, then streams their events.

    Same arguments (with an explicit ``end``) give byte-identical output, and every call to
    ``events`` replays the same stream from the start and resets ``report``.
    """

    def __init__(
        self,
        users: int,
        items: int,
        seed: int = 42,
        *,
        bad_fraction: float = 0.0,
        end: datetime | None = None,
        days: float = 3.0,
    ) -> None:
        if users < 1 or items < 1:
            raise ValueError(f"need users >= 1 and items >= 1, got users={users} items={items}")
        if not 0.0 <= bad_fraction <= 1.0:
            raise ValueError(f"bad_fraction must be within [0, 1], got {bad_fraction}")
        if not days > 0:
            raise ValueError(f"days must be positive, got {days}")
        if end is None:
            end = datetime.now(tz=UTC).replace(microsecond=0)
        elif end.tzinfo is None:
            end = end.replace(tzinfo=UTC)  # a naive end is read as UTC
        self.seed = seed
        self.bad_fraction = bad_fraction
        self.days = days
        self.end = end
        self.end_ms = (end - _EPOCH) // timedelta(milliseconds=1)
        self.start_ms = self.end_ms - int(days * 86_400_000)

        world = random.Random(seed)
        self._live = self._build_catalog(items, world)
        self._build_users(users, world)
        self.report = GenerationReport(users=users, items=items)

    def _build_catalog(self, items: int, rng: random.Random) -> list[int]:
        """Items with a category, a lognormal price and a Zipf weight; returns live categories."""
        shares = [c.share for c in _CATEGORIES]
        # Every category gets an item when there are enough; the rest follow the catalog shares.
        cats = list(range(len(_CATEGORIES)))[:items]
        cats += rng.choices(range(len(_CATEGORIES)), weights=shares, k=items - len(cats))
        rng.shuffle(cats)
        width = max(5, len(str(items - 1)))
        self.catalog: list[Item] = []
        for i, c in enumerate(cats):
            spec = _CATEGORIES[c]
            price = max(0.5, spec.median_price * math.exp(spec.price_sigma * rng.gauss(0.0, 1.0)))
            self.catalog.append(Item(f"item-{i:0{width}d}", spec.name, round(price, 2)))
        # Popularity rank is independent of the id; weight = rank^-s is Zipf globally and, since
        # each category holds a random slice of the ranking, Zipf within the category too.
        ranks = list(range(items))
        rng.shuffle(ranks)
        weights = [(r + 1) ** -ZIPF_EXPONENT for r in ranks]
        self._item_cat = cats
        self._item_cum = list(accumulate(weights))
        self._cat_items: list[list[int]] = [[] for _ in _CATEGORIES]
        for i, c in enumerate(cats):
            self._cat_items[c].append(i)
        self._cat_cum = [list(accumulate(weights[i] for i in ids)) for ids in self._cat_items]
        return [c for c, ids in enumerate(self._cat_items) if ids]

    def _build_users(self, users: int, rng: random.Random) -> None:
        """Users with tastes concentrated on one to three categories and Pareto activity."""
        live = self._live
        share_total = sum(_CATEGORIES[c].share for c in live)
        width = max(5, len(str(users - 1)))
        locale_weights = [w for _, _, w in _LOCALES]
        self.users: list[User] = []
        self._pref_cum: list[list[float]] = []  # over self._live
        self._affinity: list[list[float]] = []  # by category index, 1.0 = strong preference
        for u in range(users):
            k = min(rng.choices((1, 2, 3), weights=(0.4, 0.4, 0.2))[0], len(live))
            preferred: list[int] = []
            while len(preferred) < k:
                c = rng.choices(live, weights=[_CATEGORIES[c].share for c in live])[0]
                if c not in preferred:
                    preferred.append(c)
            raw = [rng.gammavariate(1.0, 1.0) + 0.05 for _ in preferred]
            focus = 0.78 + 0.17 * rng.random()  # attention on the preferred categories
            pref = {c: (1.0 - focus) * _CATEGORIES[c].share / share_total for c in live}
            for c, r in zip(preferred, raw, strict=True):
                pref[c] += focus * r / sum(raw)
            device = rng.choices(DEVICES, weights=_DEVICE_WEIGHTS)[0]
            locale, currency, _ = rng.choices(_LOCALES, weights=locale_weights)[0]
            self.users.append(
                User(
                    user_id=f"user-{u:0{width}d}",
                    preferences={_CATEGORIES[c].name: round(p, 6) for c, p in pref.items()},
                    activity=min(rng.paretovariate(1.2), 60.0),
                    device=device,
                    user_agent=rng.choice(USER_AGENTS[device]),
                    locale=locale,
                    currency=currency,
                )
            )
            self._pref_cum.append(list(accumulate(pref[c] for c in live)))
            affinity = [0.0] * len(_CATEGORIES)
            for c, p in pref.items():
                # p * live categories is 1 for an average category; four times that is saturated.
                affinity[c] = min(1.0, p * len(live) / 4.0)
            self._affinity.append(affinity)
        self._activity_cum = list(accumulate(user.activity for user in self.users))

    def events(self, n: int) -> Iterator[GeneratedEvent]:
        """Exactly ``n`` events in event-time order; ``report`` counts them as they are yielded."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.report = report = GenerationReport(users=len(self.users), items=len(self.catalog))
        faults = random.Random(f"{self.seed}/faults")
        bad_left = round(n * self.bad_fraction)
        kinds: list[str] = []
        recent: deque[GeneratedEvent] = deque(maxlen=3)
        encode = _ENCODER.encode
        timeline = self._timeline(n, random.Random(f"{self.seed}/stream"))
        for slot, event in enumerate(timeline):
            # Selection sampling: exactly bad_left of the remaining slots turn bad.
            if bad_left and faults.random() * (n - slot) < bad_left:
                bad_left -= 1
                if not kinds:
                    kinds = list(BAD_KINDS)
                    faults.shuffle(kinds)
                out = self._bad_event(kinds.pop(), event, recent, faults)
                report.by_kind[out.kind] += 1
            else:
                out = GeneratedEvent(
                    event["event_type"], event["user_id"], encode(event).encode(), GOOD
                )
                recent.append(out)
                report.good += 1
            report.events += 1
            report.by_event_type[out.event_type] += 1
            yield out

    def _bad_event(
        self,
        kind: str,
        event: dict[str, Any],
        recent: deque[GeneratedEvent],
        rng: random.Random,
    ) -> GeneratedEvent:
        """Turn the good event due in this slot into one of the bad kinds."""
        event_type: str = event["event_type"]
        key: str | None = event["user_id"]
        if kind == "duplicate":
            if recent:
                # A client retry: the same bytes again, a few events later.
                source = recent[rng.randrange(len(recent))]
                return GeneratedEvent(source.event_type, source.key, source.value, kind)
            kind = "malformed_json"  # nothing emitted yet to repeat
        if kind == "malformed_json":
            text = _ENCODER.encode(event)
            # Any proper prefix of a JSON object is invalid JSON: a producer cut off mid-write.
            cut = rng.randint(max(1, len(text) // 4), len(text) - 1)
            return GeneratedEvent(event_type, key, text[:cut].encode(), kind)
        corrupt = {
            "missing_required": _drop_required_field,
            "wrong_type": _mistype_field,
            "unknown_event_type": _unknown_event_type,
            "future_timestamp": self._future_timestamp,
        }.get(kind)
        if corrupt is None:
            raise ValueError(f"unknown bad event kind {kind!r} (known: {', '.join(BAD_KINDS)})")
        key = corrupt(event, key, rng)
        return GeneratedEvent(event_type, key, _ENCODER.encode(event).encode(), kind)

    def _future_timestamp(
        self, event: dict[str, Any], key: str | None, rng: random.Random
    ) -> str | None:
        """Move ``event`` one to five days past ``end``, in the timestamp format it had."""
        future = self.end_ms + rng.randint(86_400_000, 5 * 86_400_000)
        event["timestamp"] = _rfc3339(future) if isinstance(event["timestamp"], str) else future
        return key

    def _timeline(self, n: int, rng: random.Random) -> Iterator[dict[str, Any]]:
        """The first ``n`` events of all sessions, in event-time order.

        Session starts are a Poisson process with a daily cycle, its rate steered by feedback:
        sessions still owed over the traffic still expected before ``end``. That lands exactly
        ``n`` events in the window whatever the true session size, and the last sessions are
        squeezed to end by ``end``. A session's events go on a heap and leave it once no later
        session can start before them.
        """
        end = self.end_ms
        users = len(self.users)
        # Few users for many events: make sessions longer rather than break the 30-minute gap.
        capacity = users * self.days * 24 * USER_SESSIONS_PER_HOUR
        length_scale = max(1.0, n / PRIOR_EVENTS_PER_SESSION / capacity)
        available = [self.start_ms] * users  # earliest start of each user's next session
        heap: list[tuple[int, int, dict[str, Any]]] = []
        seq = committed = sessions = emitted = 0
        t = float(self.start_ms)
        while emitted < n:
            if committed < n:
                horizon = end - t
                if horizon <= 1.0:
                    nxt = float(end)
                else:
                    per_session = (committed + 8 * PRIOR_EVENTS_PER_SESSION) / (sessions + 8)
                    owed = (n - committed) / per_session  # sessions still to start
                    rate = owed * _daily_cycle(t) / _daily_traffic(t, end)
                    nxt = t + min(rng.expovariate(rate), horizon / 2)
            else:
                nxt = math.inf
            while heap and heap[0][0] <= nxt:
                yield heapq.heappop(heap)[2]
                emitted += 1
                if emitted == n:
                    return
            if committed >= n:
                continue
            u, start = self._next_user(rng, available, int(nxt))
            t = max(nxt, float(start))
            timed = self._session(rng, u, start, length_scale)
            for ts, event in timed:
                heapq.heappush(heap, (ts, seq, event))
                seq += 1
            committed += len(timed)
            sessions += 1
            extra = int(rng.expovariate(1.0 / 3_600_000))  # users come back hours later
            available[u] = timed[-1][0] + SESSION_GAP_MS + 1_000 + extra

    def _next_user(self, rng: random.Random, available: list[int], at: int) -> tuple[int, int]:
        """A user free to start a session at ``at`` (drawn by activity), and the start time."""
        cum, total = self._activity_cum, self._activity_cum[-1]
        for _ in range(12):
            u = min(bisect(cum, rng.random() * total), len(cum) - 1)
            if available[u] <= at:
                return u, at
        # The active users are mid-session or resting: anyone free will do.
        best = u
        for _ in range(24):
            u = rng.randrange(len(cum))
            if available[u] <= at:
                return u, at
            if available[u] < available[best]:
                best = u
        # Everyone busy (very few users): wait for the first one to be free, if the window allows.
        return best, max(at, min(available[best], self.end_ms - 60_000))

    def _session(
        self, rng: random.Random, u: int, start: int, length_scale: float
    ) -> list[tuple[int, dict[str, Any]]]:
        """One visit of user ``u`` from ``start``: its events with their event times."""
        visit = _Visit(self, rng, u)
        visit.land()
        for _ in range(int(rng.expovariate(1.0 / (2.0 * length_scale)))):
            visit.wander()
        if visit.cart and rng.random() < 0.8:
            visit.checkout()
        return visit.timed(start, self.end_ms)


# The one required property of each event type that a ``missing_required`` event may lose.
_REQUIRED_PROPERTY = {
    "page_view": "page_type",
    "search": "query",
    "add_to_cart": "quantity",
    "purchase": "order_id",
}


def _drop_required_field(event: dict[str, Any], key: str | None, rng: random.Random) -> str | None:
    """Delete one required field (or required property) of ``event``; returns the Kafka key."""
    event_type = event["event_type"]
    props = event.get("properties")
    fields = ["event_id", "event_type", "user_id", "timestamp", "schema_version"]
    if event_type in ("click", "add_to_cart", "purchase"):
        fields.append("item_id")
    if event_type != "click":
        fields.append("properties")
    nested = _REQUIRED_PROPERTY.get(event_type)
    if nested and props is not None:
        fields.append(f"properties.{nested}")
    dropped = rng.choice(fields)
    if props is not None and dropped.startswith("properties."):
        del props[dropped.removeprefix("properties.")]
    else:
        del event[dropped]
    return None if dropped == "user_id" else key


def _mistype_field(event: dict[str, Any], key: str | None, rng: random.Random) -> str | None:
    """Give one field of ``event`` a value of the wrong JSON type; returns the Kafka key."""
    props = event.get("properties")
    fields = ["timestamp", "user_id", "event_id", "schema_version"]
    if props is not None and "quantity" in props:
        fields.append("quantity")
    if props is not None and "revenue" in props:
        fields.append("revenue")
    wrong = rng.choice(fields)
    if wrong == "timestamp":
        event["timestamp"] = rng.random() < 0.5
    elif wrong == "user_id":
        event["user_id"] = int(key.rsplit("-", 1)[1]) if key else 0
        key = None
    elif wrong == "event_id":
        event["event_id"] = rng.getrandbits(31)
    elif wrong == "schema_version":
        event["schema_version"] = "1"
    else:
        assert props is not None
        props[wrong] = str(props[wrong])
    return key


def _unknown_event_type(event: dict[str, Any], key: str | None, rng: random.Random) -> str | None:
    """Rename the event to a type the contract does not know; the key stays."""
    event["event_type"] = rng.choice(UNKNOWN_EVENT_TYPES)
    return key


class _Visit:
    """One session of one user as it is walked: the page it is on, its cart, its events so far.

    Every draw comes from one ``rng`` in a fixed order, so a seed gives the same session.
    """

    def __init__(self, world: ClickstreamGenerator, rng: random.Random, u: int) -> None:
        user = world.users[u]
        self._world = world
        self._rng = rng
        self._rand = rand = rng.random
        self._user_id = user.user_id
        self._affinity = world._affinity[u]
        self._pref_cum = world._pref_cum[u]
        if rand() < 0.85:
            self._device, self._agent = user.device, user.user_agent
        else:
            self._device = rng.choice(DEVICES)
            self._agent = USER_AGENTS[self._device][0]
        self._locale, self._currency = user.locale, user.currency
        r = rand()
        self._session_id = None if r < 0.07 else str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self._keep_session_id = r >= 0.03  # absent below 3%, null from 3% to 7%
        self._events: list[dict[str, Any]] = []
        self._offsets: list[int] = []
        self._clock = 0
        self._page = ""
        self._referrer: str | None = _EXTERNAL_REFERRERS[
            min(bisect(_REFERRER_CUM, rand() * _REFERRER_CUM[-1]), len(_REFERRER_CUM) - 1)
        ][0]
        self.cart: list[tuple[int, int]] = []

    def land(self) -> None:
        """The first page: home, a category, a product from outside, or a search from home."""
        landing = self._rand()
        if landing < 0.45:
            self._home()
        elif landing < 0.70:
            self._browse(self._pick_category())
        elif landing < 0.85:
            self._funnel(self._pick_item(self._pick_category()), "other")  # from outside
        else:
            self._view("/", {"page_type": "home"})
            self._search(self._pick_category())

    def wander(self) -> None:
        """One more step: browse a category, search, follow a recommendation or go home."""
        r = self._rand()
        if r < 0.35:
            self._browse(self._pick_category())
        elif r < 0.6:
            self._search(self._pick_category())
        elif r < 0.85:
            popular = self._rand() < 0.4
            item = self._popular_item() if popular else self._pick_item(self._pick_category())
            self._funnel(item, "recommendations")
        else:
            self._home()

    def checkout(self) -> None:
        """View the cart and buy some of it, the likelier the more the user likes the category."""
        rand, affinity, item_cat = self._rand, self._affinity, self._world._item_cat
        catalog = self._world.catalog
        self._view("/cart", {"page_type": "cart"})
        bought = [(i, q) for i, q in self.cart if rand() < 0.3 + 0.4 * affinity[item_cat[i]]]
        if not bought:
            return
        self._view("/checkout", {"page_type": "checkout"})
        order_id = f"ord-{self._rng.getrandbits(48):012x}"
        for item, quantity in bought:
            price = catalog[item].price
            self._emit(
                "purchase",
                item,
                {
                    "order_id": order_id,
                    "revenue": round(price * quantity, 2),
                    "currency": self._currency,
                    "quantity": quantity,
                    "category": catalog[item].category,
                },
                self._quick(),
            )

    def timed(self, start: int, end_ms: int) -> list[tuple[int, dict[str, Any]]]:
        """The events placed from ``start`` with their times, squeezed to end by ``end_ms``."""
        offsets = self._offsets
        span = offsets[-1]
        if start + span > end_ms:
            scale = (end_ms - start) / span
            offsets = [int(o * scale) for o in offsets]
        timed = []
        for offset, event in zip(offsets, self._events, strict=True):
            ts = start + offset
            event["timestamp"] = _rfc3339(ts) if self._rand() < RFC3339_SHARE else ts
            timed.append((ts, event))
        return timed

    def _emit(
        self, event_type: str, item: int | None, props: dict[str, Any] | None, think_ms: int
    ) -> None:
        if self._events:
            self._clock += min(think_ms, MAX_THINK_MS)
        event: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            "event_type": event_type,
            "user_id": self._user_id,
        }
        if self._keep_session_id:
            event["session_id"] = self._session_id
        event["timestamp"] = 0  # set once the session's times are final
        if item is not None:
            event["item_id"] = self._world.catalog[item].item_id
        if props is not None:
            event["properties"] = props
        event["context"] = {
            "page": self._page,
            "referrer": self._referrer,
            "device": self._device,
            "user_agent": self._agent,
            "locale": self._locale,
        }
        event["schema_version"] = 1
        self._events.append(event)
        self._offsets.append(self._clock)

    def _think(self) -> int:
        return int(self._rng.lognormvariate(9.6, 1.0))  # median ~15 s

    def _quick(self) -> int:
        return int(self._rng.lognormvariate(8.0, 0.7)) + 300  # median ~3 s

    def _view(self, path: str, props: dict[str, Any], item: int | None = None) -> None:
        if self._page:
            self._referrer = SITE + self._page if self._rand() < 0.97 else None
        self._page = path
        if self._rand() < 0.7:
            props["duration_ms"] = int(self._rng.lognormvariate(9.9, 0.9))
        self._emit("page_view", item, props, self._think())

    def _pick_category(self) -> int:
        live, pref_cum = self._world._live, self._pref_cum
        return live[min(bisect(pref_cum, self._rand() * pref_cum[-1]), len(live) - 1)]

    def _pick_item(self, c: int) -> int:
        ids, cum = self._world._cat_items[c], self._world._cat_cum[c]
        return ids[min(bisect(cum, self._rand() * cum[-1]), len(ids) - 1)]

    def _popular_item(self) -> int:
        cum = self._world._item_cum
        return min(bisect(cum, self._rand() * cum[-1]), len(cum) - 1)

    def _funnel(self, item: int, list_type: str) -> None:
        """A product view that may go on to click, then add to cart, as affinity allows."""
        rand, rng = self._rand, self._rng
        c = self._world._item_cat[item]
        name = _CATEGORIES[c].name
        x = self._affinity[c]
        price = self._world.catalog[item].price
        product = f"/p/{self._world.catalog[item].item_id}"
        self._view(product, {"page_type": "product", "category": name}, item)
        if rand() >= 0.25 + 0.35 * x:
            return
        position = min(int(rng.expovariate(0.25)), 59)
        self._emit(
            "click",
            item,
            {"position": position, "list_type": list_type, "category": name},
            self._quick(),
        )
        if rand() >= 0.15 + 0.35 * x:
            return
        quantity = 1 if rand() < 0.8 else rng.choice((2, 2, 2, 3, 4))
        self._emit(
            "add_to_cart",
            item,
            {"quantity": quantity, "price": price, "currency": self._currency, "category": name},
            self._quick(),
        )
        self.cart.append((item, quantity))

    def _browse(self, c: int) -> None:
        name = _CATEGORIES[c].name
        self._view(f"/c/{name}", {"page_type": "category", "category": name})
        for _ in range(1 + int(self._rng.expovariate(1.2))):
            self._funnel(self._pick_item(c), "category")

    def _search(self, c: int) -> None:
        rng = self._rng
        spec = _CATEGORIES[c]
        query = rng.choice(spec.queries)
        results = 0 if self._rand() < 0.05 else int(rng.lognormvariate(3.5, 1.2)) + 1
        self._emit(
            "search",
            None,
            {"query": query, "result_count": results, "category": spec.name},
            self._think(),
        )
        self._view(_SEARCH_PAGES[query], {"page_type": "search"})
        if results:
            for _ in range(int(rng.expovariate(0.9))):
                self._funnel(self._pick_item(c), "search")

    def _home(self) -> None:
        self._view("/", {"page_type": "home"})
        if self._rand() < 0.5:
            popular = self._rand() < 0.3
            item = self._popular_item() if popular else self._pick_item(self._pick_category())
            self._funnel(item, "home")


def _rfc3339(ms: int) -> str:
    """Epoch milliseconds as ``2026-11-26T07:51:15.123Z``."""
    secs, millis = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(secs))}.{millis:03d}Z"


_HOUR_MS = 3_600_000.0
_CYCLE_AMPLITUDE = 0.5


def _daily_cycle(ms: float) -> float:
    """Relative traffic by UTC hour (mean 1): quiet at night, busiest mid-afternoon."""
    phase = 2.0 * math.pi * (ms / _HOUR_MS - 8.0) / 24.0
    return 1.0 + _CYCLE_AMPLITUDE * math.sin(phase)


def _daily_traffic(start_ms: float, end_ms: float) -> float:
    """The integral of ``_daily_cycle`` over ``[start_ms, end_ms]``, in ms.

    Steering by it instead of by the plain time left keeps the quiet night before ``end`` quiet,
    rather than catching up on it at the last minute.
    """

    def antiderivative(ms: float) -> float:
        phase = 2.0 * math.pi * (ms / _HOUR_MS - 8.0) / 24.0
        return ms - _CYCLE_AMPLITUDE * 24.0 * _HOUR_MS / (2.0 * math.pi) * math.cos(phase)

    return max(antiderivative(end_ms) - antiderivative(start_ms), 1.0)
