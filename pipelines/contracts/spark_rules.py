"""The event contract's rules compiled to Spark SQL column expressions, evaluated in the JVM.

``ContractRules(registry).add_violations(frame)`` adds, for each raw JSON message, what
``ContractRegistry.check_json`` gives in Python — the same stable rule names in the same order,
every rule the message broke, and a detail for the first — as one column
``struct(rules array<string>, detail string)`` (``CONTRACT_RESULT``): no Python runs per row. The
JSON Schema validator stays the definition of "valid"; this module is compiled from the same
flattened contract files (every keyword the contracts use; a keyword it does not know is a
``ContractError`` when compiling, never a silently skipped rule), and a parity test runs both
over a generated corpus of good and hostile events.

How a message is read, so that Spark sees what Python's ``json`` sees:

* The message is parsed once, strictly, as a Spark VARIANT, which keeps JSON's own types: a
  string ``"1"`` is not the number ``1``, ``null`` is not an absent key. Two session confs
  (``JSON_READER_CONF``, set by ``pipelines.spark``) make it keep the last of repeated keys and
  read lone surrogate escapes (``"\\ud800"``), as Python does.
* The parser stops after the first JSON value; that nothing follows it is proven with a second,
  cheap tokenisation (``_one_json_value``).
* Numbers follow Python: an integer literal is an exact integer, any other literal is a double
  (``1e400`` is infinity, ``0.99999999999999999`` is ``1.0``).

The columns are computed in stages, each a small projection Spark compiles to JVM code: the
message parsed; each field's value, JSON type and (for objects) keys; every distinct check of
every contract once, as one boolean array (the envelope's checks are shared by all event types);
per row, the rule names of its event type's contract and which rule came first; and only for
rows that broke a rule, the detail of the first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

from jsonschema import FormatChecker
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DataType, StringType, StructField, StructType

from pipelines.contracts.registry import ContractError, ContractRegistry, EventContract
from pipelines.contracts.spark_schema import unified_event_schema

CONTRACT_RESULT = StructType(
    [
        StructField("rules", ArrayType(StringType()), False),
        StructField("detail", StringType()),
    ]
)

# Python's json keeps the last of repeated keys and reads "\ud800" (a lone surrogate escape);
# Spark's VARIANT parser refuses both unless told otherwise.
JSON_READER_CONF = {
    "spark.sql.variant.allowDuplicateKeys": "true",
    "spark.sql.variant.validateUnicodeInJsonParsing": "false",
}

# ContractRegistry.violations refuses a float timestamp beyond the JSON Schema.
_TIMESTAMP = "timestamp"
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "examples", "default", "deprecated"}
)
_LEAF_KEYWORDS = frozenset(
    {"type", "enum", "const", "format", "pattern", "minLength", "maxLength"}
    | {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
)
_RULE_OF = {"minLength": "length", "maxLength": "length", "minimum": "range", "maximum": "range"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INT_LITERAL = r"^-?[0-9]+$"
_UNKNOWN_FIELD = "unknown_field:"
_PREFIX = "__contract"
_RAW, _WRAPPED, _SINGLE = f"{_PREFIX}_raw", f"{_PREFIX}_wrapped", f"{_PREFIX}_single"
_FIELDS = f"{_PREFIX}_fields"
_OBJECT = "map<string,variant>"
# A JSON string read as text starts with this mark (see ``_marked``): Spark reads a string and
# any other JSON value into a string column alike, with the mark a string is told apart.
_STRING_MARK = "\u0001"
# The reader as strict as Python's json: no 'single quotes', no NaN or Infinity.
_STRICT_JSON = {"allowSingleQuotes": "false", "allowNonNumericNumbers": "false"}
_MESSAGE, _WHICH = f"{_PREFIX}_message", f"{_PREFIX}_which"
# Checks are staged as bits of longs, not an array: Spark would inline array elements (and with
# them every check) where they are read.
_BITS = 62
_CHECKS, _RULES, _FIRST = f"{_PREFIX}_checks", f"{_PREFIX}_rules", f"{_PREFIX}_first"
_ONE, _SLOTS = f"{_PREFIX}_one", f"{_PREFIX}_slots"


def _column_name(kind: str, path: str) -> str:
    return f"{_PREFIX}_{kind}_{path.replace('.', '__')}"


@dataclass(frozen=True)
class _Detail:
    """How a rule's detail reads after ``<rule>: ``: ``before``, then the value of ``shown``
    (``("repr", path)``: Python's repr of that field; ``("type", "")``: the Python type of the
    message; ``("key", "")``: the unknown key the rule names), then ``after``."""

    before: str
    shown: tuple[str, str] | None = None
    after: str = ""


@dataclass(frozen=True)
class _Rule:
    """A rule under a condition: its name and how its detail reads."""

    broken: Column
    name: str
    detail: int
    ends_with: str
    key: Any  # the same rule in two contracts has the same key


@dataclass(frozen=True)
class _Unknown:
    """A rule per unknown key of an object: ``names`` (``unknown_field:<path>.<key>``, sorted
    by key; NULL when the rule does not apply), and whether one ends in ``:timestamp``."""

    names: Column
    names_timestamp: Column
    detail: int
    key: Any


class ContractRules:
    """Every contract of a registry, compiled to Spark expressions once."""

    def __init__(self, registry: ContractRegistry) -> None:
        self.registry = registry
        self._checker = FormatChecker()
        # Every field of every contract, each scalar read as its JSON text (objects as structs).
        self._fields_schema = _as_text(unified_event_schema(registry))
        self._message = _Message()
        self._nodes: dict[str, _Node] = {"": self._message}  # every field the rules look at
        self._objects: dict[str, None] = {"": None}  # fields whose keys they look at
        self._checks: dict[Any, tuple[int, Column]] = {}  # distinct check -> (index, broken)
        self._extras: dict[Any, _Extras] = {}  # (object, its known keys) -> staged columns
        self._details: dict[_Detail, int] = {}
        self._values: dict[Any, list[_Rule]] = {}  # value keyword at a path -> its rules
        self._one_rule: list[tuple[Column, str, int]] = []
        self._contracts: list[tuple[Column, _Entries]] = []
        self._compile()

    def add_violations(
        self, frame: DataFrame, value: str = "value", into: str = "contract_violations"
    ) -> DataFrame:
        """``frame`` plus ``into``: ``struct(rules, detail)`` of the contract violations of the
        raw message in column ``value`` (no rules and a NULL detail when it is valid)."""
        staged = self._staged_checks(frame, value)
        # A message that is not JSON, not an object, or of no known type or version breaks
        # one rule (the first that applies); any other is checked against the first contract
        # whose condition holds.
        staged = staged.withColumns(
            {
                _ONE: _first_index([when for when, _name, _detail in self._one_rule]),
                _WHICH: _first_index([when for when, _entries in self._contracts]),
            }
        )
        # Every contract's rules merged into one order, as bits of the slot masks: a rule that
        # contracts share (the envelope's) is one slot, kept for rows of those contracts.
        slots = self._slots()
        conditions = self._slot_conditions(slots)
        staged = staged.withColumns(_bit_masks(_SLOTS, conditions))
        masks = [F.col(name) for name in _bit_masks(_SLOTS, conditions)]
        staged = staged.withColumn(_RULES, self._rule_names(slots, masks))
        staged = staged.withColumn(_FIRST, self._first_detail(slots, masks))
        first_rule = F.get(F.col(_RULES), 0)
        broke = F.size(F.col(_RULES)) > 0
        text = self._detail_text(F.col(_FIRST), first_rule)
        result = F.struct(
            F.coalesce(F.col(_RULES), _no_rules()).alias("rules"),
            F.when(broke, F.concat(first_rule, F.lit(": "), text)).alias("detail"),
        )
        staged = staged.withColumn(into, result)
        return staged.drop(*[c for c in staged.columns if c.startswith(_PREFIX)])

    def _staged_checks(self, frame: DataFrame, value: str) -> DataFrame:
        """``frame`` with the message parsed (as a variant and as the fields' texts), the keys
        of every object the rules look at, the bits of every check and the unknown keys."""
        staged = frame.withColumns(
            {
                _RAW: F.col(value),
                _WRAPPED: F.try_parse_json(F.concat(F.lit("["), F.col(value), F.lit("]"))),
                _FIELDS: F.from_json(_marked(F.col(value)), self._fields_schema, _STRICT_JSON),
            }
        )
        staged = staged.withColumns(
            {
                _MESSAGE: F.variant_get(F.col(_WRAPPED), "$[0]", "variant"),
                _SINGLE: F.variant_get(F.col(_WRAPPED), "$[1]", "variant").isNull()
                & _one_json_value(F.col(_RAW)),
            }
        )
        staged = staged.withColumns(
            {
                self._nodes[path].keys_name: F.map_keys(
                    F.try_variant_get(F.col(_MESSAGE), f"$.{path}" if path else "$", _OBJECT)
                )
                for path in self._objects
            }
        )
        checks = [broken for _index, broken in sorted(self._checks.values(), key=_first)]
        staged = staged.withColumns(
            _bit_masks(_CHECKS, checks)
            | {extras.keys_name: extras.keys for extras in self._extras.values()}
        )
        # What Spark cannot compile to JVM code (lambdas) in one small projection, only for
        # the rows with unknown keys.
        return staged.withColumns(
            {extras.names_name: extras.names() for extras in self._extras.values()}
            | {extras.timestamp_name: extras.names_timestamp() for extras in self._extras.values()}
        )

    def _slot_conditions(self, slots: list[_Slot]) -> list[Column]:
        """Whether each slot's rule is broken: no precheck broke and the row's contract has it."""
        everyone = set(range(len(self._contracts)))
        conditions = []
        for slot in slots:
            applies = (
                F.lit(True)
                if slot.contracts == everyone
                else F.col(_WHICH).isin(sorted(slot.contracts))
            )
            conditions.append(F.col(_ONE).isNull() & applies & slot.broken)
        return conditions

    def _rule_names(self, slots: list[_Slot], masks: list[Column]) -> Column:
        """The rule names, from the set bits in order (lambdas, so only for rows that broke a
        rule); the names of a slot of unknown keys are its key names."""
        names = F.array(*[F.lit(slot.name) for slot in slots])
        unknown = {i: slot.unknown for i, slot in enumerate(slots) if slot.unknown is not None}

        def slot_names(i: Column) -> Column:
            expanded: Column = F.array(F.get(names, i))
            for index, extras in unknown.items():
                expanded = F.when(i == index, extras).otherwise(expanded)
            return expanded

        any_bit = F.lit(False)
        for mask in masks:
            any_bit = any_bit | (mask != 0)
        broken_slots = F.filter(
            F.sequence(F.lit(0), F.lit(len(slots) - 1)), lambda i: _bit(masks, i)
        )
        contract_rules = F.array_distinct(F.flatten(F.transform(broken_slots, slot_names)))
        one_names = F.array(*[F.lit(name) for _when, name, _detail in self._one_rule])
        return (
            F.when(F.col(_ONE).isNotNull(), F.array(F.get(one_names, F.col(_ONE))))
            .when(any_bit, contract_rules)
            .otherwise(_no_rules())
        )

    def _first_detail(self, slots: list[_Slot], masks: list[Column]) -> Column:
        """The first rule's detail number: the precheck's, else the lowest set slot bit's."""
        slot_details = F.array(*[F.lit(slot.detail) for slot in slots])
        one_details = F.array(*[F.lit(detail) for _when, _name, detail in self._one_rule])
        first: Column = F.when(F.col(_ONE).isNotNull(), F.get(one_details, F.col(_ONE)))
        for number, mask in enumerate(masks):
            lowest = F.bit_count(mask.bitwiseAND(-mask) - 1)
            first = first.when(mask != 0, F.get(slot_details, lowest + number * _BITS))
        return first

    def _detail_text(self, first: Column, first_rule: Column) -> Column:
        """The detail of detail number ``first`` (that of ``first_rule``): which field it shows,
        then its text (literal parts looked up by the detail number)."""
        details = sorted(self._details, key=self._details.__getitem__)
        fields = list(
            dict.fromkeys(d.shown[1] for d in details if d.shown and d.shown[0] == "repr")
        )
        special = {("type", ""): -2, ("key", ""): -3}
        shows = [-1 if d.shown is None else special.get(d.shown, -4) for d in details]
        shows = [
            fields.index(d.shown[1]) if show == -4 and d.shown else show
            for d, show in zip(details, shows, strict=True)
        ]
        show = F.get(F.array(*[F.lit(i) for i in shows]), first)
        shown_text: Column = F.lit(None).cast("string")
        shown: Column = (
            F.when(show == -2, self._message.python_type)
            .when(show == -3, F.substring(first_rule, len(_UNKNOWN_FIELD) + 1, 1 << 30))
            .when(show == -1, F.lit(""))
        )
        for index, path in enumerate(fields):
            node = self._nodes[path]
            if node.declared_object:
                shown = shown.when(show == index, node.python_repr)
            else:
                shown_text = F.when(show == index, node.text).otherwise(shown_text)
        shown = shown.otherwise(_text_repr(shown_text))
        return F.concat(
            F.get(F.array(*[F.lit(d.before) for d in details]), first),
            shown,
            F.get(F.array(*[F.lit(d.after) for d in details]), first),
        )

    def _slots(self) -> list[_Slot]:
        """Every contract's rules merged into one order that keeps each contract's own order,
        with the contracts each applies to. A rule several contracts share keeps one slot
        unless a contract wants it elsewhere, where it gets a slot of its own."""
        slots: list[_Slot] = []
        for index, (_when, entries) in enumerate(self._contracts):
            last = -1
            for segment in entries.segments:
                place = next(
                    (i for i, slot in enumerate(slots) if i > last and slot.key == segment.key),
                    None,
                )
                if place is None:
                    place = last + 1
                    slots.insert(place, _Slot.of(segment))
                slots[place].contracts.add(index)
                last = place
        return slots

    def node(self, path: str) -> _Node:
        if path not in self._nodes:
            parent_path, _, name = path.rpartition(".")
            if not _IDENTIFIER.match(name):
                raise ContractError(f"field name {name!r} in {path!r} is not an identifier")
            parent = self.node(parent_path)
            declared: DataType = self._fields_schema
            for part in path.split("."):
                assert isinstance(declared, StructType)
                declared = declared[part].dataType
            self._nodes[path] = _Node(path, parent, isinstance(declared, StructType))
        return self._nodes[path]

    def object_node(self, path: str) -> _Node:
        self._objects.setdefault(path, None)
        return self._nodes[""] if not path else self.node(path)

    def check(self, key: Any, broken: Callable[[], Column]) -> Column:
        """The staged boolean of a distinct check (built once, whichever contract asks)."""
        if key not in self._checks:
            self._checks[key] = (len(self._checks), broken())
        index = self._checks[key][0]
        mask = F.col(f"{_CHECKS}{index // _BITS}")
        return F.bit_get(mask, F.lit(index % _BITS)) == 1

    def detail(self, detail: _Detail) -> int:
        return self._details.setdefault(detail, len(self._details))

    def _compile(self) -> None:
        """Which rules a message is checked against: the first of ``_one_rule`` whose
        condition holds (a message that is not JSON, not an object, of no known type or
        version breaks that one rule), else the first of ``_contracts`` whose condition holds
        (its type's contract at its version, or the latest when the version is no integer)."""
        message = self._nodes[""]
        event_type = self.node("event_type")
        version = self.node("schema_version")
        types = self.registry.event_types
        int_version = version.is_int_literal

        def one_rule(when: Column, name: str, detail: _Detail) -> None:
            self._one_rule.append((when, name, self.detail(detail)))

        one_rule(F.col(_RAW).isNull(), "json_parse", _Detail("the message has no value"))
        one_rule(
            ~F.coalesce(message.present & F.col(_SINGLE), F.lit(False)),
            "json_parse",
            _Detail("not valid JSON"),
        )
        one_rule(
            ~message.is_object,
            "not_an_object",
            _Detail("an event must be a JSON object, got ", ("type", "")),
        )
        one_rule(
            ~event_type.present | event_type.is_null,
            "required:event_type",
            _Detail("'event_type' is a required property"),
        )
        one_rule(
            ~(event_type.is_string & event_type.string.isin(types)),
            "unknown_event_type",
            _Detail("event_type ", ("repr", "event_type"), f" is not one of {', '.join(types)}"),
        )
        for name in types:
            versions = self.registry.versions(name)
            one_rule(
                (event_type.string == name)
                & int_version
                & ~version.text.isin([str(v) for v in versions]),
                "unknown_schema_version",
                _Detail(
                    f"{name} has no schema version ",
                    ("repr", "schema_version"),
                    f" (known: {', '.join(map(str, versions))})",
                ),
            )
        for name in types:
            versions = self.registry.versions(name)
            for number in versions[:-1]:
                self._contracts.append(
                    (
                        (event_type.string == name) & int_version & (version.text == str(number)),
                        self.contract_entries(self.registry.get(name, number)),
                    )
                )
            # The latest version, and any version that is not an integer (the reference checks
            # those against the latest contract).
            latest = self.contract_entries(self.registry.get(name))
            self._contracts.append((event_type.string == name, latest))

    def contract_entries(self, contract: EventContract) -> _Entries:
        entries = self.schema_entries(contract.schema, self._nodes[""])
        # ContractRegistry.violations: a float timestamp is refused even when JSON Schema calls
        # it an integer (4100000000000.0), unless a rule's name already ends in ":timestamp".
        timestamp = self.node(_TIMESTAMP)
        float_time = self.check(
            ("float", _TIMESTAMP),
            lambda: self.guard(timestamp) & timestamp.is_number & ~timestamp.is_int_literal,
        )
        entries.segments.append(
            _Rule(
                float_time & ~entries.names_timestamp(),
                f"type:{_TIMESTAMP}",
                self.detail(
                    _Detail(
                        f"{_TIMESTAMP}: ",
                        ("repr", _TIMESTAMP),
                        " is a number with a fraction or exponent; send integer epoch "
                        "milliseconds or an RFC 3339 date-time",
                    )
                ),
                _TIMESTAMP,
                ("float", contract.event_type, contract.version),
            )
        )
        return entries

    def schema_entries(self, schema: dict[str, Any], node: _Node) -> _Entries:
        """The rules of one schema node, keyword by keyword in the schema's order (the order
        jsonschema reports errors in). Whether a node is checked at all depends on its path
        only (its parents are objects and it is present), so each check is keyed by it."""
        entries = _Entries()
        for keyword, argument in schema.items():
            if keyword in _ANNOTATIONS:
                continue
            if keyword in _LEAF_KEYWORDS or keyword == "oneOf":
                entries.segments += self.value_rules(keyword, argument, node)
            elif keyword == "properties":
                for name, sub in argument.items():
                    child = self.node(_join(node.path, name))
                    entries.segments += self.schema_entries(sub, child).segments
            elif keyword == "required":
                for name in argument:
                    entries.segments.append(self.required(node, name))
            elif keyword == "additionalProperties":
                if argument is True:
                    continue
                if argument is not False:
                    raise ContractError(
                        f"additionalProperties at {node.path or '$'}: only true or false compile "
                        "to Spark rules"
                    )
                entries.segments.append(self.unknown_fields(schema, self.object_node(node.path)))
            else:
                raise ContractError(
                    f"keyword {keyword!r} at {node.path or '$'} has no Spark rule; add it to "
                    "pipelines/contracts/spark_rules.py"
                )
        return entries

    def value_rules(self, keyword: str, argument: Any, node: _Node) -> list[_Rule]:
        """The rules of one value keyword at ``node``, built once for all contracts."""
        key = (node.path, keyword, json.dumps(argument, sort_keys=True))
        if key not in self._values:
            guard = self.guard(node)
            rules = []
            if keyword == "oneOf":
                # Named format:<path> or type:<path> by the row: two rules, at most one broken.
                named_format, broken, detail = self.one_of(argument, node)
                formatted = self.check((*key, "format"), partial(_both, guard, named_format))
                checked = self.check(key, partial(_both, guard, broken))
                detail_index = self.detail(detail)
                for kind, named in (("format", formatted), ("type", ~formatted)):
                    name = f"{kind}:{node.path}"
                    rules.append(
                        _Rule(checked & named, name, detail_index, node.path, (*key, kind))
                    )
            else:
                found = self.leaf_checks(keyword, argument, node)
                for i, (rule, broken, detail) in enumerate(found):
                    checked = self.check((*key, i), partial(_both, guard, broken))
                    rules.append(_Rule(checked, rule, self.detail(detail), node.path, (*key, i)))
            self._values[key] = rules
        return self._values[key]

    def required(self, node: _Node, name: str) -> _Rule:
        path = _join(node.path, name)
        child = self.node(path)
        broken = self.check(
            ("required", path), lambda: self.guard(node) & node.is_object & ~child.present
        )
        detail = self.detail(_Detail(f"'{path}' is a required field"))
        return _Rule(broken, f"required:{path}", detail, path, ("required", path))

    def guard(self, node: _Node) -> Column:
        """Whether jsonschema looks at ``node`` at all: each parent is an object, it is present."""
        if not node.path:
            return F.lit(True)
        parent = self._nodes[node.path.rpartition(".")[0]]
        return self.guard(parent) & parent.is_object & node.present

    def unknown_fields(self, schema: dict[str, Any], node: _Node) -> _Unknown:
        """``additionalProperties: false``: a rule per key the schema does not name, sorted by
        code point as the reference sorts them (Spark sorts strings by their UTF-8 bytes: the
        same order)."""
        known = list(schema.get("properties", {}))
        key = (node.path, tuple(known))
        if key not in self._extras:
            self._extras[key] = _Extras(
                index=len(self._extras),
                keys=F.when(
                    self.guard(node) & node.is_object,
                    F.sort_array(F.array_except(node.keys, F.array(*[F.lit(n) for n in known]))),
                ),
                prefix=f"{_UNKNOWN_FIELD}{_join(node.path, '')}",
            )
        extras = self._extras[key]
        return _Unknown(
            F.col(extras.names_name),
            F.col(extras.timestamp_name),
            self.detail(_Detail("'", ("key", ""), "' is not in the contract")),
            key,
        )

    def leaf_checks(
        self, keyword: str, argument: Any, node: _Node
    ) -> Iterable[tuple[str, Column, _Detail]]:
        """``(rule name, broken, detail)`` of one value keyword, as jsonschema applies it."""
        checks = {
            "type": _type_checks,
            "enum": _value_checks,
            "const": _value_checks,
            "format": self._format_checks,
            "pattern": _pattern_checks,
            "minLength": _length_checks,
            "maxLength": _length_checks,
        }.get(keyword, _bound_checks)  # minimum, maximum, exclusiveMinimum, exclusiveMaximum
        yield from checks(keyword, argument, node)

    def _format_checks(
        self, keyword: str, argument: Any, node: _Node
    ) -> Iterator[tuple[str, Column, _Detail]]:
        if argument not in self._checker.checkers:
            return  # jsonschema treats a format it does not know as an annotation
        check = _FORMATS.get(argument)
        if check is None:
            raise ContractError(
                f"format {argument!r} at {node.path} has no Spark check; add one to "
                "_FORMATS in pipelines/contracts/spark_rules.py"
            )
        rule, at, shown = _leaf(keyword, node)
        broken = node.is_string & ~check(node.string)
        yield rule, broken, _Detail(at, shown, f" is not a {argument!r}")

    def one_of(self, alternatives: Sequence[Any], node: _Node) -> tuple[Column, Column, _Detail]:
        """jsonschema's oneOf over alternatives of value keywords, named as ``_explain`` names
        it: ``format:<path>`` when no alternative fits, the value is a string and a format
        was among the reasons, else ``type:<path>``."""
        count: Column = F.lit(0)
        format_failed: Column = F.lit(False)
        for alternative in alternatives:
            fits: Column = F.lit(True)
            for keyword, argument in alternative.items():
                if keyword in _ANNOTATIONS:
                    continue
                if keyword not in _LEAF_KEYWORDS:
                    raise ContractError(
                        f"oneOf at {node.path}: keyword {keyword!r} inside an alternative has no "
                        "Spark rule; add it to pipelines/contracts/spark_rules.py"
                    )
                for _rule, broken, _detail in self.leaf_checks(keyword, argument, node):
                    fits = fits & ~broken
                    if keyword == "format":
                        format_failed = format_failed | broken
            count = count + F.when(fits, 1).otherwise(0)
        shown = ("repr", node.path)
        detail = _Detail(f"{node.path}: ", shown, " matches none of the allowed forms")
        named_format = (count == 0) & node.is_string & format_failed
        return named_format, count != 1, detail


# -- the value keywords: (rule name, broken, detail) of each, as jsonschema applies it ---------
def _leaf(keyword: str, node: _Node) -> tuple[str, str, tuple[str, str]]:
    """The rule name of ``keyword`` at ``node``, how its detail starts, and what it shows."""
    at = f"{node.path}: " if node.path else ""
    return f"{_RULE_OF.get(keyword, keyword)}:{node.path}", at, ("repr", node.path)


def _type_checks(keyword: str, argument: Any, node: _Node) -> Iterator[tuple[str, Column, _Detail]]:
    rule, at, shown = _leaf(keyword, node)
    allowed = argument if isinstance(argument, list) else [argument]
    ok: Column = F.lit(False)
    for json_type in allowed:
        ok = ok | _is_type(node, json_type)
    names = ", ".join(repr(t) for t in allowed)
    yield rule, ~ok, _Detail(at, shown, f" is not of type {names}")


def _value_checks(
    keyword: str, argument: Any, node: _Node
) -> Iterator[tuple[str, Column, _Detail]]:
    """``enum`` and ``const``; a wrong ``event_type`` constant is ``unknown_event_type``."""
    rule, at, shown = _leaf(keyword, node)
    allowed = argument if keyword == "enum" else [argument]
    ok: Column = F.lit(False)
    for each in allowed:
        ok = ok | _equals(node, each, node.path)
    if keyword == "const" and node.path == "event_type":
        yield "unknown_event_type", ~ok, _Detail("event_type ", shown, " does not match")
    elif keyword == "const":
        yield rule, ~ok, _Detail(f"{at}{argument!r} was expected")
    else:
        yield rule, ~ok, _Detail(at, shown, f" is not one of {argument!r}")


def _pattern_checks(
    keyword: str, argument: Any, node: _Node
) -> Iterator[tuple[str, Column, _Detail]]:
    rule, at, shown = _leaf(keyword, node)
    broken = node.is_string & ~node.string.rlike(_java_pattern(argument, node.path))
    yield rule, broken, _Detail(at, shown, f" does not match {argument!r}")


def _length_checks(
    keyword: str, argument: Any, node: _Node
) -> Iterator[tuple[str, Column, _Detail]]:
    rule, at, shown = _leaf(keyword, node)
    length = F.char_length(node.string)
    if keyword == "minLength":
        broken = length < argument
        text = "should be non-empty" if argument == 1 else "is too short"
    else:
        broken = length > argument
        text = "is expected to be empty" if argument == 0 else "is too long"
    yield rule, node.is_string & broken, _Detail(at, shown, f" {text}")


_BOUND_WORDS = {
    "minimum": "is less than the minimum of",
    "maximum": "is greater than the maximum of",
    "exclusiveMinimum": "is less than or equal to the minimum of",
    "exclusiveMaximum": "is greater than or equal to the maximum of",
}


def _bound_checks(
    keyword: str, argument: Any, node: _Node
) -> Iterator[tuple[str, Column, _Detail]]:
    """``minimum``, ``maximum``, ``exclusiveMinimum`` and ``exclusiveMaximum``: compared
    exactly for an integer literal, else as the double Python reads."""
    rule, at, shown = _leaf(keyword, node)
    bound = _exact_bound(argument, keyword, node.path)
    below = keyword in ("minimum", "exclusiveMinimum")
    strict = keyword.startswith("exclusive")

    def outside(value: Column) -> Column:
        if below:
            return value <= bound if strict else value < bound
        return value >= bound if strict else value > bound

    exact = node.exact
    broken = node.is_number & F.when(exact.isNotNull(), outside(exact)).otherwise(
        F.coalesce(outside(node.double), F.lit(False))
    )
    words = _BOUND_WORDS[keyword]
    yield rule, broken, _Detail(at, shown, f" {words} {argument!r}")


def _known(condition: Column) -> Column:
    """``condition``, false where it is NULL (the field is absent or JSON null)."""
    return F.coalesce(condition, F.lit(False))


def _text_repr(text: Column) -> Column:
    """Python's ``repr`` of a present value from its text (NULL: JSON null)."""
    return (
        F.when(text.isNull(), "None")
        .when(
            text.startswith(_STRING_MARK),
            F.concat(F.lit("'"), F.substring(text, 2, 1 << 30), F.lit("'")),
        )
        .when(text == "true", "True")
        .when(text == "false", "False")
        .otherwise(text)
    )


def _marked(value: Column) -> Column:
    """The message with ``\\u0001`` (``_STRING_MARK``) written at the start of every string that
    is a member's value. In JSON a member's value follows its ``:``; a ``"`` after a ``:`` (and
    whitespace) starts a string there, and nowhere else: inside a string a ``"`` is escaped."""
    return F.regexp_replace(value, r':([ \t\n\r]*)"', r":$1\"\\u0001")


def _as_text(schema: StructType) -> StructType:
    """``schema`` with every scalar field a string (objects stay structs)."""
    return StructType(
        [
            StructField(
                f.name,
                _as_text(f.dataType) if isinstance(f.dataType, StructType) else StringType(),
            )
            for f in schema.fields
        ]
    )


def _one_json_value(value: Column) -> Column:
    """Nothing follows the first JSON value of ``value``.

    Spark's parsers stop after the first value, and ``[value]`` parses to one element both when
    ``value`` is ``E`` and when it is ``E]junk``; ``[value,0]`` then has two elements only in the
    first case (``[E]junk,0]`` ends after ``[E]``). With ``[value]`` holding exactly one element,
    that proves ``value`` is exactly one JSON value with only whitespace around it.
    """
    return F.coalesce(
        F.json_array_length(F.concat(F.lit("["), value, F.lit(",0]"))) == 2, F.lit(False)
    )


def _is_type(node: _Node, json_type: str) -> Column:
    checks: dict[str, Callable[[], Column]] = {
        "string": lambda: node.is_string,
        "integer": lambda: node.is_integer,
        "number": lambda: node.is_number,
        "boolean": lambda: node.is_bool,
        "null": lambda: node.is_null,
        "object": lambda: node.is_object,
        "array": lambda: node.is_array,
    }
    if json_type not in checks:
        raise ContractError(f"type {json_type!r} at {node.path} is not a JSON Schema type")
    return checks[json_type]()


def _equals(node: _Node, expected: Any, path: str) -> Column:
    """jsonschema's ``equal``: strings by value, booleans only to booleans, numbers by value
    (``1 == 1.0``), null to null."""
    if isinstance(expected, str):
        return node.is_string & (node.string == expected)
    if isinstance(expected, bool):
        return node.is_bool & (node.text == ("true" if expected else "false"))
    if expected is None:
        return node.is_null
    if isinstance(expected, int):
        return node.is_number & F.coalesce(
            F.when(node.exact.isNotNull(), node.exact == expected).otherwise(
                node.double == float(expected)
            ),
            F.lit(False),
        )
    raise ContractError(f"enum/const value {expected!r} at {path} has no Spark comparison")


def _exact_bound(bound: Any, keyword: str, path: str) -> int | float:
    if isinstance(bound, bool) or not isinstance(bound, int | float):
        raise ContractError(f"{keyword} at {path} must be a number, got {bound!r}")
    if isinstance(bound, int) and abs(bound) > 2**53:
        # A double compares exactly only with integers it holds.
        raise ContractError(f"{keyword} {bound} at {path} is beyond 2**53; no exact Spark bound")
    return bound


def _java_pattern(pattern: str, path: str) -> str:
    """A contract ``pattern`` (Python ``re``, which jsonschema uses) as the Java regex with the
    same matches: ``(?d)`` makes ``$`` and ``.`` treat only ``\\n`` as a line end, as Python's
    do. Escapes whose meaning differs (Python's ``\\d``/``\\w``/``\\s``/``\\b`` are Unicode-aware,
    ``\\Z`` is Java's ``\\z``) are refused rather than translated half-way."""
    unsupported = re.findall(r"\\[dDwWsSbBZAz]|\(\?P|\(\?<", pattern)
    if unsupported:
        raise ContractError(
            f"pattern {pattern!r} at {path} uses {', '.join(sorted(set(unsupported)))}, whose "
            "Python and Java meanings differ; write it with explicit classes"
        )
    return "(?d)" + pattern


def _uuid(text: Column) -> Column:
    """jsonschema's uuid format: ``uuid.UUID(text)`` reads it and dashes stand at 8, 13, 18,
    23. ``UUID`` drops ``urn:``, ``uuid:``, ``{``/``}`` at the ends and every dash, wants 32
    characters, and reads them with ``int(..., 16)``: surrounding whitespace, a ``+``, a ``0x``,
    underscores between digits and non-ASCII decimal digits included."""

    def drop(column: Column, part: str) -> Column:
        return F.replace(column, F.lit(part), F.lit(""))

    digits = drop(F.btrim(drop(drop(text, "urn:"), "uuid:"), F.lit("{}")), "-")
    dashes = F.lit(True)
    for position in (8, 13, 18, 23):
        dashes = dashes & (F.substring(text, position + 1, 1) == "-")
    return F.coalesce(
        (F.char_length(digits) == 32) & digits.rlike(_PYTHON_HEX_INT) & dashes, F.lit(False)
    )


# Python's int(s, 16) (Python 3.11): Unicode whitespace around, an optional sign (dashes are gone
# by then), an optional 0x prefix, hex digits (any Unicode decimal digit counts as one) with
# single underscores between them or after the prefix.
_PY_SPACE = r"[\t\n\x0B\f\r\x1C-\x1F \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]"
_PY_HEX = r"[0-9a-fA-F\p{Nd}]"
_PYTHON_HEX_INT = (
    rf"^{_PY_SPACE}*\+?(?:0[xX]_?{_PY_HEX}(?:_?{_PY_HEX})*|{_PY_HEX}(?:_?{_PY_HEX})*){_PY_SPACE}*$"
)

# rfc3339_validator's date-time, which jsonschema applies to ``value.upper()``: Python's ``$``
# also matches before a final newline. The day must exist in its month (leap years included);
# year 0 does not exist.
_RFC3339 = (
    r"^[0-9]{4}-(?:0[1-9]|1[0-2])-[0-9]{2}[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])\n?\z"
)


def _date_time(text: Column) -> Column:
    # The pattern fixes where year, month and day stand; read them only when it matches.
    matches = text.rlike(_RFC3339)
    year = F.when(matches, F.substring(text, 1, 4).cast("int"))
    month = F.when(matches, F.substring(text, 6, 2).cast("int"))
    day = F.when(matches, F.substring(text, 9, 2).cast("int"))
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    days = (
        F.when(month == 2, F.when(leap, 29).otherwise(28))
        .when(month.isin(4, 6, 9, 11), 30)
        .otherwise(31)
    )
    return F.coalesce(matches & (year > 0) & (day >= 1) & (day <= days), F.lit(False))


_FORMATS: dict[str, Callable[[Column], Column]] = {"uuid": _uuid, "date-time": _date_time}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Node:
    """One field of the message as columns of the staged frame: its JSON text (from the one
    ``from_json`` of every field as a string, strings marked), whether it is present (from its
    parent's keys) and, for a field the contracts declare an object, its own keys."""

    def __init__(self, path: str, parent: _Node | None, is_object: bool) -> None:
        self.path = path  # dotted, as rule names spell it
        self.parent = parent
        self.declared_object = is_object

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def keys_name(self) -> str:
        return _column_name("keys", self.path)

    @cached_property
    def keys(self) -> Column:
        """An object's keys (each once); NULL for anything else."""
        return F.col(self.keys_name)

    @cached_property
    def present(self) -> Column:
        assert self.parent is not None
        return self.parent.is_object & F.array_contains(self.parent.keys, self.name)

    @cached_property
    def text(self) -> Column:
        """The value as JSON text, a string as its content after ``_STRING_MARK`` (see
        ``_marked``); NULL when absent or JSON null. A number is written back by the JSON
        reader: an integer literal as its digits, any other as a double (``100.0``, ``1.0E40``,
        ``"Infinity"``)."""
        column = F.col(_FIELDS)
        for part in self.path.split("."):
            column = column.getField(part)
        return column

    @cached_property
    def is_null(self) -> Column:
        return self.present & self.text.isNull()

    @cached_property
    def is_string(self) -> Column:
        return _known(self.text.startswith(_STRING_MARK))

    @cached_property
    def string(self) -> Column:
        return F.substring(self.text, 2, 1 << 30)

    @cached_property
    def is_bool(self) -> Column:
        return _known(self.text.isin("true", "false"))

    @cached_property
    def is_object(self) -> Column:
        if self.declared_object:
            return self.keys.isNotNull()
        return _known(self.text.startswith("{"))

    @cached_property
    def is_array(self) -> Column:
        return _known(self.text.startswith("["))

    @cached_property
    def is_number(self) -> Column:
        return _known(self.text.rlike(r'^(-|[0-9]|"?-?Infinity)'))

    @cached_property
    def is_int_literal(self) -> Column:
        """An integer literal (a Python ``int``, of any size)."""
        return _known(self.text.rlike(_INT_LITERAL))

    @cached_property
    def exact(self) -> Column:
        """An integer literal's exact value (NULL past 38 digits)."""
        return F.when(self.is_int_literal, self.text.try_cast("decimal(38,0)"))

    @cached_property
    def double(self) -> Column:
        """The number as Python's ``float`` reads the literal (correctly rounded)."""
        return F.btrim(self.text, F.lit('"')).try_cast("double")

    @cached_property
    def is_integer(self) -> Column:
        """JSON Schema's integer: an int, or a float with no fraction (``1.0``, ``1e2``)."""
        return self.is_int_literal | (self.is_number & (self.double % 1.0 == 0))

    @cached_property
    def python_repr(self) -> Column:
        """Python's ``repr`` of the value, for details: exact for integers, booleans, null and
        strings without quotes or backslashes; the JSON text for the rest."""
        if self.declared_object:  # read as a struct: its text comes from the VARIANT
            variant = (
                F.variant_get(F.col(_MESSAGE), f"$.{self.path}", "variant")
                if self.path
                else F.col(_MESSAGE)
            )
            text = F.to_json(variant)
            return (
                F.when(F.is_variant_null(variant), "None")
                .when(text == "true", "True")
                .when(text == "false", "False")
                .otherwise(text)
            )
        return _text_repr(self.text)


class _Message(_Node):
    """The message itself: its keys are staged; its JSON type is worked out from the VARIANT
    when needed (for the detail of ``not_an_object``)."""

    def __init__(self) -> None:
        super().__init__("", None, True)

    @cached_property
    def present(self) -> Column:
        return F.col(_MESSAGE).isNotNull()

    @cached_property
    def python_type(self) -> Column:
        """The name of the Python type ``json`` reads the message as."""
        kind = F.schema_of_variant(F.col(_MESSAGE))
        return (
            F.when(kind == "STRING", "str")
            .when(kind == "BOOLEAN", "bool")
            .when(kind == "VOID", "NoneType")
            .when(kind.startswith("ARRAY"), "list")
            .when(kind == "BIGINT", "int")
            .when(kind.rlike(r"^DECIMAL\((19|[23][0-9]),0\)$"), "int")
            .otherwise("float")
        )


@dataclass
class _Entries:
    """The rules a row may break under one contract, in the reference's order."""

    segments: list[_Rule | _Unknown] = field(default_factory=list)

    def names_timestamp(self) -> Column:
        """Whether a rule broken so far has a name ending in ``:timestamp``."""
        named: Column = F.lit(False)
        for segment in self.segments:
            if isinstance(segment, _Unknown):
                named = named | segment.names_timestamp
            elif segment.ends_with == _TIMESTAMP:
                named = named | segment.broken
        return named


@dataclass(frozen=True)
class _Extras:
    """The keys of an object that its schema does not name (staged), and the rule names made
    of them and whether one ends in ``:timestamp`` (staged after, with lambdas)."""

    index: int
    keys: Column
    prefix: str

    @property
    def keys_name(self) -> str:
        return f"{_PREFIX}_extra_keys{self.index}"

    @property
    def names_name(self) -> str:
        return f"{_PREFIX}_extra_names{self.index}"

    @property
    def timestamp_name(self) -> str:
        return f"{_PREFIX}_extra_timestamp{self.index}"

    def names(self) -> Column:
        prefix = F.lit(self.prefix)
        keys = F.col(self.keys_name)
        named = F.transform(keys, lambda key: F.concat(prefix, key))
        return F.when(F.size(keys) > 0, named).otherwise(keys)

    def names_timestamp(self) -> Column:
        prefix = F.lit(self.prefix)
        keys = F.col(self.keys_name)
        named = F.exists(keys, lambda key: F.concat(prefix, key).endswith(f":{_TIMESTAMP}"))
        return _known(F.when(F.size(keys) > 0, named))


@dataclass
class _Slot:
    """A place in the merged order of all contracts' rules: a rule (a literal name) or the
    unknown keys of an object (``unknown``: their rule names), and the contracts it is in."""

    key: Any
    name: str
    detail: int
    broken: Column
    unknown: Column | None
    contracts: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, segment: _Rule | _Unknown) -> _Slot:
        if isinstance(segment, _Unknown):
            broken = F.coalesce(F.size(segment.names) > 0, F.lit(False))
            return cls(segment.key, "", segment.detail, broken, segment.names)
        return cls(segment.key, segment.name, segment.detail, segment.broken, None)


