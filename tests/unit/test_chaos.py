"""The chaos suite's bookkeeping: the table and its verdict lines, the counting of ids, and the
hostile corpus' accounting, which must notice a lost event or a refused one published."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import orjson
import pytest
from click.testing import Result
from typer.testing import CliRunner

from pipelines.chaos import runner
from pipelines.chaos.hostile import Answer, Outcome, hostile_result
from pipelines.chaos.hostile_corpus import CorpusContext, Element, HostileCorpus, HostileRequest
from pipelines.chaos.readback import tally
from pipelines.chaos.report import ChaosResult, render, totals
from pipelines.chaos.runner import run_chaos
from pipelines.cli import chaos as chaos_command
from pipelines.cli.main import app
from pipelines.collector.segment import SEGMENT_NAMESPACE
from tests.conftest import make_settings

NOW_MS = 1_795_000_000_000


def test_the_table_ends_with_the_totals_and_the_peak_memory() -> None:
    results = [
        ChaosResult("broker failover", 2, 50_000, 0, 0, {"redelivered": 3, "seconds": 81.4}),
        ChaosResult(
            "hostile inputs",
            10_000,
            140_000,
            2,
            1,
            {"peak_collector_rss_bytes": 300 * 2**20, "max_request_rss_rise_bytes": 48 * 2**20},
        ),
    ]
    text = render(results)
    lines = text.splitlines()
    assert lines[0].split() == [
        "part",
        "injected",
        "events",
        "lost",
        "duplicated",
        "redelivered",
        "seconds",
    ]
    assert lines[2].split() == ["broker", "failover", "2", "50,000", "0", "0", "3", "81", "ok"]
    assert lines[3].split()[-1] == "FAILED"
    assert lines[-3:] == [
        "lost 2",
        "duplicated 1",
        "peak collector memory 300.0 MiB (largest rise from one request 48.0 MiB)",
    ]
    assert totals(results)["failed_parts"] == ["hostile inputs"]


def test_a_part_that_did_not_finish_fails_the_suite_and_says_why() -> None:
    broken = ChaosResult("job crashes", 0, 0, 0, 0, error="RuntimeError: no Spark")
    assert broken.failed
    text = render([broken])
    assert "job crashes FAILED: RuntimeError: no Spark" in text
    assert text.splitlines()[-1] == (
        "peak collector memory: not measured (the hostile-inputs part did not run)"
    )


def test_tally_tells_lost_from_redelivered_from_duplicated() -> None:
    found = {
        "a": [b"x"],
        "b": [b"y", b"y", b"y"],  # redelivered twice, same content
        "c": [b"z", b"other"],  # one id, two contents: a real duplicate
        "stranger": [b"?"],
    }
    counted = tally(["a", "b", "c", "missing"], found)
    assert (counted.lost, counted.redelivered, counted.duplicated, counted.unexpected) == (
        1,
        2,
        1,
        1,
    )


def test_the_corpus_is_the_same_for_the_same_seed_and_holds_every_variant() -> None:
    context = CorpusContext("key", {"Product Clicked": "click"}, NOW_MS, seed=3)
    first = list(HostileCorpus(context).requests(120))
    again = list(HostileCorpus(context).requests(120))
    other = list(HostileCorpus(CorpusContext("key", {}, NOW_MS, seed=4)).requests(120))
    assert [(r.head, r.body) for r in first] == [(r.head, r.body) for r in again]
    assert [r.body for r in first] != [r.body for r in other]

    corpus = HostileCorpus(context)
    light = [k for k in corpus.kinds if not k.heavy]
    seen = {(r.kind, r.variant) for r in corpus.requests(sum(k.variants for k in light))}
    assert {kind for kind, _v in seen} == {k.name for k in light}
    assert len(seen) >= sum(k.variants for k in light) - 2  # variants share a name at most twice


def _request(elements: tuple[Element, ...], path: str = "/v1/events") -> HostileRequest:
    return HostileRequest("test", "v", path, b"", b"", elements=elements)


def _answer(results: list[dict[str, object]], **summary: int) -> Answer:
    body = {"results": results, "accepted": 0, "rejected": 0, "already_acknowledged": 0}
    return Answer(200, orjson.dumps(body | summary))


def _outcome(answers: list[tuple[HostileRequest, Answer]]) -> Outcome:
    return Outcome(answers, [], 100, 10, healthy_at_end=True, exit_code=0)


def test_hostile_accounting_finds_each_event_where_its_answer_put_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    topics = settings.kafka.topics
    request = _request((Element("e1", "click"), Element("e2", "click"), Element(None)))
    answer = _answer(
        [{"status": "accepted"}, {"status": "rejected"}, {"status": "rejected"}],
        accepted=1,
        rejected=2,
    )
    refused = _request((Element("e3", "click"),))
    outcome = _outcome([(request, answer), (refused, Answer(400, b"{}"))])
    accepted = orjson.dumps({"event_id": "e1", "received_at": "t1"})
    dead = [
        orjson.dumps({"errors": [], "event": {"event_id": "e2"}}),
        orjson.dumps({"errors": [], "event": "not-an-event"}),  # found by count, not by id
    ]
    whole = {topics.click: [accepted], topics.dlq: dead}

    result = hostile_result(settings, outcome, whole)
    assert (result.lost, result.duplicated, result.error) == (0, 0, None)
    assert result.details["records_read_back"] == {"accepted": 1, "dlq": 2}

    # The rejected event missing from the dead-letter topic is lost.
    assert (
        hostile_result(settings, outcome, {topics.click: [accepted], topics.dlq: dead[1:]}).lost
        == 1
    )
    # The unidentifiable reject missing is lost too (counted per destination).
    assert (
        hostile_result(settings, outcome, {topics.click: [accepted], topics.dlq: dead[:1]}).lost
        == 1
    )
    # A retry of the accepted event published again: a redelivery, not a duplicate...
    again = orjson.dumps({"event_id": "e1", "received_at": "t2"})
    retried = hostile_result(settings, outcome, whole | {topics.click: [accepted, again]})
    assert (retried.duplicated, retried.details["redelivered"]) == (0, 1)
    # ...but the same id with other content is a duplicate.
    changed = orjson.dumps({"event_id": "e1", "user_id": "someone else"})
    assert (
        hostile_result(settings, outcome, whole | {topics.click: [accepted, changed]}).duplicated
        == 1
    )
    # An event of a refused request must never reach Kafka.
    leaked = orjson.dumps({"event_id": "e3"})
    failed = hostile_result(settings, outcome, whole | {topics.click: [accepted, leaked]})
    assert failed.error is not None and "refused, yet published: ['e3']" in failed.error


def test_segment_order_lines_are_found_by_their_derived_ids(tmp_path: Path) -> None:

    settings = make_settings(tmp_path)
    topics = settings.kafka.topics
    order = str(uuid.UUID(int=7, version=4))
    request = HostileRequest(
        "segment_order",
        "3 lines",
        "/v1/batch",
        b"",
        b"",
        segment=True,
        elements=(Element(None, "purchase", order, order=True),),
    )
    answer = _answer([{"status": "partial", "events": 3}], accepted=2, rejected=1)
    lines = [str(uuid.uuid5(SEGMENT_NAMESPACE, f"{order}/{i}")) for i in range(3)]
    found = {
        topics.purchase: [
            orjson.dumps({"event_id": lines[0]}),
            orjson.dumps({"event_id": lines[2]}),
        ],
        topics.dlq: [orjson.dumps({"errors": [], "mapped": {"event_id": lines[1]}})],
    }
    assert hostile_result(settings, _outcome([(request, answer)]), found).lost == 0
    found[topics.dlq] = []
    assert hostile_result(settings, _outcome([(request, answer)]), found).lost == 1


def _cli(
    monkeypatch: pytest.MonkeyPatch, results: list[ChaosResult], *args: str
) -> tuple[Result, list[dict[str, object]]]:
    """``lakehouse chaos`` with the parts replaced by ``results``; also returns the calls."""
    calls: list[dict[str, object]] = []

    def fake_run(workdir: Path, **kwargs: object) -> list[ChaosResult]:
        calls.append({"workdir": workdir, **kwargs})
        return results

    monkeypatch.setattr(chaos_command, "run_chaos", fake_run)
    return CliRunner().invoke(app, ["chaos", "--env", "test", *args]), calls


def test_chaos_command_exits_0_with_the_verdict_lines(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean = ChaosResult("hostile inputs", 600, 28_000, 0, 0, {"peak_collector_rss_bytes": 2**28})
    result, calls = _cli(
        monkeypatch,
        [clean],
        "--quick",
        "--only",
        "hostile",
        "--seed",
        "3",
        "--workdir",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert "lost 0\nduplicated 0\npeak collector memory 256.0 MiB" in result.output
    call = calls[0]
    assert (call["workdir"], call["quick"], call["seed"], call["parts"]) == (
        tmp_path,
        True,
        3,
        {"hostile"},
    )


def test_chaos_command_exits_1_on_a_loss_and_prints_json(monkeypatch: pytest.MonkeyPatch) -> None:
    lossy = ChaosResult("broker failover", 1, 1_000, 3, 0, {"redelivered": 2})
    result, _calls = _cli(monkeypatch, [lossy], "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["lost"], summary["duplicated"], summary["failed_parts"]) == (
        3,
        0,
        ["broker failover"],
    )
    assert summary["results"][0]["details"] == {"redelivered": 2}
    kept = Path(summary["workdir"])
    assert kept.is_dir()  # kept after a failure, for its logs
    kept.rmdir()


def test_chaos_command_refuses_an_unknown_part(monkeypatch: pytest.MonkeyPatch) -> None:
    result, calls = _cli(monkeypatch, [], "--only", "everything")
    assert result.exit_code == 2 and calls == []
    assert "unknown part(s) everything" in result.output


def test_the_job_crash_part_is_called_with_the_sizes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    calls: list[dict[str, object]] = []

    def run_job_crashes(workdir: Path, **kwargs: object) -> ChaosResult:
        calls.append({"workdir": workdir, **kwargs})
        return ChaosResult("job crashes", 20, 10_000, 0, 0, {})

    monkeypatch.setattr(runner, "run_job_crashes", run_job_crashes)
    results = run_chaos(
        tmp_path, quick=False, seed=5, parts={"jobs"}, log=lambda _m: None, settings=settings
    )
    assert [r.part for r in results] == ["job crashes"] and "seconds" in results[0].details
    assert calls[0]["crashes"] == 20 and calls[0]["seed"] == 5
    assert calls[0]["workdir"] == tmp_path / "job-crashes"
