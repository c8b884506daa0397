"""Daemon lifecycle: wires cameras, hubs, readers, recording and health together.

This module owns no media logic; it builds the components from the frozen
config, keeps strong references to their tasks, restarts a component that
crashed, and shuts everything down within a bound.  :func:`nvr.service.run`
runs it (the web server, signals, systemd readiness and watchdog); it does not
know the web app, which the CLI hands to the runner.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nvr.audit import AuditLog
from nvr.authdb import AuthDatabase
from nvr.config import Camera, Config, Web
from nvr.health_monitor import HealthMonitor
from nvr.timeutil import iso
from recorder import checkpoint as checkpoints
from recorder.archive import Archiver
from recorder.export_jobs import ExportLimits, ExportQueue
from recorder.index import SegmentIndex, SegmentRecord
from recorder.keys import StationKey
from recorder.reconcile import reconcile
from recorder.recorder import Recorder
from recorder.retention import Retention
from recorder.storage import INDEX_FILE, StorageError, check_storage
from streams.hub import Hub
from streams.rtsp_source import RtspSource, SourceState

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 10.0
_RESTART_PAUSE = 2.0
_STORAGE_RETRY_SECONDS = 15.0
_FINISH_BY_THEMSELVES = ("source:", "recorder:", "retention")


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
    def __init__(self, config: Config, config_file: Path | None = None) -> None:
        self.config = config
        self.config_file = config_file
        # Users, sessions, tokens and the audit trail; its thread starts on first use.
        self.auth = AuthDatabase(config.auth_database)
        # The audit log writes (and fsyncs) on a connection and thread of its own, so
        # that a burst of entries never delays the identity lookups of requests.
        self.audit = AuditLog(AuthDatabase(config.auth_database))
        self.started_at = time.time()
        self.cameras: dict[str, CameraRuntime] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.root = config.storage.path
        self.index: SegmentIndex | None = None
        self.retention: Retention | None = None
        self.storage_error: str | None = None
        self.key: StationKey | None = None
        self.exports: ExportQueue | None = None
        self.archiver: Archiver | None = None  # the off-site archive (recorder/archive.py), when configured
        self._checkpoint_lock = asyncio.Lock()
        for camera in config.cameras:
            self.cameras[camera.id] = self._build_camera(camera)
        # Built before any source runs so that it sees every state change.
        self.health = HealthMonitor(self)

    def _build_camera(self, camera: Camera) -> CameraRuntime:
        ingest, health = self.config.ingest, self.config.health
        hub = Hub(
            camera.id, reader_queue_packets=ingest.reader_queue_packets, gop_cache_packets=ingest.gop_cache_packets
        )
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
        await self._audit_start()
        self.health.start()
        for runtime in self.cameras.values():
            for source in runtime.sources:
                self.spawn(f"source:{source.name}", source.run)
        if any(c.record for c in self.config.cameras) and not await self._start_recording():
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
        await self.health.storage_ready(self.root)
        # A connection and thread of its own: a long sweep never delays a recorder's segment close.
        self.retention = Retention(self.root, storage, SegmentIndex(self.root / INDEX_FILE, name="retention"),
                                   on_delete=self._audit_deletion)
        if self.config.archive is not None:
            await self._start_archive(self.retention)
        self.spawn("retention", self.retention.run)
        self.key = await asyncio.to_thread(StationKey.load_or_create, self.root)
        log.info("station signing key %s", self.key.fingerprint)
        recordings = self.config.recordings
        self.exports = ExportQueue(
            self.root,
            self.config.exports_path,
            self.key,
            {"id": self.config.station.id, "name": self.config.station.name},
            {c.id: {"name": c.name, "zone": c.zone.value} for c in self.config.cameras},
            recordings.max_export_jobs,
            ExportLimits(quota_bytes=int(recordings.export_quota_mb * (1 << 20)),
                         keep_seconds=recordings.export_keep_hours * 3600,
                         keep_after_download_seconds=recordings.export_keep_hours_after_download * 3600,
                         min_free_percent=storage.min_free_percent),
            index=index,
            checkpoint=self.checkpoint,
        )
        await asyncio.to_thread(self.exports.prepare)
        self.retention.free_other = self.exports.free_space_for_recordings
        if self.archiver is not None:
            self.exports.archive = self.archiver.reader
        self.spawn("exports", self.exports.run)
        self.spawn("checkpoints", self._checkpoint_loop)
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

    async def _start_archive(self, retention: Retention) -> None:
        """Upload closed segments to the archive, and let retention delete archived copies first under pressure."""
        from recorder.archive import ArchiveCollector, archived_and_verified

        config = self.config.archive
        assert config is not None
        # Off the loop: making boto3's clients reads its service models (a tenth of a second of CPU).
        self.archiver = await asyncio.to_thread(Archiver, self.root, self.config.station.id, config,
                                                self.health.alarms)
        await self.archiver.open()  # creates its tables before retention looks at them
        self.health.registry.register(ArchiveCollector(self.archiver))
        if config.tiered_retention:
            retention.archived_first = lambda limit: archived_and_verified(retention.index.db, limit)
        retention.pressure_deletes_unarchived = config.pressure_deletes_unarchived
        self.spawn("archiver", self.archiver.run)

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

    def _audit_deletion(self, record: SegmentRecord, reason: str) -> None:
        # Called on the index thread; record() only queues.
        self.audit.record("retention.delete", actor="system", camera=record.camera, segment_id=record.id,
                          start=iso(record.start), end=iso(record.end), sha256=record.sha256,
                          chain_hash=record.chain_hash, reason=reason)

    async def checkpoint(self, reason: str) -> dict[str, Any] | None:
        """Sign a checkpoint of the audit log's and every camera's chain head, keep it in the index for
        witnesses to collect (GET /api/checkpoints) and write it to the journal. Returns its body."""
        index, key = self.index, self.key
        if index is None or key is None:
            return None
        async with self._checkpoint_lock:
            try:
                audit_head: tuple[int, str] | None = await self.audit.db.call(self.audit.head)
            except Exception as exc:  # noqa: BLE001 - the segment heads are still worth witnessing
                log.error("checkpoint without the audit head: the audit log is unavailable (%s)", exc)
                audit_head = None
            station = self.config.station.id

            def make() -> tuple[dict[str, Any], checkpoints.Envelope]:
                body = checkpoints.make_body(station=station, seq=index.next_checkpoint_seq(), now=time.time(),
                                             reason=reason, key=key, audit_head=audit_head,
                                             heads=index.chain_heads())
                envelope = checkpoints.sign(key, body)
                index.add_checkpoint(body["seq"], body["at_epoch"], envelope.body, envelope.signature)
                return body, envelope

            body, envelope = await index.call(make)
        # The journal is a second copy out of the daemon's reach (journald's files are root's).
        log.info("checkpoint %d (%s) signed: %s", body["seq"], reason, envelope.model_dump_json())
        return body

    async def _checkpoint_loop(self) -> None:
        await self.checkpoint("start")
        while not self._stopping:
            await asyncio.sleep(self.config.recordings.checkpoint_seconds)
            await self.checkpoint("periodic")

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
        """Fed to the systemd watchdog: every component task is alive and no recorder is stuck."""
        if self._stopping or any(t.done() for t in self._tasks):
            return False
        return not self.stuck_recorders()

    def stuck_recorders(self) -> list[str]:
        """Cameras online for a while whose recorder wrote nothing for twice the stall limit and says
        no why (a write error or a refused disk is reported, not stuck): a hung thread, which only a
        restart by the watchdog cures."""
        limit = 2 * self.config.health.recording_stall_seconds
        now_mono, now = time.monotonic(), time.time()
        stuck = []
        for runtime in self.cameras.values():
            recorder, source = runtime.recorder, runtime.source
            if recorder is None or recorder.core.error is not None or source.state is not SourceState.ONLINE:
                continue
            if now - source.changed_at > limit and now_mono - recorder.core.last_write_mono > limit:
                stuck.append(runtime.config.id)
        return stuck

    # -- as nvr.service.run() runs it ---------------------------------------------------

    @property
    def name(self) -> str:
        return f"station {self.config.station.id}"

    @property
    def web_settings(self) -> Web:
        return self.config.web

    @property
    def camera_streams(self) -> int:
        return sum(len(runtime.sources) for runtime in self.cameras.values())

    @property
    def registry(self) -> CollectorRegistry:
        return self.health.registry

    async def serving(self) -> None:
        pass

    def problem(self) -> str | None:
        if self.healthy():
            return None
        return f"a component stopped or a recorder is stuck ({', '.join(self.stuck_recorders()) or 'no recorder'})"

    async def stop(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        self._stopping = True
        await self.health.stop()
        for runtime in self.cameras.values():
            for source in runtime.sources:
                source.stop()
            if runtime.recorder is not None:
                runtime.recorder.stop()
        if self.retention is not None:
            self.retention.stop()
        if self.archiver is not None:
            self.archiver.stop()
        # Sources and recorders finish by themselves (closing and indexing the
        # open segments); the rest (queues, monitors) is cancelled after them.
        finishing = {t for t in self._tasks if t.get_name().startswith(_FINISH_BY_THEMSELVES)}
        if finishing:
            await asyncio.wait(finishing, timeout=timeout)
        pending = {t for t in self._tasks if not t.done()}
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
        stopped = self.audit.record("daemon.stop", actor="system")
        if self.index is not None:
            # The last checkpoint witnesses the closed segments and the stop entry itself.
            try:
                await asyncio.wait_for(asyncio.wrap_future(stopped), 2.0)
            except Exception as exc:  # noqa: BLE001 - the checkpoint is still made without it
                log.error("the daemon.stop audit entry was not written in time: %s", exc)
            try:
                await self.checkpoint("stop")
            except Exception:
                log.error("cannot sign the stop checkpoint", exc_info=True)
            await asyncio.to_thread(self.index.close)
        if self.retention is not None:
            await asyncio.to_thread(self.retention.index.close)
        if self.archiver is not None:
            await self.archiver.close()
        await self._audit_stop()

    async def _audit_stop(self) -> None:
        try:
            head = await self.audit.db.call(self.audit.head)
            log.info("audit log head: entry %d, hash %s", *head)
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            log.error("audit log unavailable at shutdown: %s", exc)
        await asyncio.to_thread(self.audit.db.close)
        await asyncio.to_thread(self.auth.close)
