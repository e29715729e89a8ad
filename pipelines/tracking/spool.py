"""A bounded on-disk queue of event batches, so events outlive a collector outage or a restart.

Each batch is one file, ``<20-digit sequence>-<event count>.batch``: the events' JSON encodings,
one per line, gzipped. A file is written to ``*.tmp``, fsynced and renamed into place, so a
process killed at any moment leaves either a whole batch or a ``*.tmp`` that the next process
removes. Sequence numbers only grow (time in ns, bumped past the newest file on disk), so sorting
names gives oldest first. The event count in the name lets a restarted process know how many
events it holds without reading every file.

A lock file (``fcntl.flock``) keeps a second process, or a second ``Spool`` in this process,
from sharing the directory: both would deliver, and delete, the same files.
"""

from __future__ import annotations

import fcntl
import gzip
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
_BATCH_NAME = re.compile(r"^(\d{20})-(\d+)\.batch$")
# JSON compresses ~10x even at a low level; the spool is written on the app's threads.
_COMPRESS_LEVEL = 3


class SpoolLockedError(RuntimeError):
    """Another process (or another Tracker in this one) already uses the spool directory."""


class CorruptSpoolFileError(ValueError):
    """A spool file cannot be read back as the batch it claims to hold."""


@dataclass(frozen=True)
class SpoolFile:
    """One spooled batch: where it is, how many events it holds and its size on disk."""

    path: Path
    events: int
    size: int


class Spool:
    """Batches of encoded events on disk, oldest first, within ``max_bytes``.

    Thread-safe: the tracker's sender thread and an app thread whose memory queue overflowed may
    write at the same time.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_spool_bytes must be positive, got {max_bytes}")
        self.directory = Path(directory).expanduser()
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = _lock_directory(self.directory)
        self._files: list[SpoolFile] = []
        self._bytes = 0
        self._events = 0
        self._last_seq = 0
        self._scan()

    @property
    def events(self) -> int:
        """Events currently on disk (excluding files moved aside as corrupt)."""
        return self._events

    @property
    def size(self) -> int:
        """Bytes the spooled batches take on disk; never more than ``max_bytes``."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._files)

    def write(self, events: Sequence[bytes]) -> bool:
        """Write one batch durably; False (nothing written) when it would exceed ``max_bytes``.

        Raises:
            OSError: the disk refused the write (full, read-only, permissions).
        """
        if not events:
            return True
        data = gzip.compress(b"\n".join(events), compresslevel=_COMPRESS_LEVEL, mtime=0)
        with self._lock:
            if self._bytes + len(data) > self.max_bytes:
                return False
            self._last_seq = max(time.time_ns(), self._last_seq + 1)
            final = self.directory / f"{self._last_seq:020d}-{len(events)}.batch"
            _write_atomically(final, data)
            self._files.append(SpoolFile(final, len(events), len(data)))
            self._bytes += len(data)
            self._events += len(events)
        return True

    def oldest(self) -> SpoolFile | None:
        with self._lock:
            return self._files[0] if self._files else None

    def read(self, file: SpoolFile) -> list[bytes]:
        """The events of a spooled batch, each still valid JSON.

        Raises:
            CorruptSpoolFileError: the file is not a whole gzip of ``file.events`` JSON lines.
        """
        try:
            data = gzip.decompress(file.path.read_bytes())
        except (OSError, EOFError, zlib.error) as exc:
            raise CorruptSpoolFileError(f"not a readable gzip file ({exc})") from exc
        events = data.split(b"\n") if data else []
        if len(events) != file.events:
            raise CorruptSpoolFileError(
                f"holds {len(events)} events but its name says {file.events}"
            )
        for number, event in enumerate(events, start=1):
            try:
                orjson.loads(event)
            except orjson.JSONDecodeError as exc:
                raise CorruptSpoolFileError(f"event {number} is not valid JSON ({exc})") from exc
        return events

    def remove(self, file: SpoolFile) -> None:
        """Forget a batch that was delivered."""
        with self._lock:
            self._forget(file)
            file.path.unlink(missing_ok=True)

    def replace(self, file: SpoolFile, events: Sequence[bytes]) -> None:
        """Keep only ``events`` of a batch (the rest were delivered), in the same queue place."""
        data = gzip.compress(b"\n".join(events), compresslevel=_COMPRESS_LEVEL, mtime=0)
        # Same sequence number, new count: the batch keeps its place in the queue.
        seq = file.path.name.split("-", 1)[0]
        final = file.path.with_name(f"{seq}-{len(events)}.batch")
        with self._lock:
            _write_atomically(final, data)
            if final != file.path:
                file.path.unlink(missing_ok=True)
            index = self._files.index(file)
            self._files[index] = SpoolFile(final, len(events), len(data))
            self._bytes += len(data) - file.size
            self._events += len(events) - file.events

    def quarantine(self, file: SpoolFile, reason: str) -> Path:
        """Move a corrupt batch aside to ``*.corrupt`` (kept for a human, never re-sent)."""
        with self._lock:
            self._forget(file)
            return _move_aside(file.path, reason)

    def close(self) -> None:
        """Release the directory lock (the files stay for the next process)."""
        with self._lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _forget(self, file: SpoolFile) -> None:
        if file in self._files:
            self._files.remove(file)
            self._bytes -= file.size
            self._events -= file.events

    def _scan(self) -> None:
        """Adopt batches left by earlier processes; drop their half-written ``*.tmp`` files."""
        for path in sorted(self.directory.iterdir()):
            if path.suffix == ".tmp":
                # Only a writer killed mid-write leaves one; we hold the lock, so none is live.
                path.unlink(missing_ok=True)
                continue
            if path.suffix != ".batch":
                continue
            match = _BATCH_NAME.match(path.name)
            if match is None:
                _move_aside(path, "its name is not <sequence>-<events>.batch")
                continue
            file = SpoolFile(path, int(match.group(2)), path.stat().st_size)
            self._files.append(file)
            self._bytes += file.size
            self._events += file.events
            self._last_seq = max(self._last_seq, int(match.group(1)))


def _lock_directory(directory: Path) -> int:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise SpoolLockedError(
            f"spool directory {directory} is already in use (process {holder}); give each "
            "Tracker its own spool_dir, or close() the other one first"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _move_aside(path: Path, reason: str) -> Path:
    target = path.with_suffix(".corrupt")
    try:
        os.replace(path, target)
    except FileNotFoundError:
        log.warning("spool file %s vanished (%s); someone removed it by hand", path, reason)
        return target
    log.warning(
        "spool file %s is corrupt (%s); moved it to %s and carried on — inspect or delete it",
        path,
        reason,
        target,
    )
    return target


def _write_atomically(final: Path, data: bytes) -> None:
    tmp = final.with_name(final.name + ".tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is.
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
