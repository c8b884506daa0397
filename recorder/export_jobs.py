"""The export queue: bounded, one package built at a time, off the event loop, in a directory of its own.

Hygiene, so that exports never cost footage:

- packages live in ``recordings.exports_path`` (default ``<storage>/exports``),
  bounded by ``recordings.export_quota_mb``; an export that would exceed the
  quota, or push the recording disk below ``storage.min_free_percent``,
  fails with a message saying so instead of making retention delete footage;
- a job holds its range (an evidence hold, released when the job ends) from
  the moment it is accepted, so retention cannot delete what it is about to
  copy;
- a package is deleted ``export_keep_hours_after_download`` after its first
  download, or ``export_keep_hours`` after it was made if nobody fetched it;
  under disk pressure packages go before any footage (retention calls
  :meth:`ExportQueue.free_space_for_recordings` first);
- ``.partial`` files are removed at start and on failure; packages left by an
  earlier run (whose jobs are gone with it) are removed at start;
- a failed job's error names the segment or the limit, never a path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recorder.export import ExportError, ExportRequest, build_package, plan_segments
from recorder.index import SegmentIndex
from recorder.keys import StationKey
from recorder.search import CauseSource
from recorder.storage import INDEX_FILE, free_space

if TYPE_CHECKING:
    from recorder.archive_read import ArchiveReader

log = logging.getLogger(__name__)

_SWEEP_SECONDS = 60.0
# Room for the zip's own structure and the manifest beside the segments' bytes.
_OVERHEAD_BYTES = 64 << 10


class QueueFull(Exception):
    pass


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"  # done, then deleted by expiry or to make room for recordings


@dataclass(slots=True)
class ExportJob:
    id: str
    request: ExportRequest
    created_at: float
    state: JobState = JobState.QUEUED
    progress: float = 0.0
    error: str | None = None
    finished_at: float | None = None
    downloaded_at: float | None = None
    path: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    causes: CauseSource | None = None
    hold_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ExportLimits:
    quota_bytes: int
    keep_seconds: float
    keep_after_download_seconds: float
    min_free_percent: float  # of the recording disk, when packages share it


Checkpointer = Callable[[str], Awaitable[dict[str, Any] | None]]


class ExportQueue:
    def __init__(
        self,
        root: Path,
        exports_dir: Path,
        key: StationKey,
        station: dict[str, str],
        camera_info: dict[str, dict[str, str]],
        max_jobs: int,
        limits: ExportLimits,
        index: SegmentIndex | None = None,
        on_done: Callable[[ExportJob], None] | None = None,
        checkpoint: Checkpointer | None = None,
    ) -> None:
        self.root = root
        self.dir = exports_dir
        self.key = key
        self.station = station
        self.camera_info = camera_info
        self.max_jobs = max_jobs
        self.limits = limits
        self.index = index  # the daemon's index (its thread): holds
        self.on_done = on_done
        self.checkpoint = checkpoint
        self.archive: ArchiveReader | None = None  # segments only in the off-site archive come from there
        self.jobs: dict[str, ExportJob] = {}
        self.deleted_total = 0
        self._pending: asyncio.Queue[ExportJob] = asyncio.Queue()
        # Package files are deleted from the loop (expiry) and the index thread (disk pressure).
        self._files_lock = threading.Lock()

    # -- start ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the directory; remove what an earlier run left (blocking: call off the loop)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        left = [p for p in self.dir.iterdir() if p.is_file() and p.suffix in (".partial", ".zip")]
        for path in left:
            path.unlink(missing_ok=True)
        if left:
            log.info("removed %d export file(s) left by an earlier run", len(left))

    # -- jobs ----------------------------------------------------------------------------

    async def submit(self, request: ExportRequest, causes: CauseSource | None = None) -> ExportJob:
        # The slot is taken before the first await, so concurrent submissions cannot overrun max_jobs.
        active = sum(1 for j in self.jobs.values() if j.state in (JobState.QUEUED, JobState.RUNNING))
        if active >= self.max_jobs:
            raise QueueFull(f"{active} exports are already queued or running; try again later")
        job = ExportJob(id=uuid.uuid4().hex, request=request, created_at=time.time(), causes=causes)
        self.jobs[job.id] = job
        try:
            if self.index is not None:
                index = self.index
                for camera in request.cameras:
                    hold = await index.call(index.add_hold, camera, request.start, request.end,
                                            f"export {job.id} in progress", request.user)
                    job.hold_ids.append(hold.id)
        except BaseException:
            await self._release_holds(job)
            del self.jobs[job.id]
            raise
        self._pending.put_nowait(job)
        return job

    async def _release_holds(self, job: ExportJob) -> None:
        if self.index is None:
            return
        index = self.index
        for hold_id in job.hold_ids:
            try:
                await index.call(index.release_hold, hold_id)
            except Exception:
                log.error("export %s: cannot release its hold %d", job.id, hold_id, exc_info=True)
        job.hold_ids.clear()

    async def run(self) -> None:
        sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(), name="export-expiry")
        try:
            while True:
                job = await self._pending.get()
                await self._run_job(job)
        finally:
            sweeper.cancel()

    async def _run_job(self, job: ExportJob) -> None:
        job.state = JobState.RUNNING
        loop = asyncio.get_running_loop()

        def progress(value: float, job: ExportJob = job, loop: asyncio.AbstractEventLoop = loop) -> None:
            loop.call_soon_threadsafe(setattr, job, "progress", round(value, 3))

        try:
            checkpoint = await self.checkpoint("export") if self.checkpoint is not None else None
            manifest = await asyncio.to_thread(self._build, job, progress, checkpoint)
        except ExportError as exc:
            log.warning("export %s failed: %s", job.id, exc)
            job.state, job.error = JobState.FAILED, str(exc)
        except Exception:
            log.error("export %s failed", job.id, exc_info=True)
            job.state, job.error = JobState.FAILED, "internal error while writing the package (see the station's log)"
        else:
            job.state, job.progress = JobState.DONE, 1.0
            job.summary = {
                "segments": sum(len(c["segments"]) for c in manifest["cameras"]),
                "bytes": job.path.stat().st_size if job.path else 0,
            }
        finally:
            await self._release_holds(job)
        job.finished_at = time.time()
        if self.on_done is not None:
            self.on_done(job)

    def _build(self, job: ExportJob, progress: Callable[[float], None],
               checkpoint: dict[str, Any] | None) -> dict[str, Any]:
        # A connection of its own: SQLite in WAL mode lets it read while the recorder writes.
        index = SegmentIndex(self.root / INDEX_FILE)
        output = self.dir / f"{job.id}.zip"
        try:
            request = job.request
            self._admit(sum(s.bytes for s in plan_segments(index, request.cameras, request.start, request.end)))
            manifest = build_package(
                root=self.root, index=index, key=self.key, station=self.station, camera_info=self.camera_info,
                request=request, output=output, now=time.time(), causes=job.causes, progress=progress,
                checkpoint=checkpoint, archive_reader=self.archive,
            )
        finally:
            index.close()
        job.path = output
        return manifest

    def _admit(self, needed: int) -> None:
        """Refuse an export that would exceed the quota or eat into the recordings' free-space reserve."""
        needed += _OVERHEAD_BYTES + needed // 50
        used = self.bytes_used()
        if used + needed > self.limits.quota_bytes:
            raise ExportError(
                f"the export needs about {needed / (1 << 20):.1f} MB, but {used >> 20} MB of the "
                f"{self.limits.quota_bytes >> 20} MB export quota are taken by packages not yet expired; download "
                "them or wait for them to expire")
        if self._shares_recording_disk():
            free, total = free_space(self.root)
            reserve = total * self.limits.min_free_percent / 100
            if total and free - needed < reserve:
                raise ExportError(
                    f"the export needs about {needed / (1 << 20):.1f} MB, and the recording disk has {free >> 20} MB "
                    f"free with {reserve / (1 << 20):.0f} MB kept for recordings (storage.min_free_percent); making "
                    "it would cost recorded footage, so it was not made")

    def _shares_recording_disk(self) -> bool:
        try:
            return os.stat(self.dir).st_dev == os.stat(self.root).st_dev
        except OSError:
            return True

    def bytes_used(self) -> int:
        total = 0
        try:
            for path in self.dir.iterdir():
                try:
                    total += path.stat().st_size
                except FileNotFoundError:
                    pass
        except FileNotFoundError:
            pass
        return total

    # -- downloads and expiry ------------------------------------------------------------

    def mark_downloaded(self, job: ExportJob) -> None:
        if job.downloaded_at is None:
            job.downloaded_at = time.time()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            try:
                await asyncio.to_thread(self.expire)
            except Exception:
                log.error("export expiry sweep failed", exc_info=True)

    def expire(self, now: float | None = None) -> int:
        """Delete packages past their keep time (blocking)."""
        now = time.time() if now is None else now
        expired = 0
        for job in list(self.jobs.values()):
            if job.state is not JobState.DONE or job.finished_at is None:
                continue
            if job.downloaded_at is not None:
                due = job.downloaded_at + self.limits.keep_after_download_seconds
            else:
                due = job.finished_at + self.limits.keep_seconds
            if now >= due:
                self._delete_package(job, "expired" if job.downloaded_at is None else "expired after download")
                expired += 1
        return expired

    def free_space_for_recordings(self, needed_percent: float) -> int:
        """Delete finished packages, oldest first, until the recording disk has ``needed_percent`` free or none
        is left (retention calls this on the index thread before it deletes any footage). Returns how many."""
        if not self._shares_recording_disk():
            return 0
        deleted = 0
        for job in sorted((j for j in list(self.jobs.values()) if j.state is JobState.DONE),
                          key=lambda j: j.finished_at or 0):
            free, total = free_space(self.root)
            if not total or 100 * free / total >= needed_percent:
                break
            self._delete_package(job, "deleted to keep space for recordings")
            deleted += 1
        return deleted

    def _delete_package(self, job: ExportJob, why: str) -> None:
        with self._files_lock:
            if job.state is not JobState.DONE:
                return
            if job.path is not None:
                job.path.unlink(missing_ok=True)
            job.state, job.error = JobState.EXPIRED, f"the package was {why}; export again if it is still needed"
            self.deleted_total += 1
        log.info("export %s: package %s", job.id, why)
