"""The event contract: versioned JSON Schemas per event type, loaded, flattened and validated.

Schemas live in ``schemas/<event_type>/v<N>.json``. An event type's file shares the envelope
through ``"allOf": [{"$ref": "../envelope/v1.json"}]``; the registry flattens that into one plain
object schema, which is what both validation and the Spark schema are derived from, so the
envelope is written once and never retyped.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

SCHEMAS_DIR = Path(__file__).parent / "schemas"
ENVELOPE = "envelope"
_VERSION_FILE = re.compile(r"^v(\d+)\.json$")
DEFAULT_MAX_FUTURE_SKEW_MS = 5 * 60 * 1000


class ContractError(ValueError):
    """The contract files themselves are wrong or an unknown type/version was asked for."""


@dataclass(frozen=True)
class Violation:
    """One reason an event breaks the contract: a stable rule name and a readable detail."""

    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


@dataclass(frozen=True)
class EventContract:
    """One version of one event type's contract, flattened."""

    event_type: str
    version: int
    schema: dict[str, Any]
    source: Path

    @cached_property
    def validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.schema, format_checker=FormatChecker())

    @cached_property
    def fast_validator(self) -> Callable[[Any], Any]:
        """The same schema compiled to Python code: ~15x faster, used only to *accept* events.

        Formats are checked by the very functions jsonschema uses, so it never accepts what the
        full validator rejects; anything it rejects is re-checked by the full validator, which
        names every violation.
        """
        schema = {k: v for k, v in self.schema.items() if k not in ("$schema", "$id")}
        validate: Callable[[Any], Any] = fastjsonschema.compile(schema, formats=_FORMATS)
        return validate

    @property
    def required(self) -> list[str]:
        return list(self.schema.get("required", []))

    def field_paths(self) -> list[str]:
        """Every property path, dotted, in declaration order (``context.page`` …)."""
        return list(_paths(self.schema, ""))


