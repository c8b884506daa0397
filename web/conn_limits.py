"""HTTP connection limits: how much of the daemon's descriptors and time the network may take.

The web server (station and central console) accepts on listening sockets of
its own here instead of asyncio's server, so that every connection passes the
limits while it costs nothing but the accepted socket:

- a total cap, the smaller of ``max_connections`` and the descriptor budget (the
  soft RLIMIT_NOFILE minus a reserve that recording, RTSP sources, databases and
  live sessions keep whatever the web side does), and a cap per client address;
- at the total cap, a connection from an address that holds fewer connections
  than another takes the place of that address's longest idle connection (no
  request yet, or between keep-alive requests), so that a flood of idle or
  half-sent requests from a few addresses cannot lock out anyone else; otherwise,
  and at the per-address cap, the new connection is refused: a 503 JSON answer
  over plain HTTP, closed at once under TLS (before any handshake);
- the first request's headers (and under TLS the handshake) must be in within
  ``header_timeout_seconds`` of connecting, a request's body within
  ``body_timeout_seconds`` of its headers (:func:`body_deadline`, 408); idle
  keep-alive connections close after ``keepalive_timeout_seconds`` (aiohttp's
  own timer, which also bounds the headers of later requests);
- accept() failing for want of descriptors pauses accepting for a moment
  instead of failing in a loop.

Everything is counted (:class:`ConnectionCounts`, rendered by
``ConnectionCollector``) and logged rate-limited: a WARNING the first
time, then at most one summary per ``log_interval_seconds``; nothing here logs per
connection.  Everything runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import ssl
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nvr.base.config import WebLimits

log = logging.getLogger(__name__)

# Connections accepted per wake-up of the listening socket (asyncio accepts 100).  A connection
# we close keeps its descriptor until the loop's next turn, so within one turn at most this many
# descriptors beyond the cap are in use: the cap leaves room for them within the budget.
_ACCEPT_BATCH = 64
# The kernel's queue of connections not accepted yet costs the daemon no descriptor; a deep one
# keeps a real client's SYN from being dropped (and retried only a second later) during a flood.
LISTEN_BACKLOG = 1024
# How long accepting pauses after accept() found no descriptor (asyncio pauses 1 s too).
_ACCEPT_PAUSE_SECONDS = 1.0
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

# Why a connection was refused at accept, and why an admitted one was closed by us.
REFUSE_REASONS = ("max_connections", "per_address", "out_of_descriptors")
CLOSE_REASONS = ("header_timeout", "body_timeout", "evicted")

_MESSAGES = {
    "max_connections": "the server has too many open connections; try again shortly",
    "per_address": "too many open connections from your address; close some and try again",
}


def _refusal(reason: str) -> bytes:
    body = json.dumps({"error": "too_many_connections", "message": _MESSAGES[reason]}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_REFUSALS = {reason: _refusal(reason) for reason in _MESSAGES}


@dataclass
class ConnectionCounts:
    """What the metrics read: open connections, the cap in force, refusals and closes by reason."""

    limit: int
    descriptor_budget: int
    open: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    closed: Counter[str] = field(default_factory=Counter)


def _waiting_for_request(handler: RequestHandler) -> bool:
    # aiohttp's RequestHandler awaits ``_waiter`` exactly while it has no complete request to
    # handle (before the first and between keep-alive requests).  aiohttp is pinned; the flood
    # test's keep-alive case fails if a new version changes this.
    waiter = getattr(handler, "_waiter", None)
    return waiter is not None and not waiter.done()


class _Connection(asyncio.Protocol):
    """One admitted connection: the limiter's bookkeeping around aiohttp's protocol for it."""

    def __init__(self, limiter: ConnectionLimiter, sock: socket.socket, address: str) -> None:
        self.limiter = limiter
        self.sock = sock
        self.address = address
        self.inner: RequestHandler | None = None
        self.transport: asyncio.Transport | None = None
        self.setup: asyncio.Task[Any] | None = None
        self.headers_seen = False
        self._tail = b""
        self.released = False
        loop = asyncio.get_running_loop()
        self._header_timer: asyncio.TimerHandle | None = loop.call_later(
            limiter.limits.header_timeout_seconds, self._header_timeout
        )

    @property
    def idle(self) -> bool:
        """No request in progress: still in the TLS handshake or headers, or between requests."""
        if self.inner is None or not self.headers_seen:
            return True
        return _waiting_for_request(self.inner)

    # -- asyncio.Protocol, forwarded to aiohttp ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.released:  # closed by us while the transport was being made
            transport.abort()
        # aiohttp's protocol is made when the first bytes come: a connection that never sends
        # costs it nothing.

    def _start_inner(self) -> RequestHandler:
        assert self.transport is not None
        self.inner = self.limiter.handler_factory()
        self.inner.connection_made(self.transport)
        return self.inner

    def data_received(self, data: bytes) -> None:
        if not self.headers_seen:
            chunk = self._tail + data
            if b"\r\n\r\n" in chunk or b"\n\n" in chunk:
                self.headers_seen = True
                self._cancel_header_timer()
            else:
                self._tail = chunk[-3:]
        self.limiter.touch(self)
        if not self.released:
            (self.inner or self._start_inner()).data_received(data)

    def eof_received(self) -> None:
        # aiohttp's answer is None too: the transport closes its side once the client's is done.
        if self.inner is not None:
            self.inner.eof_received()

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self.limiter.release(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    # -- our own closes -------------------------------------------------------------------------

    def protocol_factory(self) -> _Connection:
        return self

    def close(self, reason: str | None) -> None:
        """Close on our initiative (timeout, eviction, shutdown): the slot is free at once, the
        descriptor on the loop's next turn (the cap leaves room for that)."""
        self._cancel_header_timer()
        self.limiter.release(self, reason)
        if self.transport is not None:
            self.transport.abort()
        elif self.setup is not None:
            self.setup.cancel()  # its done callback closes the socket

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.headers_seen and (self.inner is None or _waiting_for_request(self.inner)):
            self.close("header_timeout")

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def setup_done(self, task: asyncio.Task[Any]) -> None:
        """The transport could not be made (TLS handshake failed or timed out, or we closed it)."""
        failed = task.cancelled() or task.exception() is not None
        if failed and self.transport is None:
            self.sock.close()
            self._cancel_header_timer()
            self.limiter.release(self)


