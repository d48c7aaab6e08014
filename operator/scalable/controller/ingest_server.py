"""Serving the ingestion app so slow or idle clients cannot starve the operator.

The ingestion server runs in the operator's process, next to kopf and the Lease: a client that
opens connections and then sends nothing (or one byte a second) would hold a file descriptor
each until the process could not accept a legitimate push, renew the Lease or reach the API
server. aiohttp bounds the keep-alive idle time between requests, but not how long a client may
take to send a request's headers, and not how many connections are open; this module adds both:

* **Header deadline.** After a connection opens, and after every answer on it, the next
  request's line and headers must have arrived within ``header_timeout_s``
  (``idle_timeout_s`` between requests on a kept-alive connection), else the connection is
  closed. The deadline is for the whole header block, not per byte, so trickling does not help.
* **Body deadline.** The handler reads the body within ``body_timeout_s`` or answers 408
  (see :func:`scalable.controller.ingest.ingest_app`).
* **Connection limits.** At most ``max_connections`` open connections, and at most
  ``max_connections_per_peer`` from one address; one more is answered ``503`` with
  ``Connection: close`` at once, without reading anything.

:class:`_Guard` wraps each connection's aiohttp protocol and only watches bytes go by: it finds
the end of a header block (``CRLF CRLF``) and hears from the app's middleware
(:func:`answered`) when an answer was produced. A body that happens to hold ``CRLF CRLF``
only makes the guard think a request started early; the body deadline still holds.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["IngestLimits", "LIMITS_KEY", "serve_ingest", "answered"]

_HEADERS_END = b"\r\n\r\n"


@dataclass(frozen=True)
class IngestLimits:
    """Timeouts (seconds) and connection limits of the ingestion server."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 30.0
    max_connections: int = 512
    max_connections_per_peer: int = 64


class _Connections:
    """Open connections, in total and per peer address."""

    def __init__(self, limits: IngestLimits) -> None:
        self.limits = limits
        self.total = 0
        self.per_peer: dict[str, int] = {}
        self.guards: dict[int, _Guard] = {}

    def admit(self, peer: str) -> bool:
        if self.total >= self.limits.max_connections or self.per_peer.get(peer, 0) >= self.limits.max_connections_per_peer:
            return False
        self.total += 1
        self.per_peer[peer] = self.per_peer.get(peer, 0) + 1
        return True

    def release(self, peer: str) -> None:
        self.total -= 1
        left = self.per_peer.get(peer, 1) - 1
        if left > 0:
            self.per_peer[peer] = left
        else:
            self.per_peer.pop(peer, None)


def _refusal(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Retry-After: 5\r\nConnection: close\r\n\r\n").encode() + body


class _Guard(asyncio.Protocol):
    """One connection: admits it or refuses it, and closes it when headers are late."""

    def __init__(self, inner: Any, connections: _Connections) -> None:
        self.inner = inner
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.admitted = False
        self.headers_seen = 0
        self.answers = 0
        self.tail = b""
        self.deadline: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol, delegated to aiohttp's protocol once admitted
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self.connections.admit(self.peer):
            transport.write(_refusal("503 Service Unavailable", "too many open connections; try again shortly"))  # type: ignore[attr-defined]
            transport.close()
            return
        self.admitted = True
        self.connections.guards[id(transport)] = self
        self._arm(self.connections.limits.header_timeout_s)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if self.headers_seen <= self.answers:  # waiting for a request's headers
            window = self.tail + data
            self.headers_seen += window.count(_HEADERS_END)
            self.tail = window[-3:]
            if self.headers_seen > self.answers:
                self._disarm()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        self.admitted = False
        self._disarm()
        self.connections.guards.pop(id(self.transport), None)
        self.connections.release(self.peer)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()

    # -- deadlines
    def answered(self) -> None:
        """An answer went out: the next request's headers are due within the idle timeout."""
        self.answers += 1
        self.tail = b""
        if self.headers_seen <= self.answers:
            self.headers_seen = self.answers
            self._arm(self.connections.limits.idle_timeout_s)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.deadline = asyncio.get_running_loop().call_later(seconds, self._late)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _late(self) -> None:
        self.deadline = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


GUARD_KEY = web.AppKey("ingest_connections", _Connections)
#: the limits an app was built for (its handler reads the body timeout from them)
LIMITS_KEY = web.AppKey("ingest_limits", IngestLimits)


def answered(request: web.Request) -> None:
    """Tell the connection's guard that ``request`` was answered (called by the app's middleware)."""
    connections = request.app.get(GUARD_KEY)
    if connections is None or request.transport is None:
        return
    guard = connections.guards.get(id(request.transport))
    if guard is not None:
        guard.answered()


class _GuardedRunner(web.AppRunner):
    """An AppRunner whose protocol factory wraps every connection in a :class:`_Guard`."""

    def __init__(self, app: web.Application, connections: _Connections, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._connections = connections

    @property
    def server(self) -> Any:
        inner = super().server
        if inner is None:
            return None
        connections = self._connections
        return lambda: _Guard(inner(), connections)


async def serve_ingest(app: web.Application, host: str, port: int, ssl_context: Any = None) -> tuple[web.AppRunner, int]:
    """Serve ``app`` with the deadlines and limits it was built with (``app[LIMITS_KEY]``, else
    the defaults); returns the runner and the bound port."""
    limits = app.get(LIMITS_KEY) or IngestLimits()
    connections = _Connections(limits)
    app[GUARD_KEY] = connections
    runner = _GuardedRunner(app, connections, access_log=None, keepalive_timeout=limits.idle_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner, runner.addresses[0][1]
