"""The hostile-input part: the corpus of ``hostile_corpus.py`` against a collector process.

Light requests go four at a time; heavy ones (bombs, floods, huge orders) one at a time, each
in its own resident-memory window, so a rise is the request's own. Afterwards every topic is
read back and each element of every answered request must be where the answer put it:

- answered 200: an accepted event in its type's topic (an identify in the identities topic), a
  rejected one in the dead-letter topic; an order line answered ``partial`` in either;
- refused as a whole (4xx): none of its events anywhere;
- elements with nothing to find them by (no usable id) are counted per destination instead.

The collector must never die, and must answer ``/healthz`` at the end.
"""

from __future__ import annotations

import re
import secrets
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipelines.chaos.hostile_corpus import CorpusContext, Element, HostileCorpus, HostileRequest
from pipelines.chaos.processes import CollectorProcess, RssSampler, chaos_settings, free_port
from pipelines.chaos.readback import read_topics, without_received_at
from pipelines.chaos.report import (
    BY_KIND,
    MAX_REQUEST_RISE,
    MAX_REQUEST_RISE_KIND,
    PEAK_RSS,
    REDELIVERED,
    ChaosResult,
)
from pipelines.collector.segment import SEGMENT_NAMESPACE
from pipelines.config import Settings
from pipelines.streaming.kafka import client_config, embedded_broker

Log = Callable[[str], None]

HOSTILE = "hostile inputs"
LIGHT_CONCURRENCY = 4
REQUEST_TIMEOUT_S = 120.0
MAX_ATTEMPTS = 10  # 429/503 are retried, as the SDK would
MEMORY_LIMIT = 256 * 2**20  # the most one request may raise the collector's resident memory
DLQ = "dlq"
ACCEPTED = "accepted"  # an event topic or the identities topic
_EXCERPT_ID = re.compile(rb'^\{"event_id":"([^"\\]{1,200})"')
_EXCERPT_MESSAGE_ID = re.compile(rb'^\{"messageId":"([^"\\]{1,200})"')


def run_hostile_inputs(
    workdir: Path,
    settings: Settings,
    *,
    requests: int,
    seed: int,
    log: Log,
    bomb_mib: int = 256,
    bootstrap_servers: str | None = None,
) -> ChaosResult:
    """Send ``requests`` hostile requests (every kind and variant at least once; compression
    bombs inflating to ``bomb_mib``) to a collector process and account for every event in
    them. With ``bootstrap_servers`` the collector uses that broker with topics of its own;
    otherwise the part starts a broker under ``workdir``.
    """
    folder = workdir / "hostile-inputs"
    folder.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(16)
    port = free_port()
    kafka: dict[str, Any] = {}
    broker = None
    if bootstrap_servers is None:
        broker = embedded_broker(settings, num_brokers=1, data_dir=folder / "kafka")
        log(f"{HOSTILE}: starting a broker in {folder}")
        broker.start()
        bootstrap_servers = broker.bootstrap_servers
    else:
        suffix = uuid.uuid4().hex[:8]
        kafka["topics"] = {t: f"{name}-{suffix}" for t, name in _topic_names(settings).items()}
    kafka["bootstrap_servers"] = bootstrap_servers
    collector: CollectorProcess | None = None
    try:
        edge = chaos_settings(
            settings,
            folder / "conf",
            {
                "storage": {"root": str(folder / "lake")},
                "kafka": kafka,
                # Validation is what is under test, not throttling (429 has its own tests).
                "collector": {"rate_limit": {"events_per_second": 1e7, "burst": 10**9}},
            },
            key,
        )
        corpus = HostileCorpus(
            CorpusContext(
                key, edge.collector.segment_events, int(time.time() * 1000), seed, bomb_mib
            )
        )
        started = time.monotonic()
        batch = list(corpus.requests(requests))
        log(
            f"{HOSTILE}: {len(batch):,} requests ({sum(r.heavy for r in batch)} heavy) with "
            f"{sum(r.events for r in batch):,} events generated in "
            f"{time.monotonic() - started:.1f}s"
        )
        collector = CollectorProcess(folder / "conf", port, folder / "collector.log")
        collector.start()
        run = _Run(collector, log)
        with RssSampler(lambda: collector.pid if collector else None) as sampler:
            run.sampler = sampler
            run.light([r for r in batch if not r.heavy])
            run.heavy([r for r in batch if r.heavy])
        healthy = collector.alive and collector.healthy()
        topics = edge.kafka.topics
        log(f"{HOSTILE}: reading every topic back")
        found = read_topics(
            client_config(edge.kafka, bootstrap_servers),
            [*topics.event_topics, topics.identities, topics.dlq],
        )
        outcome = Outcome(
            answers=run.answers,
            crashes=run.crashes,
            peak_rss=sampler.peak,
            rss_samples=sampler.samples,
            healthy_at_end=healthy,
            exit_code=collector.stop(),
        )
    finally:
        if collector is not None:
            collector.stop()
        if broker is not None:
            broker.stop()
    return hostile_result(edge, outcome, found)


