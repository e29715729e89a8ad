"""Job crashes: kill -9 bronze, silver, sessions and gold at random points, restart them, and
prove that nothing was lost and nothing was written twice.

Every job runs as ``lakehouse run <job>`` in its own process group (its own JVM) over one storage
root under ``workdir``; a kill is ``SIGKILL`` to the whole group. Where each kill should land is
drawn from the seed (``kill_plan``); where it did land is read off the query's checkpoint and the
Delta logs of the tables it writes, and recorded:

* ``startup``: before the run wrote anything to its checkpoint (planned: 0.5-8 s after launch);
* ``mid_batch``: Spark planned batch N (``offsets/N``) and has not committed it (no
  ``commits/N``), before any of the batch's Delta commits;
* ``mid_commit``: inside batch N after some of its Delta commits landed (silver writes three
  tables and a suite result, gold two suite results and four tables): the partial-publish case;
* ``between_batches``: batch N committed and batch N+1 not planned yet (or nothing to read).

Schedule: synthetic events (bad ones and exact duplicates mixed in) are published in waves, a new
wave after each bronze kill, so crashes keep happening while data arrives. At most two JVMs run at
once (two cores): bronze and silver first, then sessions (over the still-growing silver), then
gold, each on a processing-time trigger, restarted after each kill. A job's last kill waits until
its upstream job finished; then the job drains in ``--available-now`` mode. Gold starts after
sessions finished, so its micro-batches (capped by ``gold.max_files_per_trigger`` over a silver
table that no longer changes) and its inputs are the same as those of a clean reference run:
sessions and gold recomputed without crashes in a second storage root from a copy of silver.

Checks, after every job drained:

* bronze: every produced message exactly once (values as a multiset; no repeated
  ``(topic, partition, offset)``);
* silver: no repeated ``event_id``, every valid produced event present and nothing else, no
  quarantined row twice, and ``lakehouse quality check``'s accounting (``input = silver +
  quarantine + dropped + duplicates`` per batch and against the tables);
* sessions: unique ``session_id`` and equal, row for row, to the reference;
* gold: unique keys in the current tables, no history row twice, and every current and history
  row equal to the reference's (ignoring ``published_at`` and ``load_id``).

``lost`` counts produced messages missing from bronze and valid event ids missing from silver;
``duplicated`` counts repeated bronze coordinates, silver ids and quarantined rows, plus every
sessions or gold row that is duplicated, missing, extra or different from the reference.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

import pipelines
from pipelines.bronze.tables import BRONZE_EVENTS_RAW
from pipelines.chaos.report import ChaosResult
from pipelines.config import EVENT_TYPES, Settings, find_conf_dir, load_settings
from pipelines.gold.tables import (
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_FEATURES_HISTORY,
    GOLD_USER_FEATURES,
    GOLD_USER_FEATURES_HISTORY,
)
from pipelines.lake.catalog import Catalog
from pipelines.quality.report import accounting_report
from pipelines.quality.tables import QUALITY_BATCH_RESULTS, QUALITY_SUITE_RESULTS
from pipelines.silver.tables import SILVER_EVENTS, SILVER_QUARANTINE, SILVER_SESSIONS
from pipelines.streaming.kafka import EventProducer, embedded_broker
from pipelines.synthetic.clickstream import GOOD, ClickstreamGenerator, GeneratedEvent
from pipelines.tables import LAKE_TABLES

PART = "jobs"
JOBS = ("bronze", "silver", "sessions", "gold")
KILL_KINDS = ("startup", "mid_batch", "mid_commit", "between_batches")
MAX_JVMS = 2  # two cores; each job's JVM needs ~400 MB and a core to make progress
ENV, REF_ENV = "chaos", "chaos-ref"
TRIGGER = "1s"  # processing-time trigger of the jobs between kills
POLL_S = 0.025
STARTUP_KILL_S = (0.5, 8.0)  # a startup kill lands this long after launch
MID_BATCH_DELAY_S = (0.0, 1.5)  # a mid-batch kill lands this long into the open batch
KILL_WAIT_S = 900.0  # longest wait for a kill point before killing wherever the job is
IDLE_S = 3.0  # caught up this long, with no more input to come: the kill point will not come
DRAIN_TIMEOUT_S = 1200.0  # longest --available-now run
OWN_EXITS_ALLOWED = 3  # a job that dies on its own this often is not restarted again
IGNORED_GOLD_COLUMNS = ("published_at", "load_id")  # when the row was written, and by which query


@dataclass(frozen=True)
class _JobSpec:
    checkpoint: str  # the query's checkpoint folder name
    outputs: tuple[str, ...]  # tables its micro-batches commit to
    commits_per_batch: int  # Delta commits of one micro-batch that writes everything
    upstream: str | None


_SPECS = {
    "bronze": _JobSpec(BRONZE_EVENTS_RAW.name, (BRONZE_EVENTS_RAW.name,), 1, None),
    "silver": _JobSpec(
        SILVER_EVENTS.name,
        (
            SILVER_QUARANTINE.name,
            SILVER_EVENTS.name,
            QUALITY_BATCH_RESULTS.name,
            QUALITY_SUITE_RESULTS.name,
        ),
        4,
        "bronze",
    ),
    "sessions": _JobSpec(SILVER_SESSIONS.name, (SILVER_SESSIONS.name,), 1, "silver"),
    "gold": _JobSpec(
        GOLD_USER_FEATURES.name,
        (
            QUALITY_SUITE_RESULTS.name,
            GOLD_USER_FEATURES.name,
            GOLD_USER_FEATURES_HISTORY.name,
            GOLD_ITEM_FEATURES.name,
            GOLD_ITEM_FEATURES_HISTORY.name,
        ),
        6,  # two suite results (users, items) before four publishing commits
        "sessions",
    ),
}


# -- the plan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class KillPlan:
    """One planned kill: which job, where, and the seeded parameters of that kill point."""

    job: str
    kind: str
    delay_s: float = 0.0  # startup: after launch; mid_batch: into the open batch
    commits: int = 0  # mid_commit: Delta commits of the open batch to wait for


def kill_plan(crashes: int, seed: int) -> dict[str, list[KillPlan]]:
    """``crashes`` kills over the four jobs and where each lands.

    Each job gets ``crashes // 4`` (the remainder goes to seeded jobs), except that once every
    job has two, silver takes one of bronze's and one of gold's: bronze, sessions and gold run
    one after the other and a gold restart costs a minute here, while silver runs beside them.
    Kinds: each job cycles through a seeded permutation of ``KILL_KINDS`` from its own offset,
    so in every round the jobs' kinds differ and every four kills a job has had each kind.
    """
    rng = random.Random(f"{seed}/jobs-plan")
    order = list(JOBS)
    rng.shuffle(order)
    counts = {job: crashes // len(JOBS) for job in JOBS}
    for job in order[: crashes % len(JOBS)]:
        counts[job] += 1
    if min(counts.values()) >= 2:
        counts["bronze"] -= 1
        counts["gold"] -= 1
        counts["silver"] += 2
    base = list(KILL_KINDS)
    rng.shuffle(base)
    offsets = dict(zip(order, range(len(base)), strict=True))
    kinds = {
        job: [base[(offsets[job] + k) % len(base)] for k in range(counts[job])] for job in JOBS
    }
    # A job's last kill waits until its upstream finished, and a startup kill needs a fresh
    # process: the job would sit idle until then. Move such a kill earlier in the job, or trade
    # it for one of bronze's (bronze waits for nobody).
    for job in JOBS:
        own = kinds[job]
        if _SPECS[job].upstream is None or not own or own[-1] != "startup":
            continue
        earlier = next((i for i, k in enumerate(own[:-1]) if k != "startup"), None)
        bronze = kinds["bronze"]
        traded = next((i for i, k in enumerate(bronze) if k != "startup"), None)
        if earlier is not None:
            own[earlier], own[-1] = own[-1], own[earlier]
        elif traded is not None:
            bronze[traded], own[-1] = own[-1], bronze[traded]
    plans: dict[str, list[KillPlan]] = {}
    for job in JOBS:
        plans[job] = []
        for kind in kinds[job]:
            delay = 0.0
            if kind == "startup":
                delay = rng.uniform(*STARTUP_KILL_S)
            elif kind == "mid_batch":
                delay = rng.uniform(*MID_BATCH_DELAY_S)
            commits = rng.randint(1, _SPECS[job].commits_per_batch) if kind == "mid_commit" else 0
            plans[job].append(KillPlan(job, kind, round(delay, 3), commits))
    return plans


# -- the checks (pure functions over Arrow tables) ----------------------------------------------
@dataclass
class Faults:
    """What one check found: rows missing, rows present more than once (or wrong), and notes."""

    lost: int = 0
    duplicated: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


def bronze_faults(produced: Counter[str], rows: pa.Table) -> Faults:
    """Bronze against what was produced: every message's value once (as a multiset), each
    ``(topic, partition, offset)`` once, and offsets per partition without gaps.

    Args:
        produced: message value -> times produced.
        rows: bronze rows with ``topic``, ``partition``, ``offset`` and ``value``.
    """
    coordinates = list(
        zip(
            rows.column("topic").to_pylist(),
            rows.column("partition").to_pylist(),
            rows.column("offset").to_pylist(),
            strict=True,
        )
    )
    distinct = set(coordinates)
    landed = Counter(rows.column("value").to_pylist())
    per_partition: dict[tuple[str, int], list[int]] = {}
    for topic, partition, offset in distinct:
        per_partition.setdefault((topic, partition), []).append(offset)
    gaps = sum(max(offsets) + 1 - len(offsets) for offsets in per_partition.values())
    return Faults(
        lost=sum((produced - landed).values()),
        duplicated=len(coordinates) - len(distinct),
        notes={
            "rows": rows.num_rows,
            "produced": sum(produced.values()),
            "offset_gaps": gaps,
            "unexpected_values": sum((landed - produced).values()),
        },
    )


def silver_faults(expected_ids: set[str], event_ids: pa.Array | pa.ChunkedArray) -> Faults:
    """silver.events against the valid produced events: each id once, none missing, no other."""
    ids = [i for i in event_ids.to_pylist() if i is not None]
    distinct = set(ids)
    return Faults(
        lost=len(expected_ids - distinct),
        duplicated=len(ids) - len(distinct),
        notes={
            "rows": len(event_ids),
            "expected": len(expected_ids),
            "unexpected_ids": len(distinct - expected_ids),
        },
    )


def repeated_rows(rows: pa.Table, key: Sequence[str]) -> int:
    """Rows beyond the first of each ``key`` value (0 when ``key`` is unique)."""
    if rows.num_rows == 0:
        return 0
    return rows.num_rows - rows.group_by(list(key)).aggregate([]).num_rows


@dataclass
class TableDiff:
    """A table against its reference: repeated keys, and rows missing, extra or different."""

    repeated: int = 0
    missing: int = 0
    extra: int = 0
    different: int = 0

    @property
    def total(self) -> int:
        return self.repeated + self.missing + self.extra + self.different


def table_diff(
    actual: pa.Table,
    expected: pa.Table,
    key: Sequence[str] | None,
    ignore: Sequence[str] = (),
) -> TableDiff:
    """Compare ``actual`` with ``expected`` on every column but ``ignore``.

    With ``key`` the rows are matched by key (a repeated key in ``actual`` counts as
    ``repeated``); without, the tables are compared as multisets of rows (``missing`` and
    ``extra`` only).
    """
    columns = [c for c in expected.column_names if c not in ignore]
    got, want = _row_tuples(actual, columns), _row_tuples(expected, columns)
    if key is None:
        have, need = Counter(got), Counter(want)
        return TableDiff(missing=sum((need - have).values()), extra=sum((have - need).values()))
    positions = [columns.index(k) for k in key]

    def keyed(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        return {tuple(row[p] for p in positions): row for row in rows}

    have_rows, need_rows = keyed(got), keyed(want)
    return TableDiff(
        repeated=len(got) - len(have_rows),
        missing=len(need_rows.keys() - have_rows.keys()),
        extra=len(have_rows.keys() - need_rows.keys()),
        different=sum(1 for k, row in have_rows.items() if k in need_rows and need_rows[k] != row),
    )


def _row_tuples(table: pa.Table, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    data = [table.column(c).to_pylist() for c in columns]
    return [tuple(_comparable(v) for v in row) for row in zip(*data, strict=True)]


def _comparable(value: Any) -> Any:
    """A hashable value; doubles to 12 significant digits, since Spark may sum a window's
    values in another order in another run."""
    if isinstance(value, float):
        return value if math.isnan(value) or math.isinf(value) else float(f"{value:.12g}")
    if isinstance(value, list):
        return tuple(_comparable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _comparable(v)) for k, v in value.items()))
    return value


# -- running the jobs -------------------------------------------------------------------------
class _AbortedError(RuntimeError):
    """Another driver thread failed; this one stops waiting."""


@dataclass
class _Run:
    job: str
    mode: str  # processing-time | available-now
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    offsets_at_start: set[int]
    commits_at_start: set[int]


@dataclass
class _JobTally:
    kills: int = 0
    starts: int = 0
    own_exits: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    drain_s: float = 0.0


class _Chaos:
    """The shared state of one run: settings, processes, kill records, the JVM slots."""

    def __init__(
        self,
        workdir: Path,
        *,
        settings: Settings,
        ref_settings: Settings,
        plans: dict[str, list[KillPlan]],
        waves: list[list[GeneratedEvent]],
        bootstrap: str,
        log: Callable[[str], None],
    ) -> None:
        self.workdir = workdir
        self.settings = settings
        self.ref_settings = ref_settings
        self.plans = plans
        self.waves = waves
        self.bootstrap = bootstrap
        self._log = log
        self.launcher = workdir / "lakehouse.py"
        self.logs = workdir / "logs"
        self.catalog = Catalog.for_settings(settings, LAKE_TABLES)
        self.slots = threading.BoundedSemaphore(MAX_JVMS)
        self.final = {job: threading.Event() for job in JOBS}
        self.abort = threading.Event()
        self.lock = threading.Lock()
        self.live: set[subprocess.Popen[bytes]] = set()
        self.kills: list[dict[str, Any]] = []
        self.tally = {job: _JobTally() for job in JOBS}
        self.reference_tally = {job: _JobTally() for job in JOBS}
        self.problems: list[str] = []
        self.errors: list[BaseException] = []
        self.produced: Counter[str] = Counter()
        self.expected_ids: set[str] = set()
        self.kinds_produced: Counter[str] = Counter()
        self.waves_published = 0
        self.gold_files_per_batch = 0
        self.started = time.monotonic()

    def log(self, message: str) -> None:
        with self.lock:
            self._log(f"[{time.monotonic() - self.started:6.1f}s] {message}")

    def problem(self, message: str) -> None:
        with self.lock:
            self.problems.append(message)
        self.log(f"PROBLEM: {message}")

    # -- threads -------------------------------------------------------------------------------
    def run(self) -> None:
        drivers = [
            threading.Thread(target=self._guarded, args=(self._drive, job), name=f"chaos-{job}")
            for job in JOBS
        ]
        drivers.append(
            threading.Thread(
                target=self._guarded, args=(self._reference, None), name="chaos-reference"
            )
        )
        for thread in drivers:
            thread.start()
        try:
            for thread in drivers:
                while thread.is_alive():
                    thread.join(0.5)
        finally:
            self.abort.set()  # on KeyboardInterrupt too: every thread stops waiting
            self.stop_all()
        if self.errors:
            raise self.errors[0]

    def _guarded(self, target: Callable[[str], None], job: str | None) -> None:
        try:
            target(job or "")
        except _AbortedError:
            pass
        except BaseException as exc:
            with self.lock:
                self.errors.append(exc)
            self.abort.set()

    def _wait(self, condition: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.abort.is_set():
                raise _AbortedError(what)
            if time.monotonic() > deadline:
                raise TimeoutError(f"chaos jobs: gave up waiting for {what} after {timeout_s:.0f}s")
            time.sleep(POLL_S * 4)

    def _drive(self, job: str) -> None:
        """One job's life: wait for its input, take a JVM slot, run and kill it as planned,
        then drain it once its upstream has finished."""
        spec = _SPECS[job]
        self._wait_for_input(job, spec)
        self._wait(lambda: self.slots.acquire(timeout=POLL_S), f"a JVM slot for {job}", 1e9)
        try:
            if job == "bronze":
                self._publish_wave()
            self._run_kill_plans(job, spec)
            if job == "bronze":
                while self.waves_published < len(self.waves):
                    self._publish_wave()
            elif spec.upstream is not None:
                self._wait_final(spec.upstream)
            self._drain(job)
            if job == "silver":
                self._size_gold_batches()
        finally:
            self.slots.release()
            self.final[job].set()

    def _wait_for_input(self, job: str, spec: _JobSpec) -> None:
        """Until ``job``'s input exists: gold waits for the whole of sessions' run; silver and
        sessions for their input table (created by the upstream job, not raced to by this one).
        """
        if spec.upstream == "sessions":
            self._wait(self.final["sessions"].is_set, "sessions to finish", 4 * DRAIN_TIMEOUT_S)
        elif spec.upstream is not None:
            source = self.catalog.location(
                BRONZE_EVENTS_RAW.name if job == "silver" else SILVER_EVENTS.name
            )
            first_commit = Path(source) / "_delta_log" / f"{0:020d}.json"
            self._wait(first_commit.is_file, f"{job}'s input", DRAIN_TIMEOUT_S)

    def _wait_final(self, upstream: str) -> None:
        self._wait(self.final[upstream].is_set, f"{upstream} to finish", 4 * DRAIN_TIMEOUT_S)

    def _run_kill_plans(self, job: str, spec: _JobSpec) -> None:
        """Start ``job`` and kill it once per plan, restarting it between kills. A job with an
        upstream takes its last kill only once the upstream has finished; a restart is left
        to the kill that needs it when that is the last one at startup (or there is none)."""
        kills = self.plans[job]
        upstream = spec.upstream
        run: _Run | None = None
        for i, plan in enumerate(kills):
            if i == len(kills) - 1 and upstream is not None:
                if run is None and plan.kind != "startup":
                    run = self._start(job, available_now=False)
                self._wait_final(upstream)
            if run is None:
                run = self._start(job, available_now=False)
            self._kill_when(run, plan, i + 1, len(kills))
            run = None
            if job == "bronze":
                self._publish_wave()
            after = kills[i + 1] if i + 1 < len(kills) else None
            lazy = after is None or (
                after.kind == "startup" and upstream is not None and after is kills[-1]
            )
            if not lazy:
                run = self._start(job, available_now=False)

    def _reference(self, _: str) -> None:
        """Sessions and gold without crashes, in a second storage root, from a copy of the
        final silver.events: what the crashed jobs must have produced."""
        self._wait(self.final["silver"].is_set, "silver to finish", 4 * DRAIN_TIMEOUT_S)
        ref = Catalog.for_settings(self.ref_settings, LAKE_TABLES)
        target = Path(ref.location(SILVER_EVENTS.name))
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.catalog.location(SILVER_EVENTS.name), target)
        self._wait(lambda: self.slots.acquire(timeout=POLL_S), "a JVM slot for the reference", 1e9)
        try:
            for job in ("sessions", "gold"):
                self._drain(job, REF_ENV)
        finally:
            self.slots.release()

    # -- processes -----------------------------------------------------------------------------
    def _start(self, job: str, *, available_now: bool, env_name: str = ENV) -> _Run:
        if self.abort.is_set():
            raise _AbortedError(job)
        tally = (self.tally if env_name == ENV else self.reference_tally)[job]
        tally.starts += 1
        mode = "available-now" if available_now else "processing-time"
        trigger = ["--available-now"] if available_now else ["--processing-time", TRIGGER]
        self.logs.mkdir(parents=True, exist_ok=True)
        prefix = "ref-" if env_name == REF_ENV else ""
        log_path = self.logs / f"{prefix}{job}-{tally.starts:02d}-{mode}.log"
        settings = self.settings if env_name == ENV else self.ref_settings
        checkpoint = Path(
            Catalog.for_settings(settings, LAKE_TABLES).checkpoint(_SPECS[job].checkpoint)
        )
        offsets, commits = _batch_ids(checkpoint)
        env = {
            **os.environ,
            "LAKEHOUSE_CONF_DIR": str(self.workdir / "conf"),
            "LAKEHOUSE_ENV": env_name,
            "PYTHONPATH": os.pathsep.join(
                [str(Path(pipelines.__file__).resolve().parent.parent)]
                + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            ),
        }
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(self.launcher), "run", job, *trigger, "--json"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: the JVM dies with it
                env=env,
                cwd=self.workdir,
            )
        with self.lock:
            self.live.add(proc)
            aborted = self.abort.is_set()  # stop_all may have run while this one started
        if aborted:
            self.stop_all()
            raise _AbortedError(job)
        what = "start" if tally.starts == 1 else "restart"
        self.log(f"{prefix}{job}: {what} ({mode}), run {tally.starts}")
        return _Run(job, mode, proc, log_path, time.monotonic(), offsets, commits)

    def _drain(self, job: str, env_name: str = ENV) -> None:
        """Run ``job`` with ``--available-now`` to completion (its restart after the last kill)."""
        for attempt in (1, 2):
            run = self._start(job, available_now=True, env_name=env_name)
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while run.proc.poll() is None and time.monotonic() < deadline:
                if self.abort.is_set():
                    raise _AbortedError(job)
                time.sleep(POLL_S * 8)
            seconds = time.monotonic() - run.started
            if run.proc.poll() is None:
                self._kill(run)
                raise TimeoutError(
                    f"{job} --available-now did not finish in {DRAIN_TIMEOUT_S:.0f}s; see {run.log}"
                )
            self._forget(run)
            reference = env_name == REF_ENV
            name = f"reference {job}" if reference else job
            if run.proc.returncode == 0:
                if not reference:
                    self.tally[job].drain_s = round(seconds, 1)
                self.log(f"{name}: drained (available-now) in {seconds:.1f}s")
                return
            self.problem(
                f"{name} --available-now exited with {run.proc.returncode} (attempt {attempt}); "
                f"log {run.log}: {_tail(run.log)}"
            )

    def _kill_when(self, run: _Run, plan: KillPlan, number: int, of: int) -> None:
        """Wait for ``plan``'s kill point in ``run`` (or kill wherever it is after a while),
        SIGKILL the process group and record where the kill landed."""
        spec = _SPECS[run.job]
        checkpoint = Path(self.catalog.checkpoint(spec.checkpoint))
        outputs = [Path(self.catalog.location(t)) for t in spec.outputs]
        opened: dict[int, tuple[float, int]] = {}  # open batch -> (first seen, output commits)
        reason = self._await_kill_point(run, plan, checkpoint, outputs, opened)
        if reason is None:
            return  # it exited on its own
        output_commits = _commit_count(outputs)
        self._kill(run)
        offsets, commits = _batch_ids(checkpoint)
        landed = _landed(
            run,
            offsets=offsets,
            commits=commits,
            opened=opened,
            output_commits=output_commits,
        )
        self._record_kill(
            run,
            plan,
            reason,
            landed=landed,
            offsets=offsets,
            commits=commits,
            number=number,
            of=of,
        )

    def _await_kill_point(
        self,
        run: _Run,
        plan: KillPlan,
        checkpoint: Path,
        outputs: list[Path],
        opened: dict[int, tuple[float, int]],
    ) -> str | None:
        """Poll ``run`` until ``plan``'s kill point ("planned"), until it is idle with nothing
        left to read ("idle"), or for ``KILL_WAIT_S`` ("deadline"); None when it exited on its
        own first. Batches it opens are noted in ``opened``."""
        deadline = time.monotonic() + KILL_WAIT_S
        last_state: tuple[int, int] = (-1, -1)
        last_change = time.monotonic()
        while time.monotonic() < deadline:
            if self.abort.is_set():
                raise _AbortedError(run.job)
            if run.proc.poll() is not None:
                self._exited_on_its_own(run)
                return None
            now = time.monotonic()
            if plan.kind == "startup":
                if now - run.started >= plan.delay_s:
                    return "planned"
                time.sleep(POLL_S)
                continue
            offsets, commits = _batch_ids(checkpoint)
            state = (max(offsets, default=-1), max(commits, default=-1))
            if state != last_state:
                last_state, last_change = state, now
            open_batch = state[0] if state[0] > state[1] else None
            if _at_batch_kill_point(
                run, plan, open_batch, commits=commits, opened=opened, outputs=outputs, now=now
            ):
                return "planned"
            if (
                open_batch is None
                and now - last_change > IDLE_S
                and self._starved(run.job, checkpoint, commits)
            ):
                return "idle"
            time.sleep(POLL_S)
        return "deadline"

    def _record_kill(
        self,
        run: _Run,
        plan: KillPlan,
        reason: str,
        *,
        landed: str,
        offsets: set[int],
        commits: set[int],
        number: int,
        of: int,
    ) -> None:
        """Count kill ``number`` of ``of`` in the job's tally, keep its record and log it;
        ``offsets`` and ``commits`` are the checkpoint's batch ids after the kill."""
        batch = max(offsets, default=None)
        tally = self.tally[run.job]
        tally.kills += 1
        tally.kinds[landed] += 1
        record = {
            "job": run.job,
            "planned": plan.kind,
            "landed": landed,
            "trigger": reason,
            "mode": run.mode,
            "batch": batch,
            "batch_open": batch is not None and batch not in commits,
            "after_s": round(time.monotonic() - run.started, 1),
            "at_s": round(time.monotonic() - self.started, 1),
        }
        with self.lock:
            self.kills.append(record)
            total = len(self.kills)
        self.log(
            f"kill #{total} {run.job} ({number}/{of}): {landed.replace('_', ' ')} "
            f"(planned {plan.kind.replace('_', ' ')}, {reason}), batch {batch}, "
            f"{record['after_s']}s after start"
        )

    def _starved(self, job: str, checkpoint: Path, commits: set[int]) -> bool:
        """Whether ``job`` has read everything there is and nothing more will come before its
        kill: its last committed batch ends at the end of its source, and the source is final
        (bronze: the next wave is only published after the kill)."""
        upstream = _SPECS[job].upstream
        if upstream is not None and not self.final[upstream].is_set():
            return False
        last = max(commits, default=None)
        if last is None:
            return False
        end = _source_offset(checkpoint / "offsets" / str(last))
        if job == "bronze":
            return sum(int(o) for parts in end.values() for o in parts.values()) >= sum(
                self.produced.values()
            )
        source = BRONZE_EVENTS_RAW.name if job == "silver" else SILVER_EVENTS.name
        latest = _latest_version(Path(self.catalog.location(source)))
        # Delta's source offset after a whole version v is (v + 1, index -1).
        position = (int(end.get("reservoirVersion", -1)), int(end.get("index", -1)))
        return latest >= 0 and position >= (latest + 1, -1)

    def _exited_on_its_own(self, run: _Run) -> None:
        self._forget(run)
        tally = self.tally[run.job]
        tally.own_exits += 1
        self.problem(
            f"{run.job} ({run.mode}) exited on its own with {run.proc.returncode} before its "
            f"planned kill; log {run.log}: {_tail(run.log)}"
        )
        if tally.own_exits >= OWN_EXITS_ALLOWED:
            raise RuntimeError(
                f"{run.job} exited on its own {tally.own_exits} times; it cannot restart "
                f"(last log {run.log})"
            )

    def _kill(self, run: _Run) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait(60)
        self._forget(run)

    def _forget(self, run: _Run) -> None:
        with self.lock:
            self.live.discard(run.proc)

    def stop_all(self) -> None:
        """SIGKILL every process group still running (on failure or interruption)."""
        with self.lock:
            procs = list(self.live)
            self.live.clear()
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)

    def _size_gold_batches(self) -> None:
        """Cap gold's micro-batches so the final silver table makes ``kills + 1`` of them, for the
        crashed gold and the reference alike: each kill but a startup one needs a new batch of
        its run to land in (the restart first replays the killed one), the drain one more, and a
        gold batch costs tens of seconds here."""
        files = len(self.catalog.delta_table(SILVER_EVENTS.name).file_uris())
        batches = len(self.plans["gold"]) + 1
        self.gold_files_per_batch = max(1, math.ceil(files / batches))
        for env_name in (ENV, REF_ENV):
            path = self.workdir / "conf" / f"{env_name}.yaml"
            overlay = yaml.safe_load(path.read_text())
            overlay["gold"]["max_files_per_trigger"] = self.gold_files_per_batch
            staged = path.with_suffix(".tmp")
            staged.write_text(yaml.safe_dump(overlay, sort_keys=False))
            staged.replace(path)  # a job starting now reads the old file or the new one
        self.log(
            f"gold: {self.gold_files_per_batch} silver files per micro-batch "
            f"({files} files, about {batches} batches)"
        )

    # -- data ------------------------------------------------------------------------------------
    def _publish_wave(self) -> None:
        if self.waves_published >= len(self.waves):
            return
        wave = self.waves[self.waves_published]
        producer = EventProducer(self.settings.kafka, self.bootstrap)
        topics = self.settings.kafka.topics
        for event in wave:
            producer.produce(topics.for_event_type(event.event_type), event.value, key=event.key)
        report = producer.flush(120)
        if report.total_failed or report.total_delivered != len(wave):
            raise RuntimeError(
                f"wave {self.waves_published + 1}: {report.total_delivered} of {len(wave)} "
                f"events delivered: {report.errors[:3]}"
            )
        for event in wave:
            value = event.value.decode()
            self.produced[value] += 1
            self.kinds_produced[event.kind] += 1
            if event.kind == GOOD:
                self.expected_ids.add(json.loads(value)["event_id"])
        self.waves_published += 1
        self.log(
            f"published wave {self.waves_published}/{len(self.waves)}: {len(wave):,} events "
            f"({sum(self.produced.values()):,} so far)"
        )


