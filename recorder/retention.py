"""Retention: delete by age, and by disk pressure oldest-first; never footage under a hold.

Every deletion is recorded in the index (what, why, when).  When free space
is low and only protected footage is left, a critical "recording stopped:
disk full" event is raised and the check keeps being retried.

Retention works on a connection and thread of its own (the daemon gives it a
second :class:`~recorder.index.SegmentIndex` on the same file), so a sweep of
thousands of segments never delays a recorder closing a segment on the main
index thread: the two only wait for each other's short transactions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nvr.base.config import Storage
from recorder import playback_copy
from recorder.index import SegmentIndex, SegmentRecord
from recorder.storage import StorageError, free_space, segment_file
from recorder.thumbnails import ThumbnailStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SweepResult:
    deleted_by_age: int
    deleted_by_pressure: int
    free_percent: float
    disk_full: bool


class Retention:
    def __init__(self, root: Path, storage: Storage, index: SegmentIndex,
                 on_delete: Callable[[SegmentRecord, str], None] | None = None,
                 free_other: Callable[[float], int] | None = None) -> None:
        self.root = root
        # Tiered retention (recorder/archive.py): under disk pressure, segments this returns (archived and
        # read back, oldest first) go before any other, even before retention_days; on retention's thread.
        self.archived_first: Callable[[int], list[SegmentRecord]] | None = None
        # False: with the archive on, pressure never deletes what is not archived (disk_full instead).
        self.pressure_deletes_unarchived = True
        # Asked to free space by other means (export packages, which are copies) before any footage
        # goes: called on retention's thread with the free percentage wanted.
        self.free_other = free_other
        # Told about every deletion (on retention's thread), e.g. for the audit log.
        self.on_delete = on_delete
        # The thumbnails of the footage (issue 16): deleted with it.
        self.thumbnails: ThumbnailStore | None = None
        self.storage = storage
        self.index = index
        self.disk_full = False
        self.deleted_total = 0
        self.last_free_percent = 100.0
        self._kick = asyncio.Event()
        self._stopping = False

    def kick(self) -> None:
        """Ask for a sweep now (safe to call from the loop thread only)."""
        self._kick.set()

    def stop(self) -> None:
        self._stopping = True
        self._kick.set()

    async def run(self) -> None:
        while not self._stopping:
            self._kick.clear()
            try:
                await self.index.call(self.sweep)
            except Exception:
                log.error("retention sweep failed", exc_info=True)
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=self.storage.retention_check_seconds)
            except TimeoutError:
                pass

    def free_percent(self) -> float:
        free, total = free_space(self.root)
        return 100.0 * free / total if total else 100.0

    def sweep(self, now: float | None = None) -> SweepResult:
        """One pass (on ``self.index``'s thread)."""
        now = time.time() if now is None else now
        by_age = 0
        cutoff = now - self.storage.retention_days * 86400
        while batch := self.index.expired(cutoff):
            for record in batch:
                by_age += self._delete(record, f"retention: older than {self.storage.retention_days} days")
        if self.thumbnails is not None:
            self._expire_thumbnails(cutoff)
        by_pressure = 0
        free = self.free_percent()
        if free < self.storage.min_free_percent and self.free_other is not None:
            try:
                if self.free_other(self.storage.min_free_percent):
                    free = self.free_percent()
            except Exception:
                log.error("freeing export packages failed", exc_info=True)
        full = False
        while free < self.storage.min_free_percent:
            archived = self.archived_first(20) if self.archived_first is not None else []
            if archived:
                batch, kind = archived, "disk pressure (archived and verified copy kept off-site)"
            elif self.pressure_deletes_unarchived:
                batch, kind = self.index.oldest_unprotected(limit=20), "disk pressure"
            else:
                batch, kind = [], "disk pressure"
            if not batch:
                full = True
                break
            for record in batch:
                # statvfs after each deletion is a cheap syscall, and on retention's own thread it delays nobody.
                by_pressure += self._delete(
                    record, f"{kind}: {free:.1f}% free < {self.storage.min_free_percent:g}%")
                free = self.free_percent()
                if free >= self.storage.min_free_percent:
                    break
        if full and not self.disk_full:
            message = (
                f"recording stopped: disk full ({free:.1f}% free) and only footage under evidence holds remains"
            )
            log.critical(message)
            self.index.add_event("disk_full", "critical", message)
        elif not full and self.disk_full:
            log.warning("disk space recovered: %.1f%% free", free)
            self.index.add_event("disk_full_cleared", "info", f"disk space recovered: {free:.1f}% free")
        self.disk_full = full
        self.last_free_percent = free
        if by_age or by_pressure:
            log.info("retention deleted %d segment(s) by age and %d by disk pressure", by_age, by_pressure)
        return SweepResult(by_age, by_pressure, free, full)

    def _expire_thumbnails(self, cutoff: float) -> None:
        """Thumbnails outside any footage (recording had failed while the camera was watched) by age."""
        assert self.thumbnails is not None

        def has_footage(camera: str, start: float, end: float) -> bool:
            return bool(self.index.segments(camera, start, end))

        try:
            self.thumbnails.expire(cutoff, has_footage)
        except OSError:
            log.warning("expiring thumbnails failed", exc_info=True)

    def _delete(self, record: SegmentRecord, reason: str) -> bool:
        if self.index.is_protected(record.id):
            # A hold was added (by another process: `nvr export`) since the batch was selected.
            return False
        try:
            path = segment_file(self.root, record.path)
        except StorageError:
            log.error("not deleting the file of segment %d: %s is not inside the recordings directory",
                      record.id, record.path)
            reason += " (file outside the recordings directory left alone)"
        else:
            try:
                path.unlink()
            except FileNotFoundError:
                reason += " (file was already gone)"
        try:
            playback_copy.remove(self.root, record)  # an uploaded file's HLS copy goes with it
        except OSError:
            log.warning("deleting the playback copy of segment %d failed", record.id, exc_info=True)
        if self.thumbnails is not None:
            try:
                self.thumbnails.delete_between(record.camera, record.start, record.end)
            except (OSError, ValueError):
                log.warning("deleting the thumbnails of segment %d failed", record.id, exc_info=True)
        self.index.record_deletion(record, reason)
        self.deleted_total += 1
        if self.on_delete is not None:
            try:
                self.on_delete(record, reason)
            except Exception:
                log.error("deletion hook failed for segment %d", record.id, exc_info=True)
        return True