@dataclass
class Outcome:
    """What happened while the corpus was sent, for ``hostile_result``."""

    answers: list[tuple[HostileRequest, Answer]]
    crashes: list[str]
    peak_rss: int
    rss_samples: int
    healthy_at_end: bool
    exit_code: int | None


def hostile_result(
    settings: Settings, outcome: Outcome, found: dict[str, list[bytes]]
) -> ChaosResult:
    """Account for every element of every request: where the answers put it against what the
    topics (``topic -> [value]``, as ``settings`` names them) hold."""
    ledger = _Ledger(settings)
    for request, answer in outcome.answers:
        ledger.expect(request, answer)
    return ledger.result(found, outcome)


def _topic_names(settings: Settings) -> dict[str, str]:
    topics = settings.kafka.topics
    names = {t: topics.for_event_type(t) for t in _EVENT_TYPES}
    return names | {"dlq": topics.dlq, "identities": topics.identities}


_EVENT_TYPES = ("page_view", "click", "search", "add_to_cart", "purchase")


@dataclass
class Answer:
    """What the collector said to one request (``status`` None: no answer, see ``error``)."""

    status: int | None
    body: bytes = b""
    error: str | None = None
    head: bytes = b""
    attempts: int = 1
    rss_rise: int | None = None

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


@dataclass
class _Run:
    """Sends the corpus and keeps every answer; restarts the collector should it die."""

    collector: CollectorProcess
    log: Log
    sampler: RssSampler | None = None
    answers: list[tuple[HostileRequest, Answer]] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)

    def light(self, requests: Sequence[HostileRequest]) -> None:
        chunk = 500
        with ThreadPoolExecutor(LIGHT_CONCURRENCY) as pool:
            for start in range(0, len(requests), chunk):
                part = requests[start : start + chunk]
                self.answers += zip(part, pool.map(self._send, part), strict=True)
                self._check(f"one of light requests {start + 1}-{start + len(part)}")
                self.log(f"{HOSTILE}: {start + len(part):,} of {len(requests):,} light requests")

    def heavy(self, requests: Sequence[HostileRequest]) -> None:
        assert self.sampler is not None
        for i, request in enumerate(requests, start=1):
            with self.sampler.window() as window:
                answer = self._send(request)
            answer.rss_rise = window.rise
            self.answers.append((request, answer))
            self._check(f"{request.kind}: {request.variant}")
            if i % 25 == 0 or i == len(requests):
                self.log(f"{HOSTILE}: {i} of {len(requests)} heavy requests, one at a time")

    def _check(self, suspect: str) -> None:
        if self.collector.alive:
            return
        code = self.collector.returncode
        self.crashes.append(f"exit code {code} after {suspect}")
        self.log(f"{HOSTILE}: THE COLLECTOR DIED (exit code {code}) after {suspect}; restarting")
        self.collector.start()

    def _send(self, request: HostileRequest) -> Answer:
        attempts = 0
        while True:
            attempts += 1
            answer = send(self.collector.port, request)
            answer.attempts = attempts
            if answer.status not in (429, 503) or attempts >= MAX_ATTEMPTS:
                return answer
            retry_after = _header(answer, b"retry-after")
            time.sleep(min(float(retry_after or 1), 2.0))  # as the SDK honours Retry-After