def _batch_ids(checkpoint: Path) -> tuple[set[int], set[int]]:
    """Batch ids in the checkpoint's offsets and commits logs."""
    return _numbered(checkpoint / "offsets"), _numbered(checkpoint / "commits")


def _numbered(folder: Path) -> set[int]:
    try:
        return {int(name) for name in os.listdir(folder) if name.isdigit()}
    except FileNotFoundError:
        return set()


def _source_offset(offsets_file: Path) -> dict[str, Any]:
    """The source's end offset in a checkpoint offsets file (its last line, JSON): Kafka's
    ``{topic: {partition: offset}}`` or Delta's ``{"reservoirVersion": …, "index": …}``."""
    try:
        lines = offsets_file.read_text().strip().splitlines()
        offset = json.loads(lines[-1])
    except (OSError, IndexError, ValueError):
        return {}
    return offset if isinstance(offset, dict) else {}


def _latest_version(table: Path) -> int:
    """A Delta table's latest version, from its log's file names (-1 before it exists)."""
    try:
        names = os.listdir(table / "_delta_log")
    except FileNotFoundError:
        return -1
    return max((int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()), default=-1)


def _commit_count(tables: Sequence[Path]) -> int:
    """Delta commits in the logs of ``tables`` (a cheap listing, no parsing)."""
    total = 0
    for table in tables:
        try:
            names = os.listdir(table / "_delta_log")
        except FileNotFoundError:
            continue
        total += sum(1 for n in names if n.endswith(".json") and n[:-5].isdigit())
    return total