@dataclass
class ContractRegistry:
    """All event contracts found in a folder, by type and version."""

    root: Path = SCHEMAS_DIR
    _contracts: dict[str, dict[int, EventContract]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise ContractError(f"contract folder {self.root} does not exist")
        for type_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if type_dir.name == ENVELOPE:
                continue
            for file in sorted(type_dir.iterdir()):
                match = _VERSION_FILE.match(file.name)
                if not match:
                    continue
                version = int(match.group(1))
                flat = flatten_schema(file)
                self._contracts.setdefault(type_dir.name, {})[version] = EventContract(
                    type_dir.name, version, flat, file
                )
        if not self._contracts:
            raise ContractError(f"no event contracts (<type>/v<N>.json) under {self.root}")

    @property
    def event_types(self) -> list[str]:
        return sorted(self._contracts)

    def versions(self, event_type: str) -> list[int]:
        return sorted(self._by_type(event_type))

    def get(self, event_type: str, version: int | None = None) -> EventContract:
        """The contract for a type at a version (latest when ``version`` is None)."""
        by_version = self._by_type(event_type)
        if version is None:
            return by_version[max(by_version)]
        if version not in by_version:
            raise ContractError(
                f"event type {event_type!r} has no schema version {version} "
                f"(known: {', '.join(map(str, sorted(by_version)))})"
            )
        return by_version[version]

    def latest(self) -> list[EventContract]:
        return [self.get(t) for t in self.event_types]

    def all(self) -> Iterator[EventContract]:
        for event_type in self.event_types:
            for version in self.versions(event_type):
                yield self.get(event_type, version)

    def validate(
        self,
        event: Any,
        now_ms: int | None = None,
        max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS,
    ) -> list[Violation]:
        """Every way ``event`` breaks its contract; an empty list means it is valid.

        Beyond the JSON Schema, an event whose timestamp lies more than ``max_future_skew_ms``
        after ``now_ms`` (default: the wall clock) is rejected as ``timestamp_in_future``.
        """
        violations = self._fast_violations(event)
        ts_ms = event_time_ms(event.get("timestamp")) if isinstance(event, Mapping) else None
        if ts_ms is not None:
            now_ms = _now_ms() if now_ms is None else now_ms
            if ts_ms > now_ms + max_future_skew_ms:
                violations.append(
                    Violation(
                        "timestamp_in_future",
                        f"timestamp is {(ts_ms - now_ms) / 1000:.0f}s ahead of now "
                        f"(allowed: {max_future_skew_ms / 1000:.0f}s)",
                    )
                )
        return violations

    def check_json(self, raw: str | bytes | None) -> list[Violation]:
        """Contract violations of one raw message (no clock-dependent checks), fast.

        Valid events, the vast majority, are accepted by the compiled validator; the rest go
        through the full validator so that every violation is named.
        """
        if raw is None:
            return [Violation("json_parse", "the message has no value")]
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            event = _NOT_PARSED
        if isinstance(event, dict) and self._accepted_fast(event):
            return []
        try:
            full = load_json(raw)
        except ValueError as exc:
            return [Violation("json_parse", f"not valid JSON: {exc}")]
        return self.violations(full)

    def _fast_violations(self, event: Any) -> list[Violation]:
        """``violations`` with the compiled validator accepting the (usual) valid events first."""
        if isinstance(event, dict) and self._accepted_fast(event):
            return []
        return self.violations(event)

    def _accepted_fast(self, event: dict[str, Any]) -> bool:
        contract = self._contract_of(event)
        if contract is None or isinstance(event.get("timestamp"), float):
            return False
        try:
            contract.fast_validator(event)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    def violations(self, event: Any) -> list[Violation]:
        """JSON Schema violations of a parsed event against its type and version's contract."""
        if not isinstance(event, Mapping):
            return [
                Violation("not_an_object", f"an event must be a JSON object, got {_kind(event)}")
            ]
        event_type = event.get("event_type")
        if event_type is None:
            return [Violation("required:event_type", "'event_type' is a required property")]
        if not isinstance(event_type, str) or event_type not in self._contracts:
            return [
                Violation(
                    "unknown_event_type",
                    f"event_type {event_type!r} is not one of {', '.join(self.event_types)}",
                )
            ]
        version = event.get("schema_version")
        violations: list[Violation] = []
        if isinstance(version, int) and not isinstance(version, bool):
            if version not in self._contracts[event_type]:
                return [
                    Violation(
                        "unknown_schema_version",
                        f"{event_type} has no schema version {version} "
                        f"(known: {', '.join(map(str, self.versions(event_type)))})",
                    )
                ]
            contract = self.get(event_type, version)
        else:
            contract = self.get(event_type)  # report every other problem against the latest
        violations.extend(_violations(contract.validator, event))
        timestamp = event.get("timestamp")
        if isinstance(timestamp, float) and not any(
            v.rule.endswith(":timestamp") for v in violations
        ):
            # JSON Schema counts 4100000000000.0 as an integer; the lakehouse does not: a float
            # has no exact millisecond (1e30 has none at all) and Spark would read it as NULL.
            violations.append(
                Violation(
                    "type:timestamp",
                    f"timestamp: {timestamp!r} is a number with a fraction or exponent; send "
                    "integer epoch milliseconds or an RFC 3339 date-time",
                )
            )
        return violations

    def validate_json(self, raw: str | bytes, now_ms: int | None = None) -> list[Violation]:
        """Parse then validate; unparseable input is a ``json_parse`` violation."""
        try:
            event = load_json(raw)
        except ValueError as exc:
            return [Violation("json_parse", f"not valid JSON: {exc}")]
        return self.validate(event, now_ms=now_ms)

    def _contract_of(self, event: dict[str, Any]) -> EventContract | None:
        event_type, version = event.get("event_type"), event.get("schema_version")
        by_version = self._contracts.get(event_type) if isinstance(event_type, str) else None
        if by_version is None or not isinstance(version, int) or isinstance(version, bool):
            return None
        return by_version.get(version)

    def _by_type(self, event_type: str) -> dict[int, EventContract]:
        if event_type not in self._contracts:
            raise ContractError(
                f"unknown event type {event_type!r} (known: {', '.join(self.event_types)})"
            )
        return self._contracts[event_type]


def load_json(raw: str | bytes) -> Any:
    """One message as JSON (RFC 8259), the way the contract reads it.

    Python's ``json`` also reads ``NaN``, ``Infinity`` and ``-Infinity``, which are not JSON (and
    which orjson, the collector and Spark refuse): they are refused here too. Nesting too deep
    for the parser is a parse error, not a crash.

    Raises:
        ValueError: ``raw`` is not one JSON value (``UnicodeDecodeError`` is a ``ValueError``).
    """
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def flatten_schema(file: Path) -> dict[str, Any]:
    """Resolve ``allOf``/``$ref`` composition into one object schema.

    Properties are merged key by key (the referencing file refines the envelope, e.g. narrowing
    ``event_type`` to a ``const``), ``required`` lists are unioned, other keywords overlay.
    """
    raw = _load_json(file)
    return _flatten(raw, file.parent, seen=(file.resolve(),))


def _flatten(schema: dict[str, Any], base: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in schema.get("allOf", []):
        resolved = part
        if "$ref" in part:
            target = (base / part["$ref"]).resolve()
            if target in seen:
                raise ContractError(f"circular $ref to {target}")
            resolved = _flatten(_load_json(target), target.parent, (*seen, target))
        merged = _merge_schemas(merged, resolved)
    own = {k: v for k, v in schema.items() if k != "allOf"}
    merged = _merge_schemas(merged, own)
    for meta in ("$id", "title"):
        if meta in schema:
            merged[meta] = schema[meta]
    return merged


def _merge_schemas(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if key == "properties" and isinstance(out.get(key), dict):
            props = out[key]
            for name, sub in value.items():
                props[name] = (
                    _merge_schemas(props[name], sub) if name in props else copy.deepcopy(sub)
                )
        elif key == "required":
            out[key] = list(dict.fromkeys([*out.get(key, []), *value]))
        else:
            out[key] = copy.deepcopy(value)
    return out


def _violations(validator: Draft202012Validator, event: Any) -> list[Violation]:
    found: dict[str, Violation] = {}
    for error in validator.iter_errors(event):
        for violation in _explain(error):
            found.setdefault(violation.rule, violation)
    return list(found.values())


def _explain(error: ValidationError) -> list[Violation]:
    path = ".".join(str(p) for p in error.absolute_path)
    at = f"{path}: " if path else ""
    kind = error.validator
    instance: Any = error.instance
    schema: Any = error.schema
    if kind == "required":
        required: Any = error.validator_value
        missing = [name for name in required if name not in instance]
        return [
            Violation(f"required:{_join(path, name)}", f"'{_join(path, name)}' is a required field")
            for name in missing
        ]
    if kind == "additionalProperties":
        extras = sorted(set(instance) - set(schema.get("properties", {})))
        return [
            Violation(
                f"unknown_field:{_join(path, name)}",
                f"'{_join(path, name)}' is not in the contract",
            )
            for name in extras
        ]
    if kind == "oneOf":
        sub_kinds = {e.validator for e in error.context or []}
        rule = "format" if "format" in sub_kinds and isinstance(error.instance, str) else "type"
        return [
            Violation(f"{rule}:{path}", f"{at}{error.instance!r} matches none of the allowed forms")
        ]
    if kind == "const" and path == "event_type":
        return [
            Violation(
                "unknown_event_type", f"event_type {error.instance!r} does not match its schema"
            )
        ]
    rule = {
        "minLength": "length",
        "maxLength": "length",
        "minimum": "range",
        "maximum": "range",
    }.get(str(kind), str(kind))
    return [Violation(f"{rule}:{path}", f"{at}{error.message}")]


def event_time_ms(value: Any) -> int | None:
    """Event time in epoch ms from the contract's two forms (integer epoch ms up to
    ``MAX_EVENT_TIME_MS``, or an RFC 3339 date-time, ``RFC3339_DATE_TIME``); None when it is
    neither. A float is neither: the contract refuses it (``type:timestamp``). Silver's
    ``event_time`` expression is the same definition in Spark SQL (a parity test holds them
    together)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_EVENT_TIME_MS else None
    if isinstance(value, str):
        if not re.fullmatch(RFC3339_DATE_TIME, value):
            return None
        try:
            parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    return None


# 9999-12-31T23:59:59.999Z, the envelope contract's maximum: the latest time Spark's timestamp
# and an RFC 3339 string both hold.
MAX_EVENT_TIME_MS = 253_402_300_799_999
# RFC 3339's date-time (section 5.6): a "T" between date and time, an offset always. The same
# text is a Java regex, used by silver's Spark expression.
RFC3339_DATE_TIME = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"  # date T time
    r"(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"  # fraction, offset
)


def _paths(schema: dict[str, Any], prefix: str) -> Iterator[str]:
    for name, sub in schema.get("properties", {}).items():
        path = _join(prefix, name)
        yield path
        if isinstance(sub, dict) and sub.get("type") == "object":
            yield from _paths(sub, path)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ContractError(f"cannot read contract {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ContractError(f"contract {path} must be a JSON object")
    return data


def _kind(value: Any) -> str:
    return type(value).__name__


def _now_ms() -> int:
    return int(datetime.now(tz=UTC).timestamp() * 1000)


# The format checks of jsonschema's FormatChecker (the full validator's), shared with the fast
# path so that it never accepts a value the full validator refuses (``uuid.UUID`` alone accepts
# 32 hex digits without dashes, braces or a ``urn:uuid:`` prefix; the checker wants the dashes).
_FORMAT_CHECKER = FormatChecker()
_FORMATS: dict[str, Callable[[str], bool]] = {
    name: partial(_FORMAT_CHECKER.conforms, format=name) for name in ("uuid", "date-time")
}
_NOT_PARSED = object()
