from __future__ import annotations

import copy
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
)
from typer.testing import CliRunner

from pipelines.cli.main import app
from pipelines.contracts import (
    SCHEMAS_DIR,
    ContractError,
    ContractRegistry,
    check_compatibility,
)
from pipelines.contracts.registry import MAX_EVENT_TIME_MS, event_time_ms, load_json
from pipelines.contracts.spark_schema import event_spark_schema, spark_type, unified_event_schema
from pipelines.silver.events import event_time
from pipelines.synthetic.clickstream import ClickstreamGenerator

NOW_MS = 1_795_000_000_000


def event(event_type: str = "purchase", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "3f1c1a0e-8b7a-4a51-9a6b-0d2b3b7f0e11",
        "event_type": event_type,
        "user_id": "user-1",
        "session_id": "5b2a0c9e-2f44-4c41-8d0a-0f1f4e6c7a10",
        "timestamp": NOW_MS - 60_000,
        "schema_version": 1,
        "context": {
            "page": "/p/item-1",
            "referrer": None,
            "device": "mobile",
            "user_agent": "Mozilla/5.0",
            "locale": "en-US",
        },
    }
    per_type: dict[str, dict[str, Any]] = {
        "page_view": {
            "item_id": "item-1",
            "properties": {"page_type": "product", "category": "books"},
        },
        "click": {"item_id": "item-1", "properties": {"position": 2, "list_type": "search"}},
        "search": {"properties": {"query": "red shoes", "result_count": 12}},
        "add_to_cart": {
            "item_id": "item-1",
            "properties": {"quantity": 1, "price": 9.5, "currency": "EUR"},
        },
        "purchase": {
            "item_id": "item-1",
            "properties": {"order_id": "o-1", "revenue": 19.0, "currency": "EUR", "quantity": 2},
        },
    }
    base.update(per_type[event_type])
    base.update(changes)
    return base


@pytest.fixture(scope="module")
def registry() -> ContractRegistry:
    return ContractRegistry()


def rules(registry: ContractRegistry, ev: Any) -> set[str]:
    return {v.rule for v in registry.validate(ev, now_ms=NOW_MS)}


def test_registry_knows_the_five_event_types(registry: ContractRegistry) -> None:
    assert registry.event_types == ["add_to_cart", "click", "page_view", "purchase", "search"]
    assert all(registry.versions(t) == [1] for t in registry.event_types)


@pytest.mark.parametrize("event_type", ["page_view", "click", "search", "add_to_cart", "purchase"])
def test_valid_events_pass(registry: ContractRegistry, event_type: str) -> None:
    assert registry.validate(event(event_type), now_ms=NOW_MS) == []


def test_rfc3339_timestamp_is_accepted(registry: ContractRegistry) -> None:
    assert registry.validate(event(timestamp="2026-11-10T10:00:00.123Z"), now_ms=NOW_MS) == []


@pytest.mark.parametrize(
    "timestamp",
    [
        4_100_000_000_000.0,  # year 2099 written as a float: once accepted with a NULL event time
        1e30,
        float(NOW_MS),  # integral, still a float
        NOW_MS + 0.5,
        10**30,  # an integer no Spark timestamp holds
        -1,
        True,
        "not a date",
        "",
        None,
    ],
)
def test_hostile_timestamps_are_refused_by_both_paths(
    registry: ContractRegistry, timestamp: Any
) -> None:
    bad = event(timestamp=timestamp)
    found = rules(registry, bad)
    assert any(r.endswith(":timestamp") for r in found), found
    raw = json.dumps(bad)  # orjson refuses 10**30 itself
    assert {v.rule for v in registry.check_json(raw)} >= {r for r in found if r.endswith("stamp")}
    assert event_time_ms(timestamp) is None


def test_the_latest_representable_event_time_is_an_integer_in_range(
    registry: ContractRegistry,
) -> None:
    assert event_time_ms(MAX_EVENT_TIME_MS) == MAX_EVENT_TIME_MS
    latest = event(timestamp=MAX_EVENT_TIME_MS)
    assert {v.rule for v in registry.validate(latest, now_ms=NOW_MS)} == {"timestamp_in_future"}


def test_envelope_is_shared_not_retyped(registry: ContractRegistry) -> None:
    envelope = json.loads((SCHEMAS_DIR / "envelope" / "v1.json").read_text())
    for contract in registry.latest():
        for name in envelope["properties"]:
            assert name in contract.schema["properties"], (contract.event_type, name)
        assert set(envelope["required"]) <= set(contract.required)
        assert contract.schema["properties"]["event_type"]["const"] == contract.event_type


