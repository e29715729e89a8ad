"""The HTTP collector: authenticate, validate against the contract, route to Kafka, then answer.

Endpoints:

- ``POST /v1/events``: ``{"batch": [contract events], "sent_at": …}`` (or a bare list) from our
  SDK or any HTTP client.
- ``POST /v1/batch``, ``/v1/track``, ``/v1/page``, ``/v1/identify``: the Segment HTTP API, so
  Segment/RudderStack SDKs work unchanged (see ``segment.py`` for the mapping).
- ``GET /healthz`` (the process answers), ``/readyz`` (Kafka answers), ``/metrics`` (Prometheus).

Each event is validated on its own: valid events go to their event type's topic keyed by
``user_id``, invalid ones to the dead-letter topic with every rule they broke. The response lists
each event's outcome and is sent only after Kafka acknowledged every message of the request
(at-least-once); when it cannot be, the answer is 503 and the client retries with the same
``event_id``s, which silver deduplicates.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from pipelines.collector.access import (
    RateLimiter,
    WriteKeys,
    presented_key,
    repeated_credential,
    truncate_ip,
)
from pipelines.collector.metrics import CONTENT_TYPE, CollectorMetrics
from pipelines.collector.publisher import AsyncPublisher, Outgoing, PublishError
from pipelines.collector.segment import Mapped, SegmentMapper
from pipelines.config import EVENT_TYPES, Settings, parse_duration
from pipelines.contracts.registry import ContractRegistry, Violation

log = logging.getLogger(__name__)

USER_AGENT_MAX = 1024  # the contract's context.user_agent maxLength
MISSING_KEY = (
    "missing or unknown write key; send 'Authorization: Bearer <key>' (or Segment's Basic auth "
    "with the key as user name)"
)
SEGMENT_CALLS = {"/v1/track": "track", "/v1/page": "page", "/v1/identify": "identify"}


class BadRequestError(ValueError):
    """The request body is not what the endpoint takes (400, with this message)."""


class _RefusedError(Exception):
    """Raised by a step of ``Collector._handle`` to answer the request with ``response``."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass(frozen=True)
