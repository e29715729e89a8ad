"""The chaos suite: each part in turn, with the sizes of a full or a quick run.

A part that raises is reported as failed (``ChaosResult.error``) and the next part still runs:
one broken part must not hide what the others found.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.chaos.edge import run_broker_failover, run_collector_broker_restarts
from pipelines.chaos.hostile import run_hostile_inputs
from pipelines.chaos.jobs import run_job_crashes
from pipelines.chaos.report import SECONDS, ChaosResult
from pipelines.config import Settings, load_settings

Log = Callable[[str], None]

# --only names -> the part's name in the table.
PARTS = {
    "jobs": "job crashes",
    "failover": "broker failover",
    "restarts": "collector+broker restart",
    "hostile": "hostile inputs",
}


@dataclass(frozen=True)
class Sizes:
    """How much of everything one run does."""

    job_crashes: int
    job_events: int
    failover_rate: int  # events/s produced throughout the failover part
    failover_kills: int
    restart_events: int
    restarts: int
    restart_senders: int  # app threads, one SDK Tracker each
    restart_rate: int  # events/s tracked, all senders together
    hostile_requests: int
    bomb_mib: int  # what a compression bomb inflates to


FULL = Sizes(
    job_crashes=20,
    job_events=10_000,
    failover_rate=2_000,
    failover_kills=2,
    restart_events=60_000,
    restarts=6,
    restart_senders=4,
    restart_rate=2_000,
    hostile_requests=10_000,
    bomb_mib=256,
)
QUICK = Sizes(
    job_crashes=4,
    job_events=2_000,
    failover_rate=1_000,
    failover_kills=1,
    restart_events=4_000,
    restarts=2,
    restart_senders=2,
    restart_rate=1_000,
    hostile_requests=600,
    bomb_mib=32,
)


def run_chaos(
    workdir: Path,
    *,
    quick: bool,
    seed: int,
    parts: set[str] | None,
    log: Log,
    settings: Settings | None = None,
) -> list[ChaosResult]:
    """Run the chosen ``parts`` (``PARTS`` keys; None = all) under ``workdir``; every broker
    and process a part starts is stopped before it returns.

    Raises:
        ValueError: an unknown part name.
    """
    chosen = list(PARTS) if not parts else [p for p in PARTS if p in parts]
    unknown = sorted(set(parts or ()) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown chaos part(s) {unknown} (known: {', '.join(PARTS)})")
    settings = settings or load_settings()
    sizes = QUICK if quick else FULL
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in chosen:
        started = time.monotonic()
        log(f"== {PARTS[name]} ({'quick' if quick else 'full'} run, seed {seed})")
        try:
            result = _run_part(name, workdir, settings=settings, sizes=sizes, seed=seed, log=log)
        except Exception as exc:
            log(traceback.format_exc())
            result = ChaosResult(PARTS[name], 0, 0, 0, 0, {}, error=f"{type(exc).__name__}: {exc}")
        result.details.setdefault(SECONDS, time.monotonic() - started)
        results.append(result)
    return results


def _run_part(
    name: str, workdir: Path, *, settings: Settings, sizes: Sizes, seed: int, log: Log
) -> ChaosResult:
    if name == "jobs":
        return run_job_crashes(
            workdir / "job-crashes",
            crashes=sizes.job_crashes,
            events=sizes.job_events,
            seed=seed,
            log=log,
        )
    if name == "failover":
        return run_broker_failover(
            workdir,
            settings,
            rate=sizes.failover_rate,
            kills=sizes.failover_kills,
            seed=seed,
            log=log,
        )
    if name == "restarts":
        return run_collector_broker_restarts(
            workdir,
            settings,
            events=sizes.restart_events,
            restarts=sizes.restarts,
            senders=sizes.restart_senders,
            rate=sizes.restart_rate,
            seed=seed,
            log=log,
        )

    return run_hostile_inputs(
        workdir,
        settings,
        requests=sizes.hostile_requests,
        seed=seed,
        log=log,
        bomb_mib=sizes.bomb_mib,
    )
