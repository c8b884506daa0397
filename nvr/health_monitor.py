"""Wiring of camera health: one :class:`CameraHealth` per camera, the alarm store, storage alarms, webhooks, metrics.

The daemon owns one :class:`HealthMonitor`.  It is built with the daemon (so
that it sees every source's first state change), started with it, told when
the storage is accepted (the alarm store moves onto it), and stopped first on
shutdown so that open alarms are closed as "shutdown" and not as cleared.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from nvr.alarms import ALARMS_FILE, AlarmStore, AlarmType, severity_for
from nvr.metrics import build_registry
from nvr.webhooks import WebhookSender
from recorder.storage import free_space
from streams.health import CameraHealth
from streams.hub import HubReader

if TYPE_CHECKING:
    from nvr.daemon import CameraRuntime, Daemon

log = logging.getLogger(__name__)

_STORAGE_CHECK_SECONDS = 5.0
# Keyframe analysis is small and bursty; two threads keep one slow decode from delaying every camera.
_ANALYSIS_THREADS = 2


class HealthMonitor:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        config = daemon.config
        self.alarms = AlarmStore()
        self.executor = ThreadPoolExecutor(max_workers=_ANALYSIS_THREADS, thread_name_prefix="health")
        self.cameras: dict[str, CameraHealth] = {}
        self.reader_drops: dict[tuple[str, str], int] = {}
        self.storage_space: tuple[int, int] = (0, 0)
        self.webhooks = [WebhookSender(hook, config.alerts, config.station.id) for hook in config.alerts.webhooks]
        for sender in self.webhooks:
            self.alarms.listeners.append(sender.submit)
        self._stopping = False
        self._wake = asyncio.Event()
        for camera_id, runtime in daemon.cameras.items():
            camera = runtime.config
            self.cameras[camera_id] = CameraHealth(
                camera_id,
                severity_for(camera.zone),
                runtime.source,
                runtime.hub,
                config.health,
                config.health.for_camera(camera.health),
                self.alarms,
                self.executor,
                record=camera.record,
                last_write=_last_write(runtime),
            )
            for hub in (runtime.hub, runtime.live_hub):
                if hub is not None:
                    hub.drop_listeners.append(self._count_drop)
            # The long-lived readers have series from the start; viewers appear when they drop.
            self.reader_drops[(camera_id, f"health:{camera_id}")] = 0
            if camera.record:
                self.reader_drops[(camera_id, f"recorder:{camera_id}")] = 0
        self.registry: CollectorRegistry = build_registry(daemon, self)

    def _count_drop(self, reader: HubReader) -> None:
        camera = reader.hub.name.split("/", 1)[0]
        key = (camera, reader.name)
        self.reader_drops[key] = self.reader_drops.get(key, 0) + 1

    def start(self) -> None:
        spawn = self.daemon.spawn
        spawn("alarms-heartbeat", self.alarms.heartbeat)
        spawn("storage-health", self._watch_storage)
        for camera_id, camera_health in self.cameras.items():
            spawn(f"health:{camera_id}", camera_health.run)
        for index, sender in enumerate(self.webhooks):
            spawn(f"webhook:{index}", sender.run)

    def relearn(self, camera_id: str) -> bool:
        camera_health = self.cameras.get(camera_id)
        if camera_health is None:
            return False
        camera_health.relearn()
        return True

    async def storage_ready(self, root: Path) -> None:
        """The storage was accepted: keep alarms on it from now on."""
        try:
            await self.alarms.attach(root / ALARMS_FILE)
        except Exception:
            log.error("cannot keep alarms in %s; keeping them in memory", root / ALARMS_FILE, exc_info=True)

    async def _watch_storage(self) -> None:
        while not self._stopping:
            retention = self.daemon.retention
            if self.daemon.index is not None:
                try:
                    self.storage_space = await asyncio.to_thread(free_space, self.daemon.root)
                except OSError as exc:
                    log.debug("cannot read free space: %s", exc)
            if retention is not None:
                if retention.disk_full:
                    self.alarms.open(
                        None,
                        AlarmType.DISK_FULL,
                        severity_for(None),
                        {"free_percent": round(retention.last_free_percent, 2)},
                    )
                else:
                    self.alarms.close(
                        None, AlarmType.DISK_FULL, {"free_percent": round(retention.last_free_percent, 2)}
                    )
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=_STORAGE_CHECK_SECONDS)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """Stop watching, close open alarms as "shutdown", flush the store. Idempotent."""
        self._stopping = True
        self._wake.set()
        for camera_health in self.cameras.values():
            camera_health.stop()
        for sender in self.webhooks:
            sender.stop()
        await self.alarms.shutdown()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _last_write(runtime: CameraRuntime) -> Callable[[], float | None]:
    def last_write() -> float | None:
        recorder = runtime.recorder
        if recorder is None or not recorder.core.last_write_mono:
            return None
        return recorder.core.last_write_mono

    return last_write
