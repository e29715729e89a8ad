"""The validation gate: a rule set compiled into Spark columns, evaluated once per row.

Contract rules are the event contract compiled to Spark SQL expressions
(``pipelines.contracts.spark_rules``): the same rule names, in the same order, as the contract's
own validator (``ContractRegistry.check_json``, which the collector uses), held to it by a parity
test, and evaluated in the JVM with no Python per row. Business rules are Spark SQL predicates
from the rule file. Every rule is evaluated on every row and *all* failed rule names are
recorded, not only the first.

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

from dataclasses import dataclass, field
from pathlib import Path

from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StringType

from pipelines.contracts.registry import SCHEMAS_DIR, ContractRegistry
from pipelines.contracts.spark_rules import JSON_READER_CONF, ContractRules
from pipelines.quality.expectations import QualityConfigError, RuleSet

GATE_COLUMNS = ("failed_rules", "warnings", "first_error", "disposition")


@dataclass
class Gate:
    """A compiled rule set. ``evaluate`` needs the raw ``value`` column and the parsed columns
    the business predicates refer to."""

    rule_set: RuleSet
    schemas_dir: Path = SCHEMAS_DIR
    _predicates: list[tuple[str, Column]] = field(default_factory=list, init=False)
    _contract: ContractRules = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._contract = ContractRules(ContractRegistry(self.schemas_dir))
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
        _require_json_reader_conf(parsed)
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
                self._contract.add_violations(parsed, value="value", into="_contract")
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


def _require_json_reader_conf(frame: DataFrame) -> None:
    """The compiled contract reads JSON as the reference does only with ``JSON_READER_CONF``
    (``pipelines.spark.build_spark`` sets it); without it a message with a repeated key would be
    refused as unreadable, so the gate refuses to run instead."""
    conf = frame.sparkSession.conf
    wrong = {k: v for k, v in JSON_READER_CONF.items() if str(conf.get(k, None)).lower() != v}
    if wrong:
        raise QualityConfigError(
            "the contract gate needs the Spark session confs "
            + ", ".join(f"{k}={v}" for k, v in wrong.items())
            + " (JSON objects with a repeated key keep the last value, as the contract's "
            "validator reads them); build the session with pipelines.spark.build_spark or set them"
        )
