from __future__ import annotations

import pytest

from pipelines.streaming.kafka_source import (
    KafkaSourceError,
    KafkaSourceOptions,
    bound_offsets,
    plan_end_offsets,
    plan_tasks,
)


def test_without_a_cap_the_batch_reads_everything_available() -> None:
    start = {"a": {"0": 5, "1": 0}}
    available = {"a": {"0": 10, "1": 3}, "b": {"0": 4}}
    assert plan_end_offsets(start, available, None) == {"a": {"0": 10, "1": 3}, "b": {"0": 4}}


def test_cap_is_shared_in_proportion_to_lag_and_respected_exactly() -> None:
    start = {"a": {"0": 0, "1": 0}, "b": {"0": 100}}
    available = {"a": {"0": 600, "1": 300}, "b": {"0": 200}}  # lags 600, 300, 100
    end = plan_end_offsets(start, available, 100)
    taken = {(t, p): end[t][p] - start.get(t, {}).get(p, 0) for t in end for p in end[t]}
    assert sum(taken.values()) == 100
    assert taken == {("a", "0"): 60, ("a", "1"): 30, ("b", "0"): 10}


def test_every_lagging_partition_progresses_even_with_a_tiny_cap() -> None:
    start: dict[str, dict[str, int]] = {}
    available = {"t": {str(p): 1000 for p in range(4)}}
    end = plan_end_offsets(start, available, 4)
    assert end == {"t": {"0": 1, "1": 1, "2": 1, "3": 1}}


def test_repeated_planning_drains_exactly_to_the_end() -> None:
    start: dict[str, dict[str, int]] = {"t": {"0": 0, "1": 0}}
    available = {"t": {"0": 997, "1": 13}}
    batches = 0
    while True:
        end = plan_end_offsets(start, available, 100)
        if end == start:
            break
        read = sum(end["t"][p] - start["t"][p] for p in end["t"])
        assert 0 < read <= 100
        start, batches = end, batches + 1
    assert start == available
    assert batches == 11


def test_available_now_target_bounds_later_data() -> None:
    start = {"t": {"0": 10}}
    target = {"t": {"0": 50}}
    assert bound_offsets({"t": {"0": 90, "1": 7}}, target, start) == {"t": {"0": 50, "1": 0}}


def test_tasks_pack_small_partitions_and_split_large_ones() -> None:
    end = {"t": {"0": 250, "1": 40}, "u": {"0": 10}}
    tasks = plan_tasks({"t": {"0": 0}}, end, min_tasks=2, max_records=100)
    assert tasks == [
        [("t", 0, 0, 100)],
        [("t", 0, 100, 200)],
        [("t", 0, 200, 250), ("t", 1, 0, 40), ("u", 0, 0, 10)],
    ]
    spread = plan_tasks({}, {"t": {"0": 10, "1": 10}}, min_tasks=4, max_records=100)
    assert spread == [[("t", 0, 0, 5)], [("t", 0, 5, 10)], [("t", 1, 0, 5)], [("t", 1, 5, 10)]]
    assert plan_tasks({"t": {"0": 5}}, {"t": {"0": 5}}, 2, 100) == []


def test_tasks_cover_every_offset_exactly_once() -> None:
    start = {f"t{i}": {str(p): p * 3 for p in range(5)} for i in range(4)}
    end = {f"t{i}": {str(p): p * 3 + 17 * (i + 1) for p in range(5)} for i in range(4)}
    tasks = plan_tasks(start, end, min_tasks=3, max_records=60)
    covered = sorted((t, p, o) for task in tasks for t, p, lo, hi in task for o in range(lo, hi))
    expected = sorted(
        (t, int(p), o) for t in end for p in end[t] for o in range(start[t][p], end[t][p])
    )
    assert covered == expected
    sizes = [sum(hi - lo for *_, lo, hi in task) for task in tasks]
    assert max(sizes) <= 60
    assert len(tasks) >= 3
    assert max(sizes) - min(sizes) <= max(sizes) // 2  # balanced


def test_options_are_parsed_and_checked() -> None:
    opts = KafkaSourceOptions.parse(
        {
            "kafka.bootstrap.servers": "h:1",
            "subscribe": "a, b,a",
            "maxOffsetsPerTrigger": "500",
            "startingOffsets": '{"a": {"0": 3}}',
            "kafka.security.protocol": "SSL",
        }
    )
    assert opts.topics == ("a", "b")
    assert opts.max_offsets_per_trigger == 500
    assert opts.starting_offsets == {"a": {"0": 3}}
    assert opts.client_conf == {"security.protocol": "SSL"}
    conf = opts.consumer_conf("reader")
    assert conf["enable.auto.commit"] is False
    assert conf["bootstrap.servers"] == "h:1"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"subscribe": "a"}, "kafka.bootstrap.servers"),
        ({"kafka.bootstrap.servers": "h:1"}, "subscribe"),
        (
            {"kafka.bootstrap.servers": "h:1", "subscribe": "a", "startingOffsets": "yesterday"},
            "startingOffsets",
        ),
        (
            {"kafka.bootstrap.servers": "h:1", "subscribe": "a", "maxOffsetsPerTrigger": "0"},
            "positive",
        ),
    ],
)
def test_bad_options_fail_with_the_option_named(options: dict[str, str], message: str) -> None:
    with pytest.raises(KafkaSourceError, match=message):
        KafkaSourceOptions.parse(options)