def _first_index(conditions: Sequence[Column]) -> Column:
    """The index of the first condition that holds (NULL when none does)."""
    index: Column = F.lit(None).cast("int")
    for i, when in reversed(list(enumerate(conditions))):
        index = F.when(when, F.lit(i)).otherwise(index)
    return index


def _bit_masks(prefix: str, conditions: Sequence[Column]) -> dict[str, Column]:
    """``conditions`` as the bits of longs named ``<prefix>0``, ``<prefix>1``, …: a mask, not
    an array, because Spark would inline an array's elements (the conditions) where read."""
    masks: dict[str, Column] = {}
    for start in range(0, len(conditions), _BITS):
        mask: Column = F.lit(0).cast("bigint")
        for bit, condition in enumerate(conditions[start : start + _BITS]):
            mask = mask.bitwiseOR(F.when(condition, F.lit(1 << bit)).otherwise(F.lit(0)))
        masks[f"{prefix}{start // _BITS}"] = mask
    return masks


def _bit(masks: Sequence[Column], index: Column) -> Column:
    """Whether bit ``index`` of the masks ``_bit_masks`` made is set."""
    found: Column = F.lit(False)
    for number, mask in enumerate(masks):
        local = index - number * _BITS
        inside = (local >= 0) & (local < _BITS)
        found = found | F.coalesce(F.when(inside, F.bit_get(mask, local) == 1), F.lit(False))
    return found


def _no_rules() -> Column:
    return F.array().cast(ArrayType(StringType()))


def _first(pair: tuple[int, Column]) -> int:
    return pair[0]


def _both(left: Column, right: Column) -> Column:
    return left & right
