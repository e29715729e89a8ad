"""The processes a chaos part starts and kills: a collector (``lakehouse collector serve`` in a
child process, so it can be killed with SIGKILL), its configuration, and its resident memory."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

import pipelines
from pipelines.config import CONF_DIR_VAR, Settings, deep_merge, load_settings
from pipelines.kafka.broker import log_tail

CHAOS_ENV = "chaos"
WRITE_KEY_NAME = "chaos"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def chaos_settings(
    settings: Settings, folder: Path, overrides: Mapping[str, Any], write_key: str
) -> Settings:
    """Write a config folder for the processes a part starts, and load it.

    ``<folder>/base.yaml`` is the caller's environment as written (``base.yaml`` overlaid by
    ``<env>.yaml``, ``${VARS}`` not yet read), with ``overrides`` on top and ``write_key`` as the
    only collector key; ``<folder>/chaos.yaml`` is empty. A child started with
    ``LAKEHOUSE_CONF_DIR=<folder> … --env chaos`` loads the same Settings as the ones returned.
    """
    source = Path(settings.conf_dir)
    merged = _yaml(source / "base.yaml")
    merged = deep_merge(merged, _yaml(source / f"{settings.env}.yaml"))
    merged = deep_merge(merged, dict(overrides))
    collector = dict(merged.get("collector") or {})
    collector["write_keys"] = {WRITE_KEY_NAME: write_key}
    merged["collector"] = collector
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    (folder / f"{CHAOS_ENV}.yaml").write_text("{}\n")
    return load_settings(CHAOS_ENV, conf_dir=folder)


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class CollectorProcess:
    """``lakehouse collector serve --env chaos`` as a child process on a fixed port.

    ``start()`` returns once ``/healthz`` answers; ``kill()`` is SIGKILL (a crash), ``stop()``
    SIGTERM (a deploy: in-flight requests finish, Kafka is flushed). Restarting keeps the port,
    so clients keep their endpoint. Output goes to ``log_file``.
    """

    def __init__(self, conf_dir: Path, port: int, log_file: Path) -> None:
        self.conf_dir = conf_dir
        self.port = port
        self.log_file = log_file
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Start it and wait until ``/healthz`` answers; returns the seconds that took.

        Raises:
            RuntimeError: it exited, or did not answer within ``timeout_s`` (with its log's tail).
        """
        if self.alive:
            raise RuntimeError(f"the collector on port {self.port} is already running")
        started = time.monotonic()
        # The child imports the same package as this process, whatever is installed.
        source = str(Path(pipelines.__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, CONF_DIR_VAR: str(self.conf_dir), "PYTHONPATH": path}
        command = [sys.executable, "-m", "pipelines.cli", "collector", "serve"]
        command += ["--env", CHAOS_ENV, "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_file.open("ab") as out:
            out.write(f"--- start {self.starts + 1} at {time.ctime()}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C in the terminal reaches us; we stop it
            )
        self.starts += 1
        deadline = started + timeout_s
        while not self.healthy():
            if not self.alive:
                raise RuntimeError(
                    f"the collector exited with code {self.returncode} while starting; "
                    f"{self.log_file} ends with:\n{log_tail(self.log_file)}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"the collector did not answer /healthz on port {self.port} within "
                    f"{timeout_s:.0f}s; {self.log_file} ends with:\n{log_tail(self.log_file)}"
                )
            time.sleep(0.05)
        return time.monotonic() - started

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """Whether ``GET /healthz`` answers 200 now."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self._proc is not None and self._proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout_s``); returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._proc.returncode

    def __enter__(self) -> CollectorProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def resident_bytes(pid: int) -> int | None:
    """A process's resident memory (``VmRSS``), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass
class RssWindow:
    """Resident memory over one stretch of time: at its start, and the highest sample in it."""

    before: int
    peak: int

    @property
    def rise(self) -> int:
        return max(0, self.peak - self.before)


class RssSampler:
    """Samples a process's resident memory every ``interval_s`` on a thread: the overall peak,
    and the peak within ``window()`` stretches (one request at a time)."""

    def __init__(self, pid_of: Callable[[], int | None], interval_s: float = 0.02) -> None:
        self._pid_of = pid_of
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._windows: list[RssWindow] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peak = 0
        self.samples = 0

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @contextmanager
    def window(self) -> Iterator[RssWindow]:
        """Measure one stretch: ``before`` is sampled on entry, ``peak`` covers until exit
        (sampled once more on exit, so a short stretch is never unmeasured)."""
        now = self._sample()
        window = RssWindow(before=now, peak=now)
        with self._lock:
            self._windows.append(window)
        try:
            yield window
        finally:
            self._sample()
            with self._lock:
                self._windows.remove(window)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def _sample(self) -> int:
        pid = self._pid_of()
        rss = resident_bytes(pid) if pid is not None else None
        if rss is None:
            return 0
        with self._lock:
            self.samples += 1
            self.peak = max(self.peak, rss)
            for window in self._windows:
                window.peak = max(window.peak, rss)
        return rss
