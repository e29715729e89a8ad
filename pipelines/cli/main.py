"""``lakehouse``: the command line, assembled: every command module registered on the root app.

Every command takes ``--env`` (default ``$LAKEHOUSE_ENV`` or ``local``), loads the settings once
and passes them down. Known failures (bad config, unreachable broker, missing table, failed
query) print one readable line and exit non-zero; ``--json`` puts one JSON object on the last
line of stdout and sends progress to stderr.

Each module of this package presents one area (``kafka``, ``run``, ``tables``, …) and registers
its commands on the root ``app`` (``pipelines.cli.common``); the work itself lives in the
packages those commands call.
"""

from __future__ import annotations

from pipelines.cli import (
    bench,
    chaos,
    collector,
    contracts,
    demo,
    generate,
    kafka,
    monitoring,
    notebooks,
    quality,
    run,
    tables,
    training,
)
from pipelines.cli.common import app

COMMAND_MODULES = (
    bench,
    chaos,
    collector,
    contracts,
    demo,
    generate,
    kafka,
    monitoring,
    notebooks,
    quality,
    run,
    tables,
    training,
)


def main() -> None:
    app()


__all__ = ["COMMAND_MODULES", "app", "main"]
