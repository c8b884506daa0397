"""Body-worn camera files: taken from a dock, checked, stored byte for byte and chained per device.

A body camera records on its own and is docked later; its files arrive whole
(an HTTP upload, :mod:`web.bodycams`, or a file copied into the inbox,
:mod:`recorder.bodycam_inbox`).  Both go through :class:`BodycamStore`:

1. :meth:`BodycamStore.stage` opens a temp file under ``<storage>/uploads/``
   (the same filesystem as the recordings, outside ``recordings/`` so that
   start-up reconciliation never takes a half-written upload for a segment);
   the caller writes the bytes through a :class:`Staged`, which hashes them
   as they arrive and fsyncs at the end;
2. :func:`probe` reads the whole file with PyAV: a video stream of a known
   codec, every packet readable to the end, a duration, the container's
   creation time.  A file that is not a video, was cut short (no moov, no
   index, fewer seconds than its header declares) or has no duration is
   refused with an :class:`UploadRejected` naming the cause;
3. :meth:`BodycamStore.commit` (on the index thread, so that two uploads of
   one file cannot both pass the duplicate check) moves the file into
   ``recordings/<device>/<day>/<device>_u<sha12>_<start>.<mp4|mkv>``, a path
   the server chooses, fsyncs the directory and adds the index row with the
   item's provenance in ``meta``.  The same bytes for the same device are
   stored once: the existing row is answered instead.

The recording's own clock is kept as the device said it (evidence times are
never rewritten); the difference from the dock's receipt time is recorded
and flagged beyond ``bodycam_uploads.clock_tolerance_seconds``.

Officer assignment (who wore which device when) lives in the same index
database (:class:`Assignment`); every change is audited by the caller.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av
import av.error
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nvr.base.config import BodycamUploads
from nvr.base.timeutil import iso, parse_iso
from recorder.index import _COLUMNS, NewSegment, SegmentIndex, SegmentRecord, decode_meta, encode_meta
from recorder.storage import RECORDINGS, free_space, fsync_dir

log = logging.getLogger(__name__)

UPLOADS = "uploads"  # <storage>/uploads: temp files of uploads in progress
CODECS = frozenset({"h264", "hevc"})  # what the clip endpoint and browsers play
# FFmpeg's demuxer (the first of its names, "mov,mp4,m4a,..." and "matroska,webm") → the stored file's suffix.
CONTAINERS = {"mov": "mp4", "matroska": "mkv"}
# A file is cut short when its packets end this much before the duration its header declares.
_TRUNCATION_SLACK_SECONDS = 1.0


class UploadRejected(Exception):
    """A file that is not taken: ``code`` is the stable error code, ``status`` the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class Probe:
    container: str  # "mp4" | "mkv"
    codec: str
    width: int
    height: int
    frames: int
    duration: float
    creation_time: float | None
    audio: str | None
    extradata: str  # hex
    time_base: str