class ConnectionLimiter:
    """Admits, counts and evicts the web server's connections; see the module docstring."""

    def __init__(self, limits: WebLimits, descriptor_budget: int,
                 handler_factory: Callable[[], RequestHandler]) -> None:
        self.limits = limits
        self.handler_factory = handler_factory
        self.counts = ConnectionCounts(
            limit=max(1, min(limits.max_connections, descriptor_budget - _ACCEPT_BATCH)),
            descriptor_budget=descriptor_budget,
        )
        # Oldest activity first, so that eviction finds the longest-idle connection quickly.
        self._all: OrderedDict[_Connection, None] = OrderedDict()
        self._by_address: dict[str, OrderedDict[_Connection, None]] = {}
        self._log = _SummaryLog(limits.log_interval_seconds)

    @property
    def limit(self) -> int:
        return self.counts.limit

    def admit(self, sock: socket.socket, address: str) -> _Connection | str:
        """Make room for a new connection from ``address`` if needed; a string: refused, and why."""
        mine = self._by_address.get(address)
        held = len(mine) if mine is not None else 0
        if held >= self.limits.max_connections_per_address:
            return self._refused("per_address", address)
        if len(self._all) >= self.counts.limit and not self._evict_for(held):
            return self._refused("max_connections", address)
        conn = _Connection(self, sock, address)
        self._all[conn] = None
        self._by_address.setdefault(address, OrderedDict())[conn] = None
        self.counts.open = len(self._all)
        return conn

    def touch(self, conn: _Connection) -> None:
        if not conn.released:
            self._all.move_to_end(conn)
            self._by_address[conn.address].move_to_end(conn)

    def release(self, conn: _Connection, reason: str | None = None) -> None:
        if conn.released:
            return
        conn.released = True
        self._all.pop(conn, None)
        mine = self._by_address.get(conn.address)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self._by_address[conn.address]
        self.counts.open = len(self._all)
        if reason is not None:
            self.note_closed(reason)


    def note_closed(self, reason: str) -> None:
        self.counts.closed[reason] += 1
        self._log.note(reason, warn=False)

    def out_of_descriptors(self) -> None:
        self.counts.refused["out_of_descriptors"] += 1
        self._log.note("out_of_descriptors", warn=True, detail=f"pausing accept for {_ACCEPT_PAUSE_SECONDS:.0f} s")

    def close_pending(self) -> None:
        """On shutdown: connections aiohttp does not know yet (no transport) are ours to close."""
        for conn in list(self._all):
            if conn.inner is None:
                conn.close(None)
        self._log.flush()  # the last summary, not lost with the process

    def _evict_for(self, held: int) -> bool:
        """At the cap, a newcomer from an address holding ``held`` connections takes the place of the
        longest idle one of an address holding more than ``held + 1`` (the busiest first): shares
        even out between addresses, and a flood from a few addresses makes room for everyone else
        while its own new connections are refused, which costs far less than admitting them."""
        busiest = max(self._by_address.values(), key=len)
        if len(busiest) <= held + 1:
            return False
        if self._evict(busiest):
            return True
        for candidates in sorted(self._by_address.values(), key=len, reverse=True):  # rare: all busy there
            if len(candidates) <= held + 1:
                return False
            if self._evict(candidates):
                return True
        return False

    def _evict(self, candidates: OrderedDict[_Connection, None]) -> bool:
        for conn in candidates:
            if conn.idle:
                conn.close("evicted")
                return True
        return False

    def _refused(self, reason: str, address: str) -> str:
        self.counts.refused[reason] += 1
        detail = (f"{len(self._all)} open, limit {self.counts.limit}, {self.limits.max_connections_per_address} "
                  f"per address; last refused from {address}")
        self._log.note(reason, warn=True, detail=detail)
        return reason


