"""The house rules of docs/ARCHITECTURE.md that code can break without a test noticing: which
package may import which."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pipelines"
# What sits above the lake: the layers, and everything built on them.
ABOVE_LAKE = (
    "bronze",
    "silver",
    "gold",
    "training",
    "quality",
    "monitoring",
    "serving",
    "collector",
    "tracking",
    "cli",
    "tables",
    "runtime",
    "jobs",
    "demo",
)


def imported_packages(folder: Path) -> dict[str, set[str]]:
    """For each module under ``folder``: the ``pipelines.<package>`` names it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            for module in modules:
                parts = module.split(".")
                if parts[0] == "pipelines" and len(parts) > 1:
                    names.add(parts[1])
        found[str(path.relative_to(folder.parent))] = names
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("lake", ABOVE_LAKE),
        # The streaming adapters are handed their monitor; they do not reach for monitoring.
        ("streaming", (*ABOVE_LAKE[:-4], "runtime", "jobs", "demo")),
        ("contracts", ABOVE_LAKE),
    ],
)
def test_a_package_imports_nothing_above_it(folder: str, forbidden: tuple[str, ...]) -> None:
    offenders = {
        module: sorted(names & set(forbidden))
        for module, names in imported_packages(PACKAGE / folder).items()
        if names & set(forbidden)
    }
    assert not offenders, f"imports pointing up: {offenders}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule above would pass on a checker that reads nothing; this one must see imports."""
    (tmp_path / "mod.py").write_text(
        "from pipelines.gold.tables import GOLD_USER_FEATURES\nimport pipelines.cli.run\n"
    )
    assert imported_packages(tmp_path) == {f"{tmp_path.name}/mod.py": {"gold", "cli"}}