class RequestContext:
    """What the collector adds to every event of one request."""

    received_at: str
    received_ms: int
    ip: str | None
    user_agent: str | None
    endpoint: str
    write_key: str


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Collector:
    """The collector's request handling; ``application()`` wires it into aiohttp."""

    def __init__(
        self,
        settings: Settings,
        publisher: AsyncPublisher,
        registry: ContractRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.collector
        self.publisher = publisher
        self.registry = registry or ContractRegistry()
        self.keys = WriteKeys(self.config.write_keys)
        self.limiter = RateLimiter(self.config.rate_limit)
        self.mapper = SegmentMapper(self.registry, self.config.segment_events)
        self.metrics = CollectorMetrics()
        self.topics = settings.kafka.topics
        self._skew_ms = int(parse_duration(settings.quality.max_future_skew).total_seconds() * 1000)
        self.acknowledged = AcknowledgedIds(self.config.dedup_window)

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post("/v1/events", self._endpoint("/v1/events", self._contract_events))
        for path in ("/v1/batch", *SEGMENT_CALLS):
            app.router.add_post(path, self._endpoint(path, self._segment_messages))
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.prometheus)
        return app

    # -- endpoints ------------------------------------------------------------------------------
    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        ready = await asyncio.get_running_loop().run_in_executor(None, self.publisher.ready)
        self.metrics.kafka_ready.set(1 if ready else 0)
        if ready:
            return web.json_response({"ready": True})
        return web.json_response(
            {"ready": False, "reason": "Kafka brokers did not answer a metadata request"},
            status=503,
        )

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    def _endpoint(
        self,
        path: str,
        route: Callable[[Any, RequestContext], tuple[list[Outgoing], dict[str, Any]]],
    ) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            self.metrics.in_flight.inc()
            try:
                response = await self._handle(request, path, route)
            finally:
                self.metrics.in_flight.dec()
            if request.can_read_body:
                # Answered before the whole body arrived (401, 413, 415, 408): the rest of it is
                # never read, so the connection cannot carry another request; say so.
                response.force_close()
            self.metrics.requests.labels(path, str(response.status)).inc()
            self.metrics.request_seconds.labels(path).observe(time.perf_counter() - started)
            return response

        return handle

    async def _handle(
        self,
        request: web.Request,
        path: str,
        route: Callable[[Any, RequestContext], tuple[list[Outgoing], dict[str, Any]]],
    ) -> web.Response:
        """Authenticate, read and admit one request, then publish what ``route`` makes of it."""
        try:
            key_name = self._header_key(request)
            self._check_body_headers(request)
            payload = await self._read_payload(request)
            if key_name is None:  # browser SDKs may put the key in the body instead of a header
                key_name = self._body_key(payload)
            context = self._context(request, path, key_name)
            self._admit(payload, path, key_name)
        except _RefusedError as refused:
            return refused.response
        messages, summary = route(payload, context)
        return await self._publish(path, messages, summary)

    def _header_key(self, request: web.Request) -> str | None:
        """The write key the headers name, or None when the body may still carry one.

        Authentication comes before the body. A key in the headers decides at once; without
        one, the body may still carry Segment's ``writeKey`` (browser SDKs), but only a body
        the collector would read anyway (present, within max_body_bytes).
        """
        repeated = repeated_credential(request.headers)
        if repeated is not None:
            raise _RefusedError(
                _unauthorized(
                    f"the request carries more than one {repeated} header; send exactly one",
                    status=400,
                )
            )
        header_key = presented_key(request.headers)
        key_name = self.keys.match(header_key)
        if header_key is not None and key_name is None:
            raise _RefusedError(_unauthorized("unknown write key; check the key your client sends"))
        if key_name is None and (self._declared_too_large(request) or not request.can_read_body):
            raise _RefusedError(_unauthorized(MISSING_KEY))
        return key_name

    def _check_body_headers(self, request: web.Request) -> None:
        """Refuse, before reading it, a body that is not JSON or is declared too large."""
        media_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media_type and not _is_json_media_type(media_type):
            raise _RefusedError(
                _error(415, f"Content-Type {media_type[:64]!r} is not JSON; send application/json")
            )
        if self._declared_too_large(request):
            raise _RefusedError(_error(413, self._body_too_large()))

    def _declared_too_large(self, request: web.Request) -> bool:
        length = request.content_length
        return length is not None and length > self.config.max_body_bytes

    def _body_too_large(self) -> str:
        return f"request body over {self.config.max_body_bytes:,} bytes; send smaller batches"

    async def _read_payload(self, request: web.Request) -> Any:
        """The parsed JSON body, read within ``body_timeout_s`` and ``max_body_bytes``."""
        timeout_s = self.config.body_timeout_s
        try:
            body = await asyncio.wait_for(request.read(), timeout_s)
        except TimeoutError:
            raise _RefusedError(
                _error(408, f"the body did not arrive within {timeout_s:g}s")
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise _RefusedError(_error(413, self._body_too_large())) from None
        except Exception as exc:  # a broken gzip stream or connection surfaces here
            raise _RefusedError(_error(400, f"could not read the request body: {exc}")) from exc
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _RefusedError(_error(400, f"malformed JSON: {exc}")) from exc

    def _body_key(self, payload: Any) -> str:
        """The write key named by Segment's ``writeKey`` in the body."""
        body_key = payload.get("writeKey") if isinstance(payload, dict) else None
        key_name = self.keys.match(body_key if isinstance(body_key, str) else None)
        if key_name is None:
            raise _RefusedError(_unauthorized(MISSING_KEY))
        return key_name

    def _admit(self, payload: Any, path: str, key_name: str) -> None:
        """Refuse a request of too many events, or one over its write key's rate limit."""
        try:
            count = _expanded_count(payload, path)
        except BadRequestError as exc:
            raise _RefusedError(_error(400, str(exc))) from exc
        most = self.config.max_events_per_request
        if count > most:
            raise _RefusedError(
                _error(413, f"{count:,} events in one request; send at most {most:,}")
            )
        wait_s = self.limiter.take(key_name, count)
        if wait_s:
            retry = "3600" if math.isinf(wait_s) else str(max(1, math.ceil(wait_s)))
            raise _RefusedError(
                _error(
                    429,
                    f"write key {key_name!r} is over its rate limit "
                    f"({self.config.rate_limit.events_per_second:g} events/s); retry later",
                    headers={"Retry-After": retry},
                )
            )

    async def _publish(
        self, path: str, messages: list[Outgoing], summary: dict[str, Any]
    ) -> web.Response:
        """Send the messages Kafka has not acknowledged yet; 503 when it does not acknowledge."""
        # A retry of a request Kafka partly or wholly acknowledged publishes nothing twice.
        fresh = [m for m in messages if m.event_id is None or m.event_id not in self.acknowledged]
        summary["already_acknowledged"] = len(messages) - len(fresh)
        t0 = time.perf_counter()
        try:
            await self.publisher.publish(fresh, on_acknowledged=self.acknowledged.add)
        except PublishError as exc:
            log.warning("503 for %s: %s", path, exc)
            return _error(
                503,
                f"Kafka did not acknowledge the events ({exc}); retry the same request",
                headers={"Retry-After": "1"},
            )
        self.metrics.produce_seconds.observe(time.perf_counter() - t0)
        return web.Response(body=orjson.dumps(summary), content_type="application/json")

    # -- routing --------------------------------------------------------------------------------
    def _contract_events(
        self, payload: Any, ctx: RequestContext
    ) -> tuple[list[Outgoing], dict[str, Any]]:
        elements = _events_of(payload)
        outgoing: list[Outgoing] = []
        results: list[dict[str, Any]] = []
        outcomes: Counter[tuple[str, str]] = Counter()
        rules: Counter[str] = Counter()
        accepted = 0
        for element in elements:
            message, violations = self._route_event(element, ctx)
            outgoing.append(message)
            event_id = element.get("event_id") if isinstance(element, dict) else None
            event_type = _type_label(element)
            if violations:
                results.append(
                    {"event_id": event_id, "status": "rejected", "errors": _errors(violations)}
                )
                outcomes[(event_type, "rejected")] += 1
                rules.update(v.rule for v in violations)
            else:
                accepted += 1
                results.append({"event_id": event_id, "status": "accepted", "errors": []})
                outcomes[(event_type, "accepted")] += 1
        self.metrics.count_events(outcomes, rules)
        summary = {"accepted": accepted, "rejected": len(elements) - accepted, "results": results}
        return outgoing, summary

    def _segment_messages(
        self, payload: Any, ctx: RequestContext
    ) -> tuple[list[Outgoing], dict[str, Any]]:
        call = SEGMENT_CALLS.get(ctx.endpoint)
        messages = [payload] if call else payload["batch"]
        outgoing: list[Outgoing] = []
        results: list[dict[str, Any]] = []
        outcomes: Counter[tuple[str, str]] = Counter()
        rules: Counter[str] = Counter()
        accepted = rejected = 0
        for message in messages:
            mapped = self.mapper.map(message, call)
            message_id = message.get("messageId") if isinstance(message, dict) else None
            errors: list[Violation] = list(mapped.violations)
            original = _Bounded(message, self.config.max_dlq_excerpt_bytes)  # once per message
            if errors:
                outgoing.append(self._dead_letter(original, errors, ctx))
            elif mapped.identity is not None:
                outgoing.append(self._identity(mapped, ctx))
                self.metrics.identities.inc()
            events_ok = 0
            for event in mapped.events:
                if "timestamp" not in event:
                    event["timestamp"] = ctx.received_ms  # Segment: no timestamp = now
                message_out, violations = self._route_event(event, ctx, original=original)
                outgoing.append(message_out)
                if violations:
                    errors.extend(violations)
                    outcomes[(event["event_type"], "rejected")] += 1
                else:
                    events_ok += 1
                    outcomes[(event["event_type"], "accepted")] += 1
            rules.update(v.rule for v in errors)
            failed = bool(mapped.violations) or events_ok < len(mapped.events)
            status = "accepted" if not failed else ("partial" if events_ok else "rejected")
            accepted += events_ok + (mapped.identity is not None)
            rejected += len(mapped.events) - events_ok + (1 if mapped.violations else 0)
            results.append(
                {
                    "message_id": message_id,
                    "status": status,
                    "events": len(mapped.events),
                    "errors": _errors(errors),
                    "ignored": _capped_names(mapped.ignored),
                }
            )
        if outcomes or rules:
            self.metrics.count_events(outcomes, rules)
        summary = {"success": True, "accepted": accepted, "rejected": rejected, "results": results}
        return outgoing, summary

    def _route_event(
        self, element: Any, ctx: RequestContext, original: Any = None
    ) -> tuple[Outgoing, list[Violation]]:
        """One event to its topic, or to the DLQ with the rules it broke."""
        if isinstance(element, dict):
            self._enrich(element, ctx)
        if _nested_deeper_than(element, self.config.max_nesting):
            violations = [
                Violation(
                    "too_deep",
                    f"JSON nested deeper than {self.config.max_nesting} levels",
                )
            ]
        else:
            violations = self.registry.validate(
                element, now_ms=ctx.received_ms, max_future_skew_ms=self._skew_ms
            )
        value = b""
        if not violations:
            value = orjson.dumps(element)
            if len(value) > self.config.max_event_bytes:
                violations = [
                    Violation(
                        "event_too_large",
                        f"the event is {len(value):,} bytes serialised; the limit is "
                        f"{self.config.max_event_bytes:,}",
                    )
                ]
        if violations:
            if original is None:
                return self._dead_letter(element, violations, ctx), violations
            return self._dead_letter(original, violations, ctx, mapped=element), violations
        return (
            Outgoing(
                self.topics.for_event_type(element["event_type"]),
                value,
                element["user_id"],
                element["event_id"],
            ),
            violations,
        )

    def _enrich(self, event: dict[str, Any], ctx: RequestContext) -> None:
        """Server-side facts: when the collector received it, and (if absent) client IP and UA."""
        event["received_at"] = ctx.received_at
        context = event.get("context")
        if context is None:
            context = event["context"] = {}
        if not isinstance(context, dict):
            return  # the contract check reports it
        if ctx.ip and "ip" not in context:
            context["ip"] = ctx.ip
        elif self.config.truncate_ip and isinstance(context.get("ip"), str):
            context["ip"] = truncate_ip(context["ip"])
        if ctx.user_agent and "user_agent" not in context:
            context["user_agent"] = ctx.user_agent
        if not context:
            del event["context"]

    def _dead_letter(
        self,
        element: Any,
        violations: list[Violation],
        ctx: RequestContext,
        mapped: Any = None,
    ) -> Outgoing:
        """One bounded dead-letter record: the rules (at most ``MAX_DLQ_ERRORS``, details cut to
        ``MAX_DETAIL_CHARS``) and the original, whole when small, else as an excerpt with its
        size and SHA-256 (``max_dlq_excerpt_bytes``): never an unbounded copy."""
        limit = self.config.max_dlq_excerpt_bytes
        errors = _errors(violations)
        record: dict[str, Any] = {
            "received_at": ctx.received_at,
            "endpoint": ctx.endpoint,
            "write_key": ctx.write_key,
            "errors": errors,
        }
        original = element if isinstance(element, _Bounded) else _Bounded(element, limit)
        record.update(original.fields("event"))
        if mapped is not None:
            record.update(_Bounded(mapped, limit).fields("mapped"))
        key = _user_key(mapped if mapped is not None else original.value)
        return Outgoing(self.topics.dlq, orjson.dumps(record, default=str), key)

    def _identity(self, mapped: Mapped, ctx: RequestContext) -> Outgoing:
        assert mapped.identity is not None
        identity = {**mapped.identity, "received_at": ctx.received_at}
        if identity.get("timestamp") is None:
            identity["timestamp"] = ctx.received_at
        key = identity["user_id"] or identity["anonymous_id"]
        return Outgoing(self.topics.identities, orjson.dumps(identity), key)

    def _context(self, request: web.Request, path: str, key_name: str) -> RequestContext:
        now = datetime.now(tz=UTC)
        ip = request.remote
        if self.config.trust_forwarded_for:
            forwarded = request.headers.get("X-Forwarded-For", "")
            ip = forwarded.split(",")[0].strip() or ip
        if ip and self.config.truncate_ip:
            ip = truncate_ip(ip) or None
        agent = request.headers.get("User-Agent")
        return RequestContext(
            received_at=now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            received_ms=int(now.timestamp() * 1000),
            ip=ip or None,
            user_agent=agent[:USER_AGENT_MAX] if agent else None,
            endpoint=path,
            write_key=key_name,
        )


MAX_DLQ_ERRORS = 20
MAX_DETAIL_CHARS = 300


class AcknowledgedIds:
    """The last ``capacity`` event ids Kafka acknowledged (insertion order, bounded memory)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and event_id in self._ids

    def add(self, event_id: str) -> None:
        if self.capacity <= 0:
            return
        self._ids[event_id] = None
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


class _Bounded:
    """A client value as a dead-letter record may hold it: whole when its JSON is at most
    ``limit`` bytes, else an excerpt plus its size and SHA-256."""

    def __init__(self, value: Any, limit: int) -> None:
        self.value = value
        try:
            raw = orjson.dumps(value, default=str)
            self.fits = len(raw) <= limit
        except orjson.JSONEncodeError as exc:  # e.g. nested past orjson's 254 levels
            raw = f"<not serialisable: {exc}>".encode()
            self.fits = False
        self.size = len(raw)
        self.sha256 = hashlib.sha256(raw).hexdigest()
        self.excerpt = raw[:limit].decode("utf-8", "replace")

    def fields(self, name: str) -> dict[str, Any]:
        kept = {name: self.value} if self.fits else {f"{name}_excerpt": self.excerpt}
        return kept | {f"{name}_bytes": self.size, f"{name}_sha256": self.sha256}


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether any part of ``value`` sits more than ``limit`` levels down (the value itself is
    level 1); iterative, so hostile depth cannot exhaust the stack."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


def _is_json_media_type(media_type: str) -> bool:
    """JSON, ``text/plain`` (browser beacons send JSON as it) or a ``+json`` type."""
    return media_type in ("application/json", "text/plain") or media_type.endswith("+json")


def _expanded_count(payload: Any, path: str) -> int:
    """Events a request becomes, counted before mapping: a Segment message with a ``products``
    list (an Order Completed) is one event per line."""
    if path == "/v1/events":
        return len(_events_of(payload))
    if path in SEGMENT_CALLS:
        if not isinstance(payload, dict):
            raise BadRequestError(f"{path} takes one Segment message (a JSON object)")
        return _segment_events(payload)
    batch = payload.get("batch") if isinstance(payload, dict) else None
    if not isinstance(batch, list):
        raise BadRequestError('/v1/batch takes {"batch": [messages]}')
    return sum(_segment_events(m) for m in batch)


def _segment_events(message: Any) -> int:
    props = message.get("properties") if isinstance(message, dict) else None
    products = props.get("products") if isinstance(props, dict) else None
    return max(1, len(products)) if isinstance(products, list) else 1


def _events_of(payload: Any) -> list[Any]:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        batch = payload.get("batch")
        if isinstance(batch, list):
            return batch
        if "event_type" in payload:
            return [payload]
    raise BadRequestError('/v1/events takes {"batch": [events]}, a list of events, or one event')


def _errors(violations: list[Violation]) -> list[dict[str, str]]:
    """The rules broken, bounded for answers and DLQ records alike: at most ``MAX_DLQ_ERRORS``
    (then one ``more`` entry with the count), details cut to ``MAX_DETAIL_CHARS``."""
    shown = [
        {"rule": v.rule, "detail": v.detail[:MAX_DETAIL_CHARS]} for v in violations[:MAX_DLQ_ERRORS]
    ]
    if len(violations) > MAX_DLQ_ERRORS:
        shown.append({"rule": "more", "detail": f"{len(violations) - MAX_DLQ_ERRORS} more"})
    return shown


def _capped_names(names: list[str]) -> list[str]:
    """Ignored field names in an answer: at most ``MAX_DLQ_ERRORS``, then ``"… N more"``."""
    if len(names) <= MAX_DLQ_ERRORS:
        return names
    return [*names[:MAX_DLQ_ERRORS], f"... {len(names) - MAX_DLQ_ERRORS} more"]


def _type_label(element: Any) -> str:
    """A metric label: a contract type, else "unknown" (client values must not add series)."""
    value = element.get("event_type") if isinstance(element, dict) else None
    return value if value in EVENT_TYPES else "unknown"


def _user_key(element: Any) -> str | None:
    value = element.get("user_id") if isinstance(element, dict) else None
    return value if isinstance(value, str) else None


# A response key: close the connection once the answer is sent.
REFUSED = web.ResponseKey("lakehouse.refused", bool)


def _unauthorized(message: str, status: int = 401) -> web.Response:
    """401 (or ``status``), and the connection closes: whatever else the client sends is not
    read."""
    response = _error(status, message)
    response[REFUSED] = True
    response.force_close()
    return response


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message}),
        content_type="application/json",
        headers=headers,
    )
