"""One POST of a batch to the collector over a kept-alive connection, and what its reply means.

The wire protocol is fixed by the collector: ``POST <endpoint>/v1/events`` with body
``{"batch": [...], "sent_at": "<RFC 3339 UTC>"}``; 200 carries per-event results in request
order, 400 a malformed body, 401/403 a bad write key, 413 a body too large, 429/5xx a failure
worth retrying. Everything here is stdlib so that apps embedding the SDK pull in nothing heavy.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from functools import cache
from gzip import compress
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

import orjson

EVENTS_PATH = "/v1/events"
# Gzip level 3 is within ~10% of level 9's size on JSON at a fraction of the CPU, which is the
# app's CPU.
_COMPRESS_LEVEL = 3
# A kept-alive connection the server has since closed fails with one of these on reuse.
_STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class _ConnectError(Exception):
    """No connection could be made (refused, no route, DNS, connect timeout, TLS): the collector
    is unreachable, as opposed to slow or overloaded, so the tracker spools rather than retries.
    """


class Verdict(Enum):
    """What the tracker should do with a batch after one POST."""

    DELIVERED = "delivered"  # 2xx: done; per-event results say accepted or rejected
    TOO_LARGE = "too_large"  # 413: split it
    MALFORMED = "malformed"  # 400: the collector cannot parse it; resending will not help
    REFUSED = "refused"  # 401/403 and other 4xx: a configuration problem a human must fix
    RETRY = "retry"  # 408/429/5xx, timeouts, connection errors


@dataclass(frozen=True)
class Reply:
    """The collector's answer to one POST (or the connection error in its place)."""

    verdict: Verdict
    status: int | None
    detail: str
    retry_after_s: float | None = None
    unreachable: bool = False
    accepted: int | None = None  # None: a 2xx without the usual summary (all taken)
    rejected: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)


def utc_stamp(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and ``Z``, as the contract's date-times are written."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def batch_body(events: Sequence[bytes], sent_at: datetime) -> bytes:
    """The request body, joined from already-encoded events (nothing is re-encoded)."""
    stamp = utc_stamp(sent_at)
    return b'{"batch":[' + b",".join(events) + b'],"sent_at":"' + stamp.encode() + b'"}'


@cache
def user_agent() -> str:
    try:
        return f"lakehouse-tracker/{version('lakehouse-pipelines')}"
    except PackageNotFoundError:
        return "lakehouse-tracker/0+unknown"


class Transport:
    """POSTs batches to one collector, reusing one connection and reopening it after errors.

    Used from the tracker's sender thread only; ``interrupt`` is the one call safe from another
    thread (close() uses it to stop waiting on a hung collector).
    """

    def __init__(self, endpoint: str, write_key: str, timeout_s: float, gzip: bool) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"tracker endpoint {endpoint!r} is not an http(s) URL; pass the collector's base "
                "URL, e.g. http://127.0.0.1:8090"
            )
        if not write_key:
            raise ValueError("write_key is empty; pass the write key the collector was given")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}{EVENTS_PATH}"
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path.rstrip("/") + EVENTS_PATH
        self._timeout_s = timeout_s
        self._gzip = gzip
        self._headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {write_key}",
            "User-Agent": user_agent(),
        }
        if gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._conn: http.client.HTTPConnection | None = None
        self._conn_lock = threading.Lock()

    def post(self, events: Sequence[bytes], retry_count: int = 0) -> Reply:
        """Send one batch; never raises for network or HTTP failures, it reports them."""
        body = batch_body(events, datetime.now(UTC))
        if self._gzip:
            body = compress(body, compresslevel=_COMPRESS_LEVEL, mtime=0)
        headers = dict(self._headers)
        if retry_count:
            headers["X-Retry-Count"] = str(retry_count)
        try:
            status, retry_after, data = self._round_trip(body, headers)
        except _ConnectError as exc:
            cause = exc.__cause__
            detail = f"{type(cause).__name__}: {cause}"
            return Reply(Verdict.RETRY, None, detail, unreachable=True)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Reply(Verdict.RETRY, None, f"{type(exc).__name__}: {exc}")
        return _reply(status, retry_after, data)

    def interrupt(self) -> None:
        """Abort a request in progress (from another thread); it then reports a RETRY."""
        with self._conn_lock:
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _round_trip(self, body: bytes, headers: dict[str, str]) -> tuple[int, str | None, bytes]:
        while True:
            conn = self._connection()
            reused = conn.sock is not None
            if not reused:
                try:
                    conn.connect()
                except OSError as exc:
                    self.close()
                    raise _ConnectError from exc
            try:
                conn.request("POST", self._path, body, headers)
                response = conn.getresponse()
                data = response.read()
            except _STALE_CONNECTION:
                self.close()
                if reused:
                    continue  # the server dropped an idle connection: one fresh try
                raise
            return response.status, response.getheader("Retry-After"), data

    def _connection(self) -> http.client.HTTPConnection:
        with self._conn_lock:
            if self._conn is None:
                if self._https:
                    self._conn = http.client.HTTPSConnection(
                        self._host,
                        self._port,
                        timeout=self._timeout_s,
                        context=ssl.create_default_context(),
                    )
                else:
                    self._conn = http.client.HTTPConnection(
                        self._host, self._port, timeout=self._timeout_s
                    )
            return self._conn


def _reply(status: int, retry_after: str | None, data: bytes) -> Reply:
    if 200 <= status < 300:
        return _delivered(status, data)
    detail = f"HTTP {status}: {_error_text(data)}"
    if status == 413:
        return Reply(Verdict.TOO_LARGE, status, detail)
    if status == 400:
        return Reply(Verdict.MALFORMED, status, detail)
    if status in (408, 429) or status >= 500:
        return Reply(Verdict.RETRY, status, detail, retry_after_s=_seconds(retry_after))
    return Reply(Verdict.REFUSED, status, detail)


def _delivered(status: int, data: bytes) -> Reply:
    try:
        parsed = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        # A 2xx without the usual summary still means the collector took the batch.
        return Reply(Verdict.DELIVERED, status, f"HTTP {status}")
    results = parsed.get("results")
    return Reply(
        Verdict.DELIVERED,
        status,
        f"HTTP {status}",
        accepted=int(parsed.get("accepted", 0)),
        rejected=int(parsed.get("rejected", 0)),
        results=results if isinstance(results, list) else [],
    )


def _error_text(data: bytes) -> str:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed:
        return str(parsed["error"])
    return data[:200].decode(errors="replace").strip() or "(no body)"


def _seconds(header: str | None) -> float | None:
    """A numeric Retry-After; the HTTP-date form is ignored (the collector never sends it)."""
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
