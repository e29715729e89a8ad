"""The chaos suite's quick run at the edge: a hostile corpus against a collector process, and
the collector and the broker restarted under SDK load. Nothing lost, nothing duplicated.

The broker failover (three broker JVMs, a ~10 s failover, a revive) takes about a minute on
two cores: it runs in ``make chaos`` and ``lakehouse chaos --quick``, not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.chaos.edge import run_collector_broker_restarts
from pipelines.chaos.hostile import run_hostile_inputs
from pipelines.chaos.hostile_corpus import CorpusContext, HostileCorpus
from pipelines.chaos.report import BY_KIND, MAX_REQUEST_RISE, PEAK_RSS, render
from pipelines.chaos.runner import QUICK
from tests.conftest import SharedBroker, make_settings

pytestmark = [pytest.mark.streaming, pytest.mark.slow]


def test_hostile_corpus_ends_in_topics_or_the_dlq_and_the_collector_stays_up(
    tmp_path: Path, kafka_broker: SharedBroker
) -> None:
    lines: list[str] = []
    result = run_hostile_inputs(
        tmp_path,
        make_settings(tmp_path / "lake"),
        requests=QUICK.hostile_requests,
        seed=7,
        log=lines.append,
        bomb_mib=QUICK.bomb_mib,
        bootstrap_servers=kafka_broker.bootstrap_servers,
    )

    assert result.error is None, "\n".join(lines)
    assert (result.lost, result.duplicated) == (0, 0)
    assert result.injected == QUICK.hostile_requests
    details = result.details
    # Every kind was sent, and the answers cover acceptance and every kind of refusal.
    kinds = HostileCorpus(CorpusContext("key", {}, 0, seed=7)).kinds
    assert set(details[BY_KIND]) == {k.name for k in kinds}
    assert {"200", "400", "401", "404", "405", "413", "415"} <= set(details["answers"])
    # What the answers say was published is exactly what the topics hold.
    assert details["published_per_answers"] == details["records_read_back"]
    assert details["records_read_back"]["dlq"] > 0
    assert details["collector_crashes"] == 0 and details["collector_up_at_end"] is True
    assert details["collector_exit_code"] == 0
    assert 0 < details[MAX_REQUEST_RISE] < 256 * 2**20
    assert details[PEAK_RSS] > 50 * 2**20  # a Python process: the sampler read real values


def test_collector_and_broker_restarts_under_sdk_load_lose_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_collector_broker_restarts(
        tmp_path,
        make_settings(tmp_path / "lake"),
        events=QUICK.restart_events,
        restarts=QUICK.restarts,
        senders=QUICK.restart_senders,
        rate=QUICK.restart_rate,
        seed=7,
        log=lines.append,
    )

    assert result.error is None, "\n".join(lines)
    assert (result.lost, result.duplicated) == (0, 0)
    assert result.events >= QUICK.restart_events
    details = result.details
    assert details["restarts"] == {"collector kill -9": 1, "broker kill -9": 1}
    assert details["sdk"]["dropped"] == 0 and details["sdk"]["parked"] == 0
    assert details["sdk"]["spooled"] > 0  # the outages were felt: the SDK had to spool
    assert details["in_dlq"] == 0

    table = render([result]).splitlines()
    assert table[-3:-1] == ["lost 0", "duplicated 0"]
