"""Daemon lifecycle: wires cameras, hubs, readers and the web server together.

This module owns no media logic; it builds the components from the frozen
config, keeps strong references to their tasks, restarts a component that
crashed, reports readiness and liveness to systemd, and shuts everything
down within a bound on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from nvr import systemd
from nvr.config import Camera, Config
from streams.hub import Hub
from streams.rtsp_source import RtspSource

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 10.0
_RESTART_PAUSE = 2.0


@dataclass(slots=True)
class CameraRuntime:
    """Everything that runs for one configured camera."""

    config: Camera
    hub: Hub
    source: RtspSource
    live_hub: Hub | None = None
    live_source: RtspSource | None = None

    @property
    def view_hub(self) -> Hub:
        """The hub live viewers read: the substream when there is one."""
        return self.live_hub or self.hub

    @property
    def sources(self) -> tuple[RtspSource, ...]:
        return (self.source,) if self.live_source is None else (self.source, self.live_source)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_at = time.time()
        self.cameras: dict[str, CameraRuntime] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        for camera in config.cameras:
            self.cameras[camera.id] = self._build_camera(camera)

    def _build_camera(self, camera: Camera) -> CameraRuntime:
        ingest, health = self.config.ingest, self.config.health
        hub = Hub(camera.id, reader_queue_packets=ingest.reader_queue_packets, gop_cache_packets=ingest.gop_cache_packets)
        source = RtspSource(camera.id, camera.url, hub, ingest=ingest, health=health)
        runtime = CameraRuntime(config=camera, hub=hub, source=source)
        if camera.live_url:
            name = f"{camera.id}/live"
            runtime.live_hub = Hub(
                name, reader_queue_packets=ingest.reader_queue_packets, gop_cache_packets=ingest.gop_cache_packets
            )
            runtime.live_source = RtspSource(name, camera.live_url, runtime.live_hub, ingest=ingest, health=health)
        return runtime

    async def start(self) -> None:
        for runtime in self.cameras.values():
            for source in runtime.sources:
                self.spawn(f"source:{source.name}", source.run)
        log.info("started %d camera(s) for station %s", len(self.cameras), self.config.station.id)

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run a long-lived component; if it crashes, log it and start it again after a pause."""
        task = asyncio.get_running_loop().create_task(self._supervise(name, factory), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        while not self._stopping:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.error("%s crashed; restarting in %.0f s", name, _RESTART_PAUSE, exc_info=True)
                await asyncio.sleep(_RESTART_PAUSE)

    def healthy(self) -> bool:
        """Fed to the systemd watchdog: every component task is alive."""
        return not self._stopping and all(not t.done() for t in self._tasks)

    async def stop(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        self._stopping = True
        for runtime in self.cameras.values():
            for source in runtime.sources:
                source.stop()
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for runtime in self.cameras.values():
            runtime.hub.close()
            if runtime.live_hub is not None:
                runtime.live_hub.close()


async def serve(config: Config) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT."""
    from web.app import create_app  # web depends on nvr, not the other way round at import time

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if not config.web.is_loopback:
        log.warning(
            "web.listen %s is not a loopback address: the API is reachable from the network", config.web.listen
        )
    daemon = Daemon(config)
    await daemon.start()
    app = create_app(daemon)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.web.host, config.web.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s: %s", config.web.listen, exc.strerror)
        await daemon.stop()
        await runner.cleanup()
        raise SystemExit(1) from None
    log.info("web server listening on http://%s", config.web.listen)
    systemd.notify("READY=1\nSTATUS=running")
    watchdog = _start_watchdog(daemon)

    await stop.wait()
    log.info("shutting down")
    systemd.notify("STOPPING=1")
    started = time.monotonic()
    if watchdog is not None:
        watchdog.cancel()
    await runner.shutdown()
    await daemon.stop(timeout=max(1.0, SHUTDOWN_SECONDS - 2.0))
    await runner.cleanup()
    log.info("stopped in %.1f s", time.monotonic() - started)


def _start_watchdog(daemon: Daemon) -> asyncio.Task[None] | None:
    interval = systemd.watchdog_interval()
    if interval is None:
        return None

    async def ping() -> None:
        while True:
            if daemon.healthy():
                systemd.notify("WATCHDOG=1")
            else:
                log.error("not feeding the systemd watchdog: a component stopped")
            await asyncio.sleep(interval)

    return asyncio.get_running_loop().create_task(ping(), name="watchdog")
