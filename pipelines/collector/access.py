"""Who may write and how fast: write-key authentication and a token bucket per key."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import SecretStr

from pipelines.config import ConfigError, RateLimitSettings


class WriteKeys:
    """Configured write keys, matched in constant time.

    Every configured key is compared on every request (no early exit), so neither which key
    matched nor how much of a key was right shows in the response time.
    """

    def __init__(self, keys: Mapping[str, SecretStr]) -> None:
        if not keys:
            raise ConfigError(
                "collector.write_keys is empty, so no client could write; add one, e.g. "
                "collector.write_keys.web: ${LAKEHOUSE_WRITE_KEY_WEB}"
            )
        empty = sorted(name for name, key in keys.items() if not key.get_secret_value())
        if empty:
            raise ConfigError(
                f"collector.write_keys {', '.join(empty)} is empty; set its secret (the variable "
                "named for it in conf/<env>.yaml) before starting the collector"
            )
        self._keys = [(name, key.get_secret_value().encode()) for name, key in keys.items()]

    def match(self, presented: str | None) -> str | None:
        """The name of the key ``presented`` equals, or None."""
        if not presented:
            return None
        # Header bytes that are not UTF-8 arrive as surrogates: compare them as the raw bytes
        # (no match), never fail on them.
        candidate = presented.encode("utf-8", "surrogateescape")
        found: str | None = None
        for name, key in self._keys:
            if hmac.compare_digest(candidate, key):
                found = name
        return found


CREDENTIAL_HEADERS = ("Authorization", "X-Write-Key")


def repeated_credential(headers: Mapping[str, str]) -> str | None:
    """The credential header a request carries more than once, or None.

    Two ``Authorization`` (or ``X-Write-Key``) headers are ambiguous: a proxy or a client bug
    added one, and which one a server reads differs between servers. Such a request is refused
    rather than authenticated with whichever header happens to come first.
    """
    getall = getattr(headers, "getall", None)
    if getall is None:  # a plain mapping holds each name once
        return None
    for name in CREDENTIAL_HEADERS:
        if len(getall(name, [])) > 1:
            return name
    return None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The write key a request carries: ``Authorization: Bearer <key>``, Segment's
    ``Authorization: Basic base64(<key>:)``, or ``X-Write-Key: <key>``."""
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return headers.get("X-Write-Key") or None


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per write key, counted in events: ``events_per_second`` refill up to
    ``burst``. A request takes all its events or none."""

    def __init__(self, settings: RateLimitSettings) -> None:
        self._rate = settings.events_per_second
        self._burst = float(settings.burst)
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, events: int, now: float | None = None) -> float:
        """Take ``events`` tokens; returns 0 when allowed, else the seconds to wait."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if events <= bucket.tokens:
            bucket.tokens -= events
            return 0.0
        if events > self._burst:
            return math.inf  # can never fit: the request must be split
        return (events - bucket.tokens) / self._rate


def truncate_ip(address: str) -> str:
    """Zero the host part: IPv4 to its /24, IPv6 to its /48 (unparseable input is dropped)."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return ""
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)