class _SummaryLog:
    """A WARNING the first time, then one summary of the counts per interval: never a line per event."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._pending: Counter[str] = Counter()
        self._warn = False
        self._detail = ""
        self._last = -interval
        self._timer: asyncio.TimerHandle | None = None

    def note(self, reason: str, warn: bool, detail: str = "") -> None:
        self._pending[reason] += 1
        self._warn = self._warn or warn
        self._detail = detail or self._detail
        now = time.monotonic()
        if now - self._last >= self.interval:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._last + self.interval - now, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        if not self._pending:
            return
        level = logging.WARNING if self._warn else logging.DEBUG
        counts = ", ".join(f"{reason}: {count}" for reason, count in sorted(self._pending.items()))
        log.log(level, "HTTP connections refused or closed by the limits (%s)%s", counts,
                f"; {self._detail}" if self._detail else "")
        self._pending.clear()
        self._warn = False
        self._detail = ""
        self._last = time.monotonic()


LONG_BODY = "streams_long_body"  # set on a handler that enforces its own body timeouts


def body_deadline(limiter: ConnectionLimiter) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: a request whose body is not in ``body_timeout_seconds`` after its headers gets 408."""
    timeout = limiter.limits.body_timeout_seconds

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        content = request.content
        # A route that streams large bodies (a body-camera upload) bounds its own reads: a stall
        # timeout per read and a total limit (web/bodycams.py), not this one deadline.
        if content.is_eof() or getattr(request.match_info.handler, LONG_BODY, False):
            response: web.StreamResponse = await handler(request)
            return response

        def expire() -> None:
            if not content.is_eof():
                limiter.note_closed("body_timeout")
                body = json.dumps({"error": "request_timeout", "message": "the request body came too slowly"})
                content.set_exception(web.HTTPRequestTimeout(text=body, content_type="application/json",
                                                             headers={"Connection": "close"}))

        timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            response = await handler(request)
            return response
        finally:
            timer.cancel()

    return middleware


