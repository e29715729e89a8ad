"""The validation gate: a rule set compiled into Spark columns, evaluated once per row.

Contract rules are the event contract's own validator (``ContractRegistry.check_json``) run as a
vectorised Arrow UDF over the raw value, so the gate, the collector and the tests share one
definition of "valid". Business rules are Spark SQL predicates from the rule file. Every rule is
evaluated on every row and *all* failed rule names are recorded, not only the first.

``evaluate`` adds four columns:

* ``failed_rules`` (array<string>): rules with action drop/quarantine/fail that the row broke,
  contract rules first, then business rules in file order;
* ``warnings`` (array<string>): rules with action warn that the row broke;
* ``first_error`` (string): the detail of the first failed rule;
* ``disposition``: the strongest action among the failed rules — ``fail`` > ``quarantine`` >
  ``drop`` — or ``ok``.

``split`` then separates the rows that go on (``ok``, warnings included) from the quarantine.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import ArrowUDFType
from pyspark.sql.types import ArrayType, StringType, StructField, StructType

from pipelines.contracts.registry import SCHEMAS_DIR, ContractRegistry
from pipelines.quality.expectations import QualityConfigError, RuleSet

CONTRACT_RESULT = StructType(
    [
        StructField("rules", ArrayType(StringType(), False), False),
        StructField("detail", StringType()),
    ]
)
GATE_COLUMNS = ("failed_rules", "warnings", "first_error", "disposition")
_REGISTRIES: dict[str, ContractRegistry] = {}  # one per worker process, built on first use


def contract_check(schemas_dir: Path = SCHEMAS_DIR) -> Callable[[Column], Column]:
    """An Arrow UDF: raw message -> struct(rules, detail) of its contract violations."""
    root = str(schemas_dir)

    def check(values: pa.Array) -> pa.Array:
        registry = _REGISTRIES.get(root)
        if registry is None:
            registry = _REGISTRIES[root] = ContractRegistry(Path(root))
        # Most rows are valid: build the (mostly empty) lists from offsets, not Python lists.
        offsets = [0]
        names: list[str] = []
        details: list[str | None] = []
        check_json = registry.check_json
        for raw in values.to_pylist():
            found = check_json(raw)
            if found:
                names.extend(v.rule for v in found)
                details.append(f"{found[0].rule}: {found[0].detail}")
            else:
                details.append(None)
            offsets.append(len(names))
        rules = pa.ListArray.from_arrays(
            pa.array(offsets, pa.int32()), pa.array(names, pa.string())
        )
        return pa.StructArray.from_arrays(
            [rules, pa.array(details, pa.string())],
            fields=[
                pa.field("rules", pa.list_(pa.string()), False),
                pa.field("detail", pa.string()),
            ],
        )

    # PySpark's type stubs require the UDF type while its runtime prefers type hints and warns.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="It is preferred to specify type hints")
        return F.arrow_udf(check, CONTRACT_RESULT, ArrowUDFType.SCALAR)


@dataclass
class Gate:
    """A compiled rule set. ``evaluate`` needs the raw ``value`` column and the parsed columns
    the business predicates refer to."""

    rule_set: RuleSet
    schemas_dir: Path = SCHEMAS_DIR
    _predicates: list[tuple[str, Column]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        for rule in self.rule_set.rules:
            try:
                self._predicates.append((rule.name, F.expr(rule.predicate)))
            except ParseException as exc:
                raise QualityConfigError(
                    f"{self.rule_set.source}: rule {rule.name!r} has an invalid predicate "
                    f"{rule.predicate!r}: {str(exc).splitlines()[0]}"
                ) from None

    def evaluate(self, parsed: DataFrame) -> DataFrame:
        """Add failed_rules, warnings, first_error and disposition (see module docstring)."""
        contract = contract_check(self.schemas_dir)(F.col("value"))
        contract_action = self.rule_set.contract_action
        broken = {  # rule name -> "this row breaks it" (NULL predicate = pass)
            name: ~F.coalesce(predicate, F.lit(True)) for name, predicate in self._predicates
        }
        actions = {rule.name: rule.action for rule in self.rule_set.rules}
        describe = {rule.name: rule.description for rule in self.rule_set.rules}

        def names(wanted: set[str], with_contract: bool) -> Column:
            parts = [F.col("_contract.rules")] if with_contract else []
            business = [F.when(broken[n], F.lit(n)) for n in broken if actions[n] in wanted]
            if business:
                parts.append(F.filter(F.array(*business), lambda x: x.isNotNull()))
            if not parts:
                return F.array().cast(ArrayType(StringType(), False))
            return F.concat(*parts) if len(parts) > 1 else parts[0]

        blocking = {"drop", "quarantine", "fail"}
        per_action = {
            action: F.size(names({action}, contract_action == action)) > 0
            for action in ("fail", "quarantine", "drop")
        }
        first = [F.col("_contract.detail")] if contract_action in blocking else []
        first += [
            F.when(broken[n], F.lit(f"{n}: {describe[n]}"))
            for n in broken
            if actions[n] in blocking
        ]
        try:
            return (
                parsed.withColumn("_contract", contract)
                .withColumn("failed_rules", names(blocking, contract_action in blocking))
                .withColumn("warnings", names({"warn"}, contract_action == "warn"))
                .withColumn(
                    "first_error", F.coalesce(*first) if first else F.lit(None).cast("string")
                )
                .withColumn(
                    "disposition",
                    F.when(per_action["fail"], "fail")
                    .when(per_action["quarantine"], "quarantine")
                    .when(per_action["drop"], "drop")
                    .otherwise("ok"),
                )
                .drop("_contract")
            )
        except AnalysisException as exc:
            raise QualityConfigError(
                f"{self.rule_set.source}: a rule predicate does not fit the parsed event "
                f"({str(exc).splitlines()[0]}); columns: {', '.join(parsed.columns)}"
            ) from None

    @staticmethod
    def split(evaluated: DataFrame) -> tuple[DataFrame, DataFrame]:
        """``(valid, quarantine)`` of evaluated rows; ``drop`` rows are in neither (they are
        counted), and ``fail`` rows must have stopped the batch before this."""
        return (
            evaluated.filter(F.col("disposition") == "ok"),
            evaluated.filter(F.col("disposition") == "quarantine"),
        )
