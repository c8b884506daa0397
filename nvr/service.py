"""Running a service in the foreground: the one runner for the station daemon and the central console.

It owns what both share: the descriptor limit, TLS, the HTTP server with its
connection limits (:mod:`web.conn_limits`), SIGTERM/SIGINT, systemd's
``READY``/``STOPPING`` and the watchdog.  What runs inside is a
:class:`Service`: the station (:class:`nvr.station.Station`) or the console
(:class:`central.console.Console`).  Order, for both:

1. raise the soft descriptor limit (before cameras and databases open theirs);
2. ``service.start()``; 3. serve the app (made by the caller: this module
knows no app), or stop the service and exit 1 if the address cannot be had;
4. ``service.serving()``; READY=1; the watchdog is fed while
``service.problem()`` is None;
5. on a signal: STOPPING=1, the HTTP server stops taking requests (bounded),
``service.stop()``, the server is cleaned up.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from nvr.base import systemd
from nvr.base.config import Web, WebLimits
from web.conn_limits import ConnectionCollector, ConnectionLimiter, LimitedSite, body_deadline

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 10.0
_WEB_SHUTDOWN_SECONDS = 3.0
# RLIMIT_NOFILE cannot go above the kernel's nr_open (1048576 by default), even when the hard limit is
# "unlimited".
_NOFILE_CEILING = 1 << 20


class Service(Protocol):
    """What the runner runs."""

    @property
    def name(self) -> str:
        """For the log: "station st-12", "console central"."""
        ...

    @property
    def web_settings(self) -> Web: ...

    @property
    def camera_streams(self) -> int:
        """RTSP streams the service keeps open: each keeps descriptors in reserve from HTTP."""
        ...

    @property
    def registry(self) -> CollectorRegistry | None: ...

    async def start(self) -> None: ...

    async def serving(self) -> None:
        """Called once the app is served, before READY=1."""
        ...

    def problem(self) -> str | None:
        """None while every component is alive; else why the watchdog must not be fed."""
        ...

    async def stop(self, timeout: float) -> None: ...


def tls_context(settings: Web) -> ssl.SSLContext | None:
    """HTTPS with TLS 1.2 or newer when ``tls`` is set; raises OSError/SSLError on a bad cert or key."""
    tls = settings.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    return context


def raise_nofile_limit() -> int:
    """Raise the soft descriptor limit to the hard one (a service starts at 1024); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NOFILE_CEILING if hard == resource.RLIM_INFINITY else min(hard, _NOFILE_CEILING)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, target, exc)
            return soft
        log.info("raised the descriptor limit (RLIMIT_NOFILE) from %d to %d", soft, target)
        return target
    return soft


async def start_web(app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None,
                    limits: WebLimits | None = None, camera_streams: int = 0,
                    registry: CollectorRegistry | None = None) -> web.AppRunner:
    """Serve ``app``; raises OSError if it cannot listen.

    Connections go through :class:`web.conn_limits.ConnectionLimiter`: HTTP may use the descriptors
    left after ``limits.fd_reserve`` plus ``fd_reserve_per_camera`` per camera stream, so that
    recording, RTSP sources and databases keep theirs whatever clients do.  Its counts go to
    ``registry`` when one is given.
    """
    from prometheus_client import ProcessCollector

    limits = limits or WebLimits()
    soft = raise_nofile_limit()
    reserve = limits.fd_reserve + limits.fd_reserve_per_camera * camera_streams
    budget = soft - reserve
    if budget < 64:
        log.warning("only %d descriptor(s) left for HTTP connections (limit %d, reserve %d): raise LimitNOFILE",
                    max(budget, 0), soft, reserve)
    # Long-lived handlers (event feeds, clip downloads) end on shutdown; do not wait a minute for them.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=_WEB_SHUTDOWN_SECONDS,
                           keepalive_timeout=limits.keepalive_timeout_seconds)

    def handler_factory() -> web.RequestHandler:
        assert runner.server is not None
        return runner.server()

    limiter = ConnectionLimiter(limits, budget, handler_factory)
    app.middlewares.insert(0, body_deadline(limiter))
    await runner.setup()
    try:
        await LimitedSite(runner, host, port, limiter, ssl_context=ssl_context).start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("HTTP: at most %d connection(s), %d per address (descriptor limit %d, %d kept for recording)",
             limiter.limit, limits.max_connections_per_address, soft, reserve)
    if registry is not None:
        registry.register(ConnectionCollector(limiter.counts))
        ProcessCollector(registry=registry)  # process_open_fds, process_max_fds beside the budget
    return runner


async def run(service: Service, app_factory: Callable[[], web.Application]) -> None:
    """Run ``service`` and serve ``app_factory()`` until SIGTERM or SIGINT; SystemExit(1) if it cannot start."""
    raise_nofile_limit()  # before cameras and databases open theirs
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settings = service.web_settings
    try:
        ssl_context = tls_context(settings)
    except (OSError, ssl.SSLError) as exc:
        log.error("cannot use the TLS certificate %s / key %s: %s", settings.tls.cert if settings.tls else "",
                  settings.tls.key if settings.tls else "", exc)
        raise SystemExit(1) from None
    if not settings.is_loopback and ssl_context is None:
        log.warning("%s listens on %s, not a loopback address, without TLS: passwords and video cross the "
                    "network unencrypted", service.name, settings.listen)
    await service.start()
    try:
        runner = await start_web(app_factory(), settings.host, settings.port, ssl_context,
                                 limits=settings.limits, camera_streams=service.camera_streams,
                                 registry=service.registry)
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.listen, exc.strerror)
        await service.stop(SHUTDOWN_SECONDS)
        raise SystemExit(1) from None
    await service.serving()
    log.info("%s: web server listening on %s://%s", service.name, "https" if ssl_context else "http",
             settings.listen)
    systemd.notify("READY=1\nSTATUS=running")
    watchdog = _start_watchdog(service)

    await stop.wait()
    log.info("shutting down")
    systemd.notify("STOPPING=1")
    started = time.monotonic()
    if watchdog is not None:
        watchdog.cancel()
    try:
        await asyncio.wait_for(runner.shutdown(), SHUTDOWN_SECONDS / 2)
    except TimeoutError:
        log.warning("web shutdown took longer than %.0f s", SHUTDOWN_SECONDS / 2)
    await service.stop(max(1.0, SHUTDOWN_SECONDS - 2.0 - (time.monotonic() - started)))
    await runner.cleanup()
    log.info("stopped in %.1f s", time.monotonic() - started)


def _start_watchdog(service: Service) -> asyncio.Task[None] | None:
    interval = systemd.watchdog_interval()
    if interval is None:
        return None

    async def ping() -> None:
        while True:
            problem = service.problem()
            if problem is None:
                systemd.notify("WATCHDOG=1")
            else:
                log.error("not feeding the systemd watchdog: %s", problem)
            await asyncio.sleep(interval)

    return asyncio.get_running_loop().create_task(ping(), name="watchdog")