class _Listener(asyncio.AbstractServer):
    """Listening sockets accepted by hand (see the module docstring): what BaseSite holds as its server."""

    def __init__(self, sockets: list[socket.socket], limiter: ConnectionLimiter,
                 ssl_context: ssl.SSLContext | None) -> None:
        self.sockets = sockets
        self.limiter = limiter
        self.ssl_context = ssl_context
        self._loop = asyncio.get_running_loop()
        self._serving = False
        self._setups: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self._serving = True
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _pause(self) -> None:
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
        self._loop.call_later(_ACCEPT_PAUSE_SECONDS, self._resume)

    def _resume(self) -> None:
        if self._serving:
            self.start()

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self.limiter.out_of_descriptors()
                    self._pause()
                    return
                continue  # ECONNABORTED and the like: that client is gone already
            conn.setblocking(False)
            address = str(peer[0]) if isinstance(peer, tuple) else "unix"
            admitted = self.limiter.admit(conn, address)
            if isinstance(admitted, str):
                self._refuse(conn, admitted)
                continue
            # Our header timer closes a slow handshake first; asyncio's is only a backstop.
            handshake = self.limiter.limits.header_timeout_seconds + 1 if self.ssl_context else None
            setup = self._loop.create_task(self._loop.connect_accepted_socket(
                admitted.protocol_factory, conn, ssl=self.ssl_context, ssl_handshake_timeout=handshake
            ))
            admitted.setup = setup
            self._setups.add(setup)
            setup.add_done_callback(self._setups.discard)
            setup.add_done_callback(admitted.setup_done)

    def _refuse(self, conn: socket.socket, reason: str) -> None:
        try:
            if self.ssl_context is None:
                # Whatever the client sent already is read first: closing with unread data
                # would reset the connection and lose the answer.
                try:
                    conn.recv(65536)
                except (BlockingIOError, InterruptedError):
                    pass
                conn.send(_REFUSALS[reason])
        except OSError:
            pass
        finally:
            conn.close()

    # -- asyncio.AbstractServer -------------------------------------------------------------------

    def close(self) -> None:
        if self._serving:
            for sock in self.sockets:
                self._loop.remove_reader(sock.fileno())
        self._serving = False
        for sock in self.sockets:
            sock.close()
        self.limiter.close_pending()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self.start()

    async def serve_forever(self) -> None:
        raise NotImplementedError

    async def wait_closed(self) -> None:
        return None


class LimitedSite(web.BaseSite):
    """A TCP site whose connections go through a :class:`ConnectionLimiter`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limiter: ConnectionLimiter,
                 ssl_context: ssl.SSLContext | None = None, backlog: int = LISTEN_BACKLOG) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self.limiter = limiter

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self._host or None, self._port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _name, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(self._backlog)
                sock.setblocking(False)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        listener = _Listener(sockets, self.limiter, self._ssl_context)
        listener.start()
        self._server = listener


class ConnectionCollector(Collector):
    """Prometheus view of :class:`ConnectionCounts` (owned here, where the numbers are): registered once the
    server listens."""

    def __init__(self, counts: ConnectionCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self.counts
        open_ = GaugeMetricFamily("nvr_http_connections", "Open HTTP connections")
        open_.add_metric([], counts.open)
        limit = GaugeMetricFamily(
            "nvr_http_connections_limit", "Most HTTP connections at once: web.limits or the descriptor budget"
        )
        limit.add_metric([], counts.limit)
        budget = GaugeMetricFamily(
            "nvr_http_descriptor_budget", "Descriptors HTTP may use: the soft RLIMIT_NOFILE minus the reserve"
        )
        budget.add_metric([], counts.descriptor_budget)
        refused = CounterMetricFamily(
            "nvr_http_connections_refused", "Connections refused at accept, by limit", labels=["reason"]
        )
        closed = CounterMetricFamily(
            "nvr_http_connections_closed", "Connections closed by a timeout or to make room", labels=["reason"]
        )
        for reason in REFUSE_REASONS:
            refused.add_metric([reason], counts.refused.get(reason, 0))
        for reason in CLOSE_REASONS:
            closed.add_metric([reason], counts.closed.get(reason, 0))
        yield from (open_, limit, budget, refused, closed)
