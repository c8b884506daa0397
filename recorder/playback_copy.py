"""Fragmented-MP4 playback copies of stored files that are not fragmented MP4 themselves.

The fixed cameras' segments are written as fragmented MP4, which HLS serves
by byte range as they are (:mod:`recorder.hls`).  An uploaded body-camera
file (:mod:`recorder.bodycam`) is kept exactly as the device wrote it (a
plain MP4 with its ``moov`` at either end, or Matroska): that file is the
evidence and is never rewritten.  To play it on the workbench's timeline,
a stream-copied fragmented remux of it (the same remux as a clip, no
re-encode) is made the first time it is played and kept under
``<storage>/playback/``.

The copies are a cache, not evidence: named after the segment's id and
hash, so a copy always belongs to exactly one stored file; written whole and
renamed into place; bounded in total size (oldest played first out); and
deleted with the footage by retention (:func:`remove`), so a copy never
outlives what it shows.  All of it is blocking I/O: callers run it in a thread.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from recorder.clip import ClipError, ClipResult, write_clip
from recorder.index import SegmentRecord, decode_meta

log = logging.getLogger(__name__)

PLAYBACK_DIR = "playback"


def needs_copy(segment: SegmentRecord) -> bool:
    """Whether the stored file is one kept as received (an upload) rather than written by the recorder."""
    try:
        return decode_meta(segment.meta).get("origin") == "upload"
    except ValueError:
        return False


def path_for(root: Path, segment: SegmentRecord) -> Path:
    return root / PLAYBACK_DIR / f"{segment.id}-{segment.sha256[:16]}.mp4"


def remove(root: Path, segment: SegmentRecord) -> None:
    """Delete the playback copy of ``segment`` if there is one (its footage is being deleted)."""
    path_for(root, segment).unlink(missing_ok=True)


class PlaybackCopies:
    """Makes and bounds the copies of one storage root; one remux per file at a time."""

    def __init__(self, root: Path, capacity_bytes: int) -> None:
        self.root = root
        self.capacity_bytes = capacity_bytes
        self._lock = threading.Lock()
        self._making: dict[int, threading.Lock] = {}

    def ensure(self, segment: SegmentRecord, source: Path) -> Path:
        """The copy's path, made from ``source`` (the stored file) first if there is none yet."""
        path = path_for(self.root, segment)
        with self._lock:
            making = self._making.setdefault(segment.id, threading.Lock())
        try:
            with making:  # a second viewer of the same file waits for the first remux instead of making another
                if path.is_file():
                    os.utime(path)  # played now: last out when the cache is trimmed
                    return path
                self._make(segment, source, path)
        finally:
            with self._lock:
                self._making.pop(segment.id, None)
        self.trim(keep=path)
        return path

    def _make(self, segment: SegmentRecord, source: Path, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        try:
            with open(partial, "wb", buffering=0) as sink:
                write_clip(self.root, [segment], segment.start, segment.end + 1.0, sink, ClipResult(),
                           locate=lambda _seg: source)
            os.replace(partial, path)
        except (ClipError, OSError, ValueError) as exc:
            raise OSError(f"no playback copy of recording {segment.id}: {exc}") from None
        finally:
            partial.unlink(missing_ok=True)

    def trim(self, keep: Path | None = None) -> None:
        """Delete the least recently played copies until the total is within the capacity."""
        directory = self.root / PLAYBACK_DIR
        entries = []
        if not directory.is_dir():
            return
        with os.scandir(directory) as listing:
            for entry in listing:
                if entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):  # not one being made
                    stat = entry.stat(follow_symlinks=False)
                    entries.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.capacity_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            log.info("playback copy %s removed to keep the cache within %d MB", path.name,
                     self.capacity_bytes >> 20)
