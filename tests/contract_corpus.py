"""A seeded corpus of good and hostile raw event messages, for checking the contract's rules.

Valid events of every type come from the synthetic clickstream; each hostile message is one of
them with one to three mutations drawn from the contract itself (every field path of its type:
missing, null, mistyped, out of range, badly formatted, too long, unknown extra fields, repeated
keys), or a message that is not an event at all (not JSON, not an object, cut short, nested
deep). JSON is written by hand so that it can hold what ``json.dumps`` never writes: repeated
keys, numbers like ``1e400`` or ``1.0``, escaped and unescaped unicode, odd whitespace.

The same seed gives the same corpus.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from pipelines.contracts import ContractRegistry, EventContract
from pipelines.synthetic.clickstream import ClickstreamGenerator


class Raw(str):
    """JSON text written as it is (``1e400``, ``1.0``, ``-0``)."""


class Pairs(list[tuple[str, Any]]):
    """A JSON object as its key/value pairs, so a key can repeat."""


def dumps(value: Any, rng: random.Random | None = None) -> str:
    """JSON text of ``value``; with ``rng``, whitespace and escaping of non-ASCII vary."""
    spaced = rng is not None and rng.random() < 0.2
    ascii_only = rng is not None and rng.random() < 0.2
    comma, colon = (", ", ": ") if spaced else (",", ":")

    def text(v: Any) -> str:
        if isinstance(v, Raw):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=ascii_only)
        if isinstance(v, float):
            raise TypeError("write floats as Raw text, so the corpus says which literal it holds")
        if isinstance(v, bool | int) or v is None:
            return json.dumps(v)
        if isinstance(v, dict):
            v = Pairs(v.items())
        if isinstance(v, Pairs):
            return "{" + comma.join(text(k) + colon + text(x) for k, x in v) + "}"
        if isinstance(v, list):
            return "[" + comma.join(text(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} as JSON")

    return text(value)


UUID = "3f1c1a0e-8b7a-4a51-9a6b-0d2b3b7f0e11"

# Values of every JSON kind, with the numbers that tell integer from float, exact from rounded.
ANY_VALUES: list[Any] = [
    0,
    1,
    -1,
    2,
    7,
    128,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**20,
    -(10**20),
    10**38 - 1,
    10**38,
    10**40,
    -(10**40),
    Raw("1" + "0" * 300),
    Raw("1.0"),
    Raw("2.0"),
    Raw("1.5"),
    Raw("0.5"),
    Raw("-0"),
    Raw("-0.0"),
    Raw("0.0"),
    Raw("1e0"),
    Raw("1E2"),
    Raw("1e+2"),
    Raw("2.5e-3"),
    Raw("1e400"),
    Raw("-1e400"),
    Raw("1e-400"),
    Raw("1e40"),
    Raw("1.0e40"),
    Raw("0.99999999999999999"),
    Raw("0.9999999999999999"),
    Raw("1.00000000000000001"),
    Raw("-0.5"),
    Raw("123456789012345678901234567890.5"),
    Raw("4100000000000.0"),
    Raw("253402300799999.0"),
    Raw("253402300800000.0"),
    Raw("1795000000000.25"),
    Raw("0." + "0" * 40 + "1"),
    Raw("1" * 45 + ".0"),
    True,
    False,
    None,
    "",
    " ",
    "1",
    "0",
    "-1",
    "1.5",
    "1e3",
    "true",
    "null",
    "NaN",
    "{}",
    "[]",
    "x",
    "é",
    "😀",
    "\u0000",
    "a\nb",
    "\u200b",
    {},
    {"a": 1},
    Pairs([("a", 1), ("a", "b")]),
    [],
    [1, "a", None],
    [[[]]],
    {"deep": {"er": [1, {"x": None}]}},
]

TEXT_VALUES: list[str] = [
    "a",
    "Z",
    " ",
    "\t",
    "é",
    "e\u0301",
    "中文",
    "مرحبا",
    "😀",
    "\U0001f600\U0001f601",
    "\u200b",
    "\u0000",
    "\n",
    "line\nbreak",
    "tab\there",
    'quote"inside',
    "back\\slash",
    "</script>",
    "\ufeff",
]

UUID_VALUES: list[str] = [
    UUID,
    UUID.upper(),
    "3F1c1A0e-8b7a-4A51-9a6b-0d2b3B7f0e11",
    UUID.replace("-", ""),
    "{" + UUID + "}",
    UUID + "}",
    "{" + UUID,
    "urn:uuid:" + UUID,
    "uuid:" + UUID,
    "3f1c1a0e-8b7a-4a51-9a6b-0d2b-3b7f0e11",  # an extra dash
    "3f1c1a0e8-b7a-4a51-9a6b-0d2b3b7f0e11",  # a dash moved
    UUID[:-1],
    UUID + "0",
    UUID[:-1] + "g",
    " " + UUID[1:],  # int(..., 16) reads surrounding whitespace
    UUID[:-1] + " ",
    "+" + UUID[1:],  # and a sign
    "0x" + UUID[2:],  # and a base prefix
    UUID[:-3] + "_11",  # and an underscore between digits
    UUID[:-3] + "__1",
    UUID[:-2] + "1_",
    "\uff13" + UUID[1:],  # a full-width digit is a digit to int()
    "\u0663" + UUID[1:],  # so is an Arabic-Indic one
    "\u3000" + UUID[1:],  # and an ideographic space is whitespace
    "\uff41" + UUID[1:],  # a full-width letter is not a hex digit
    UUID + "\n",
    "",
    "-" * 36,
    "00000000-0000-0000-0000-000000000000",
    "urn:" + UUID[4:],
]

DATE_TIMES: list[str] = [
    "2026-11-28T10:00:00Z",
    "2026-11-28T10:00:00.123Z",
    "2026-11-28T10:00:00.123456789+02:00",
    "2026-11-28T10:00:00-05:30",
    "2026-11-28t10:00:00z",
    "2026-11-28T10:00:00",
    "2026-11-28 10:00:00Z",
    "2026-11-28",
    "2026-13-01T00:00:00Z",
    "2026-00-10T00:00:00Z",
    "2026-02-29T00:00:00Z",
    "2024-02-29T00:00:00Z",
    "2000-02-29T00:00:00Z",
    "1900-02-29T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-04-31T00:00:00Z",
    "2026-04-30T23:59:59Z",
    "2026-11-00T00:00:00Z",
    "2026-11-32T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999Z",
    "2026-11-28T24:00:00Z",
    "2026-11-28T23:60:00Z",
    "2016-12-31T23:59:60Z",
    "2026-11-28T10:00:00+24:00",
    "2026-11-28T10:00:00+23:59",
    "2026-11-28T10:00:00.Z",
    "2026-11-28T10:00:00Z\n",
    "2026-11-28T10:00:00Z\r",
    "2026-11-28T10:00:00Z\n\n",
    " 2026-11-28T10:00:00Z",
    "２０２６-11-28T10:00:00Z",
    "+10000-01-01T00:00:00Z",
    "1795890535599",
    "tomorrow",
    "",
]

# Keys a contract does not know, at any level: sorted by code point in the rule names.
EXTRA_KEYS: list[str] = [
    "coupon",
    "Coupon",
    "a",
    "Z",
    "_x",
    "",
    " ",
    "é",
    "中",
    "😀",
    "\uffff",
    "\U00010000",
    "\u0000",
    "event_id ",
    "EVENT_ID",
    "properties.quantity",
    "$ref",
    'a"b',
    "x" * 200,
]


def corpus(registry: ContractRegistry, n: int, seed: int = 15) -> list[str | None]:
    """``n`` raw messages: every fixed hostile message once, then mutated and untouched events."""
    rng = random.Random(seed)
    events = _valid_events(rng, registry)
    fixed: list[str | None] = [None, *_not_events(), *_envelope_cases(registry, events)]
    out = fixed[:n]
    while len(out) < n:
        event = _load(rng.choice(events))
        contract = registry.get(event["event_type"])
        if rng.random() < 0.12:
            out.append(dumps(Pairs(event.items()), rng))
            continue
        doc: Any = event
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            doc = rng.choice(_MUTATIONS)(rng, doc, contract, registry)
        out.append(dumps(doc, rng))
    return out


def _valid_events(rng: random.Random, registry: ContractRegistry) -> list[str]:
    generator = ClickstreamGenerator(
        users=40, items=40, seed=rng.randrange(1000), end=datetime(2026, 11, 20, tzinfo=UTC)
    )
    raws = [e.value.decode() for e in generator.events(3_000)]
    types = [json.loads(r)["event_type"] for r in raws]
    by_type = {
        t: [r for r, k in zip(raws, types, strict=True) if k == t] for t in registry.event_types
    }
    missing = sorted(set(registry.event_types) - set(by_type))
    assert not missing, f"the clickstream made no {missing} events; raise the count"
    # Equal shares per type, so the rare ones (purchase) are mutated as often as page views.
    return [r for found in by_type.values() for r in rng.sample(found, min(len(found), 200))]


def _load(raw: str) -> Any:
    """An event as Python values, its decimal numbers kept as the literal text they were."""
    return json.loads(raw, parse_float=Raw)


def _not_events() -> Iterator[str]:
    """Messages that are not one JSON object: bad JSON, other JSON values, junk around one."""
    good = '{"event_id":"' + UUID + '","event_type":"click","user_id":"u","timestamp":1,'
    good += '"schema_version":1,"item_id":"i"}'
    yield from [good, " " + good + "\n", "\t\r\n" + good + " \t"]
    yield from ["", " ", "\n", "{", "}", "[", "]", "{}", "[]", "[{}]", "{}{}", "{} {}", "{},{}"]
    yield from ["{}]", "{}]]", "{} ]", "{}}", "{} x", "{} null", "{}\u0000", "[] ]", "[1] ,0]"]
    yield from [good + "]", good + ",0]", good + "}", good + " x", good + good, good + ","]
    yield from ["x" + good, "\ufeff" + good, good + "\ufeff", good + "\u00a0", "\u00a0" + good]
    yield from [good[:-1], good[: len(good) // 2], good.replace(",", ",,", 1)]
    yield from [good.replace(":", "=", 1), good.replace('"', "'"), good.replace('"u"', "'u'")]
    yield from [good.replace('"user_id"', "user_id"), good[:-1] + ",}", good[:-1] + ', "x": [1,]}']
    field = good[:-1] + ', "x": '
    yield from [field + v + "}" for v in ("01", "+1", ".5", "1.", "-", "1e", "0x10", "1_0")]
    yield from [field + v + "}" for v in ("NaN", "Infinity", "-Infinity", "nan", "INF")]
    yield from [field + v + "}" for v in ("True", "undefined", "nul", "'s'", "/*c*/1")]
    yield from [field + v + "}" for v in ('"a\u0001b"', '"a\tb"', '"\\x"', '"\\u12"', '"\\/"')]
    yield from [field + f'"{v}"}}' for v in ("\\ud800", "\\udc00x", "\\ud83d\\ude00", "\\u00e9")]
    yield good + "//c"
    yield from ["0", "1", "-1", "1.5", "1e400", '"x"', '"{}"', "true", "false", "null", "NaN"]
    yield from ['"unterminated', '"\\"', "[1, 2]", '["a", {}]', "[[[[]]]]", '{"a"}', '{"a":}']
    yield from ['{"a":1,}', '{,"a":1}', '{"a" 1}', "{1: 2}", "{null: 1}", '{"a":1 "b":2}']
    for depth in (20, 200, 2_000):
        yield good[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
        yield good[:-1] + ', "deep": ' + '{"a":' * depth + "1" + "}" * depth + "}"
    yield "[" * 2_000 + "]" * 2_000
    yield good[:-1] + ', "big": "' + "x" * 100_000 + '"}'
    yield good[:-1] + ', "many": [' + ",".join(["1"] * 5_000) + "]}"


def _envelope_cases(registry: ContractRegistry, events: list[str]) -> Iterator[str]:
    """Every value of ``ANY_VALUES`` in each envelope field of one event of each type."""
    for event_type in registry.event_types:
        base = next(e for e in map(_load, events) if e["event_type"] == event_type)
        for name in ("event_type", "schema_version", "timestamp"):
            for value in ANY_VALUES:
                yield dumps(Pairs({**base, name: value}.items()))
        for value in [*DATE_TIMES, *TEXT_VALUES]:
            yield dumps(Pairs({**base, "timestamp": value}.items()))
        for value in [*registry.event_types, event_type.upper(), " " + event_type, "wishlist"]:
            yield dumps(Pairs({**base, "event_type": value}.items()))
        yield dumps(Pairs([(k, v) for k, v in base.items() if k != "event_type"]))
        yield dumps(Pairs([(k, v) for k, v in base.items() if k != "schema_version"]))


Mutation = Callable[[random.Random, Any, EventContract, ContractRegistry], Any]


def _paths(contract: EventContract) -> list[list[str]]:
    return [p.split(".") for p in contract.field_paths()]


def _schema_at(contract: EventContract, path: list[str]) -> dict[str, Any]:
    node = contract.schema
    for part in path:
        node = node["properties"][part]
    return node


def _parent(doc: Any, path: list[str], create: bool = False) -> dict[str, Any] | None:
    node = doc
    for part in path[:-1]:
        if not isinstance(node, dict):
            return None
        if part not in node and create:
            node[part] = {}
        node = node.get(part)
    return node if isinstance(node, dict) else None


def _set(rng: random.Random, doc: Any, contract: EventContract, value: Any) -> Any:
    if not isinstance(doc, dict):
        return doc
    path = rng.choice(_paths(contract))
    parent = _parent(doc, path, create=True)
    if parent is not None:
        parent[path[-1]] = value
    return doc


def _drop(rng: random.Random, doc: Any, contract: EventContract, _r: ContractRegistry) -> Any:
    if isinstance(doc, dict):
        path = rng.choice(_paths(contract))
        parent = _parent(doc, path)
        if parent is not None:
            parent.pop(path[-1], None)
    return doc


def _any_value(rng: random.Random, doc: Any, contract: EventContract, _r: ContractRegistry) -> Any:
    return _set(rng, doc, contract, rng.choice(ANY_VALUES))


def _null(rng: random.Random, doc: Any, contract: EventContract, _r: ContractRegistry) -> Any:
    return _set(rng, doc, contract, None)


def _text(rng: random.Random, doc: Any, contract: EventContract, _r: ContractRegistry) -> Any:
    """A string near a field's length limits, of ASCII or wide characters."""
    if not isinstance(doc, dict):
        return doc
    path = rng.choice(_paths(contract))
    schema = _schema_at(contract, path)
    limits = [schema.get("minLength", 1), schema.get("maxLength", 40)]
    size = max(0, rng.choice(limits) + rng.choice((-1, 0, 0, 1)))
    unit = rng.choice(["x", "é", "😀", "中", "e\u0301", "\u200b", "A"])
    value = (unit * size)[:size] if unit != "e\u0301" else unit * (size // 2)
    if rng.random() < 0.3:
        value = rng.choice(TEXT_VALUES) + value[1:]
    parent = _parent(doc, path, create=True)
    if parent is not None:
        parent[path[-1]] = value
    return doc


def _near_valid(rng: random.Random, doc: Any, contract: EventContract, _r: ContractRegistry) -> Any:
    """A value beside a field's own constraint: enum, pattern, format, minimum, maximum."""
    if not isinstance(doc, dict):
        return doc
    path = rng.choice(_paths(contract))
    schema = _schema_at(contract, path)
    candidates: list[Any] = []
    for allowed in schema.get("enum", []):
        candidates += [allowed, allowed.upper(), allowed + " ", allowed[:-1], allowed + "\n"]
    if "pattern" in schema:
        candidates += ["USD", "usd", "US", "USDX", "USD\n", "EUR\r", "en", "en-US", "eng-GB"]
        candidates += ["en-us", "EN", "e", "en-US\n", "en-USA", "fr-FR ", "\n", "ÉUR", "de-DE\n\n"]
    fmt = schema.get("format")
    candidates += UUID_VALUES if fmt == "uuid" else DATE_TIMES if fmt == "date-time" else []
    for bound in ("minimum", "maximum"):
        if bound in schema:
            b = schema[bound]
            candidates += [b - 1, b, b + 1, Raw(f"{b}.0"), Raw(f"{b - 1}.5"), Raw(f"{b}.5")]
    if not candidates:
        candidates = [rng.choice(ANY_VALUES)]
    parent = _parent(doc, path, create=True)
    if parent is not None:
        parent[path[-1]] = rng.choice(candidates)
    return doc


def _extra(rng: random.Random, doc: Any, contract: EventContract, _r: ContractRegistry) -> Any:
    """Fields the contract does not know, at the top, in ``context`` or in ``properties``."""
    if not isinstance(doc, dict):
        return doc
    where = rng.choice([doc, doc.get("context"), doc.get("properties")])
    if isinstance(where, dict):
        for key in rng.sample(EXTRA_KEYS, rng.choice((1, 1, 2, 4))):
            where[key] = rng.choice(ANY_VALUES)
    return doc


def _repeat_key(rng: random.Random, doc: Any, contract: EventContract, _r: ContractRegistry) -> Any:
    """A key written twice: the last value counts, as in Python's and Spark's readers."""
    if not isinstance(doc, dict):
        return doc
    path = rng.choice(_paths(contract))
    parent = _parent(doc, path)
    if parent is None or path[-1] not in parent:
        return doc
    pairs = Pairs(parent.items())
    pairs.insert(rng.randrange(len(pairs) + 1), (path[-1], rng.choice(ANY_VALUES)))
    if len(path) == 1:
        return pairs  # the event itself: later mutations leave it as it is
    holder = _parent(doc, path[:-1])
    if holder is not None:
        holder[path[-2]] = pairs
    return doc


def _retype(rng: random.Random, doc: Any, _c: EventContract, registry: ContractRegistry) -> Any:
    """Another event type's name on this event, or an unknown one, or another version."""
    if not isinstance(doc, dict):
        return doc
    choice = rng.random()
    if choice < 0.5:
        doc["event_type"] = rng.choice(registry.event_types)
    elif choice < 0.8:
        doc["schema_version"] = rng.choice([2, 0, -1, Raw("1.0"), Raw("2.0"), "1", True, 10**40])
    else:
        doc["event_type"] = rng.choice(["wishlist_add", "Click", "", "click ", 5, None])
    return doc


def _reshape(rng: random.Random, doc: Any, _c: EventContract, _r: ContractRegistry) -> Any:
    """The event inside something else, or its objects replaced by other kinds."""
    choice = rng.random()
    if choice < 0.25:
        return [doc]
    if choice < 0.35:
        return Raw(dumps(doc) + rng.choice(["]", " x", ",0]", "}", "\n", " "]))
    if isinstance(doc, dict):
        name = rng.choice(["context", "properties"])
        doc[name] = rng.choice([[], "x", 1, None, [doc.get(name)], {}])
    return doc


def _unicode_keys(rng: random.Random, doc: Any, _c: EventContract, _r: ContractRegistry) -> Any:
    """Known names written with look-alike unicode or case: unknown fields, and missing ones."""
    if not isinstance(doc, dict) or not doc:
        return doc
    key = rng.choice(list(doc))
    value = doc.pop(key)
    doc[rng.choice([key.upper(), key + "\u200b", key.replace("e", "е"), " " + key])] = value
    return doc


_MUTATIONS: list[Mutation] = [
    _drop,
    _drop,
    _any_value,
    _any_value,
    _any_value,
    _null,
    _text,
    _near_valid,
    _near_valid,
    _near_valid,
    _extra,
    _repeat_key,
    _retype,
    _reshape,
    _unicode_keys,
]
