"""The chaos suite (``lakehouse chaos``, ``make chaos``): crash the jobs, fail a broker over,
restart the edge under load and feed the collector hostile input, then count what was lost or
duplicated. See docs/CHAOS.md."""

from pipelines.chaos.report import ChaosResult, render

__all__ = ["ChaosResult", "render"]
