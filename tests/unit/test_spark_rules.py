"""The contract compiled to Spark expressions agrees with the JSON Schema validator (the
reference) on every message of a generated corpus of good and hostile events."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from pipelines.contracts import SCHEMAS_DIR, ContractError, ContractRegistry
from pipelines.contracts.spark_rules import CONTRACT_RESULT, ContractRules
from tests.contract_corpus import corpus

CORPUS_SIZE = 6_000


@pytest.fixture(scope="module")
def registry() -> ContractRegistry:
    return ContractRegistry()


def compiled(spark: SparkSession, registry: ContractRegistry, raws: list[str | None]) -> list[Any]:
    """``struct(rules, detail)`` of each raw message, in order, from one Spark job."""
    frame = spark.createDataFrame(list(enumerate(raws)), "id int, value string")
    result = ContractRules(registry).add_violations(frame, into="c")
    assert result.columns == ["id", "value", "c"]
    assert result.schema["c"].dataType == CONTRACT_RESULT
    return [row.c for row in sorted(result.collect(), key=lambda row: row.id)]


def test_compiled_rules_agree_with_the_reference_on_a_hostile_corpus(
    spark: SparkSession, registry: ContractRegistry
) -> None:
    raws = corpus(registry, CORPUS_SIZE)
    expected = [[v.rule for v in registry.check_json(raw)] for raw in raws]
    got = compiled(spark, registry, raws)
    disagreements = []
    for raw, want, result in zip(raws, expected, got, strict=True):
        first = f"{want[0]}: " if want else None
        detail_ok = (
            result.detail is None
            if first is None
            else result.detail is not None and result.detail.startswith(first)
        )
        if result.rules != want or not detail_ok:
            shown = raw if raw is None or len(raw) < 400 else raw[:400] + "…"
            disagreements.append(f"{shown!r}\n  reference {want}\n  spark     {result}")
    assert not disagreements, (
        f"{len(disagreements)} of {len(raws)} messages disagree; the first:\n"
        + "\n".join(disagreements[:15])
    )
    # The corpus exercises every kind of rule, on its own and together with others.
    kinds = Counter(rule.split(":")[0] for rules in expected for rule in rules)
    assert set(kinds) >= {
        "json_parse",
        "not_an_object",
        "unknown_event_type",
        "unknown_schema_version",
        "required",
        "type",
        "format",
        "enum",
        "pattern",
        "length",
        "range",
        "unknown_field",
    }, kinds
    assert min(kinds.values()) >= 20, kinds
    valid = sum(not rules for rules in expected)
    several = sum(len(rules) > 1 for rules in expected)
    assert valid > CORPUS_SIZE // 10 and several > CORPUS_SIZE // 10, (valid, several)


def test_details_name_the_value_like_the_reference(
    spark: SparkSession, registry: ContractRegistry
) -> None:
    event = {
        "event_id": "not-a-uuid",
        "event_type": "purchase",
        "user_id": "",
        "timestamp": "2026-02-30T00:00:00Z",
        "schema_version": 1,
        "item_id": "item-1",
        "context": {"device": "phone", "locale": "en-us", "extra": 1},
        "properties": {"order_id": "o-1", "revenue": "12", "currency": "EUR", "quantity": 0},
        "coupon": "X",
    }
    raws: list[str | None] = [json.dumps(event), None, "[1]", '{"event_type": 5}']
    raws.append(json.dumps({**event, "event_type": "click", "schema_version": 7}))
    got = compiled(spark, registry, raws)
    assert (
        got[0].rules
        == [v.rule for v in registry.check_json(raws[0])]
        == [
            "format:event_id",
            "length:user_id",
            "format:timestamp",
            "enum:context.device",
            "pattern:context.locale",
            "unknown_field:context.extra",
            "type:properties.revenue",
            "range:properties.quantity",
            "unknown_field:coupon",
        ]
    )
    assert got[0].detail == "format:event_id: event_id: 'not-a-uuid' is not a 'uuid'"
    assert [(r.rules, r.detail) for r in got[1:]] == [
        (["json_parse"], "json_parse: the message has no value"),
        (["not_an_object"], "not_an_object: an event must be a JSON object, got list"),
        (
            ["unknown_event_type"],
            "unknown_event_type: event_type 5 is not one of "
            "add_to_cart, click, page_view, purchase, search",
        ),
        (
            ["unknown_schema_version"],
            "unknown_schema_version: click has no schema version 7 (known: 1)",
        ),
    ]


def test_a_contract_keyword_without_a_spark_rule_is_refused(
    spark: SparkSession, tmp_path: Path
) -> None:
    """A new keyword in a contract must fail the compilation, never be skipped silently."""
    schemas = tmp_path / "schemas"
    (schemas / "envelope").mkdir(parents=True)
    (schemas / "envelope" / "v1.json").write_text(
        (SCHEMAS_DIR / "envelope" / "v1.json").read_text()
    )
    click = json.loads((SCHEMAS_DIR / "click" / "v1.json").read_text())
    click["properties"]["properties"]["properties"]["tags"] = {"type": "array", "maxItems": 3}
    (schemas / "click").mkdir()
    (schemas / "click" / "v1.json").write_text(json.dumps(click))
    with pytest.raises(ContractError, match=r"keyword 'maxItems' at properties.tags"):
        ContractRules(ContractRegistry(schemas))
