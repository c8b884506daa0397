"""Footage that is only in the archive: found in the index's record of what was archived, fetched on demand.

A segment deleted locally (tiered retention, a lost disk) after it was
archived is still listed in ``archive_objects``.  :class:`ArchiveReader`
finds those for a camera and range (search, clips, exports) and fetches them
into a bounded local cache, ``<storage>/archive-cache/`` (outside
``recordings/``, so reconcile and verify-storage never take a cached copy for
footage of the station's own).  Each fetched copy is hashed while it is
written and must have the SHA-256 recorded at write time, or it is refused;
the least recently used copies are removed beyond ``archive.cache_mb``.

Its own database connection and thread (an :class:`~recorder.archive.ArchiveIndex`
on ``index.sqlite3``) and its own S3 client: a clip never waits for an upload
in progress on the archiver's thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nvr.base.config import Archive
from recorder.archive import ArchivedObject, ArchiveIndex, archived_objects
from recorder.archive_store import ArchiveError, ArchiveStore
from recorder.index import SegmentIndex, SegmentRecord
from recorder.search import CauseSource
from recorder.storage import INDEX_FILE, segment_file
from recorder.timeline import Timeline, build

log = logging.getLogger(__name__)

CACHE_DIR = "archive-cache"


@dataclass(frozen=True, slots=True)
class ArchivedSegment:
    """A segment whose only copy is in the archive, with the object it is read from."""

    record: SegmentRecord
    object: ArchivedObject


def archive_only(db: sqlite3.Connection, camera: str, start: float, end: float) -> list[ArchivedSegment]:
    """Archived, uncorrupted objects of ``camera`` overlapping [start, end) whose local segment is gone."""
    found = []
    for obj in archived_objects(db, camera, start, end):
        if obj.verify_error is not None:
            continue
        local = db.execute("SELECT 1 FROM segments WHERE id = ? AND sha256 = ? AND status != 'missing'",
                           (obj.segment_id, obj.sha256)).fetchone()
        if local is None:
            found.append(ArchivedSegment(obj.segment(), obj))
    return found


class ArchiveReader:
    def __init__(self, root: Path, config: Archive, store: ArchiveStore | None = None) -> None:
        self.root = root
        self.cache = root / CACHE_DIR
        self.max_bytes = int(config.cache_mb * (1 << 20))
        self.db = ArchiveIndex(root / INDEX_FILE, name="archive-read")
        self.store = store or ArchiveStore(config)
        self._lock = threading.Lock()
        self.fetched_total = 0
        self.cache_hits_total = 0

    def close(self) -> None:
        self.db.close()

    # -- on the reader's thread (self.db.call) ---------------------------------------------

    def find(self, camera: str, start: float, end: float) -> list[ArchivedSegment]:
        return archive_only(self.db.db, camera, start, end)

    # -- from any other thread (an export job, the CLI): the work still runs on the reader's thread --------

    def find_blocking(self, camera: str, start: float, end: float) -> list[ArchivedSegment]:
        return self.db.submit(self.find, camera, start, end).result()

    def fetch_blocking(self, segments: list[ArchivedSegment]) -> dict[int, Path]:
        return self.db.submit(self.fetch_all, segments).result() if segments else {}

    def fetch_all(self, segments: list[ArchivedSegment]) -> dict[int, Path]:
        """Local paths of cached copies (fetched now if needed), by segment id; raises ArchiveError."""
        return {seg.record.id: self.fetch(seg) for seg in segments}

    def fetch(self, seg: ArchivedSegment) -> Path:
        obj = seg.object
        relative = obj.key.replace("/", "_")
        path = self.cache / obj.camera / f"{relative}.{obj.version_id[:16]}"
        with self._lock:
            if path.is_file() and path.stat().st_size == obj.bytes:
                os.utime(path)  # most recently used
                self.cache_hits_total += 1
                return path
            digest, size = self.store.download(obj.key, obj.version_id, path)
            if digest != obj.sha256 or size != obj.bytes:
                path.unlink(missing_ok=True)
                raise ArchiveError("verify_failed", f"object {obj.key} version {obj.version_id} came back different "
                                                    f"({size} bytes, SHA-256 {digest[:16]}…; recorded {obj.bytes} "
                                                    f"bytes {obj.sha256[:16]}…); not used")
            self.fetched_total += 1
            self._evict(keep=path)
        log.info("archive: fetched segment %d (%s) into the cache", obj.segment_id, obj.key)
        return path

    def _evict(self, keep: Path) -> None:
        files = [p for p in self.cache.rglob("*") if p.is_file() and not p.name.endswith(".partial")]
        total = sum(p.stat().st_size for p in files)
        for old in sorted(files, key=lambda p: p.stat().st_mtime):
            if total <= self.max_bytes:
                break
            if old == keep:
                continue
            total -= old.stat().st_size
            old.unlink(missing_ok=True)


def locator(root: Path, cached: dict[int, Path]) -> Callable[[SegmentRecord], Path]:
    """A clip's path lookup: the cached archive copy of an archive-only segment, else the local file."""

    def locate(seg: SegmentRecord) -> Path:
        path = cached.get(seg.id)
        return path if path is not None else segment_file(root, seg.path)

    return locate


def search_with_archive(index: SegmentIndex, camera: str, start: float, end: float, causes: CauseSource | None,
                        archived: list[ArchivedSegment]) -> Timeline:
    """recorder.search.search with archive-only segments in the timeline too (index thread)."""
    segments = sorted([*index.segments(camera, start, end), *(a.record for a in archived)], key=lambda s: s.start)
    return build(camera, start, end, segments, causes(camera) if causes else ())