def send(port: int, request: HostileRequest, timeout_s: float = REQUEST_TIMEOUT_S) -> Answer:
    """Send the request's bytes as they are on a new connection and read the answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
            sent_error = None
            try:
                conn.sendall(request.head + request.body)
            except OSError as exc:  # the server may answer (413) and close before it has all
                sent_error = f"{type(exc).__name__} while sending"
            data = bytearray()
            while not _complete(data):
                try:
                    chunk = conn.recv(65_536)
                except (ConnectionResetError, TimeoutError) as exc:
                    sent_error = sent_error or f"{type(exc).__name__} while reading"
                    break
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return Answer(None, error=f"{type(exc).__name__}: {exc}")
    return _parse(bytes(data), sent_error)


def _complete(data: bytearray) -> bool:
    """Whether ``data`` holds a whole answer with a Content-Length (a client stops reading
    there; the server may linger on a connection whose announced body never came)."""
    head, sep, body = bytes(data).partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value)
    return False


def _parse(data: bytes, error: str | None) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return Answer(None, error=error or f"no HTTP answer ({data[:60]!r})")
    if b"\r\ntransfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return Answer(int(parts[1]), body, head=head)


def _dechunk(body: bytes) -> bytes:
    out, rest = bytearray(), body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out)


def _header(answer: Answer, name: bytes) -> str | None:
    for line in answer.head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None


@dataclass
class _KindCounts:
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    events: int = 0
    to_topic: int = 0
    to_dlq: int = 0
    lost: int = 0
    max_rss_rise_bytes: int | None = None


class _Ledger:
    """Where every element must be, from the answers; then what the topics hold against it."""

    def __init__(self, settings: Settings) -> None:
        topics = settings.kafka.topics
        self._topic_of = {t: topics.for_event_type(t) for t in _EVENT_TYPES}
        self._topic_of["identity"] = topics.identities
        self._dlq = topics.dlq
        self._identities = topics.identities
        self.where: dict[str, set[str]] = defaultdict(set)  # ref -> allowed destinations
        self.kind_of: dict[str, str] = {}
        self.refused: set[str] = set()
        self.uncounted: Counter[str] = Counter()  # elements without a ref, per destination
        self.kinds: dict[str, _KindCounts] = defaultdict(_KindCounts)
        self.published = Counter[str]()  # messages the answers say were produced
        self.unanswered: list[str] = []
        self.server_errors: list[str] = []
        self.mismatched: list[str] = []

    # -- what the answers promise -------------------------------------------------------------
    def expect(self, request: HostileRequest, answer: Answer) -> None:
        counts = self.kinds[request.kind]
        counts.requests += 1
        counts.statuses[str(answer.status or "no answer")] += 1
        counts.events += request.events
        if answer.rss_rise is not None:
            counts.max_rss_rise_bytes = max(counts.max_rss_rise_bytes or 0, answer.rss_rise)
        label = f"{request.kind}: {request.variant}"
        if answer.status is None:
            self.unanswered.append(f"{label} ({answer.error})")
        elif answer.status >= 500:
            self.server_errors.append(f"{label} ({answer.status})")
        summary = answer.json() if answer.status == 200 else None
        if not isinstance(summary, dict) or "results" not in summary:
            for element in request.elements:
                self.refused.update(self._refs_when_refused(element))
            return
        results = summary["results"]
        if len(results) != len(request.elements):
            self.mismatched.append(f"{label}: {len(results)} answers, {len(request.elements)} sent")
            return
        accepted = int(summary.get("accepted", 0)) - int(summary.get("already_acknowledged", 0))
        self.published["accepted"] += accepted
        self.published[DLQ] += int(summary.get("rejected", 0))
        counts.to_topic += accepted
        counts.to_dlq += int(summary.get("rejected", 0))
        for element, result in zip(request.elements, results, strict=True):
            if request.segment:
                self._expect_message(element, result, request.kind)
            else:
                self._expect_event(element, result["status"], request.kind)

    def _expect_event(self, element: Element, status: str, kind: str) -> None:
        accepted = status == "accepted"
        if element.ref is None:
            self.uncounted[ACCEPTED if accepted else DLQ] += 1
            return
        destination = self._topic_of.get(element.event_type or "", "?") if accepted else self._dlq
        self._allow(element.ref, destination, kind)

    def _expect_message(self, element: Element, result: dict[str, Any], kind: str) -> None:
        status, events = result["status"], int(result.get("events", 0))
        if element.message_id is None:
            self.uncounted[ACCEPTED if status == "accepted" else DLQ] += max(events, 1)
            return
        base = _event_id(element.message_id)
        ids = [
            str(uuid.uuid5(SEGMENT_NAMESPACE, f"{base}/{i}")) if element.order else base
            for i in range(events)
        ]
        topic = self._topic_of.get(element.event_type or "", "?")
        if status == "accepted":
            for event_id in ids or [base]:  # an identify has no events: its record has the id
                self._allow(event_id, topic if ids else self._identities, kind)
        elif status == "rejected":
            if ids:
                for event_id in ids:
                    self._allow(event_id, self._dlq, kind)
            else:
                self._allow(f"msg:{element.message_id}", self._dlq, kind)
        else:  # partial: each line in its topic or the dead-letter topic (counts checked too)
            for event_id in ids:
                self._allow(event_id, topic, kind)
                self._allow(event_id, self._dlq, kind)

    def _allow(self, ref: str, destination: str, kind: str) -> None:
        self.where[ref].add(destination)
        self.kind_of.setdefault(ref, kind)

    def _refs_when_refused(self, element: Element) -> list[str]:
        if element.ref is not None:
            return [element.ref]
        if element.message_id is not None:
            return [_event_id(element.message_id), f"msg:{element.message_id}"]
        return []

    # -- what the topics hold -------------------------------------------------------------------
    def result(self, found: dict[str, list[bytes]], outcome: Outcome) -> ChaosResult:
        copies, unmatched, records = self._copies_by_ref(found)
        lost_refs = [
            ref for ref, allowed in self.where.items() if not allowed & set(copies.get(ref, {}))
        ]
        for ref in lost_refs:
            self.kinds[self.kind_of[ref]].lost += 1
        shortfall = {k: max(0, self.uncounted[k] - unmatched[k]) for k in (ACCEPTED, DLQ)}
        surplus = {k: max(0, unmatched[k] - self.uncounted[k]) for k in (ACCEPTED, DLQ)}
        leaked = sorted(r for r in self.refused if r in copies and r not in self.where)
        duplicated, redelivered = self._repeated_copies(copies)
        rises = [(a.rss_rise, r) for r, a in outcome.answers if a.rss_rise is not None]
        worst_rise, worst = max(rises, key=lambda x: x[0], default=(0, None))
        problems = self._problems(outcome, leaked, surplus, worst_rise)
        statuses: Counter[str] = Counter()
        for counts in self.kinds.values():
            statuses.update(counts.statuses)
        details: dict[str, Any] = {
            REDELIVERED: redelivered,
            "answers": dict(sorted(statuses.items())),
            "published_per_answers": dict(self.published),
            "records_read_back": dict(records),
            "found_by_id": len(self.where) - len(lost_refs),
            "counted_without_id": dict(self.uncounted),
            "retried_429_503": sum(a.attempts - 1 for _r, a in outcome.answers),
            "collector_crashes": len(outcome.crashes),
            "collector_up_at_end": outcome.healthy_at_end,
            "collector_exit_code": outcome.exit_code,
            PEAK_RSS: outcome.peak_rss,
            MAX_REQUEST_RISE: worst_rise,
            MAX_REQUEST_RISE_KIND: f"{worst.kind}: {worst.variant}" if worst else None,
            "rss_samples": outcome.rss_samples,
            BY_KIND: {kind: _counts_dict(c) for kind, c in sorted(self.kinds.items())},
        }
        return ChaosResult(
            part=HOSTILE,
            injected=len(outcome.answers),
            events=sum(r.events for r, _a in outcome.answers),
            lost=len(lost_refs) + sum(shortfall.values()),
            duplicated=duplicated,
            details=details,
            error="; ".join(problems) or None,
        )

    def _copies_by_ref(
        self, found: dict[str, list[bytes]]
    ) -> tuple[dict[str, dict[str, list[bytes]]], Counter[str], Counter[str]]:
        """The records read back, grouped by the reference they are found by and their topic;
        with the records of no known reference and all records, each counted by accepted/DLQ."""
        copies: dict[str, dict[str, list[bytes]]] = defaultdict(lambda: defaultdict(list))
        unmatched: Counter[str] = Counter()
        records: Counter[str] = Counter()
        for topic, values in found.items():
            kind = DLQ if topic == self._dlq else ACCEPTED
            records[kind] += len(values)
            for value in values:
                ref, content = self._ref(value, dlq=kind == DLQ)
                if ref is not None and (ref in self.where or ref in self.refused):
                    copies[ref][topic].append(content)
                else:
                    unmatched[kind] += 1
        return copies, unmatched, records

    def _repeated_copies(self, copies: dict[str, dict[str, list[bytes]]]) -> tuple[int, int]:
        """References published more than once to one accepted topic: with differing content
        (duplicated, counted once per reference), and identical extra copies (redelivered)."""
        duplicated = redelivered = 0
        for by_topic in copies.values():
            for topic, contents in by_topic.items():
                if topic == self._dlq or len(contents) < 2:
                    continue
                if len(set(contents)) > 1:
                    duplicated += 1
                else:
                    redelivered += len(contents) - 1
        return duplicated, redelivered

    def _problems(
        self, outcome: Outcome, leaked: list[str], surplus: dict[str, int], worst_rise: int
    ) -> list[str]:
        """What went wrong in the run, each a sentence; empty when the collector held up."""
        crashes = outcome.crashes
        problems = [f"the collector died {len(crashes)} time(s): {crashes}"] * bool(crashes)
        problems += [f"server errors: {self.server_errors[:5]}"] * bool(self.server_errors)
        problems += [f"no answer: {self.unanswered[:5]}"] * bool(self.unanswered)
        problems += [f"refused, yet published: {leaked[:5]}"] * bool(leaked)
        problems += [f"answers not matching the request: {self.mismatched[:5]}"] * bool(
            self.mismatched
        )
        problems += [f"unexpected messages: {dict(surplus)}"] * bool(sum(surplus.values()))
        if not outcome.healthy_at_end:
            problems.append("the collector did not answer /healthz at the end")
        if outcome.exit_code not in (0, None):
            problems.append(f"the collector exited with code {outcome.exit_code} on SIGTERM")
        if worst_rise > MEMORY_LIMIT:
            problems.append(f"one request raised resident memory by {worst_rise / 2**20:.0f} MB")
        return problems

    def _ref(self, value: bytes, *, dlq: bool) -> tuple[str | None, bytes]:
        """The reference a record is found by, and its content to compare copies by."""
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None, value
        if not isinstance(record, dict):
            return None, value
        if not dlq:
            event_id = record.get("event_id")
            return (event_id if isinstance(event_id, str) else None), without_received_at(record)
        return _dead_letter_ref(record), value


def _dead_letter_ref(record: dict[str, Any]) -> str | None:
    """What a dead-letter record is found by: its mapped event's id, the event's id, or (a
    Segment message refused before mapping) ``msg:<messageId>``; from an excerpt when the
    original was too large to keep whole."""
    mapped = record.get("mapped")
    if isinstance(mapped, dict) and isinstance(mapped.get("event_id"), str):
        return str(mapped["event_id"])
    if isinstance(record.get("mapped_excerpt"), str):
        match = _EXCERPT_ID.match(record["mapped_excerpt"].encode())
        return match.group(1).decode() if match else None
    event = record.get("event")
    if isinstance(event, dict):
        if isinstance(event.get("event_id"), str):
            return str(event["event_id"])
        if isinstance(event.get("messageId"), str):
            return f"msg:{event['messageId']}"
        return None
    excerpt = record.get("event_excerpt")
    if isinstance(excerpt, str):
        raw = excerpt.encode()
        if match := _EXCERPT_ID.match(raw):
            return match.group(1).decode()
        if match := _EXCERPT_MESSAGE_ID.match(raw):
            return f"msg:{match.group(1).decode()}"
    return None


def _event_id(message_id: str) -> str:
    """A Segment messageId as the collector turns it into an event id."""
    try:
        return str(uuid.UUID(message_id))
    except ValueError:
        return str(uuid.uuid5(SEGMENT_NAMESPACE, message_id))


def _counts_dict(counts: _KindCounts) -> dict[str, Any]:
    out: dict[str, Any] = {
        "requests": counts.requests,
        "statuses": dict(counts.statuses),
        "events": counts.events,
        "to_topic": counts.to_topic,
        "to_dlq": counts.to_dlq,
        "lost": counts.lost,
    }
    if counts.max_rss_rise_bytes is not None:
        out["max_rss_rise_bytes"] = counts.max_rss_rise_bytes
    return out
