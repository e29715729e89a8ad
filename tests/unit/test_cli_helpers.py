from __future__ import annotations

from importlib.metadata import version as pkg_version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli.common import normalise_interval
from pipelines.cli.main import app
from pipelines.config import ConfigError
from tests.conftest import conf_folder


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5s", "5 seconds"),
        ("500ms", "500 milliseconds"),
        ("1m", "1 minutes"),
        ("10 seconds", "10 seconds"),
    ],
)
def test_processing_time_intervals(text: str, expected: str) -> None:
    assert normalise_interval(text) == expected


def test_bad_interval_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a duration"):
        normalise_interval("soonish")


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for args in (
        ["--help"],
        ["kafka", "serve", "--help"],
        ["kafka", "topics", "--help"],
        ["generate", "--help"],
        ["run", "bronze", "--help"],
        ["tables", "--help"],
        ["history", "--help"],
        ["sql", "--help"],
        ["contracts", "check", "--help"],
        ["demo", "--help"],
        ["run", "silver", "--help"],
        ["run", "sessions", "--help"],
        ["quality", "check", "--help"],
        ["quality", "report", "--help"],
        ["bench", "silver", "--help"],
        ["run", "gold", "--help"],
        ["snapshot", "create", "--help"],
        ["snapshot", "list", "--help"],
        ["snapshot", "show", "--help"],
        ["snapshot", "delete", "--help"],
        ["maintain", "--help"],
        ["training-set", "build", "--help"],
        ["training-set", "list", "--help"],
        ["features", "docs", "--help"],
        ["train", "--help"],
        ["recommend", "--help"],
        ["drift", "check", "--help"],
        ["bench", "bronze", "--help"],
        ["bench", "collector", "--help"],
        ["collector", "serve", "--help"],
        ["doctor", "--help"],
        ["notebook", "run", "--help"],
        ["metrics", "serve", "--help"],
        ["status", "--help"],
        ["report", "--help"],
        ["alerts", "check", "--help"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output


def test_unknown_env_exits_2_with_the_fix() -> None:
    result = CliRunner().invoke(app, ["tables", "--env", "nope"])
    assert result.exit_code == 2
    assert "unknown environment 'nope'" in result.output


def test_collector_serve_without_write_keys_exits_2_naming_the_key(tmp_path: Path) -> None:
    env = conf_folder(
        tmp_path,
        f"storage: {{root: {tmp_path}}}\nkafka: {{bootstrap_servers: '127.0.0.1:1'}}\n",
        "bare",
    )
    result = CliRunner().invoke(app, ["collector", "serve", "--env", "bare"], env=env)
    assert result.exit_code == 2
    assert "collector.write_keys is empty" in result.output


def test_version_prints_the_installed_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == pkg_version("lakehouse-pipelines")