def probe(path: Path, max_duration: float) -> Probe:
    """Read the whole file; raise UploadRejected unless it is a complete, playable video."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        if path.stat().st_size == 0:
            raise UploadRejected("empty_file", "the file is empty") from None
        raise UploadRejected("not_a_video", f"the file is not a readable MP4 or Matroska video "
                             f"({_ffmpeg_reason(exc)}); if it was cut short its index (moov) is missing") from None
    with container:
        kind = CONTAINERS.get(container.format.name.split(",")[0])
        if kind is None:
            raise UploadRejected("unsupported_container", f"the container is {container.format.name!r}; "
                                 "send MP4 or Matroska")
        if not container.streams.video:
            raise UploadRejected("not_a_video", "the file has no video stream")
        video = container.streams.video[0]
        codec = video.codec_context.name
        if codec not in CODECS:
            raise UploadRejected("unsupported_codec", f"the video codec is {codec!r}; H.264 or H.265 is expected")
        audio = container.streams.audio[0] if container.streams.audio else None
        time_base = video.time_base
        declared = container.duration / av.time_base if container.duration else None
        frames = 0
        first = last = None
        last_duration = 0
        try:
            for packet in container.demux(video):
                if packet.size == 0 or (packet.dts is None and packet.pts is None):
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                assert ts is not None
                first = ts if first is None else min(first, ts)
                last = ts if last is None else max(last, ts)
                last_duration = packet.duration or last_duration
                frames += 1
        except (av.error.FFmpegError, OSError) as exc:
            raise UploadRejected("truncated_file", f"the file cannot be read to its end ({_ffmpeg_reason(exc)}): "
                                 "it was cut short or is damaged") from None
        metadata = dict(container.metadata)
        extradata = (video.codec_context.extradata or b"").hex()
        width, height = video.codec_context.width, video.codec_context.height
    if frames < 2 or first is None or last is None or time_base is None:
        raise UploadRejected("zero_duration", f"the file holds {frames} video frame(s): nothing to keep")
    duration = float((last - first + last_duration) * time_base)
    if duration <= 0:
        raise UploadRejected("zero_duration", "the recording has no duration")
    if declared is None:
        raise UploadRejected("truncated_file", "the container declares no duration (its index is missing): "
                             "the file was cut short while it was written")
    if duration + max(_TRUNCATION_SLACK_SECONDS, 0.02 * declared) < declared:
        raise UploadRejected("truncated_file", f"the file declares {declared:.1f} s but its packets end after "
                             f"{duration:.1f} s: it was cut short")
    if duration > max_duration:
        raise UploadRejected("too_long", f"the recording lasts {duration / 3600:.2f} h, longer than the limit of "
                             f"{max_duration / 3600:g} h (bodycam_uploads.max_duration_hours)")
    return Probe(kind, codec, width, height, frames, round(duration, 6), _creation_time(metadata),
                 audio.codec_context.name if audio is not None else None, extradata, str(time_base))


def _creation_time(metadata: dict[str, str]) -> float | None:
    raw = metadata.get("creation_time") or metadata.get("CREATION_TIME") or metadata.get("DATE")
    if not raw:
        return None
    try:
        value = parse_iso(raw if raw.rstrip()[-1:] in ("Z", "z") or "+" in raw[10:] else raw + "Z")
    except (ValueError, IndexError):
        return None
    # MP4 writes 1904-01-01 (its epoch) for an unset time, and some cameras 1970: not a time at all.
    return value if value > 946684800 else None  # after 2000-01-01


def _ffmpeg_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class Timing:
    """When the recording started, by which clock, and how far the device's clock was from the dock's."""

    start: float
    start_source: str  # "container" (creation_time) | "dock" (?start=)
    received_at: float
    clock_difference: float | None  # device clock minus dock clock, seconds; None: not measurable
    clock_basis: str  # "device_time" (the dock read the device's clock) | "end_vs_receipt" | "none"
    flagged: bool


def timing(found: Probe, start_hint: float | None, device_time: float | None, received_at: float,
           tolerance: float) -> Timing:
    """The item's start and clock check.  Without the dock's reading of the device's clock only a clock
    ahead of the dock's shows (a recording ending after it was received); a late upload is no drift."""
    if found.creation_time is not None:
        start, source = found.creation_time, "container"
    elif start_hint is not None:
        start, source = start_hint, "dock"
    else:
        raise UploadRejected("no_start_time", "the file has no creation time: send the recording's start as "
                             "?start=ISO-8601 (the dock's record of it)", 422)
    if device_time is not None:
        difference, basis = device_time - received_at, "device_time"
    elif source == "container":
        difference, basis = max(0.0, start + found.duration - received_at), "end_vs_receipt"
    else:
        difference, basis = None, "none"
    flagged = difference is not None and abs(difference) > tolerance
    return Timing(start, source, received_at, round(difference, 3) if difference is not None else None, basis,
                  flagged)


class Staged:
    """A temp file being written: hashes what it is given, fsyncs when finished, removes itself if not kept.

    Blocking: call :meth:`write` from a thread (or accept the disk's latency)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        self.size = 0
        self._file = path.open("xb")

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)

    def finish(self) -> str:
        """Flush, fsync and close; the file's SHA-256."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self.digest.hexdigest()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Provenance:
    via: str  # "api" | "inbox"
    original_name: str | None = None
    dock_sha256: str | None = None
    uploaded_by: str | None = None


_ASSIGNMENTS = """
CREATE TABLE IF NOT EXISTS bodycam_assignments (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    officer TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL,
    note TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS bodycam_assignments_device ON bodycam_assignments(device, start);
"""


