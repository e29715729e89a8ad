"""Segment-spec calls (``track``, ``page``, ``identify``) mapped onto the event contract.

Existing Segment and RudderStack SDKs post these to ``/v1/batch`` and friends; mapping them here
means apps keep the SDK they already ship while the lakehouse still gets contract events. The
mapping is explicit and lossy only where the contract has no place for a field: those fields are
listed as ``ignored`` in the response, never dropped silently.

- ``track``: the event name selects the contract type (``collector.segment_events``, e.g.
  ``Product Clicked`` -> ``click``; a name equal to a contract type maps to itself). Segment's
  e-commerce spec fields move to the contract's (``product_id`` -> ``item_id``). ``Order
  Completed`` with a ``products`` array becomes one ``purchase`` event per order line.
- ``page`` -> ``page_view`` (``page_type`` from properties, else the page name or category).
- ``identify`` -> an identity record (user id, anonymous id, traits) for the identities topic.
- ``messageId`` becomes ``event_id`` (a non-UUID id is hashed to a stable UUID), so a client
  retry keeps its id and silver removes the duplicate.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.contracts.registry import ContractRegistry, Violation

# Namespace for UUIDs derived from non-UUID Segment message ids (stable across collectors).
SEGMENT_NAMESPACE = uuid.UUID("6f1c2f7e-5a0b-4f44-9a57-2b1c3d4e5f60")
ITEM_ALIASES = ("product_id", "item_id", "sku")
DEVICE_TYPES = {
    "desktop": "desktop",
    "web": "desktop",
    "mobile": "mobile",
    "ios": "mobile",
    "android": "mobile",
    "phone": "mobile",
    "tablet": "tablet",
    "ipad": "tablet",
    "tv": "tv",
}
# Context keys with a place in the contract: Segment name -> contract name.
CONTEXT_KEYS = {"userAgent": "user_agent", "ip": "ip", "locale": "locale"}
QUIET_CONTEXT_KEYS = {"library"}  # describes the sending SDK; never worth reporting


@dataclass
class Mapped:
    """What one Segment message became: contract events, or an identity, or the reasons not."""

    events: list[dict[str, Any]] = field(default_factory=list)
    identity: dict[str, Any] | None = None
    violations: list[Violation] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


class SegmentMapper:
    """Maps Segment messages using the contract's own property lists and enums."""

    def __init__(self, registry: ContractRegistry, event_names: Mapping[str, str]) -> None:
        self._registry = registry
        self._names = dict(event_names)
        self._types = set(registry.event_types)
        self._allowed: dict[str, set[str]] = {}
        for contract in registry.latest():
            props = contract.schema.get("properties", {}).get("properties", {})
            self._allowed[contract.event_type] = set(props.get("properties", {}))
        page_props = registry.get("page_view").schema["properties"]["properties"]["properties"]
        self._page_types = set(page_props["page_type"].get("enum", []))

    def map(self, message: Any, call: str | None = None) -> Mapped:
        """Map one message; ``call`` is implied by the endpoint (``/v1/track``) or read from
        the message's ``type`` (``/v1/batch``)."""
        if not isinstance(message, Mapping):
            return Mapped(violations=[Violation("not_an_object", "a message must be an object")])
        kind = call or message.get("type")
        if kind == "track":
            return self._track(message)
        if kind == "page":
            return self._page(message)
        if kind == "identify":
            return self._identify(message)
        return Mapped(
            violations=[
                Violation(
                    "segment_unsupported_call",
                    f"Segment call type {kind!r} is not collected (supported: track, page, "
                    "identify)",
                )
            ]
        )

    def _track(self, message: Mapping[str, Any]) -> Mapped:
        name = message.get("event")
        event_type = self._event_type(name)
        if event_type is None:
            return Mapped(
                violations=[
                    Violation(
                        "segment_unmapped_event",
                        f"track event {name!r} maps to no event type; add it to "
                        "collector.segment_events or send one of "
                        f"{', '.join(sorted(self._types))}",
                    )
                ]
            )
        props = _object(message.get("properties"))
        mapped = Mapped()
        base = self._envelope(message, event_type, mapped)
        if event_type == "purchase" and isinstance(props.get("products"), list):
            lines = props["products"]
            shared = {k: v for k, v in props.items() if k != "products"}
            for index, product in enumerate(lines):
                line = {**shared, **_object(product)}
                quantity = line.get("quantity", 1)
                if "revenue" not in _object(product) and isinstance(line.get("price"), int | float):
                    line["revenue"] = line["price"] * (quantity if isinstance(quantity, int) else 1)
                event = dict(base)
                event["event_id"] = str(
                    uuid.uuid5(SEGMENT_NAMESPACE, f"{base['event_id']}/{index}")
                )
                self._properties(event, line, mapped, prefix=f"properties.products[{index}]")
                mapped.events.append(event)
            if not lines:
                mapped.violations.append(
                    Violation("segment_empty_order", "Order Completed has an empty products list")
                )
            return mapped
        self._properties(base, props, mapped, prefix="properties")
        mapped.events.append(base)
        return mapped

    def _page(self, message: Mapping[str, Any]) -> Mapped:
        props = dict(_object(message.get("properties")))
        mapped = Mapped()
        event = self._envelope(message, "page_view", mapped)
        context = event.setdefault("context", {})
        if isinstance(props.get("url"), str):
            context.setdefault("page", props.pop("url"))
        if "referrer" in props:
            context.setdefault("referrer", props.pop("referrer"))
        if "page_type" not in props:
            for candidate in (message.get("name"), message.get("category")):
                if isinstance(candidate, str) and candidate.lower() in self._page_types:
                    props["page_type"] = candidate.lower()
                    break
            else:
                props["page_type"] = "other"
        if isinstance(message.get("category"), str) and "category" not in props:
            props["category"] = message["category"]
        if not context:
            del event["context"]
        self._properties(event, props, mapped, prefix="properties")
        mapped.events.append(event)
        return mapped

    def _identify(self, message: Mapping[str, Any]) -> Mapped:
        user_id, anonymous_id = _id(message.get("userId")), _id(message.get("anonymousId"))
        traits = message.get("traits", {})
        mapped = Mapped()
        if user_id is None and anonymous_id is None:
            mapped.violations.append(
                Violation("required:user_id", "identify needs userId or anonymousId")
            )
        if not isinstance(traits, Mapping):
            mapped.violations.append(Violation("type:traits", "traits must be an object"))
        if mapped.violations:
            return mapped
        mapped.identity = {
            "event_id": _event_id(message.get("messageId")),
            "user_id": user_id,
            "anonymous_id": anonymous_id,
            "traits": dict(traits),
            "timestamp": message.get("timestamp") or message.get("originalTimestamp"),
        }
        return mapped

    def _event_type(self, name: Any) -> str | None:
        if not isinstance(name, str):
            return None
        if name in self._names:
            return self._names[name]
        normalised = name.strip().lower().replace(" ", "_")
        return normalised if normalised in self._types else None

    def _envelope(self, message: Mapping[str, Any], event_type: str, mapped: Mapped) -> dict:
        event: dict[str, Any] = {
            "event_id": _event_id(message.get("messageId")),
            "event_type": event_type,
            "schema_version": self._registry.get(event_type).version,
        }
        user_id = _id(message.get("userId")) or _id(message.get("anonymousId"))
        if user_id is not None:
            event["user_id"] = user_id
        timestamp = message.get("timestamp") or message.get("originalTimestamp")
        if timestamp is not None:
            event["timestamp"] = timestamp
        context = self._context(_object(message.get("context")), mapped)
        if context:
            event["context"] = context
        return event

    def _context(self, source: Mapping[str, Any], mapped: Mapped) -> dict[str, Any]:
        context: dict[str, Any] = {}
        for key, value in source.items():
            if key in CONTEXT_KEYS:
                context[CONTEXT_KEYS[key]] = value
            elif key == "page" and isinstance(value, Mapping):
                if "url" in value:
                    context["page"] = value["url"]
                if "referrer" in value:
                    context["referrer"] = value["referrer"]
            elif key == "device" and isinstance(value, Mapping):
                kind = str(value.get("type", "")).lower()
                context["device"] = DEVICE_TYPES.get(kind, "other")
            elif key not in QUIET_CONTEXT_KEYS:
                mapped.ignored.append(f"context.{key}")
        return context

    def _properties(
        self, event: dict[str, Any], props: Mapping[str, Any], mapped: Mapped, prefix: str
    ) -> None:
        event_type = event["event_type"]
        props = dict(props)
        for alias in ITEM_ALIASES:
            if alias in props:
                value = props.pop(alias)
                if "item_id" not in event and value is not None:
                    event["item_id"] = str(value) if isinstance(value, int) else value
        if "session_id" in props:
            event["session_id"] = props.pop("session_id")
        if event_type == "page_view" and "page_type" not in props:
            props["page_type"] = "product" if "item_id" in event else "other"
        if event_type in ("add_to_cart", "purchase"):
            props.setdefault("quantity", 1)
        allowed = self._allowed.get(event_type, set())
        kept = {k: v for k, v in props.items() if k in allowed}
        mapped.ignored.extend(f"{prefix}.{k}" for k in props if k not in allowed)
        if kept or event_type != "click":
            event["properties"] = kept


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _id(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _event_id(message_id: Any) -> str:
    """Segment's messageId as a UUID: kept when it is one, hashed to a stable one otherwise."""
    if isinstance(message_id, str) and message_id:
        try:
            return str(uuid.UUID(message_id))
        except ValueError:
            return str(uuid.uuid5(SEGMENT_NAMESPACE, message_id))
    return str(uuid.uuid4())