@pytest.mark.parametrize(
    ("ev", "expected"),
    [
        (event(user_id=5), {"type:user_id"}),
        ({k: v for k, v in event().items() if k != "user_id"}, {"required:user_id"}),
        ({k: v for k, v in event("click").items() if k != "item_id"}, {"required:item_id"}),
        (event(timestamp=True), {"type:timestamp"}),
        (event(timestamp="last tuesday"), {"format:timestamp"}),
        (event(event_id="not-a-uuid"), {"format:event_id"}),
        (event() | {"event_type": "wishlist_add"}, {"unknown_event_type"}),
        (event(schema_version=9), {"unknown_schema_version"}),
        (event(timestamp=NOW_MS + 86_400_000), {"timestamp_in_future"}),
        (
            event(properties={"order_id": "o", "revenue": "12", "currency": "EUR", "quantity": 1}),
            {"type:properties.revenue"},
        ),
        (event(context={"device": "phone"}), {"enum:context.device"}),
        (event(coupon="X"), {"unknown_field:coupon"}),
        ([1, 2], {"not_an_object"}),
    ],
)
def test_each_kind_of_bad_event_fails_with_a_specific_rule(
    registry: ContractRegistry, ev: Any, expected: set[str]
) -> None:
    assert rules(registry, ev) == expected


def test_all_failures_are_reported_not_just_the_first(registry: ContractRegistry) -> None:
    ev = {k: v for k, v in event().items() if k != "user_id"} | {"timestamp": "x", "event_id": "y"}
    assert rules(registry, ev) == {"required:user_id", "format:timestamp", "format:event_id"}


def test_malformed_json_is_a_parse_violation(registry: ContractRegistry) -> None:
    assert [v.rule for v in registry.validate_json('{"event_id": "x",')] == ["json_parse"]


def test_unknown_type_and_version_lookups_raise(registry: ContractRegistry) -> None:
    with pytest.raises(ContractError, match=r"unknown event type 'wishlist'.*known: add_to_cart"):
        registry.get("wishlist")
    with pytest.raises(ContractError, match=r"no schema version 3 \(known: 1\)"):
        registry.get("click", 3)


def test_purchase_spark_schema_is_derived_exactly(registry: ContractRegistry) -> None:
    context = StructType(
        [
            StructField(n, StringType())
            for n in ("page", "referrer", "device", "user_agent", "locale", "ip")
        ]
    )
    properties = StructType(
        [
            StructField("order_id", StringType()),
            StructField("revenue", DoubleType()),
            StructField("currency", StringType()),
            StructField("quantity", LongType()),
            StructField("category", StringType()),
        ]
    )
    expected = StructType(
        [
            StructField("event_id", StringType()),
            StructField("event_type", StringType()),
            StructField("user_id", StringType()),
            StructField("session_id", StringType()),
            StructField("timestamp", StringType()),
            StructField("received_at", StringType()),
            StructField("item_id", StringType()),
            StructField("context", context),
            StructField("schema_version", LongType()),
            StructField("properties", properties),
        ]
    )
    assert event_spark_schema(registry.get("purchase")) == expected


_JSON_TO_SPARK = {"string": StringType(), "integer": LongType(), "number": DoubleType()}


@pytest.mark.parametrize("event_type", ["page_view", "click", "search", "add_to_cart", "purchase"])
def test_every_json_field_has_its_spark_column(registry: ContractRegistry, event_type: str) -> None:
    contract = registry.get(event_type)
    schema = event_spark_schema(contract)
    for path in contract.field_paths():
        node: Any = schema
        json_node: Any = contract.schema
        for part in path.split("."):
            node = node[part].dataType
            json_node = json_node["properties"][part]
        declared = json_node.get("type")
        if isinstance(declared, list):
            declared = next(t for t in declared if t != "null")
        if declared in _JSON_TO_SPARK:
            assert node == _JSON_TO_SPARK[declared], path
        elif declared == "object":
            assert isinstance(node, StructType), path
        else:  # the timestamp's two forms (ms or RFC 3339) are kept raw as a string
            assert node == StringType(), path