@dataclass(frozen=True, slots=True)
class Assignment:
    id: int
    device: str
    officer: str
    start: float
    end: float | None  # None: still wearing it
    note: str
    created_by: str
    created_at: float

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "device": self.device, "officer": self.officer, "start": iso(self.start),
                "end": iso(self.end), "note": self.note, "created_by": self.created_by,
                "created_at": iso(self.created_at)}


class AssignmentConflict(Exception):
    pass


class BodycamStore:
    """Stages, probes and commits body-camera files into the storage at ``root`` and its index."""

    def __init__(self, root: Path, index: SegmentIndex, retention_seconds: float | None = None) -> None:
        self.root = root
        self.index = index
        self.uploads = root / UPLOADS
        self.retention_seconds = retention_seconds  # storage.retention_days: older files are held when they arrive

    def prepare(self) -> int:
        """Create the uploads folder and remove temp files an earlier run left (uploads never finished:
        the dock still holds those files, and an inbox file stays in the inbox until it is indexed)."""
        self.uploads.mkdir(exist_ok=True)
        left = [p for p in self.uploads.iterdir() if p.is_file() and p.name.endswith(".part")]
        for path in left:
            path.unlink(missing_ok=True)
        return len(left)

    def stage(self) -> Staged:
        return Staged(self.uploads / f"{uuid.uuid4().hex}.part")

    # -- on the index thread ------------------------------------------------------------------

    def existing(self, device: str, sha256: str) -> SegmentRecord | None:
        row = self.index.db.execute(
            f"SELECT {_COLUMNS} FROM segments WHERE camera = ? AND sha256 = ? ORDER BY id LIMIT 1", (device, sha256)
        ).fetchone()
        return SegmentRecord(*row) if row is not None else None

    def commit(self, device: str, staged: Path, sha256: str, size: int, found: Probe, when: Timing,
               provenance: Provenance) -> tuple[SegmentRecord, bool]:
        """Move the fsynced temp file into place and index it; (row, created).  A duplicate is not stored
        twice: the temp file is removed and the existing row answered."""
        existing = self.existing(device, sha256)
        if existing is not None:
            staged.unlink(missing_ok=True)
            return existing, False
        moment = datetime.fromtimestamp(when.start, tz=UTC)
        stamp = moment.strftime("%Y%m%dT%H%M%S") + f".{moment.microsecond // 1000:03d}Z"
        relpath = f"{RECORDINGS}/{device}/{moment:%Y-%m-%d}/{device}_u{sha256[:12]}_{stamp}.{found.container}"
        final = self.root / relpath
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() and self.index.by_path(relpath) is not None:
            # An indexed file of this device with the same hash prefix and start but other bytes: never overwrite.
            raise UploadRejected("path_conflict", f"a different stored file already has the name {final.name}", 409)
        # An unindexed file of that name was left by a commit a crash interrupted (moved, not yet indexed):
        # the same start and hash prefix, and the inbox or the dock still had the original; it is replaced.
        os.replace(staged, final)
        fsync_dir(final.parent)
        fsync_dir(self.uploads)
        meta = {
            "origin": "upload", "via": provenance.via, "device_start": iso(when.start),
            "start_source": when.start_source, "received_at": iso(when.received_at),
            "clock_difference_seconds": when.clock_difference, "clock_basis": when.clock_basis,
            "clock_flag": when.flagged, "container": found.container,
            "duration_seconds": found.duration, "audio": found.audio,
        }
        for key, value in (("original_name", provenance.original_name), ("dock_sha256", provenance.dock_sha256),
                           ("uploaded_by", provenance.uploaded_by)):
            if value is not None:
                meta[key] = value
        params = {"extradata": found.extradata, "time_base": found.time_base, "audio": found.audio,
                  "camera_audio": None}
        segment = NewSegment(
            camera=device, start=round(when.start, 6), end=round(when.start + found.duration, 6),
            frames=found.frames, bytes=size, sha256=sha256, codec=found.codec, width=found.width,
            height=found.height, params=json.dumps(params, sort_keys=True), path=relpath, meta=encode_meta(meta),
        )
        hold = None
        end = when.start + found.duration
        if self.retention_seconds is not None and end < when.received_at - self.retention_seconds + 86400:
            # Docked (nearly) past storage.retention_days: the next sweep would delete it at once.  Evidence that
            # just arrived is held instead (before its row exists, so no sweep sees it unheld) until someone
            # releases the hold (DELETE /api/holds/{id}).
            days = (when.received_at - when.start) / 86400
            hold = self.index.add_hold(device, segment.start, segment.end, f"body-camera file docked {days:.0f} "
                                       "days after it was recorded, at or past storage.retention_days", "system")
        try:
            record = self.index.add_segment(segment)
        except BaseException:
            # Not indexed: back out of the recordings tree (the dock or the inbox still holds the file).
            os.replace(final, staged)
            if hold is not None:
                self.index.release_hold(hold.id)
            raise
        return record, True

    # -- assignments (index thread) -------------------------------------------------------------

    def ensure_schema(self) -> None:
        self.index.db.executescript(_ASSIGNMENTS)

    def assign(self, device: str, officer: str, start: float, end: float | None, note: str,
               created_by: str) -> Assignment:
        """Record that ``officer`` wears ``device`` from ``start`` (to ``end``, or until the next assignment).
        An open assignment of the device is ended at ``start``; an overlap with a closed one is refused."""
        self.ensure_schema()
        with self.index.transaction() as db:
            far = end if end is not None else float("inf")
            clash = db.execute(
                "SELECT officer, start, end FROM bodycam_assignments WHERE device = ? AND end IS NOT NULL"
                " AND start < ? AND end > ?", (device, far, start)).fetchone()
            if clash is not None:
                raise AssignmentConflict(f"{device} was worn by {clash[0]} from {iso(clash[1])} to {iso(clash[2])}")
            later = db.execute("SELECT officer, start FROM bodycam_assignments WHERE device = ? AND start >= ?",
                               (device, start)).fetchone()
            if later is not None:
                raise AssignmentConflict(f"{device} is assigned to {later[0]} from {iso(later[1])}, after {iso(start)}")
            db.execute("UPDATE bodycam_assignments SET end = ? WHERE device = ? AND end IS NULL AND start < ?",
                       (start, device, start))
            cursor = db.execute(
                "INSERT INTO bodycam_assignments (device, officer, start, end, note, created_by, created_at)"
                " VALUES (?,?,?,?,?,?,?)", (device, officer, start, end, note, created_by, time.time()))
            assert cursor.lastrowid is not None
            row = db.execute(f"SELECT {_ASSIGNMENT_COLUMNS} FROM bodycam_assignments WHERE id = ?",
                             (cursor.lastrowid,)).fetchone()
        return Assignment(*row)

    def assignments(self, device: str, start: float | None = None, end: float | None = None) -> list[Assignment]:
        self.ensure_schema()
        rows = self.index.db.execute(
            f"SELECT {_ASSIGNMENT_COLUMNS} FROM bodycam_assignments WHERE device = ?"
            " AND (? IS NULL OR end IS NULL OR end > ?) AND (? IS NULL OR start < ?) ORDER BY start",
            (device, start, start, end, end)).fetchall()
        return [Assignment(*row) for row in rows]


