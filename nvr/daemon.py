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
from recorder.index import SegmentIndex
from recorder.reconcile import reconcile
from recorder.recorder import Recorder
from recorder.retention import Retention
from recorder.storage import INDEX_FILE, StorageError, check_storage
from streams.hub import Hub
from streams.rtsp_source import RtspSource

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 10.0
_RESTART_PAUSE = 2.0
_STORAGE_RETRY_SECONDS = 15.0


@dataclass(slots=True)
class CameraRuntime:
    """Everything that runs for one configured camera."""

    config: Camera
    hub: Hub
    source: RtspSource
    live_hub: Hub | None = None
    live_source: RtspSource | None = None
    recorder: Recorder | None = None

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
        self.root = config.storage.path
        self.index: SegmentIndex | None = None
        self.retention: Retention | None = None
        self.storage_error: str | None = None
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
        if any(c.record for c in self.config.cameras):
            if not await self._start_recording():
                self.spawn("storage-check", self._wait_for_storage)
        log.info("started %d camera(s) for station %s", len(self.cameras), self.config.station.id)

    async def _start_recording(self) -> bool:
        """Check the disk, reconcile it with the index, start retention and one recorder per camera."""
        storage = self.config.storage
        try:
            await asyncio.to_thread(check_storage, self.root, self.config.station.id, storage.id)
        except StorageError as exc:
            if self.storage_error != str(exc):
                log.critical("NOT RECORDING: %s", exc)
            self.storage_error = str(exc)
            return False
        self.storage_error = None
        index = SegmentIndex(self.root / INDEX_FILE)
        await index.call(index.open)
        report = await index.call(reconcile, self.root, index)
        if report.recovered or report.indexed_orphans or report.missing or report.unrecoverable:
            log.warning(
                "storage reconciled: %d recovered, %d orphan(s) indexed, %d missing, %d unreadable",
                len(report.recovered), len(report.indexed_orphans), len(report.missing), len(report.unrecoverable),
            )
        self.index = index
        self.retention = Retention(self.root, storage, index)
        self.spawn("retention", self.retention.run)
        loop = asyncio.get_running_loop()
        retention = self.retention

        def on_write_error(_message: str) -> None:
            loop.call_soon_threadsafe(retention.kick)

        for runtime in self.cameras.values():
            if runtime.config.record:
                runtime.recorder = Recorder(
                    runtime.config.id, runtime.hub, self.root, storage, index, on_error=on_write_error
                )
                self.spawn(f"recorder:{runtime.config.id}", runtime.recorder.run)
        log.info("recording into %s", self.root)
        return True

    async def _wait_for_storage(self) -> None:
        while not self._stopping:
            await asyncio.sleep(_STORAGE_RETRY_SECONDS)
            if await self._start_recording():
                return

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
            if runtime.recorder is not None:
                runtime.recorder.stop()
        if self.retention is not None:
            self.retention.stop()
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
            if runtime.recorder is not None:
                runtime.recorder.shutdown_executor()
        if self.index is not None:
            await asyncio.to_thread(self.index.close)


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