def test_unified_schema_holds_every_type_s_properties(registry: ContractRegistry) -> None:
    unified = unified_event_schema(registry)
    props = unified["properties"].dataType
    assert isinstance(props, StructType)
    for contract in registry.latest():
        assert set(event_spark_schema(contract)["properties"].dataType.fieldNames()) <= set(
            props.fieldNames()
        )


def test_conflicting_types_cannot_be_unified() -> None:
    with pytest.raises(ContractError, match="mixed"):
        spark_type(
            {"type": "object", "properties": {"a": {"type": ["string", "integer"]}}}, "mixed"
        )


# -- compatibility ----------------------------------------------------------------------------
@pytest.fixture
def schemas(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, target)
    return target


def write_v2(schemas: Path, event_type: str, change: Any) -> Path:
    doc = json.loads((schemas / event_type / "v1.json").read_text())
    new = copy.deepcopy(doc)
    new["$id"] = f"{event_type}/v2.json"
    change(new)
    path = schemas / event_type / "v2.json"
    path.write_text(json.dumps(new))
    return path


def test_added_optional_field_is_compatible(schemas: Path) -> None:
    write_v2(
        schemas,
        "click",
        lambda s: s["properties"]["properties"]["properties"].update(
            {"experiment": {"type": "string"}}
        ),
    )
    registry = ContractRegistry(schemas)
    report = check_compatibility(registry.get("click", 1), registry.get("click", 2))
    assert report.ok
    assert report.compatible == ["added optional field properties.experiment"]


def test_removed_field_is_breaking(schemas: Path) -> None:
    write_v2(
        schemas, "click", lambda s: s["properties"]["properties"]["properties"].pop("position")
    )
    registry = ContractRegistry(schemas)
    report = check_compatibility(registry.get("click", 1), registry.get("click", 2))
    assert report.breaking == ["removed field properties.position"]


def test_retyped_and_newly_required_fields_are_breaking(schemas: Path) -> None:
    def change(s: dict[str, Any]) -> None:
        props = s["properties"]["properties"]
        props["properties"]["position"] = {"type": "string"}
        props["properties"]["rank"] = {"type": "integer"}
        props["required"] = ["rank"]

    write_v2(schemas, "click", change)
    registry = ContractRegistry(schemas)
    report = check_compatibility(registry.get("click", 1), registry.get("click", 2))
    assert set(report.breaking) == {
        "retyped field properties.position: integer -> string",
        "new required field properties.rank",
    }


def test_cli_contracts_check_exit_codes(schemas: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["contracts", "check", "--schemas-dir", str(schemas)])
    assert ok.exit_code == 0, ok.output
    write_v2(
        schemas,
        "search",
        lambda s: s["properties"]["properties"]["properties"].update({"page": {"type": "integer"}}),
    )
    good = runner.invoke(app, ["contracts", "check", "search", "--schemas-dir", str(schemas)])
    assert good.exit_code == 0, good.output
    assert "compatible" in good.output
    candidate = schemas / "search" / "v3.json"
    doc = json.loads((schemas / "search" / "v2.json").read_text())
    doc["properties"]["properties"]["properties"].pop("result_count")
    doc["properties"]["properties"]["required"] = ["query"]
    candidate.write_text(json.dumps(doc))
    bad = runner.invoke(
        app, ["contracts", "check", "--candidate", str(candidate), "--schemas-dir", str(schemas)]
    )
    assert bad.exit_code == 1, bad.output
    assert "removed field properties.result_count" in bad.output
    assert "v2 -> v3" in bad.output


