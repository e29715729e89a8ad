"""``python -m pipelines.cli …``: the command line as a module (e.g. a collector a chaos part can
kill)."""

from pipelines.cli.main import main

main()
