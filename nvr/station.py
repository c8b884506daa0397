"""The station's wiring: a typed container of its parts, built from the frozen config, started and stopped in order.

camera → hub → {recorder, live viewers, health}: for every configured camera
the station builds its streams (:class:`streams.camera.CameraStreams`); the
:class:`~nvr.recording.RecordingService` records the main hubs; the
:class:`~nvr.health.monitor.HealthMonitor` watches sources and hubs; the web
app (given to :func:`nvr.service.run` by the CLI: this module does not know
it) reads the parts through the interfaces ``web`` declares
(:mod:`web.ports`).  Every long-lived task runs under the station's
:class:`~nvr.supervisor.Supervisor`.

Start: the audit start entry, health, every source, recording.  Stop (within
a bound): health first (open alarms close as "shutdown", not as cleared),
then sources and recorders are told to stop and finish by themselves
(closing and indexing their segments), the rest is cancelled, hubs close,
the stop entry and the stop checkpoint are written, databases close.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from nvr.base.config import Config, Web
from nvr.health.monitor import HealthMonitor, StorageState
from nvr.identity.audit import AuditLog
from nvr.identity.authdb import AuthDatabase
from nvr.metrics import build_registry
from nvr.recording import RecordedCamera, RecordingService
from nvr.supervisor import Phase, Supervisor
from streams.camera import CameraStreams
from streams.rtsp_source import SourceState

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 10.0


class Station:
    def __init__(self, config: Config, config_file: Path | None = None) -> None:
        self.config = config
        self.config_file = config_file
        self.started_at = time.time()
        self.supervisor = Supervisor()
        # Users, sessions, tokens and the audit trail; its thread starts on first use.
        self.auth = AuthDatabase(config.auth_database)
        # The audit log writes (and fsyncs) on a connection and thread of its own, so
        # that a burst of entries never delays the identity lookups of requests.
        self.audit = AuditLog(AuthDatabase(config.auth_database))
        self.cameras: dict[str, CameraStreams] = {
            camera.id: CameraStreams.build(camera, config.ingest, config.health) for camera in config.cameras
        }
        # Built before any source runs so that it sees every state change.
        self.health = HealthMonitor(config, self.cameras, self.supervisor.spawn, self._storage_state,
                                    self._last_write)
        self.recording = RecordingService(
            config, self.supervisor, self.audit,
            [RecordedCamera(c.id, c.record, self.cameras[c.id].hub, self.health.segment_meta_of(c.id),
                            self.cameras[c.id].onvif) for c in config.cameras],
            on_ready=self.health.storage_ready, alarms=self.health.alarms,
        )
        self.registry: CollectorRegistry = build_registry(self)

    def _storage_state(self) -> StorageState | None:
        recording = self.recording
        retention = recording.retention
        if recording.index is None or retention is None:
            return None
        return StorageState(root=recording.root, disk_full=retention.disk_full,
                            free_percent=retention.last_free_percent)

    def _last_write(self, camera_id: str) -> float | None:
        recorder = self.recording.recorders.get(camera_id)
        if recorder is None or not recorder.core.last_write_mono:
            return None
        return recorder.core.last_write_mono

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self._audit_start()
        self.health.start()
        for streams in self.cameras.values():
            for source in streams.sources:
                self.supervisor.spawn(f"source:{source.name}", source.run, Phase.FINISH)
        await self.recording.start()
        log.info("started %d camera(s) for station %s", len(self.cameras), self.config.station.id)

    async def stop(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        self.supervisor.stopping = True
        await self.health.stop()
        for streams in self.cameras.values():
            for source in streams.sources:
                source.stop()
        self.recording.request_stop()
        await self.supervisor.stop(timeout)
        for streams in self.cameras.values():
            streams.close()
        stopped = asyncio.wrap_future(self.audit.record("daemon.stop", actor="system"))
        # The last checkpoint witnesses the closed segments and the stop entry itself.
        await self.recording.close(stopped)
        await self._audit_stop()

    def stuck_recorders(self) -> list[str]:
        """Cameras online for a while whose recorder wrote nothing for twice the stall limit and says
        no why (a write error or a refused disk is reported, not stuck): a hung thread, which only a
        restart by the watchdog cures."""
        limit = 2 * self.config.health.recording_stall_seconds
        now_mono, now = time.monotonic(), time.time()
        stuck = []
        for camera_id, recorder in self.recording.recorders.items():
            source = self.cameras[camera_id].source
            if recorder.core.error is not None or source.state is not SourceState.ONLINE:
                continue
            if now - source.changed_at > limit and now_mono - recorder.core.last_write_mono > limit:
                stuck.append(camera_id)
        return stuck

    # -- audit ----------------------------------------------------------------------------

    async def _audit_start(self) -> None:
        """Record the start, and a config change since the last recorded start (by the file's hash)."""
        details: dict[str, str] = {}
        if self.config_file is not None:
            try:
                data = await asyncio.to_thread(self.config_file.read_bytes)
                details = {"config_file": str(self.config_file), "config_sha256": hashlib.sha256(data).hexdigest()}
            except OSError as exc:
                log.warning("cannot hash %s for the audit log: %s", self.config_file, exc.strerror)
        try:
            previous = await self.audit.db.call(self.audit.last_details, "daemon.start")
            head = await self.audit.db.call(self.audit.head)
        except Exception as exc:  # noqa: BLE001 - the daemon runs on; every request will answer 503
            log.critical("the auth database %s cannot be opened: %s", self.auth.path, exc)
            return
        log.info("audit log head: entry %d, hash %s", *head)
        old = (previous or {}).get("config_sha256")
        new = details.get("config_sha256")
        if new is not None and old is not None and old != new:
            self.audit.record("config.changed", actor="system", previous_sha256=old, **details)
        self.audit.record("daemon.start", actor="system", **details)

    async def _audit_stop(self) -> None:
        try:
            head = await self.audit.db.call(self.audit.head)
            log.info("audit log head: entry %d, hash %s", *head)
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            log.error("audit log unavailable at shutdown: %s", exc)
        await asyncio.to_thread(self.audit.db.close)
        await asyncio.to_thread(self.auth.close)

    # -- as nvr.service.run() runs it ------------------------------------------------------

    @property
    def name(self) -> str:
        return f"station {self.config.station.id}"

    @property
    def web_settings(self) -> Web:
        return self.config.web

    @property
    def camera_streams(self) -> int:
        return sum(len(streams.sources) for streams in self.cameras.values())

    async def serving(self) -> None:
        pass

    def problem(self) -> str | None:
        """None while every component task is alive and no recorder is stuck (fed to the systemd watchdog)."""
        dead = self.supervisor.dead()
        if dead:
            return f"component(s) stopped: {', '.join(dead)}"
        stuck = self.stuck_recorders()
        if stuck:
            return f"recorder(s) stuck: {', '.join(stuck)}"
        return None
