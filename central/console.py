"""``nvr console``: wiring and lifecycle of the central console (no cameras, no footage)."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time

from central.app import ConsoleRuntime, create_console_app
from central.config import ConsoleConfig
from nvr import systemd

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 10.0


async def serve(config: ConsoleConfig) -> None:
    """Run the console in the foreground until SIGTERM or SIGINT."""
    from nvr.daemon import start_web, tls_context

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        ssl_context = tls_context(config)  # type: ignore[arg-type]  # reads .web.tls only
    except (OSError, ssl.SSLError) as exc:
        log.error("cannot use console.tls: %s", exc)
        raise SystemExit(1) from None
    if not config.web.is_loopback and ssl_context is None:
        log.warning("console.listen %s is not loopback and console.tls is not set: passwords cross the network "
                    "unencrypted", config.console.listen)

    runtime = ConsoleRuntime(config)
    try:
        head = await runtime.auth.call(runtime.audit.head)
    except Exception as exc:  # noqa: BLE001 - any database failure stops the console here, loudly
        log.critical("the console's auth database %s cannot be opened: %s", runtime.auth.path, exc)
        raise SystemExit(1) from None
    log.info("audit log head: entry %d, hash %s", *head)
    runtime.audit.record("console.start", actor="system", console=config.console.id,
                         stations=[s.id for s in config.stations])
    try:
        runner = await start_web(create_console_app(runtime), config.web.host, config.web.port, ssl_context)
    except OSError as exc:
        log.error("cannot listen on %s: %s", config.console.listen, exc.strerror)
        await asyncio.to_thread(runtime.auth.close)
        raise SystemExit(1) from None
    runtime.fleet.start()
    log.info("console %s listening on %s://%s, following %d station(s)", config.console.id,
             "https" if ssl_context else "http", config.console.listen, len(config.stations))
    systemd.notify("READY=1\nSTATUS=following stations")

    await stop.wait()
    log.info("shutting down")
    systemd.notify("STOPPING=1")
    started = time.monotonic()
    try:
        await asyncio.wait_for(runner.shutdown(), SHUTDOWN_SECONDS / 2)
    except TimeoutError:
        log.warning("web shutdown took longer than %.0f s", SHUTDOWN_SECONDS / 2)
    await runtime.fleet.stop()
    await asyncio.to_thread(runtime.witness.close)
    await runner.cleanup()
    runtime.audit.record("console.stop", actor="system")
    await asyncio.to_thread(runtime.auth.close)
    log.info("stopped in %.1f s", time.monotonic() - started)
