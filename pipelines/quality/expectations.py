"""Expectations declared once, in ``conf/quality/<table>.yaml``, loaded into a validated RuleSet."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

import yaml

from pipelines.config import QualitySettings, sql_interval

Action = Literal["warn", "drop", "quarantine", "fail"]
ACTIONS: tuple[str, ...] = get_args(Action)
# Stronger first: a row's disposition is the strongest action among the rules it breaks.
SEVERITY: tuple[str, ...] = ("fail", "quarantine", "drop", "warn")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_RULE_KEYS = {"name", "predicate", "action", "description"}
_FILE_KEYS = {"table", "contract_action", "rules"}


class QualityConfigError(ValueError):
    """A rule file is wrong; the message names the file, the rule and the fix."""


@dataclass(frozen=True)
class Expectation:
    """One business rule: ``predicate`` (Spark SQL) must hold for a good row."""

    name: str
    predicate: str
    action: Action
    description: str


@dataclass(frozen=True)
class RuleSet:
    """Everything a gate checks for one table."""

    table: str
    contract_action: Action
    rules: tuple[Expectation, ...]
    source: Path

    def names(self) -> list[str]:
        return [rule.name for rule in self.rules]


def load_rule_set(table: str, rules_dir: Path, quality: QualitySettings) -> RuleSet:
    """Read the table's rule file: ``silver.events`` -> ``<rules_dir>/silver_events.yaml``."""
    path = rules_dir / f"{table.replace('.', '_')}.yaml"
    if not path.is_file():
        raise QualityConfigError(f"no rule file for {table}: expected {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise QualityConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise QualityConfigError(f"{path}: expected a mapping with table, contract_action, rules")
    unknown = set(data) - _FILE_KEYS
    if unknown:
        raise QualityConfigError(
            f"{path}: unknown keys {sorted(unknown)} (allowed: {sorted(_FILE_KEYS)})"
        )
    if data.get("table", table) != table:
        raise QualityConfigError(f"{path} declares table {data['table']!r}, expected {table!r}")
    contract_action = _action(data.get("contract_action", "quarantine"), path, "contract_action")
    placeholders = {
        "allowed_lateness": (sql_interval(quality.allowed_lateness), quality.allowed_lateness),
        "max_future_skew": (sql_interval(quality.max_future_skew), quality.max_future_skew),
    }
    rules = []
    seen: set[str] = set()
    for index, raw in enumerate(data.get("rules") or []):
        where = f"{path} rule #{index + 1}"
        if not isinstance(raw, dict):
            raise QualityConfigError(f"{where}: expected a mapping with {sorted(_RULE_KEYS)}")
        unknown = set(raw) - _RULE_KEYS
        missing = {"name", "predicate", "action"} - set(raw)
        if unknown or missing:
            raise QualityConfigError(
                f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
            )
        name = str(raw["name"])
        if not _NAME.match(name) or ":" in name:
            raise QualityConfigError(f"{where}: rule name {name!r} must be snake_case")
        if name in seen:
            raise QualityConfigError(f"{where}: rule name {name!r} is used twice")
        seen.add(name)
        predicate = _fill(
            str(raw["predicate"]), {k: sql for k, (sql, _) in placeholders.items()}, where
        )
        description = _fill(
            str(raw.get("description", "")),
            {k: text for k, (_, text) in placeholders.items()},
            where,
        )
        rules.append(Expectation(name, predicate, _action(raw["action"], path, name), description))
    return RuleSet(table=table, contract_action=contract_action, rules=tuple(rules), source=path)


def _action(value: object, path: Path, where: str) -> Action:
    if value not in ACTIONS:
        raise QualityConfigError(
            f"{path} {where}: action {value!r} is not one of {', '.join(ACTIONS)}"
        )
    return cast(Action, value)


def _fill(text: str, values: dict[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise QualityConfigError(
                f"{where}: unknown placeholder {{{key}}} (known: {sorted(values)})"
            )
        return values[key]

    return re.sub(r"\{([a-z_]+)\}", replace, text)