def _at_batch_kill_point(
    run: _Run,
    plan: KillPlan,
    open_batch: int | None,
    *,
    commits: set[int],
    opened: dict[int, tuple[float, int]],
    outputs: list[Path],
    now: float,
) -> bool:
    """Whether a batch plan's kill point has come: ``between_batches`` once the run committed a
    batch and has none open; ``mid_batch`` ``delay_s`` into a batch the run opened;
    ``mid_commit`` once that batch landed ``commits`` Delta commits. A batch the run opens is
    noted in ``opened`` with when it was first seen and the output commits then."""
    ours = open_batch is not None and open_batch not in run.offsets_at_start
    if ours and open_batch is not None and open_batch not in opened:
        opened[open_batch] = (now, _commit_count(outputs))
    if plan.kind == "between_batches":
        return open_batch is None and bool(commits - run.commits_at_start)
    if not ours or open_batch is None:
        return False
    seen, base = opened[open_batch]
    # Missed the point in an earlier batch (it closed first): kill in this one.
    retry = len(opened) > 1
    if plan.kind == "mid_batch":
        return retry or now - seen >= plan.delay_s
    if plan.kind == "mid_commit":
        return _commit_count(outputs) - base >= (1 if len(opened) > 2 else plan.commits)
    return False


def _landed(
    run: _Run,
    *,
    offsets: set[int],
    commits: set[int],
    opened: dict[int, tuple[float, int]],
    output_commits: int,
) -> str:
    """Where a kill landed, read from the checkpoint and the output logs after the kill: before
    the run wrote anything to its checkpoint is ``startup``; in an open batch (planned, not
    committed) ``mid_commit`` when some of its Delta commits had landed, else ``mid_batch``;
    anything else (including a query idle for want of data) ``between_batches``."""
    if offsets <= run.offsets_at_start and commits <= run.commits_at_start:
        return "startup"
    newest = max(offsets, default=-1)
    if newest > max(commits, default=-1):
        base = opened.get(newest)
        return "mid_commit" if base is not None and output_commits > base[1] else "mid_batch"
    return "between_batches"


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:])