_ASSIGNMENT_COLUMNS = "id, device, officer, start, end, note, created_by, created_at"


def item_json(record: SegmentRecord, created: bool | None = None) -> dict[str, Any]:
    """An uploaded item as the API answers it."""
    try:
        meta = decode_meta(record.meta)
    except ValueError:
        meta = {}
    body: dict[str, Any] = {
        "id": record.id, "device": record.camera, "sha256": record.sha256, "start": iso(record.start),
        "end": iso(record.end), "duration_seconds": round(record.duration, 3), "bytes": record.bytes,
        "codec": record.codec, "width": record.width, "height": record.height, "status": record.status,
        "chain_hash": record.chain_hash, "received_at": meta.get("received_at"), "via": meta.get("via"),
        "start_source": meta.get("start_source"), "clock_difference_seconds": meta.get("clock_difference_seconds"),
        "clock_basis": meta.get("clock_basis"), "clock_flag": bool(meta.get("clock_flag")),
        "original_name": meta.get("original_name"), "container": meta.get("container"),
    }
    if created is not None:
        body["duplicate"] = not created
    return body


def is_upload(record: SegmentRecord) -> bool:
    try:
        return decode_meta(record.meta).get("origin") == "upload"
    except ValueError:
        return False


class BodycamIngest:
    """The one way a body-camera file gets in (the API and the inbox): a bounded number at once, free space
    checked, then :meth:`finish` verifies, probes, and commits.  Loop side; blocking work runs in threads."""

    def __init__(self, root: Path, index: SegmentIndex, settings: BodycamUploads, min_free_percent: float,
                 retention_seconds: float | None = None) -> None:
        self.store = BodycamStore(root, index, retention_seconds)
        self.index = index
        self.settings = settings
        self.min_free_percent = min_free_percent
        self.active = 0
        self.taken_total = 0
        self.duplicates_total = 0
        self.rejected_total: dict[str, int] = {}

    @property
    def max_bytes(self) -> int:
        return int(self.settings.max_file_mb * (1 << 20))

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Taken before the first await, so concurrent uploads cannot overrun ``max_concurrent``."""
        if self.active >= self.settings.max_concurrent:
            raise UploadRejected("uploads_busy", f"{self.active} uploads are being taken; try again shortly", 503)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    def room_for(self, needed: int) -> str | None:
        """None when ``needed`` more bytes leave recording its reserve (storage.min_free_percent); else why not."""
        free, total = free_space(self.store.root)
        reserve = int(total * self.min_free_percent / 100)
        if free - needed < reserve:
            return (f"the recording disk has {free >> 20} MB free and keeps {reserve >> 20} MB for recording "
                    f"(storage.min_free_percent); {needed >> 20} MB do not fit")
        return None

    def rejected(self, code: str) -> None:
        self.rejected_total[code] = self.rejected_total.get(code, 0) + 1

    async def finish(self, device: str, staged: Staged, expected_sha256: str | None, start_hint: float | None,
                     device_time: float | None, provenance: Provenance) -> tuple[SegmentRecord, bool]:
        """The whole body is in ``staged``: fsync, check the dock's hash, probe, commit.  The temp file is
        gone afterwards whatever happens (moved into place, or removed)."""
        try:
            sha256 = await asyncio.to_thread(staged.finish)
            if expected_sha256 is not None and expected_sha256 != sha256:
                raise UploadRejected("hash_mismatch", f"the body's SHA-256 is {sha256}, not the dock's "
                                     f"{expected_sha256}: the file changed on its way; nothing was stored")
            existing = await self.index.call(self.store.existing, device, sha256)
            if existing is not None:
                self.duplicates_total += 1
                return existing, False
            found = await asyncio.to_thread(probe, staged.path, self.settings.max_duration_hours * 3600)
            when = timing(found, start_hint, device_time, time.time(), self.settings.clock_tolerance_seconds)
            record, created = await self.index.call(self.store.commit, device, staged.path, sha256, staged.size,
                                                    found, when, provenance)
        finally:
            await asyncio.to_thread(staged.discard)  # a no-op once the file was moved into place
        if created:
            self.taken_total += 1
            log.info("[%s] body-camera file stored: %s %s..%s, %d bytes, SHA-256 %s (via %s)%s", device,
                     record.path, iso(record.start), iso(record.end), record.bytes, record.sha256, provenance.via,
                     f"; CLOCK DIFFERENCE {when.clock_difference} s over tolerance" if when.flagged else "")
        else:
            self.duplicates_total += 1
        return record, created


class BodycamCollector(Collector):
    """Prometheus series of body-camera uploads, read from the ingest's counters at scrape time."""

    def __init__(self, ingest: BodycamIngest) -> None:
        self.ingest = ingest

    def collect(self) -> Iterator[Metric]:
        ingest = self.ingest
        active = GaugeMetricFamily("nvr_bodycam_uploads_active", "Body-camera files being taken now (API and inbox)")
        active.add_metric([], ingest.active)
        stored = CounterMetricFamily("nvr_bodycam_files_stored", "Body-camera files stored and indexed")
        stored.add_metric([], ingest.taken_total)
        duplicates = CounterMetricFamily("nvr_bodycam_duplicates", "Body-camera files received again (not stored)")
        duplicates.add_metric([], ingest.duplicates_total)
        rejected = CounterMetricFamily("nvr_bodycam_rejected", "Body-camera files refused, by error code",
                                       labels=["error"])
        for code, count in sorted(ingest.rejected_total.items()):
            rejected.add_metric([code], count)
        yield from (active, stored, duplicates, rejected)
