"""The hostile-input corpus: requests a collector must survive, generated from a seed.

Every request is written byte by byte (head and body), so the corpus can hold what HTTP
libraries refuse to send: a bare CR in a header, a non-UTF-8 header name, two Content-Lengths.
Each request lists the *elements* the collector answers for, in answer order (events of
``/v1/events``; messages of the Segment API), with how each can be found in Kafka afterwards:
its ``event_id`` (or ``msg:<messageId>`` for a Segment message refused before mapping), or no
reference when nothing the client sent identifies it (then it is counted, not looked up).

Kinds (``KINDS``) each have numbered variants; a corpus holds every variant of every kind once,
then random draws by weight until it has the number of requests asked for. The same seed gives
the same requests for the same ``now_ms``: timestamps are anchored there (the collector refuses
the future, so a run passes the clock's now).
"""

from __future__ import annotations

import base64
import gzip
import itertools
import random
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import orjson

from pipelines.synthetic.clickstream import ClickstreamGenerator

HOST = b"127.0.0.1"
MAX_BODY = 1_048_576  # collector.max_body_bytes by default; bombs aim past it


@dataclass(frozen=True)
class Element:
    """One thing inside a request the collector answers for.

    ``ref`` finds it in Kafka (None: counted only); ``event_type`` is the contract type it
    becomes when accepted (``identity`` for a Segment identify); ``message_id`` is a Segment
    message's ``messageId`` when it is a string (mapped event ids derive from it), ``order`` says
    its mapped events are order lines.
    """

    ref: str | None
    event_type: str | None = None
    message_id: str | None = None
    order: bool = False


@dataclass(frozen=True)
class HostileRequest:
    """One request as sent: the raw head and body, and what the collector will answer for."""

    kind: str
    variant: str
    path: str
    head: bytes
    body: bytes
    heavy: bool = False
    segment: bool = False
    elements: tuple[Element, ...] = ()
    extra_lines: int = 0  # order lines beyond one per order

    @property
    def events(self) -> int:
        """Events it carries: elements, with an order counted by its lines."""
        return len(self.elements) + self.extra_lines


@dataclass(frozen=True)
class _Kind:
    name: str
    build: Callable[[int], HostileRequest]
    variants: int
    weight: float
    heavy: bool = False


@dataclass
class CorpusContext:
    """What the requests are built for: the write key and the Segment names the collector maps."""

    write_key: str
    segment_events: Mapping[str, str]
    now_ms: int
    seed: int
    bomb_mib: int = 256  # what a compression bomb inflates to (the body limit is 1 MiB)