# -- setup ------------------------------------------------------------------------------------
def _conf(
    workdir: Path,
    bootstrap: str,
    topics: dict[str, str],
    events: int,
    waves: int,
) -> tuple[Settings, Settings]:
    """A config folder in ``workdir``: the project's conf plus ``chaos.yaml`` (the lake under
    ``workdir/lake``) and ``chaos-ref.yaml`` (the reference under ``workdir/reference``)."""
    conf = workdir / "conf"
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree(find_conf_dir(None, os.environ), conf)
    batch = max(250, events // (4 * waves))  # ~4 bronze batches per wave
    overlay: dict[str, Any] = {
        "storage": {"root": str(workdir / "lake"), "checkpoint_root": None},
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topics": topics,
            "consumer": {
                "max_offsets_per_trigger": batch,
                "max_records_per_partition": batch,
                "poll_timeout_s": 15,
                "metadata_timeout_s": 5,
            },
        },
        "streaming": {"trigger": {"mode": "processing-time", "interval": "1 second"}},
        "quality": {"great_expectations": {"data_docs": False}},
        # Silver and sessions: a micro-batch reads about 4 bronze (2 silver) commits; gold's cap
        # is set once silver has finished (``_size_gold_batches``).
        "silver": {"max_files_per_trigger": 8},
        "gold": {"max_files_per_trigger": 1000},
        "spark": {"driver_memory": "1g", "shuffle_partitions": 2},
    }
    reference = json.loads(json.dumps(overlay))
    reference["storage"]["root"] = str(workdir / "reference")
    (conf / f"{ENV}.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    (conf / f"{REF_ENV}.yaml").write_text(yaml.safe_dump(reference, sort_keys=False))
    return load_settings(ENV, conf_dir=conf), load_settings(REF_ENV, conf_dir=conf)


def _waves(events: int, seed: int, count: int) -> list[list[GeneratedEvent]]:
    """``events`` synthetic events (2 % bad, exact duplicates among them) in ``count`` waves."""
    generator = ClickstreamGenerator(
        users=max(50, events // 25), items=max(40, events // 100), seed=seed, bad_fraction=0.02
    )
    stream: Iterator[GeneratedEvent] = generator.events(events)
    sizes = [events // count + (1 if i < events % count else 0) for i in range(count)]
    return [[next(stream) for _ in range(size)] for size in sizes if size]


# -- the checks against the tables -----------------------------------------------------------
def _check(chaos: _Chaos, log: Callable[[str], None]) -> tuple[int, int, dict[str, Any]]:
    catalog = chaos.catalog
    ref = Catalog.for_settings(chaos.ref_settings, LAKE_TABLES)
    checks: dict[str, Any] = {}

    bronze = bronze_faults(
        chaos.produced,
        catalog.read_arrow(
            BRONZE_EVENTS_RAW.name, columns=["topic", "partition", "offset", "value"]
        ),
    )
    checks["bronze"] = asdict(bronze)
    log(
        f"check bronze: {bronze.notes['rows']:,} rows for {bronze.notes['produced']:,} "
        f"produced, {bronze.lost} lost, {bronze.duplicated} duplicated"
    )
    silver = silver_faults(
        chaos.expected_ids, catalog.read_arrow(SILVER_EVENTS.name, columns=["event_id"]).column(0)
    )
    quarantine = catalog.read_arrow(
        SILVER_QUARANTINE.name, columns=["source_topic", "source_partition", "source_offset"]
    )
    silver.duplicated += repeated_rows(quarantine, quarantine.column_names)
    silver.notes["quarantined"] = quarantine.num_rows
    report = accounting_report(
        catalog, require_suites=chaos.settings.quality.great_expectations.enabled
    )
    silver.notes["accounting"] = {
        "ok": report.ok,
        "batches": report.batches,
        "totals": report.totals,
        "table_rows": report.table_rows,
        "broken_batches": report.broken_batches,
        "mismatches": report.mismatches,
        "suite_problems": report.suite_problems,
    }
    for message in [*report.mismatches, *report.suite_problems]:
        chaos.problem(f"silver accounting: {message}")
    if report.broken_batches:
        chaos.problem(f"silver accounting: broken batches {report.broken_batches}")
    checks["silver"] = asdict(silver)
    log(
        f"check silver: {silver.notes['rows']:,} rows for {silver.notes['expected']:,} valid "
        f"events, {silver.lost} lost, {silver.duplicated} duplicated, "
        f"{quarantine.num_rows:,} quarantined, accounting {'holds' if report.ok else 'BROKEN'}"
    )
    lost = bronze.lost + silver.lost
    duplicated = bronze.duplicated + silver.duplicated
    derived = (
        ("sessions", SILVER_SESSIONS.name, "session_id", False),
        ("gold.user_features", GOLD_USER_FEATURES.name, "user_id", False),
        ("gold.item_features", GOLD_ITEM_FEATURES.name, "item_id", False),
        ("gold.user_features_history", GOLD_USER_FEATURES_HISTORY.name, "user_id", True),
        ("gold.item_features_history", GOLD_ITEM_FEATURES_HISTORY.name, "item_id", True),
    )
    for label, name, key, history in derived:
        actual, expected = _table(catalog, name), _table(ref, name)
        ignore = IGNORED_GOLD_COLUMNS if name.startswith("gold.") else ()
        if history:  # many rows per key: compared as multisets; a batch writes a row once
            diff = table_diff(actual, expected, None, ignore)
            diff.repeated = repeated_rows(actual, [key, "feature_ts", "load_id"])
        else:
            diff = table_diff(actual, expected, [key], ignore)
        checks[label] = {
            "rows": actual.num_rows,
            "reference_rows": expected.num_rows,
            **asdict(diff),
        }
        duplicated += diff.total
        log(
            f"check {label}: {actual.num_rows:,} rows vs {expected.num_rows:,} in the reference, "
            f"{diff.repeated} repeated, {diff.missing} missing, {diff.extra} extra, "
            f"{diff.different} different"
        )
    return lost, duplicated, checks


def _table(catalog: Catalog, name: str) -> pa.Table:
    """A table as Arrow; empty (with its schema) when its job never created it."""
    if not catalog.exists(name):
        return LAKE_TABLES.spec(name).arrow_schema.empty_table()
    return catalog.read_arrow(name)


# -- the entry point --------------------------------------------------------------------------
def run_job_crashes(
    workdir: Path,
    *,
    crashes: int,
    events: int,
    seed: int,
    log: Callable[[str], None],
    bootstrap_servers: str | None = None,
) -> ChaosResult:
    """Kill the four jobs ``crashes`` times in all while ``events`` events flow, restart them,
    drain them, and check bronze, silver, sessions and gold (see the module docstring).

    Args:
        workdir: everything goes here (config, lake, reference, broker data, one log per job
            run); a previous run's lake is removed first.
        crashes: kills to inject, spread over the four jobs.
        events: synthetic events to publish (2 % bad), in waves.
        seed: draws the events, the kill points and their timing.
        log: receives one short line per publish, start, kill, drain and check.
        bootstrap_servers: an existing broker (topics get unique names); default: an embedded
            broker of our own under ``workdir/kafka``.

    Raises:
        TimeoutError: a job did not reach a kill point or finish within its deadline.
        RuntimeError: a job kept exiting on its own, or events could not be published.
    """
    if crashes < 0 or events < 1:
        raise ValueError(f"need crashes >= 0 and events >= 1, got {crashes} and {events}")
    started = time.monotonic()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("lake", "reference", "logs", "kafka"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    plans = kill_plan(crashes, seed)
    suffix = f"{seed}-{uuid.uuid4().hex[:8]}"
    topics = {t: f"chaos-{t}-{suffix}" for t in EVENT_TYPES} | {
        "dlq": f"chaos-dlq-{suffix}",
        "identities": f"chaos-identities-{suffix}",
    }
    waves = max(2, len(plans["bronze"]) + 1)
    broker = None
    chaos: _Chaos | None = None
    try:
        if bootstrap_servers is None:
            placeholder, _ = _conf(workdir, "embedded", topics, events, waves)
            broker = embedded_broker(placeholder, data_dir=workdir / "kafka").start()
            bootstrap_servers = broker.bootstrap_servers
            log(f"embedded Kafka on {bootstrap_servers}")
        settings, ref_settings = _conf(workdir, bootstrap_servers, topics, events, waves)
        (workdir / "lakehouse.py").write_text(
            "# What the `lakehouse` console script runs (`python -c` would not do: pyspark takes\n"
            "# a __main__ without a file for its own doctests and exits).\n"
            "from pipelines.cli.main import main\n\nmain()\n"
        )
        plan_text = ", ".join(f"{job} {len(plans[job])}" for job in JOBS)
        log(f"plan: {crashes} kills ({plan_text}), {events:,} events in {waves} waves")
        chaos = _Chaos(
            workdir,
            settings=settings,
            ref_settings=ref_settings,
            plans=plans,
            waves=_waves(events, seed, waves),
            bootstrap=bootstrap_servers,
            log=log,
        )
        chaos.run()
        lost, duplicated, checks = _check(chaos, chaos.log)
    finally:
        if chaos is not None:
            chaos.stop_all()
        if broker is not None:
            broker.stop()
    wall = round(time.monotonic() - started, 1)
    kills = chaos.kills
    landed = Counter(k["landed"] for k in kills)
    details: dict[str, Any] = {
        "kills_per_job": {job: chaos.tally[job].kills for job in JOBS},
        "mid_batch": landed["mid_batch"] + landed["mid_commit"],
        "mid_commit": landed["mid_commit"],
        "between_batches": landed["between_batches"],
        "startup": landed["startup"],
        "restarts": sum(chaos.tally[job].starts - 1 for job in JOBS),
        "gold_files_per_batch": chaos.gold_files_per_batch,
        "wall_s": wall,
        "per_job": {
            job: {
                "kills": t.kills,
                "landed": dict(t.kinds),
                "starts": t.starts,
                "restarts": t.starts - 1,
                "exited_on_its_own": t.own_exits,
                "drain_s": t.drain_s,
            }
            for job, t in chaos.tally.items()
        },
        "kills": kills,
        "plan": {job: [k.kind for k in plans[job]] for job in JOBS},
        "events": {
            "produced": sum(chaos.produced.values()),
            "valid": len(chaos.expected_ids),
            "by_kind": dict(chaos.kinds_produced),
            "waves": len(chaos.waves),
        },
        "checks": checks,
        "problems": chaos.problems,
        "workdir": str(workdir),
        "seed": seed,
    }
    log(
        f"done in {wall:.0f}s: {len(kills)} kills ({details['mid_batch']} mid-batch, "
        f"{details['between_batches']} between batches, {details['startup']} at startup), "
        f"{lost} lost, {duplicated} duplicated, {len(chaos.problems)} problems"
    )
    return ChaosResult(
        part=PART,
        injected=len(kills),
        events=sum(chaos.produced.values()),
        lost=lost,
        duplicated=duplicated,
        details=details,
    )
