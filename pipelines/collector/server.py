"""Running the collector: in the foreground (``lakehouse collector serve``) or on a background
thread (the demo, benchmarks and tests), with a graceful stop that lets requests finish and
Kafka acknowledge what they produced."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Callable
from types import TracebackType

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from pipelines.collector.app import REFUSED, Collector
from pipelines.collector.publisher import AsyncPublisher, BrokerSource
from pipelines.config import Settings
from pipelines.contracts.registry import ContractRegistry

SHUTDOWN_GRACE_S = 10.0


class CollectorServer:
    """One collector bound to ``host:port`` (port 0 = a free port), on the running event loop.

    ``bootstrap`` is a broker list, or a ``BrokerSource`` (e.g. ``resolve_bootstrap`` of the
    settings) that the producer reads again to follow brokers that moved.
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str | BrokerSource,
        *,
        host: str | None = None,
        port: int | None = None,
        registry: ContractRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.host = host or settings.collector.host
        self.port = settings.collector.port if port is None else port
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.collector: Collector | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        """Bind, start serving and return the base URL.

        Raises:
            OSError: the address is taken (the message names it).
        """
        publisher = AsyncPublisher(
            self.settings.kafka,
            self.bootstrap,
            linger_ms=self.settings.collector.linger_ms,
            timeout_s=self.settings.collector.produce_timeout_s,
            reresolve_s=self.settings.collector.broker_reresolve_s,
        )
        self.collector = Collector(self.settings, publisher, self._registry)
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(
            self.collector.application(),
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE_S,
            # aiohttp's keep-alive timer starts when a connection opens and again after each
            # answer, is not reset by incoming bytes, and closes the connection if no complete
            # request head arrived by then: a header timeout (slowloris, silent clients) that
            # also ends idle keep-alive connections.
            keepalive_timeout=self.settings.collector.header_timeout_s,
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        server.__class__ = _CollectorServer  # aiohttp has no hook to choose its handler class
        await web.SockSite(self._runner, sock).start()
        return self.url

    async def stop(self) -> int:
        """Stop accepting, let in-flight requests finish, flush Kafka; returns unacknowledged."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.collector is None:
            return 0
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.collector.publisher.close)


def serve(
    settings: Settings,
    bootstrap: str | BrokerSource,
    *,
    host: str | None = None,
    port: int | None = None,
    on_ready: Callable[[str], None] = lambda _url: None,
) -> int:
    """Serve until SIGINT/SIGTERM, then stop gracefully; returns unacknowledged messages."""

    async def main() -> int:
        server = CollectorServer(settings, bootstrap, host=host, port=port)
        url = await server.start()
        on_ready(url)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        return await server.stop()

    return asyncio.run(main())


class BackgroundCollector:
    """A collector on its own thread and event loop; a context manager.

    ``stop()`` and ``start()`` may be called repeatedly (tests restart it mid-run on the same
    port to show clients lose nothing).
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str | BrokerSource,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.host = host
        self.port = port
        self.server: CollectorServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundCollector:
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="collector", daemon=True)
        self._thread.start()
        self._loop = loop
        self.server = CollectorServer(self.settings, self.bootstrap, host=self.host, port=self.port)
        asyncio.run_coroutine_threadsafe(self.server.start(), loop).result(timeout=30)
        self.port = self.server.port  # keep the port across restarts
        return self

    def stop(self) -> int:
        if self._loop is None or self.server is None:
            return 0
        undelivered = asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(
            timeout=SHUTDOWN_GRACE_S + 30
        )
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None
        return undelivered

    @property
    def collector(self) -> Collector:
        assert self.server is not None and self.server.collector is not None
        return self.server.collector

    def __enter__(self) -> BackgroundCollector:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"the collector cannot listen on {host}:{port} ({exc.strerror}); "
            "pick another with --port or collector.port"
        ) from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class _CollectorHandler(RequestHandler):
    """aiohttp's connection handler, with two changes.

    A request it cannot parse (a header with a bare CR, a header line over 8 KiB, …) is
    answered and logged *without* the offending bytes: they may be an ``Authorization`` header
    holding a write key, which aiohttp would otherwise print in its log and echo in the 400 body.

    A refusal before authentication (401, or 400 for a repeated credential header) closes the
    connection as soon as it is sent. aiohttp would keep reading ("lingering")
    up to 10 s of a body the handler left unread, and keep the connection for another request;
    an unauthenticated client gets its answer and nothing more. Other answers given before the
    body (413, 415, 408) keep aiohttp's bounded lingering, so an authenticated client that is
    still sending can finish and read, say, the 413 that tells it to split its batch.
    """

    async def finish_response(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> tuple[StreamResponse, bool]:
        answered = await super().finish_response(request, resp, start_time)
        if resp.status == 401 or resp.get(REFUSED):
            self.force_close()  # the answer is written; the transport sends it, then closes
        return answered

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        withheld = (
            None
            if exc is None
            else HttpProcessingError(
                code=status,
                message=f"{type(exc).__name__}; details withheld (a header may hold a write key)",
            )
        )
        safe = None if message is None else "malformed request (details withheld)"
        return super().handle_error(request, status, withheld, safe)


class _CollectorServer(Server):
    def __call__(self) -> RequestHandler:
        return _CollectorHandler(self, loop=self._loop, **self._kwargs)
