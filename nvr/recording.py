"""The station's recording service: the disk, the index, retention, the key, exports, checkpoints, recorders.

It owns everything that needs the recording storage, and nothing else:

- the storage check (marker, station, pinned id); while it is refused,
  ``status().error`` says why at CRITICAL level, and it is re-checked every
  15 s while the rest of the station runs;
- then, once: reconcile the disk with the index, open the index, start
  retention on its own connection, load or create the station key, start the
  export queue, sign checkpoints, and one recorder per recorded camera;
- a typed :class:`RecordingStatus` snapshot for the API, metrics and health.

Components are started through the station's :class:`~nvr.supervisor.Supervisor`;
recorders and retention stop in the FINISH phase (closing their segments).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvr.base.config import Config
from nvr.base.timeutil import iso
from nvr.health.alarms import AlarmStore, AlarmType, Severity
from nvr.identity.audit import AuditLog
from nvr.supervisor import Phase, Supervisor
from recorder import checkpoint as checkpoints
from recorder.archive import Archiver, archived_and_verified
from recorder.backfill import Backfill, BackfillCamera, Job
from recorder.bodycam import BodycamIngest
from recorder.bodycam_inbox import BodycamInboxWatcher, Quarantined
from recorder.export import package_identity
from recorder.export_jobs import ExportLimits, ExportQueue
from recorder.index import SegmentIndex, SegmentRecord
from recorder.keys import StationKey
from recorder.reconcile import reconcile
from recorder.recorder import Recorder
from recorder.retention import Retention
from recorder.storage import INDEX_FILE, StorageError, check_storage
from recorder.thumbnails import ThumbnailStore
from streams.hub import Hub
from streams.onvif import OnvifLink

log = logging.getLogger(__name__)

STORAGE_RETRY_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class RecordingStatus:
    """What the API, metrics and the watchdog read about recording, at one moment."""

    accepted: bool  # the storage was checked and is recorded into
    error: str | None  # why it is refused (None while accepted or not checked yet)
    root: Path
    disk_full: bool
    deleted_total: int
    key_fingerprint: str | None


@dataclass(frozen=True, slots=True)
class RecordedCamera:
    """What the service needs of a camera: its id, whether it is recorded, and its main hub."""

    id: str
    record: bool
    hub: Hub
    segment_meta: Callable[[], dict[str, Any]] | None = None  # extras for each segment's index row
    onvif: OnvifLink | None = None  # the camera's ONVIF link: edge storage to backfill gaps from


StorageReady = Callable[[Path], Awaitable[None]]


class RecordingService:
    def __init__(self, config: Config, supervisor: Supervisor, audit: AuditLog, cameras: Iterable[RecordedCamera],
                 on_ready: StorageReady | None = None, alarms: AlarmStore | None = None) -> None:
        self.config = config
        self.root = config.storage.path
        self.supervisor = supervisor
        self.audit = audit
        self.cameras = list(cameras)
        self.on_ready = on_ready
        self.index: SegmentIndex | None = None
        self.retention: Retention | None = None
        self.key: StationKey | None = None
        self.exports: ExportQueue | None = None
        self.recorders: dict[str, Recorder] = {}
        self.archiver: Archiver | None = None  # the off-site archive (recorder/archive.py), when configured
        self.bodycams: BodycamIngest | None = None  # body-camera uploads (recorder/bodycam.py), once storage is up
        self.inbox: BodycamInboxWatcher | None = None  # the dock's inbox folder (recorder/bodycam_inbox.py)
        self.backfill: Backfill | None = None  # gaps filled from cameras' cards (recorder/backfill.py)
        self.alarms = alarms
        self.error: str | None = None
        self._checkpoint_lock = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        wanted = any(c.record for c in self.cameras) or bool(self.config.bodycams)
        if wanted and not await self._start_recording():
            self.supervisor.spawn("storage-check", self._wait_for_storage)

    async def _wait_for_storage(self) -> None:
        while not self.supervisor.stopping:
            await asyncio.sleep(STORAGE_RETRY_SECONDS)
            if await self._start_recording():
                return

    async def _start_recording(self) -> bool:
        """Check the disk, reconcile it with the index, start retention and one recorder per camera."""
        storage = self.config.storage
        try:
            await asyncio.to_thread(check_storage, self.root, self.config.station.id, storage.id)
        except StorageError as exc:
            if self.error != str(exc):
                log.critical("NOT RECORDING: %s", exc)
            self.error = str(exc)
            return False
        self.error = None
        index = SegmentIndex(self.root / INDEX_FILE)
        await index.call(index.open)
        report = await index.call(reconcile, self.root, index)
        if report.recovered or report.indexed_orphans or report.missing or report.unrecoverable:
            log.warning(
                "storage reconciled: %d recovered, %d orphan(s) indexed, %d missing, %d unreadable",
                len(report.recovered), len(report.indexed_orphans), len(report.missing), len(report.unrecoverable),
            )
        self.index = index
        if self.on_ready is not None:
            await self.on_ready(self.root)
        # A connection and thread of its own: a long sweep never delays a recorder's segment close.
        retention = Retention(self.root, storage, SegmentIndex(self.root / INDEX_FILE, name="retention"),
                              on_delete=self._audit_deletion)
        retention.thumbnails = ThumbnailStore(self.root)  # the health layer keeps them; they go with the footage
        self.retention = retention
        if self.config.archive is not None:
            await self._start_archive(retention)
        self.supervisor.spawn("retention", retention.run, Phase.FINISH)
        self.key = await asyncio.to_thread(StationKey.load_or_create, self.root)
        log.info("station signing key %s", self.key.fingerprint)
        recordings = self.config.recordings
        self.exports = ExportQueue(
            self.root,
            self.config.exports_path,
            self.key,
            *package_identity(self.config),
            recordings.max_export_jobs,
            ExportLimits(quota_bytes=int(recordings.export_quota_mb * (1 << 20)),
                         keep_seconds=recordings.export_keep_hours * 3600,
                         keep_after_download_seconds=recordings.export_keep_hours_after_download * 3600,
                         min_free_percent=storage.min_free_percent),
            index=index,
            checkpoint=self.checkpoint,
        )
        await asyncio.to_thread(self.exports.prepare)
        retention.free_other = self.exports.free_space_for_recordings
        if self.archiver is not None:
            self.exports.archive = self.archiver.reader
        self.supervisor.spawn("exports", self.exports.run)
        if self.config.bodycams:
            await self._start_bodycams(index)
        self.supervisor.spawn("checkpoints", self._checkpoint_loop)
        loop = asyncio.get_running_loop()

        def on_write_error(_message: str) -> None:
            loop.call_soon_threadsafe(retention.kick)

        for camera in self.cameras:
            if camera.record:
                recorder = Recorder(camera.id, camera.hub, self.root, storage, index, on_error=on_write_error,
                                    segment_meta=camera.segment_meta)
                self.recorders[camera.id] = recorder
                self.supervisor.spawn(f"recorder:{camera.id}", recorder.run, Phase.FINISH)
        self._start_backfill(index)
        log.info("recording into %s", self.root)
        return True

    def _start_backfill(self, index: SegmentIndex) -> None:
        """Edge backfill for the recorded cameras with an ONVIF link that allows it."""
        edge = [BackfillCamera(c.id, config.onvif, c.onvif) for c in self.cameras
                if c.record and c.onvif is not None and (config := self.config.camera(c.id)) is not None
                and config.onvif is not None and config.onvif.backfill]
        if not edge or not self.config.backfill.enabled:
            return
        self.backfill = Backfill(self.root, self.config.storage, self.config.backfill,
                                 self.config.health.clock_tolerance_seconds, index, edge)
        self.backfill.on_finished = self._audit_backfill
        self.supervisor.spawn("backfill", self.backfill.run, Phase.FINISH)

    async def _start_bodycams(self, index: SegmentIndex) -> None:
        """Uploads from docks (web/bodycams.py) and, when configured, the inbox folder (recorder/bodycam_inbox.py)."""
        storage = self.config.storage
        ingest = BodycamIngest(self.root, index, self.config.bodycam_uploads, storage.min_free_percent,
                               storage.retention_days * 86400)
        left = await asyncio.to_thread(ingest.store.prepare)
        if left:
            log.warning("removed %d unfinished body-camera upload(s) left by an earlier run", left)
        await index.call(ingest.store.ensure_schema)
        self.bodycams = ingest
        inbox = self.config.bodycams_inbox
        if inbox is not None:
            self.inbox = BodycamInboxWatcher(inbox, ingest, [b.id for b in self.config.bodycams],
                                             on_quarantine=self._quarantined, on_taken=self._inbox_taken)
            self.supervisor.spawn("bodycam-inbox", self.inbox.run)

    def _quarantined(self, item: Quarantined) -> None:
        self.audit.record("bodycam.inbox", actor="system", camera=item.device, outcome="rejected", file=item.name,
                          error=item.code, reason=item.message, quarantined_as=item.path.name)
        if self.alarms is not None:
            self.alarms.open(item.device, AlarmType.BODYCAM_QUARANTINED, Severity.WARNING,
                             {"file": item.name, "error": item.code, "message": item.message,
                              "quarantined_as": str(item.path)})

    def _inbox_taken(self, device: str, record: SegmentRecord, created: bool, name: str) -> None:
        self.audit.record("bodycam.inbox", actor="system", camera=device, file=name, segment_id=record.id,
                          sha256=record.sha256, start=iso(record.start), end=iso(record.end), duplicate=not created)
        if self.alarms is not None:
            self.alarms.close(device, AlarmType.BODYCAM_QUARANTINED, {"cleared_by": name})

    async def _start_archive(self, retention: Retention) -> None:
        """Upload closed segments to the archive, and let retention delete archived copies first under pressure."""
        config = self.config.archive
        assert config is not None
        # Off the loop: making boto3's clients reads its service models (a tenth of a second of CPU).
        self.archiver = await asyncio.to_thread(Archiver, self.root, self.config.station.id, config,
                                                self._archive_backlog)
        await self.archiver.open()  # creates its tables before retention looks at them
        if config.tiered_retention:
            retention.archived_first = lambda limit: archived_and_verified(retention.index.db, limit)
        retention.pressure_deletes_unarchived = config.pressure_deletes_unarchived
        self.supervisor.spawn("archiver", self.archiver.run)

    def _archive_backlog(self, over: bool, details: dict[str, Any]) -> None:
        if self.alarms is None:
            return
        if over:
            self.alarms.open(None, AlarmType.ARCHIVE_BACKLOG, Severity.WARNING, details)
        else:
            self.alarms.close(None, AlarmType.ARCHIVE_BACKLOG, details)

    def request_stop(self) -> None:
        """Tell the FINISH-phase components to finish (the supervisor then waits for them)."""
        for recorder in self.recorders.values():
            recorder.stop()
        if self.retention is not None:
            self.retention.stop()
        if self.archiver is not None:
            self.archiver.stop()
        if self.inbox is not None:
            self.inbox.stop()
        if self.backfill is not None:
            self.backfill.stop()

    async def close(self, stop_entry: Awaitable[Any] | None = None) -> None:
        """After the supervisor stopped: the stop checkpoint (witnessing ``stop_entry``), then the databases."""
        for recorder in self.recorders.values():
            recorder.shutdown_executor()
        if self.index is None:
            return
        if stop_entry is not None:
            try:
                await asyncio.wait_for(stop_entry, 2.0)
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

    # -- status ---------------------------------------------------------------------------

    def status(self) -> RecordingStatus:
        retention = self.retention
        return RecordingStatus(
            accepted=self.index is not None, error=self.error, root=self.root,
            disk_full=retention is not None and retention.disk_full,
            deleted_total=retention.deleted_total if retention is not None else 0,
            key_fingerprint=self.key.fingerprint if self.key is not None else None,
        )

    # -- audit and checkpoints ------------------------------------------------------------

    def _audit_backfill(self, job: Job) -> None:
        # Footage that joins the evidence later than it was recorded: who (the system), what, from where.
        self.audit.record("backfill.finished", actor="system", camera=job.camera, job=job.id, start=iso(job.start),
                          end=iso(job.end), state=job.state, segments=job.segments,
                          retrieved_seconds=round(job.retrieved_seconds, 3), overlap_dropped=job.overlap_dropped,
                          reason=job.reason, detail=job.detail)

    def _audit_deletion(self, record: SegmentRecord, reason: str) -> None:
        # Called on retention's thread; record() only queues.
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
        while not self.supervisor.stopping:
            await asyncio.sleep(self.config.recordings.checkpoint_seconds)
            await self.checkpoint("periodic")