def test_fast_path_agrees_with_the_full_validator(registry: ContractRegistry) -> None:

    generator = ClickstreamGenerator(
        users=100, items=50, seed=9, bad_fraction=0.5, end=datetime(2026, 11, 20, tzinfo=UTC)
    )
    raws = [e.value for e in generator.events(3_000)]
    edge_cases = [
        event(schema_version=True),  # a bool is not an integer
        event(timestamp=1.5),  # a float is not epoch ms
        event(timestamp="2026-11-10T10:00:00"),  # date-time without an offset
        event(event_id="3F1C1A0E-8B7A-4A51-9A6B-0D2B3B7F0E11"),  # upper-case UUID is valid
        event(context={"locale": "en-us"}),  # pattern
        event(properties={"order_id": "", "revenue": 1, "currency": "EUR", "quantity": 1}),
        event(user_id="x" * 129),  # maxLength
        # uuid.UUID reads these; the full validator's uuid format wants the dashes
        event(event_id="3f1c1a0e8b7a4a519a6b0d2b3b7f0e11"),
        event(event_id="{3f1c1a0e-8b7a-4a51-9a6b-0d2b3b7f0e11}"),
        event(event_id="urn:uuid:3f1c1a0e-8b7a-4a51-9a6b-0d2b3b7f0e11"),
    ]
    raws += [json.dumps(e).encode() for e in edge_cases] + [b"NaN", b"[]", b'{"a": NaN}', None]
    raws += [b"[" * 5_000]  # deeper than the parser goes: a parse error, not a RecursionError
    for raw in raws:
        fast = [v.rule for v in registry.check_json(raw)]
        try:
            full = (
                [v.rule for v in registry.violations(load_json(raw))] if raw is not None else None
            )
        except ValueError:
            full = ["json_parse"]
        assert fast == (full if full is not None else ["json_parse"]), raw


EVENT_TIME_CORPUS: list[Any] = [
    0,
    1,
    NOW_MS,
    MAX_EVENT_TIME_MS,
    MAX_EVENT_TIME_MS + 1,
    10**15 - 1,  # 15 digits
    10**15,
    -1,
    4_100_000_000_000.0,
    1e30,
    True,
    None,
    "",
    "1795890535599",  # digits as a string
    "2026-11-28T10:00:00Z",
    "2026-11-28T10:00:00.123Z",
    "2026-11-28T10:00:00.123456+02:00",
    "2026-11-28T10:00:00-05:30",
    "2026-11-28T10:00:00",  # no offset
    "2026-11-28 10:00:00Z",
    "2026-11-28",
    "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "9999-12-31T23:59:59.999Z",
    "0001-01-01T00:00:00Z",
    "+10000-01-01T00:00:00Z",
    "1e12",
    " 2026-11-28T10:00:00Z",
    "２０２６-11-28T10:00:00Z",  # full-width digits
    "2026-11-28T10:00:00Z\u0000",
    "tomorrow",
    "2026-11-28t10:00:00z",
    "2016-12-31T23:59:60Z",  # a leap second
    "2026-11-28T10:00:00+24:00",
]


def test_one_event_time_for_the_contract_and_silver(
    registry: ContractRegistry, spark: SparkSession
) -> None:
    """Every timestamp the contract accepts is the same instant in silver's ``event_ts``, and
    every one it refuses has no event time in Python: one definition, checked on both sides."""

    raws = [json.dumps(event(timestamp=value)) for value in EVENT_TIME_CORPUS]
    parsed = spark.createDataFrame([(raw,) for raw in raws], "value string").select(
        F.get_json_object("value", "$.timestamp").alias("raw")
    )
    silver_ms = [
        row.ms
        for row in parsed.select(F.unix_millis(event_time(F.col("raw"))).alias("ms")).collect()
    ]
    disagreements = []
    for value, raw, in_silver in zip(EVENT_TIME_CORPUS, raws, silver_ms, strict=True):
        timestamp_rules = {v.rule for v in registry.check_json(raw) if "timestamp" in v.rule}
        python_ms = event_time_ms(value)
        if not timestamp_rules and (python_ms is None or in_silver != python_ms):
            disagreements.append((value, "accepted", python_ms, in_silver))
        # Silver reads the timestamp as JSON text, so "123" and 123 look alike there; the
        # contract (which sees the JSON type) refuses the string before any row reaches silver.
        quoted_digits = isinstance(value, str) and value.isascii() and value.isdigit()
        if timestamp_rules and (
            python_ms is not None or (in_silver is not None and not quoted_digits)
        ):
            disagreements.append((value, sorted(timestamp_rules), python_ms, in_silver))
    assert disagreements == [], "\n".join(map(repr, disagreements))


@pytest.mark.parametrize("raw", ["NaN", '{"a": Infinity}', "[-Infinity]", "[" * 5_000])
def test_json_that_python_alone_reads_is_a_parse_violation(
    registry: ContractRegistry, raw: str
) -> None:
    """NaN and Infinity are not JSON (orjson, the collector and Spark refuse them), and nesting
    beyond the parser's depth is refused rather than crashing the check."""
    assert [v.rule for v in registry.check_json(raw)] == ["json_parse"]
    assert [v.rule for v in registry.validate_json(raw, now_ms=NOW_MS)] == ["json_parse"]