class HostileCorpus:
    """Builds the requests; ``requests(n)`` yields ``n`` of them (at least one of each variant)."""

    def __init__(self, context: CorpusContext) -> None:
        self.ctx = context
        self.rng = random.Random(f"{context.seed}/hostile")
        self._valid = self._clickstream(context.seed)
        self._names = {t: [n for n, v in context.segment_events.items() if v == t] for t in TYPES}
        self._sent_valid: list[HostileRequest] = []  # candidates for a verbatim retry
        self._serial = itertools.count()
        self.kinds = self._kinds()

    # -- the corpus -------------------------------------------------------------------------------
    def requests(self, count: int) -> Iterator[HostileRequest]:
        """Every variant of every kind once (light kinds first), then weighted random draws."""
        made = 0
        for kind in sorted(self.kinds, key=lambda k: k.heavy):
            for variant in range(kind.variants):
                if made >= count:
                    return
                made += 1
                yield kind.build(variant)
        weights = [k.weight for k in self.kinds]
        while made < count:
            kind = self.rng.choices(self.kinds, weights)[0]
            made += 1
            yield kind.build(self.rng.randrange(kind.variants))

    def _kinds(self) -> list[_Kind]:
        light = [
            _Kind("valid_batch", self.valid_batch, 6, 20),
            _Kind("contract_violations", self.contract_violations, len(MUTATIONS), 18),
            _Kind("timestamps", self.timestamps, len(TIMESTAMP_LITERALS), 10),
            _Kind("unicode", self.unicode, len(UNICODE_VALUES), 5),
            _Kind("bad_encoding", self.bad_encoding, len(BAD_ENCODINGS), 7),
            _Kind("malformed_json", self.malformed_json, len(MALFORMED_BODIES), 7),
            _Kind("content_type", self.content_type, len(CONTENT_TYPES), 5),
            _Kind("auth", self.auth, 12, 5),
            _Kind("header_tricks", self.header_tricks, len(HEADER_TRICKS), 6),
            _Kind("segment_batch", self.segment_batch, len(SEGMENT_MESSAGES), 12),
            _Kind("segment_call", self.segment_call, 6, 3),
            _Kind("retry_and_repeat", self.retry_and_repeat, 2, 2),
            _Kind("method_and_path", self.method_and_path, len(METHOD_PATHS), 1),
        ]
        heavy = [
            _Kind("segment_order", self.segment_order, len(ORDERS), 0.3, heavy=True),
            _Kind("huge_string", self.huge_string, 10, 0.2, heavy=True),
            _Kind("deep_nesting", self.deep_nesting, len(DEPTHS), 0.2, heavy=True),
            _Kind("json_bomb", self.json_bomb, 8, 0.1, heavy=True),
            _Kind("compression_bomb", self.compression_bomb, 10, 0.1, heavy=True),
            _Kind("big_body", self.big_body, 4, 0.05, heavy=True),
            _Kind("header_flood", self.header_flood, 2, 0.05, heavy=True),
        ]
        return light + heavy

    # -- light kinds ----------------------------------------------------------------------------
    def valid_batch(self, variant: int) -> HostileRequest:
        """Valid events: 1, 10 or 50; as a bare list; one event alone; gzipped."""
        events = self.events((1, 10, 50, 5, 1, 20)[variant])
        elements = tuple(_element(e) for e in events)
        if variant == 3:
            return self._post("valid_batch", "bare list", orjson.dumps(events), elements)
        if variant == 4:
            return self._post("valid_batch", "one event", orjson.dumps(events[0]), elements)
        body = orjson.dumps({"batch": events, "sent_at": "2026-11-28T10:00:00Z"})
        if variant == 5:
            packed = gzip.compress(body, mtime=0)
            head = self._head("/v1/events", len(packed), extra=[b"Content-Encoding: gzip"])
            return HostileRequest(
                "valid_batch", "gzip", "/v1/events", head, packed, elements=elements
            )
        request = self._post("valid_batch", f"{len(events)} events", body, elements)
        self._sent_valid.append(request)
        return request

    def contract_violations(self, variant: int) -> HostileRequest:
        """A batch of valid events with some broken one way each (one named mutation per
        variant; random draws mix several)."""
        events: list[Any] = self.events(self.rng.randint(2, 12))
        picks = [variant]
        picks += [self.rng.randrange(len(MUTATIONS)) for _ in range(self.rng.randint(0, 3))]
        for pick in picks:
            intact = [i for i, e in enumerate(events) if isinstance(e, dict)]
            if intact:
                at = self.rng.choice(intact)
                events[at] = MUTATIONS[pick][1](events[at], self.rng)
        elements = tuple(_element(e) for e in events)
        body = orjson.dumps({"batch": events})
        return self._post("contract_violations", MUTATIONS[variant][0], body, elements)

    def timestamps(self, variant: int) -> HostileRequest:
        """Events whose timestamp is a hostile JSON literal (written as text: ``1e30`` must
        reach the parser as ``1e30``), next to valid ones."""
        literal = TIMESTAMP_LITERALS[variant]
        texts, elements = [], []
        for i, event in enumerate(self.events(3)):
            if i == 1:
                value = literal.replace("NOW+1H", str(self.ctx.now_ms + 3_600_000))
                event["timestamp"] = "@@TS@@"
                texts.append(orjson.dumps(event).replace(b'"@@TS@@"', value.encode()))
            else:
                texts.append(orjson.dumps(event))
            elements.append(_element(event))
        body = b'{"batch":[' + b",".join(texts) + b"]}"
        return self._post("timestamps", literal, body, tuple(elements))

    def unicode(self, variant: int) -> HostileRequest:
        """Unusual but valid Unicode (emoji, RTL marks, NUL as an escape, a non-ASCII key)."""
        where, value = UNICODE_VALUES[variant]
        events = self.events(2)
        target = events[0]
        if where == "key":
            target.setdefault("properties", {})[value] = 1
        elif where in ("user_id", "item_id", "session_id"):
            target[where] = value
        else:
            target.setdefault("context", {})[where] = value
        body = orjson.dumps({"batch": events})
        return self._post("unicode", f"{where} {value!a}"[:40], body, _elements(events))

    def bad_encoding(self, variant: int) -> HostileRequest:
        """Bodies that are not UTF-8 or not valid JSON text: a latin-1 byte, UTF-8-encoded
        surrogates, overlong forms, lone surrogate escapes, UTF-16, a BOM, raw control bytes."""
        name, corrupt, content_type = BAD_ENCODINGS[variant]
        events = self.events(3)
        marker = "@@MARK@@"
        events[1].setdefault("properties", {})["category"] = marker
        body = corrupt(orjson.dumps({"batch": events}), marker.encode())
        head = self._head("/v1/events", len(body), content_type=content_type)
        return HostileRequest(
            "bad_encoding", name, "/v1/events", head, body, elements=_elements(events)
        )

    def malformed_json(self, variant: int) -> HostileRequest:
        """Bodies the JSON parser or the batch shape refuses (and two it takes)."""
        name, make = MALFORMED_BODIES[variant]
        events = self.events(2)
        body = make(orjson.dumps({"batch": events}), events)
        elements = _elements(events) if name in ("duplicate keys", "empty list") else ()
        if name == "empty list":
            elements = ()
        return self._post("malformed_json", name, body, elements)

    def content_type(self, variant: int) -> HostileRequest:
        """Content types that are not JSON (415), and spellings of JSON that are."""
        value = CONTENT_TYPES[variant]
        events = self.events(2)
        body = orjson.dumps({"batch": events})
        head = self._head("/v1/events", len(body), content_type=value)
        return HostileRequest(
            "content_type", repr(value)[:40], "/v1/events", head, body, elements=_elements(events)
        )

    def auth(self, variant: int) -> HostileRequest:
        """Every way to present a write key, right and wrong."""
        key = self.ctx.write_key
        events = self.events(2)
        payload: dict[str, Any] = {"batch": events}
        basic = base64.b64encode(f"{key}:".encode()).decode()
        wrong = base64.b64encode(b"not-the-key:").decode()
        cases: list[tuple[str, list[bytes], str]] = [
            ("unknown bearer", [b"Authorization: Bearer not-the-key"], "application/json"),
            ("empty bearer", [b"Authorization: Bearer "], "application/json"),
            ("no key", [], "application/json"),
            ("basic", [f"Authorization: Basic {basic}".encode()], "application/json"),
            ("basic not base64", [b"Authorization: Basic %%%%"], "application/json"),
            ("basic wrong key", [f"Authorization: Basic {wrong}".encode()], "application/json"),
            ("x-write-key", [f"X-Write-Key: {key}".encode()], "application/json"),
            ("writeKey in body", [], "text/plain"),
            ("wrong writeKey in body", [], "text/plain"),
            ("lowercase scheme", [f"authorization: bearer {key}".encode()], "application/json"),
            ("key with spaces", [f"Authorization: Bearer   {key}  ".encode()], "text/plain"),
            ("key in query", [], "application/json"),
        ]
        name, lines, content_type = cases[variant]
        if name == "writeKey in body":
            payload["writeKey"] = key
        if name == "wrong writeKey in body":
            payload["writeKey"] = "not-the-key"
        path = f"/v1/events?writeKey={key}" if name == "key in query" else "/v1/events"
        body = orjson.dumps(payload)
        head = self._head(path, len(body), auth=False, content_type=content_type, extra=lines)
        return HostileRequest("auth", name, path, head, body, elements=_elements(events))

    def header_tricks(self, variant: int) -> HostileRequest:
        """Heads a parser must refuse or survive: bare CR, 8 KiB+ lines, non-UTF-8 names and
        keys, obs-fold, NUL, smuggling pairs, odd request lines."""
        name, build = HEADER_TRICKS[variant]
        events = self.events(2)
        body = orjson.dumps({"batch": events})
        head = build(self.ctx.write_key.encode(), len(body), self.rng)
        return HostileRequest(
            "header_tricks", name, "/v1/events", head, body, elements=_elements(events)
        )

    def segment_batch(self, variant: int) -> HostileRequest:
        """Segment ``/v1/batch``: one message of each kind (variant), or a random mix."""
        if self.rng.random() < 0.5:
            picks = [variant]
        else:
            picks = [variant] + [
                self.rng.randrange(len(SEGMENT_MESSAGES)) for _ in range(self.rng.randint(1, 19))
            ]
        messages, elements, lines = [], [], 0
        for pick in picks:
            message, element, extra = self.segment_message(pick)
            messages.append(message)
            elements.append(element)
            lines += extra
        body = orjson.dumps({"batch": messages, "sentAt": "2026-11-28T10:00:00Z"})
        request = self._post(
            "segment_batch", SEGMENT_MESSAGES[variant], body, tuple(elements), path="/v1/batch"
        )
        return _with(request, segment=True, extra_lines=lines)

    def segment_call(self, variant: int) -> HostileRequest:
        """The single-call endpoints: track, page, identify; and bodies they refuse."""
        cases = [
            ("/v1/track", "track mapped"),
            ("/v1/page", "page"),
            ("/v1/identify", "identify"),
            ("/v1/track", "order"),
            ("/v1/track", None),  # a list, not a message: 400
            ("/v1/batch", None),  # batch that is not a list: 400
        ]
        path, kind = cases[variant]
        if kind is None:
            body = b'[{"type": "track"}]' if path == "/v1/track" else b'{"batch": {"a": 1}}'
            request = self._post("segment_call", f"{path} refused", body, (), path=path)
            return _with(request, segment=True)
        message, element, extra = self.segment_message(SEGMENT_MESSAGES.index(kind))
        if kind != "identify":
            message.pop("type", None)  # the endpoint says it
        request = self._post("segment_call", path, orjson.dumps(message), (element,), path=path)
        return _with(request, segment=True, extra_lines=extra)

    def retry_and_repeat(self, variant: int) -> HostileRequest:
        """An SDK retry (an earlier request again, byte for byte: nothing may be published twice)
        and one event twice in one batch (both copies are published; silver removes one)."""
        if variant == 0 and self._sent_valid:
            earlier = self.rng.choice(self._sent_valid)
            return _with(earlier, kind="retry_and_repeat", variant="retry of an earlier request")
        event = self.events(1)[0]
        body = orjson.dumps({"batch": [event, event]})
        return self._post(
            "retry_and_repeat", "same event twice", body, (_element(event), _element(event))
        )

    def method_and_path(self, variant: int) -> HostileRequest:
        """Wrong methods and unknown paths (no events), and the health check."""
        method, path = METHOD_PATHS[variant]
        body = b"" if method in ("GET", "HEAD", "OPTIONS") else b"[]"
        head = self._head(path, len(body), method=method.encode())
        return HostileRequest("method_and_path", f"{method} {path}", path, head, body)

    # -- heavy kinds ----------------------------------------------------------------------------
    def segment_order(self, variant: int) -> HostileRequest:
        """Order Completed with thousands of product lines: up to the cap (accepted or dead-
        lettered line by line), past it (413), with a big note, empty, or not a list."""
        name, lines, bad_share, note = ORDERS[variant]
        message_id = self.uuid()
        products: Any = [
            {
                "product_id": f"item-{self.rng.randrange(500):05d}",
                "price": round(self.rng.uniform(1, 300), 2),
                "quantity": 0 if self.rng.random() < bad_share else self.rng.randint(1, 3),
            }
            for _ in range(max(lines, 0))
        ]
        if lines < 0:
            products = {"not": "a list"}
        props: dict[str, Any] = {"order_id": f"o-{message_id[:8]}", "currency": "EUR"}
        props["products"] = products
        if note:
            props["note"] = "n" * note
        message = {
            "messageId": message_id,
            "type": "track",
            "event": "Order Completed",
            "userId": f"user-{self.rng.randrange(2000):05d}",
            "timestamp": "2026-11-28T10:00:00Z",
            "properties": props,
        }
        element = Element(None, "purchase", message_id, order=isinstance(products, list))
        body = orjson.dumps({"batch": [message]})
        request = self._post("segment_order", name, body, (element,), path="/v1/batch")
        extra = max(len(products) - 1, 0) if isinstance(products, list) else 0
        return _with(request, heavy=True, segment=True, extra_lines=extra)

    def huge_string(self, variant: int) -> HostileRequest:
        """Strings of 100 KB to 1.5 MB where the contract allows 128 or 1,024 characters, or
        where no one expects them (the event id, a property name, a Segment messageId)."""
        sizes = [900_000, 500_000, 300_000, 200_000, 200_000, 200_000, 45_000, 1_500_000]
        sizes += [300_000, 300_000]
        names = (
            "900 KB category",
            "500 KB user agent",
            "300 KB user_id",
            "200 KB event_id",
            "200 KB event_type",
            "200 KB property name",
            "20 strings of 45 KB",
            "1.5 MB string (over the body limit)",
            "300 KB Segment messageId",
            "300 KB Segment event name",
        )
        n = sizes[variant]
        text = self.text(n)
        event = self.events(1)[0]
        path, segment = "/v1/events", False
        element = _element(event)
        if variant in (0, 7):
            event.setdefault("properties", {})["category"] = text
        elif variant == 1:
            event.setdefault("context", {})["user_agent"] = text
        elif variant == 2:
            event["user_id"] = text
        elif variant == 3:
            event = {"event_id": text, **{k: v for k, v in event.items() if k != "event_id"}}
            element = Element(None)
        elif variant == 4:
            event["event_type"] = text
            element = Element(event["event_id"])
        elif variant == 5:
            event.setdefault("properties", {})[text] = 1
        elif variant == 6:
            event.setdefault("properties", {}).update({f"p{i}": self.text(n) for i in range(20)})
        if variant >= 8:
            message, element, _extra = self.segment_message(SEGMENT_MESSAGES.index("track mapped"))
            if variant == 8:
                message = {
                    "messageId": text,
                    **{k: v for k, v in message.items() if k != "messageId"},
                }
                element = Element(None, element.event_type)
            else:
                message["event"] = text
                element = Element(element.ref, None, element.message_id)
            body = orjson.dumps({"batch": [message]})
            path, segment = "/v1/batch", True
        else:
            body = orjson.dumps({"batch": [event]})
        request = self._post("huge_string", names[variant], body, (element,), path=path)
        return _with(request, heavy=True, segment=segment)

    def deep_nesting(self, variant: int) -> HostileRequest:
        """Nesting from 33 levels (one past the edge's limit) to 100,000 (past the parser's)."""
        where, depth = DEPTHS[variant]
        event = self.events(1)[0]
        open_, close = (b'{"a":', b"}") if where != "element" else (b"[", b"]")
        nested = open_ * depth + b"1" + close * depth
        # Past ~250 levels a dead-letter record cannot hold the original (orjson stops at 254):
        # such an event is counted, not looked up.
        element = _element(event) if depth < 250 else Element(None)
        if where == "element":
            body = b'{"batch":[' + orjson.dumps(event) + b"," + nested + b"]}"
            elements: tuple[Element, ...] = (element, Element(None))
            path, segment = "/v1/events", False
        elif where == "segment":
            message, seg_element, _extra = self.segment_message(
                SEGMENT_MESSAGES.index("track mapped")
            )
            message["properties"]["deep"] = "@@DEEP@@"
            body = orjson.dumps({"batch": [message]}).replace(b'"@@DEEP@@"', nested)
            elements = (seg_element,)  # its mapped event is small: found by its id
            path, segment = "/v1/batch", True
        else:
            event.setdefault(where, {})["deep"] = "@@DEEP@@"
            body = orjson.dumps({"batch": [event]}).replace(b'"@@DEEP@@"', nested)
            elements = (element,)
            path, segment = "/v1/events", False
        request = self._post(
            "deep_nesting", f"{depth} levels in {where}", body, elements, path=path
        )
        return _with(request, heavy=True, segment=segment)

    def json_bomb(self, variant: int) -> HostileRequest:
        """Small-looking JSON that is expensive: a million tiny elements, 40,000 keys, a
        million-digit number, 2,000 valid events at once, an array of 150,000 numbers."""
        name = (
            "250,000 empty objects",
            "500,000 zeros",
            "40,000 property names",
            "150,000-element array",
            "1,000,000-digit number",
            "150,000 escaped characters",
            "2,000 events (the cap)",
            "one event, 60,000 context keys",
        )[variant]
        elements: tuple[Element, ...] = ()
        if variant == 0:
            body = b'{"batch":[' + b",".join([b"{}"] * 250_000) + b"]}"
        elif variant == 1:
            body = b'{"batch":[' + b",".join([b"0"] * 500_000) + b"]}"
        elif variant in (2, 3, 5, 7):
            event = self.events(1)[0]
            if variant == 2:
                event["properties"] = {f"k{i}": i for i in range(40_000)}
            elif variant == 3:
                event.setdefault("properties", {})["list"] = list(range(150_000))
            elif variant == 5:
                event.setdefault("properties", {})["category"] = "@@ESC@@"
            else:
                event["context"] = {f"c{i}": 0 for i in range(60_000)}
            body = orjson.dumps({"batch": [event]})
            if variant == 5:
                body = body.replace(b'"@@ESC@@"', b'"' + b"\\u00e9" * 150_000 + b'"')
            elements = (_element(event),)
        elif variant == 4:
            body = b'{"batch":[' + b"1" * 1_000_000 + b"]}"
        else:
            events = [self.compact_event() for _ in range(2_000)]
            body = orjson.dumps({"batch": events})
            elements = _elements(events)
        request = self._post("json_bomb", name, body, elements)
        return _with(request, heavy=True)

    def compression_bomb(self, variant: int) -> HostileRequest:
        """Compressed bodies: ``bomb_mib`` of zeros (256 MiB: 250 KB compressed), a quarter of
        that of JSON, deflate, two gzip layers, encodings the server lacks, corrupt and
        truncated streams, and a valid body just under and just over the limit once
        decompressed."""
        events = self.events(2)
        plain = orjson.dumps({"batch": events})
        elements: tuple[Element, ...] = ()
        cases: list[tuple[str, bytes, bytes]] = [
            (f"gzip: {self.ctx.bomb_mib} MiB of zeros", self._gzip_zeros, b"gzip"),
            (f"gzip: {self.ctx.bomb_mib // 4} MiB of JSON", self._gzip_json, b"gzip"),
            (f"deflate: {self.ctx.bomb_mib} MiB of zeros", self._deflate_zeros, b"deflate"),
            ("gzip twice", gzip.compress(self._gzip_zeros, mtime=0), b"gzip, gzip"),
            ("br", b"\x0b\x02\x80" + plain, b"br"),
            ("zstd", b"\x28\xb5\x2f\xfd" + plain, b"zstd"),
            ("corrupt gzip", b"\x1f\x8b\x08\x00" + bytes(self.rng.randbytes(2_000)), b"gzip"),
            ("truncated gzip", gzip.compress(plain, mtime=0)[:-12], b"gzip"),
            ("gzip: valid, just under the limit", b"", b"gzip"),
            ("gzip: valid, just over the limit", b"", b"gzip"),
        ]
        name, body, encoding = cases[variant]
        if variant in (8, 9):
            events = [self.compact_event() for _ in range(1_500)]
            plain = orjson.dumps({"batch": events})
            target = MAX_BODY - 64 if variant == 8 else MAX_BODY + 64
            pad = target - len(plain) - len(b',"pad":""')
            plain = plain[:-1] + b',"pad":"' + b" " * pad + b'"}'
            body = gzip.compress(plain, mtime=0)
            elements = _elements(events)
        head = self._head("/v1/events", len(body), extra=[b"Content-Encoding: " + encoding])
        return HostileRequest(
            "compression_bomb", name, "/v1/events", head, body, heavy=True, elements=elements
        )

    def big_body(self, variant: int) -> HostileRequest:
        """Bodies past the limit, declared (Content-Length) or not (chunked), and a lie: a
        gigabyte announced, a few bytes sent."""
        events = self.events(2)
        if variant == 0:
            body = orjson.dumps({"batch": events, "pad": "x" * 1_500_000})
            head = self._head("/v1/events", len(body))
            name = "1.5 MB with Content-Length"
        elif variant == 1:
            body = _chunked(orjson.dumps({"batch": events, "pad": "x" * 1_500_000}))
            head = self._head("/v1/events", None, extra=[b"Transfer-Encoding: chunked"])
            name = "1.5 MB chunked"
        elif variant == 2:
            body = _chunked(orjson.dumps({"batch": events}))
            head = self._head("/v1/events", None, extra=[b"Transfer-Encoding: chunked"])
            name = "small batch chunked"
        else:
            body = orjson.dumps({"batch": events})
            head = self._head("/v1/events", 1_000_000_000)
            name = "1 GB announced"
        return HostileRequest(
            "big_body", name, "/v1/events", head, body, heavy=True, elements=_elements(events)
        )

    def header_flood(self, variant: int) -> HostileRequest:
        """500 small headers, or 120 headers of 8,000 bytes (a 1 MB head)."""
        events = self.events(2)
        body = orjson.dumps({"batch": events})
        count, size = ((500, 10), (120, 8_000))[variant]
        extra = [f"X-Flood-{i}: ".encode() + b"f" * size for i in range(count)]
        head = self._head("/v1/events", len(body), extra=extra)
        return HostileRequest(
            "header_flood",
            f"{count} headers of {size:,} bytes",
            "/v1/events",
            head,
            body,
            heavy=True,
            elements=_elements(events),
        )

    # -- building blocks ------------------------------------------------------------------------
    def events(self, count: int) -> list[dict[str, Any]]:
        """Fresh valid events (unique ids), as an app would send them."""
        return [next(self._valid) for _ in range(count)]

    def compact_event(self) -> dict[str, Any]:
        """A small valid click (for requests that need thousands of them)."""
        return {
            "event_id": self.uuid(),
            "event_type": "click",
            "user_id": f"user-{self.rng.randrange(2000):05d}",
            "item_id": f"item-{self.rng.randrange(500):05d}",
            "timestamp": self.ctx.now_ms - self.rng.randrange(86_400_000),
            "schema_version": 1,
        }

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def text(self, size: int) -> str:
        return "".join(self.rng.choices("abcdefghij", k=64)) * (size // 64) + "z" * (size % 64)

    def segment_message(self, pick: int) -> tuple[dict[str, Any], Element, int]:
        """One Segment message of kind ``SEGMENT_MESSAGES[pick]``, its element, extra lines."""
        kind = SEGMENT_MESSAGES[pick]
        message_id: Any = self.uuid()
        if kind == "non-UUID messageId":
            message_id = f"msg-{next(self._serial)}-{self.rng.randrange(10**9)}"
        user = f"user-{self.rng.randrange(2000):05d}"
        item = f"item-{self.rng.randrange(500):05d}"
        message: dict[str, Any] = {"messageId": message_id, "type": "track", "userId": user}
        event_type, extra = self._shape_segment_message(kind, message, item)
        if kind == "no messageId":
            del message["messageId"]
            return message, Element(None, event_type), extra
        if kind == "numeric messageId":
            message["messageId"] = self.rng.randrange(10**9)
            return message, Element(None, event_type), extra
        if kind == "not an object":
            value: Any = self.rng.choice(["a string", 42, None, [1, 2]])
            return value, Element(None), 0
        return message, Element(None, event_type, message_id, order=kind == "order"), extra

    def _shape_segment_message(
        self, kind: str, message: dict[str, Any], item: str
    ) -> tuple[str | None, int]:
        """Turn the bare track ``message`` into a ``kind``; returns the contract type it should
        map to (None for one the collector must refuse or ignore) and its lines beyond the first."""
        if kind in MAPPED_TRACKS:
            event_type, properties = MAPPED_TRACKS[kind]
            message |= {"event": self._name(event_type), "properties": properties(item)}
            return event_type, 0
        if kind in FIXED_MESSAGES:
            fields, fixed_type = FIXED_MESSAGES[kind]
            message |= fields(item)
            return fixed_type, 0
        if kind == "order":
            lines = self.rng.randint(1, 5)
            message |= {
                "event": "Order Completed",
                "properties": {
                    "order_id": f"o-{self.rng.randrange(10**6)}",
                    "currency": "EUR",
                    "products": [{"product_id": item, "price": 5.0} for _ in range(lines)],
                },
            }
            return "purchase", lines - 1
        if kind == "identify without ids":
            del message["userId"]
            message |= {"type": "identify", "traits": {}}
            return None, 0
        if kind == "anonymous only":
            del message["userId"]
            message |= {"anonymousId": f"anon-{self.rng.randrange(10**6)}"}
            message |= {"event": self._name("click"), "properties": {"sku": item}}
            return "click", 0
        return None, 0  # "not an object": the caller sends something else instead

    def _name(self, event_type: str) -> str:
        names = self._names.get(event_type) or [event_type]
        return self.rng.choice(names)

    def _post(
        self,
        kind: str,
        variant: str,
        body: bytes,
        elements: tuple[Element, ...],
        path: str = "/v1/events",
    ) -> HostileRequest:
        head = self._head(path, len(body))
        return HostileRequest(kind, variant, path, head, body, elements=elements)

    def _head(
        self,
        path: str,
        length: int | None,
        *,
        auth: bool = True,
        content_type: str | None = "application/json",
        extra: Sequence[bytes] = (),
        method: bytes = b"POST",
    ) -> bytes:
        lines = [method + b" " + path.encode() + b" HTTP/1.1", b"Host: " + HOST]
        if auth:
            lines.append(b"Authorization: Bearer " + self.ctx.write_key.encode())
        if content_type is not None:
            lines.append(b"Content-Type: " + content_type.encode("latin-1"))
        if length is not None:
            lines.append(f"Content-Length: {length}".encode())
        lines += [*extra, b"Connection: close"]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    @cached_property
    def _gzip_zeros(self) -> bytes:
        return _compressed(b"\0" * 1_048_576, self.ctx.bomb_mib, wbits=31)

    @cached_property
    def _deflate_zeros(self) -> bytes:
        return _compressed(b"\0" * 1_048_576, self.ctx.bomb_mib, wbits=15)

    @cached_property
    def _gzip_json(self) -> bytes:
        chunk = b"{}," * 349_525  # ~1 MiB
        return _compressed(chunk, self.ctx.bomb_mib // 4, wbits=31, prefix=b'{"batch":[')

    def _clickstream(self, seed: int) -> Iterator[dict[str, Any]]:
        end = datetime.fromtimestamp(self.ctx.now_ms // 1000, tz=UTC)
        for generation in itertools.count():
            generator = ClickstreamGenerator(2_000, 500, seed=seed * 7_919 + generation, end=end)
            for event in generator.events(100_000):
                yield orjson.loads(event.value)


TYPES = ("page_view", "click", "search", "add_to_cart", "purchase")


def _element(event: Any) -> Element:
    """An event's element: found by its event_id when that is a short string sent first."""
    if isinstance(event, dict):
        event_id = event.get("event_id")
        first = next(iter(event), None)
        if isinstance(event_id, str) and len(event_id) <= 200 and first == "event_id":
            event_type = event.get("event_type")
            return Element(event_id, event_type if isinstance(event_type, str) else None)
    return Element(None)


def _elements(events: Sequence[Any]) -> tuple[Element, ...]:
    return tuple(_element(e) for e in events)


def _with(request: HostileRequest, **changes: Any) -> HostileRequest:
    return HostileRequest(**{**request.__dict__, **changes})


def _compressed(chunk: bytes, times: int, *, wbits: int, prefix: bytes = b"") -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    parts = [compressor.compress(prefix)]
    parts += [compressor.compress(chunk) for _ in range(times)]
    parts.append(compressor.flush())
    return b"".join(parts)


def _chunked(body: bytes, size: int = 65_536) -> bytes:
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"


# -- the tables the kinds draw from ----------------------------------------------------------------
def _drop(key: str) -> Callable[[dict[str, Any], random.Random], Any]:
    def mutate(event: dict[str, Any], _rng: random.Random) -> Any:
        return {k: v for k, v in event.items() if k != key}

    return mutate


def _set(path: str, value: Any) -> Callable[[dict[str, Any], random.Random], Any]:
    def mutate(event: dict[str, Any], _rng: random.Random) -> Any:
        *parents, last = path.split(".")
        target = event
        for parent in parents:
            child = target.get(parent)
            if not isinstance(child, dict):
                child = target[parent] = {}
            target = child
        target[last] = value
        return event

    return mutate


def _replace(value: Any) -> Callable[[dict[str, Any], random.Random], Any]:
    return lambda _event, _rng: value


MUTATIONS: list[tuple[str, Callable[[dict[str, Any], random.Random], Any]]] = [
    ("no event_id", _drop("event_id")),
    ("no user_id", _drop("user_id")),
    ("no timestamp", _drop("timestamp")),
    ("no schema_version", _drop("schema_version")),
    ("no event_type", _drop("event_type")),
    ("event_id not a UUID", lambda e, rng: {**e, "event_id": f"chaos-{rng.randrange(10**12)}"}),
    ("event_id a number", _set("event_id", 12345)),
    ("user_id a number", _set("user_id", 42)),
    ("user_id empty", _set("user_id", "")),
    ("user_id 129 chars", _set("user_id", "u" * 129)),
    ("unknown event_type", _set("event_type", "teleport")),
    ("event_type a list", _set("event_type", ["click"])),
    ("schema_version a string", _set("schema_version", "1")),
    ("schema_version 99", _set("schema_version", 99)),
    ("extra top-level field", _set("surprise", True)),
    ("context a string", _set("context", "mobile")),
    ("device not in enum", _set("context.device", "fridge")),
    ("locale bad pattern", _set("context.locale", "english")),
    ("unknown property", _set("properties.secret", 1)),
    ("properties a list", _set("properties", [1, 2])),
    ("item_id null", _set("item_id", None)),
    ("empty object", _replace({})),
    ("a string", _replace("just a string")),
    ("a number", _replace(3.14)),
    ("null", _replace(None)),
    ("a list", _replace([{"event_type": "click"}])),
]

TIMESTAMP_LITERALS = [
    "4100000000000.0",
    "1e30",
    "1.5",
    "-1",
    "0",
    "-0",
    "1E3",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "123456789012345678901234567890",
    "253402300799999",
    "253402300800000",
    "NOW+1H",
    "true",
    "null",
    "[]",
    "{}",
    '""',
    '"now"',
    '"1764000000000"',
    '"2026-02-30T00:00:00Z"',
    '"9999-12-31T23:59:59Z"',
    '"0000-01-01T00:00:00Z"',
    '"2026-11-28T10:00:00"',
    '"2026-11-28T10:00:00+25:00"',
    '"2016-12-31T23:59:60Z"',
    '"2026-11-28T10:00:00.123456789Z"',
    '"2026-11-28 10:00:00Z"',
]

UNICODE_VALUES = [
    ("key", "ключ"),
    ("user_id", "user-\U0001f600"),
    ("user_id", "\u0000"),
    ("item_id", "item-\u202e\u200b\u200d"),
    ("session_id", "s\u2028\u2029"),
    ("user_agent", "Mozilla/5.0 \U0001f4a9 e\u0301"),
    ("page", "/p/\ufeff\ufffe"),
    ("user_id", "\U00010000" * 64),
]


def _swap(replacement: bytes) -> Callable[[bytes, bytes], bytes]:
    return lambda body, marker: body.replace(marker, replacement)


BAD_ENCODINGS: list[tuple[str, Callable[[bytes, bytes], bytes], str]] = [
    ("latin-1 byte", _swap(b"caf\xe9"), "application/json"),
    ("UTF-8-encoded surrogate", _swap(b"\xed\xa0\x80"), "application/json"),
    ("overlong UTF-8", _swap(b"\xc0\xaf"), "application/json"),
    ("truncated multi-byte", _swap(b"\xe2\x82"), "application/json"),
    ("0xFF byte", _swap(b"\xff\xfe"), "application/json"),
    ("lone high surrogate escape", _swap(b"\\ud800"), "application/json"),
    ("lone low surrogate escape", _swap(b"\\udc00"), "application/json"),
    ("reversed surrogate pair", _swap(b"\\udc00\\ud800"), "application/json"),
    ("raw NUL byte", _swap(b"a\x00b"), "application/json"),
    ("raw control byte", _swap(b"a\x1bb"), "application/json"),
    ("UTF-16LE body", lambda b, m: b.decode().encode("utf-16-le"), "application/json"),
    ("UTF-8 BOM", lambda b, m: b"\xef\xbb\xbf" + b, "application/json"),
    ("UTF-32 body", lambda b, m: b.decode().encode("utf-32"), "application/json"),
    ("latin-1 declared", _swap(b"caf\xe9"), "application/json; charset=iso-8859-1"),
    ("non-UTF-8 key", lambda b, m: b.replace(b'"category"', b'"cat\xe9gory"'), "application/json"),
]


def _text(value: bytes) -> Callable[[bytes, list[Any]], bytes]:
    return lambda _body, _events: value


MALFORMED_BODIES: list[tuple[str, Callable[[bytes, list[Any]], bytes]]] = [
    ("truncated", lambda b, _e: b[: len(b) // 2]),
    ("trailing comma", lambda b, _e: b[:-2] + b",]}"),
    ("single quotes", lambda b, _e: b.replace(b'"', b"'")),
    ("comment", lambda b, _e: b"/* hi */" + b),
    ("empty body", _text(b"")),
    ("null", _text(b"null")),
    ("a number", _text(b"42")),
    ("a string", _text(b'"batch"')),
    ("batch an object", _text(b'{"batch": {"a": 1}}')),
    ("batch null", _text(b'{"batch": null}')),
    ("empty object", _text(b"{}")),
    ("trailing garbage", lambda b, _e: b + b" garbage"),
    ("two documents", lambda b, _e: b + b),
    ("NaN", lambda b, _e: b.replace(b'"schema_version":1', b'"schema_version":NaN', 1)),
    ("Infinity", lambda b, _e: b.replace(b'"schema_version":1', b'"schema_version":Infinity', 1)),
    ("1e999", lambda b, _e: b.replace(b'"schema_version":1', b'"schema_version":1e999', 1)),
    ("duplicate keys", lambda b, _e: b.replace(b'"user_id":', b'"user_id":"dup","user_id":')),
    ("empty list", _text(b"[]")),
]

CONTENT_TYPES = [
    "application/xml",
    "text/html",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    "image/png",
    "application/json, text/plain",
    "application/jsonx",
    None,
    "",
    "text/plain",
    "APPLICATION/JSON; charset=UTF-8",
    "application/vnd.lakehouse+json",
]

SEGMENT_MESSAGES = [
    "track mapped",
    "track viewed",
    "track searched",
    "track added",
    "track by type name",
    "track missing product",
    "order",
    "page",
    "identify",
    "identify without ids",
    "identify bad traits",
    "screen",
    "group",
    "alias",
    "unknown type",
    "unmapped event",
    "event name not a string",
    "anonymous only",
    "non-UUID messageId",
    "no messageId",
    "numeric messageId",
    "not an object",
]

# Track messages named as the collector's mapping names a contract type: kind -> that type and
# the properties for an item.
MAPPED_TRACKS: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "track mapped": ("click", lambda item: {"product_id": item}),
    "non-UUID messageId": ("click", lambda item: {"product_id": item}),
    "no messageId": ("click", lambda item: {"product_id": item}),
    "numeric messageId": ("click", lambda item: {"product_id": item}),
    "track viewed": ("page_view", lambda item: {"product_id": item}),
    "track searched": ("search", lambda _item: {"query": "red shoes"}),
    "track added": ("add_to_cart", lambda item: {"product_id": item, "price": 9.5, "quantity": 2}),
    "track missing product": ("click", lambda _item: {}),
}
# Messages of fixed fields: kind -> the fields for an item, and the contract type they map to
# (None: the collector refuses or ignores them).
FIXED_MESSAGES: dict[str, tuple[Callable[[str], dict[str, Any]], str | None]] = {
    "track by type name": (
        lambda item: {"event": "click", "properties": {"item_id": item, "position": 2}},
        "click",
    ),
    "page": (
        lambda _item: {"type": "page", "name": "Home", "properties": {"url": "https://x.y/"}},
        "page_view",
    ),
    "identify": (
        lambda _item: {"type": "identify", "traits": {"plan": "pro", "email": "a@b.c"}},
        "identity",
    ),
    "identify bad traits": (
        lambda _item: {"type": "identify", "traits": ["not", "an", "object"]},
        None,
    ),
    "screen": (lambda _item: {"type": "screen", "name": "x"}, None),
    "group": (lambda _item: {"type": "group", "name": "x"}, None),
    "alias": (lambda _item: {"type": "alias", "name": "x"}, None),
    "unknown type": (lambda _item: {"type": "teleport"}, None),
    "unmapped event": (
        lambda _item: {"event": "Coupon Applied", "properties": {"coupon": "X"}},
        None,
    ),
    "event name not a string": (lambda _item: {"event": 12345}, None),
}

METHOD_PATHS = [
    ("GET", "/v1/events"),
    ("PUT", "/v1/events"),
    ("DELETE", "/v1/batch"),
    ("POST", "/v1/nope"),
    ("POST", "/metrics"),
    ("OPTIONS", "/v1/events"),
    ("GET", "/healthz"),
    ("POST", "/v1/events/../../etc/passwd"),
]

# name, lines (-1: products not a list), share of bad lines, note bytes
ORDERS: list[tuple[str, int, float, int]] = [
    ("1,000 lines", 1_000, 0.1, 0),
    ("2,000 lines (the cap)", 2_000, 0.05, 0),
    ("1,500 lines, 60 KB note", 1_500, 0.5, 60_000),
    ("2,000 lines, all bad", 2_000, 1.0, 0),
    ("2,001 lines (over the cap)", 2_001, 0.0, 0),
    ("5,000 lines (over the cap)", 5_000, 0.0, 0),
    ("no lines", 0, 0.0, 0),
    ("products not a list", -1, 0.0, 0),
]

DEPTHS: list[tuple[str, int]] = [
    ("properties", 33),
    ("context", 64),
    ("properties", 253),
    ("properties", 254),
    ("properties", 300),
    ("properties", 1_000),
    ("properties", 1_025),
    ("properties", 100_000),
    ("element", 500),
    ("segment", 300),
]


def _trick(
    *lines: bytes, path: bytes = b"/v1/events", version: bytes = b"HTTP/1.1"
) -> Callable[[bytes, int, random.Random], bytes]:
    """A head with ``lines`` in place of the usual Authorization; ``KEY`` is the write key."""

    def build(key: bytes, length: int, _rng: random.Random) -> bytes:
        head = [b"POST " + path + b" " + version, b"Host: " + HOST]
        head += [line.replace(b"KEY", key) for line in lines]
        head += [b"Content-Type: application/json", f"Content-Length: {length}".encode()]
        head.append(b"Connection: close")
        return b"\r\n".join(head) + b"\r\n\r\n"

    return build


HEADER_TRICKS: list[tuple[str, Callable[[bytes, int, random.Random], bytes]]] = [
    ("bare CR in Authorization", _trick(b"Authorization: Bearer KEY\rX-Injected: 1")),
    ("Authorization over 8 KiB", _trick(b"Authorization: Bearer KEY" + b"A" * 9_000)),
    ("other header over 8 KiB", _trick(b"Authorization: Bearer KEY", b"X-Pad: " + b"p" * 9_000)),
    ("non-UTF-8 key", _trick(b"Authorization: Bearer \xff\xfe\xfa-key")),
    ("non-UTF-8 X-Write-Key", _trick(b"X-Write-Key: \xc3\x28\xa0")),
    ("non-UTF-8 header name", _trick(b"Authorization: Bearer KEY", b"X-\xff\xfe: 1")),
    ("UTF-8 key", _trick("Authorization: Bearer ключ".encode())),
    ("obs-fold", _trick(b"Authorization: Bearer", b" KEY")),
    ("NUL in value", _trick(b"Authorization: Bearer KEY\x00evil")),
    ("bare LF", _trick(b"Authorization: Bearer KEY\nX-Injected: 1")),
    ("space before colon", _trick(b"Authorization : Bearer KEY")),
    ("two keys, good first", _trick(b"Authorization: Bearer KEY", b"Authorization: Bearer no")),
    ("two keys, bad first", _trick(b"Authorization: Bearer no", b"Authorization: Bearer KEY")),
    (
        "Content-Length and chunked",
        _trick(b"Authorization: Bearer KEY", b"Transfer-Encoding: chunked"),
    ),
    ("two Content-Lengths", _trick(b"Authorization: Bearer KEY", b"Content-Length: 3")),
    (
        "absolute target",
        _trick(b"Authorization: Bearer KEY", path=b"http://evil.example/v1/events"),
    ),
    ("HTTP/1.0", _trick(b"Authorization: Bearer KEY", version=b"HTTP/1.0")),
    ("HTTP/2.0 request line", _trick(b"Authorization: Bearer KEY", version=b"HTTP/2.0")),
    ("8 KiB path", _trick(b"Authorization: Bearer KEY", path=b"/v1/events?" + b"q" * 9_000)),
    ("tab in key", _trick(b"Authorization: Bearer\tKEY")),
]
