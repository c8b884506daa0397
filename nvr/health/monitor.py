"""Health of the station: one :class:`CameraHealth` per camera, the alarm store, storage alarms, webhooks.

The station owns one :class:`HealthMonitor`.  It is built with the station
(so that it sees every source's first state change), started with it, told
when the storage is accepted (the alarm store moves onto it), and stopped
first on shutdown so that open alarms are closed as "shutdown" and not as
cleared.  It knows the station only through what it is given: the cameras'
streams, a way to run tasks, the storage's state and the recorders' last
writes (callables), so this package never imports the wiring above it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from av.video.frame import VideoFrame

from nvr.base.config import Config
from nvr.health.alarms import ALARMS_FILE, AlarmStore, AlarmType, severity_for
from nvr.health.camera import CameraHealth
from nvr.health.onvif_health import OnvifHealth
from nvr.health.webhooks import WebhookSender
from recorder.storage import free_space
from recorder.thumbnails import ThumbnailStore, jpeg_of
from streams.camera import CameraStreams
from streams.hub import HubReader

log = logging.getLogger(__name__)

_STORAGE_CHECK_SECONDS = 5.0
# Keyframe analysis is small and bursty; two threads keep one slow decode from delaying every camera.
_ANALYSIS_THREADS = 2


Spawn = Callable[[str, Callable[[], Awaitable[None]]], object]


@dataclass(frozen=True, slots=True)
class StorageState:
    """The recording storage as retention last saw it (None from the provider while it is refused)."""

    root: Path
    disk_full: bool
    free_percent: float


class HealthMonitor:
    def __init__(self, config: Config, cameras: Mapping[str, CameraStreams], spawn: Spawn,
                 storage: Callable[[], StorageState | None], last_write: Callable[[str], float | None]) -> None:
        self.spawn = spawn
        self.storage = storage
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
        self.thumbnails: ThumbnailStore | None = None  # on the storage, once it is accepted
        for camera_id, runtime in cameras.items():
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
                last_write=_last_write_of(last_write, camera_id),
                thumbnail=self._thumbnail_of(camera_id),
                substream=None if runtime.live_hub is None or runtime.live_source is None
                else (runtime.live_hub, runtime.live_source),
            )
            for hub in (runtime.hub, runtime.live_hub):
                if hub is not None:
                    hub.drop_listeners.append(self._count_drop)
            # The long-lived reader has a series from the start; viewers appear when they drop. (The recorder
            # is a sink on the camera's thread, not a reader: its losses are the recorder core's own count.)
            self.reader_drops[(camera_id, f"health:{camera_id}")] = 0
        self.onvif = self._onvif_health(config, cameras)

    def _onvif_health(self, config: Config, cameras: Mapping[str, CameraStreams]) -> dict[str, OnvifHealth]:
        """The cameras' ONVIF links, turned into alarms (clock drift, the camera's own events)."""
        found = {}
        for camera_id, runtime in cameras.items():
            if runtime.onvif is not None:
                found[camera_id] = OnvifHealth(camera_id, runtime.onvif, self.alarms, severity_for(runtime.config.zone),
                                               config.health.clock_tolerance_seconds)
        return found

    def segment_meta_of(self, camera_id: str) -> Callable[[], dict[str, Any]] | None:
        """What each new segment of the camera records of its ONVIF link (clock offset); None without one."""
        onvif = self.onvif.get(camera_id)
        return onvif.segment_meta if onvif is not None else None

    def _thumbnail_of(self, camera_id: str) -> Callable[[float, VideoFrame], None]:
        def keep(at: float, frame: VideoFrame) -> None:
            """Worker thread: a thumbnail of the keyframe just analysed, unless the disk is refused or full."""
            state = self.storage()
            if self.thumbnails is not None and state is not None and not state.disk_full:
                self.thumbnails.put(camera_id, at, jpeg_of(frame))
        return keep

    def _count_drop(self, reader: HubReader) -> None:
        camera = reader.hub.name.split("/", 1)[0]
        key = (camera, reader.name)
        self.reader_drops[key] = self.reader_drops.get(key, 0) + 1

    def start(self) -> None:
        spawn = self.spawn
        spawn("alarms-heartbeat", self.alarms.heartbeat)
        spawn("storage-health", self._watch_storage)
        for camera_id, camera_health in self.cameras.items():
            spawn(f"health:{camera_id}", camera_health.run)
        for index, sender in enumerate(self.webhooks):
            spawn(f"webhook:{index}", sender.run)
        for camera_id, onvif in self.onvif.items():
            spawn(f"onvif:{camera_id}", onvif.link.run)

    def relearn(self, camera_id: str) -> bool:
        camera_health = self.cameras.get(camera_id)
        if camera_health is None:
            return False
        camera_health.relearn()
        return True

    async def storage_ready(self, root: Path) -> None:
        """The storage was accepted: keep alarms and thumbnails on it from now on."""
        self.thumbnails = ThumbnailStore(root)
        try:
            await self.alarms.attach(root / ALARMS_FILE)
        except Exception:
            log.error("cannot keep alarms in %s; keeping them in memory", root / ALARMS_FILE, exc_info=True)

    async def _watch_storage(self) -> None:
        while not self._stopping:
            state = self.storage()
            if state is not None:
                try:
                    self.storage_space = await asyncio.to_thread(free_space, state.root)
                except OSError as exc:
                    log.debug("cannot read free space: %s", exc)
                details = {"free_percent": round(state.free_percent, 2)}
                if state.disk_full:
                    self.alarms.open(None, AlarmType.DISK_FULL, severity_for(None), details)
                else:
                    self.alarms.close(None, AlarmType.DISK_FULL, details)
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
        for onvif in self.onvif.values():
            onvif.link.stop()
        await self.alarms.shutdown()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _last_write_of(last_write: Callable[[str], float | None], camera_id: str) -> Callable[[], float | None]:
    def of_camera() -> float | None:
        return last_write(camera_id)

    return of_camera
