"""``lakehouse bench collector``: accepted events/s and request latency of the HTTP collector.

The collector runs in its own process (as in production), producing to the embedded broker in
this process; a load generator here posts batches of ``batch_size`` contract events over
keep-alive connections on 127.0.0.1:

(a) throughput: a closed loop of ``concurrency`` clients for ``seconds``; accepted events/s
    counts only events the collector answered 200 for, i.e. acknowledged by Kafka.
(b) latency: an open loop at ``latency_rate`` events/s (default: half the 20,000 events/s
    target); each request's latency runs from its *scheduled* send time, so a stall shows up
    in the percentiles instead of silently slowing the generator down.
(c) SDK overhead: the cost of one ``Tracker.track()`` call (the caller's thread only).
"""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from pipelines.collector import serve
from pipelines.config import Settings, load_settings
from pipelines.streaming.kafka import embedded_broker
from pipelines.tracking import Tracker

TARGET_EVENTS_PER_S = 20_000
TARGET_P99_MS = 50.0


def bench_collector(
    settings: Settings,
    *,
    seconds: float = 10.0,
    concurrency: int = 16,
    batch_size: int = 100,
    latency_rate: float = TARGET_EVENTS_PER_S / 2,
    sdk_calls: int = 100_000,
    stage: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Run (a), (b) and (c) and return the figures."""
    key = settings.collector.first_write_key()
    with embedded_broker(settings) as broker:
        stage(f"starting the collector process (Kafka {broker.bootstrap_servers})")
        with CollectorProcess(settings, broker.bootstrap_servers) as url:
            bodies = _bodies(batch_size, count=256)
            stage("warming up")
            asyncio.run(_closed_loop(url, key, bodies, concurrency, 1.0))
            stage(
                f"(a) throughput: {concurrency} clients, {seconds:g}s, {batch_size}-event batches"
            )
            throughput = asyncio.run(_closed_loop(url, key, bodies, concurrency, seconds))
            stage(f"(b) latency at {latency_rate:,.0f} events/s (open loop)")
            latency = asyncio.run(_open_loop(url, key, bodies, latency_rate / batch_size, seconds))
            stage(f"(c) SDK: {sdk_calls:,} track() calls")
            sdk_us = _sdk_track_cost_us(url, key, sdk_calls)
    eps = throughput["accepted"] / throughput["seconds"]
    return {
        "benchmark": "collector",
        "batch_size": batch_size,
        "concurrency": concurrency,
        "seconds": seconds,
        "accepted_events_per_s": round(eps),
        "requests_per_s": round(throughput["requests"] / throughput["seconds"]),
        "non_200_responses": int(throughput["errors"]),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "throughput_target_met": eps >= TARGET_EVENTS_PER_S,
        "latency_load_events_per_s": round(latency_rate),
        "latency_requests": latency["requests"],
        "latency_p50_ms": latency["p50_ms"],
        "latency_p99_ms": latency["p99_ms"],
        "latency_max_ms": latency["max_ms"],
        "latency_errors": latency["errors"],
        "target_p99_ms": TARGET_P99_MS,
        "latency_target_met": latency["p99_ms"] <= TARGET_P99_MS and not latency["errors"],
        "sdk_track_us": round(sdk_us, 2),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


class CollectorProcess:
    """``lakehouse collector serve`` equivalent in a child process on a free port."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self._args = [
            sys.executable,
            "-m",
            "pipelines.benchmarks.collector",
            settings.env,
            settings.conf_dir,
            bootstrap,
        ]
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> str:
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self._proc.kill()
            raise RuntimeError(f"the collector process did not start (printed {line!r})")
        return line

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def _bodies(batch_size: int, count: int) -> list[bytes]:
    now = int(time.time() * 1000)
    bodies = []
    for b in range(count):
        events = [
            {
                "event_id": str(uuid.uuid4()),
                "event_type": "click",
                "user_id": f"user-{(b * batch_size + i) % 5000:05d}",
                "item_id": f"item-{(b + i * 7) % 2000:05d}",
                "session_id": f"s-{b}",
                "timestamp": now - i,
                "schema_version": 1,
                "properties": {"position": i % 20, "list_type": "search", "category": "books"},
                "context": {"page": "https://shop.example.com/search?q=x", "device": "mobile"},
            }
            for i in range(batch_size)
        ]
        bodies.append(orjson.dumps({"batch": events}))
    return bodies


async def _closed_loop(
    url: str, key: str, bodies: list[bytes], concurrency: int, seconds: float
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    totals: dict[str, float] = {"accepted": 0, "requests": 0, "errors": 0}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def client(offset: int) -> None:
            i = offset
            while time.perf_counter() < deadline:
                body = bodies[i % len(bodies)]
                i += concurrency
                async with session.post(f"{url}/v1/events", data=body, headers=headers) as r:
                    payload = await r.read()
                    totals["requests"] += 1
                    if r.status == 200:
                        totals["accepted"] += orjson.loads(payload)["accepted"]
                    else:
                        totals["errors"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(concurrency)))
        totals["seconds"] = time.perf_counter() - started
    return totals


async def _open_loop(
    url: str, key: str, bodies: list[bytes], requests_per_s: float, seconds: float
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes, scheduled: float) -> None:
            nonlocal errors
            async with session.post(f"{url}/v1/events", data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - scheduled)

        interval = 1.0 / requests_per_s
        start = time.perf_counter()
        tasks = []
        n = int(seconds * requests_per_s)
        for i in range(n):
            scheduled = start + i * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(bodies[i % len(bodies)], scheduled)))
        await asyncio.gather(*tasks)
    ordered = sorted(latencies)
    return {
        "requests": n,
        "errors": errors,
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def _sdk_track_cost_us(url: str, key: str, calls: int) -> float:

    spool = Path(tempfile.mkdtemp(prefix="lakehouse-bench-spool-"))
    tracker = Tracker(url, key, spool_dir=str(spool), max_queue=calls + 1)
    try:
        tracker.track("click", "warm-up", item_id="item-1")
        started = time.perf_counter()
        for i in range(calls):
            tracker.track(
                "click",
                f"user-{i % 1000}",
                item_id=f"item-{i % 500}",
                properties={"position": i % 20, "list_type": "search"},
            )
        elapsed = time.perf_counter() - started
        tracker.flush(timeout_s=120)
    finally:
        tracker.close()
    return elapsed / calls * 1e6


def _serve_child(env: str, conf_dir: str, bootstrap: str) -> None:

    settings = load_settings(env, conf_dir=conf_dir)

    def ready(url: str) -> None:
        print(url, flush=True)

    serve(settings, bootstrap, host="127.0.0.1", port=0, on_ready=ready)


if __name__ == "__main__":
    _serve_child(*sys.argv[1:4])
