"""Edge backfill: the gaps of a camera with an SD card, retrieved from the card and recorded like the rest.

Which gaps.  Every ``backfill.scan_seconds`` the index of each camera whose
ONVIF link reports edge storage (Profile G) is looked at over the last
``backfill.max_age_seconds``: a hole of at least ``backfill.min_gap_seconds``
between two indexed segments (an outage of the camera, of its network or of
the daemon) that no job covers yet and that retention did not make (a range
in ``deletions`` is never fetched back) becomes a job in the index database
(table ``backfill_jobs``), so a daemon restart resumes it.

One job.  The card is searched (:class:`streams.edge_storage.EdgeStorage`),
and each hole still open inside the job's range is replayed
(:class:`streams.replay_client.ReplayClient`) over exactly that range, at
most ``backfill.max_bitrate_kbps``.  The card's times are the camera's clock:
when the link measured it off by more than ``health.clock_tolerance_seconds``
they are moved by that offset (within it, the camera's clock is taken as
right: ONVIF clocks tick in whole seconds).  The access units are written as
ordinary segments (:class:`BackfillWriter`): a segment starts at a keyframe
at or after the hole's start, is cut at keyframes every
``storage.segment_seconds`` and at every hole in the card, ends before the
next existing segment, is fsynced, hashed and only then indexed (chained
like any other row) with meta ``{"origin": "backfill", ...}``.  Frames whose
time falls on recorded footage are dropped and counted; a segment that
would overlap one in the index (whatever wrote it meanwhile) is discarded.

Outcome.  A replay that ends normally leaves what the card did not have as
a gap; the job is ``done`` and the rest shows ``edge_unavailable`` ("the
camera's card has no recording of this time").  A replay or search that
fails keeps what it wrote; the job is tried again after
``backfill.retry_seconds``, at most ``backfill.attempts`` times, then is
``failed`` with the reason.  While a job is ``pending`` or ``active`` its
holes show ``edge_pending`` ("recorded on camera, not yet retrieved").

Threads.  The manager runs on the event loop (searches, the replay's network
I/O); muxing, hashing and fsync run on the backfill's own thread, never the
live cameras'; index work on the index thread.  One job at a time for the
whole station, so CPU and bandwidth stay bounded beside live recording.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av.error
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nvr.base.config import Backfill as BackfillSettings
from nvr.base.config import Onvif, Storage
from nvr.base.timeutil import iso
from recorder.index import NewSegment, SegmentIndex, SegmentRecord, encode_meta
from recorder.segment_writer import ClosedSegment, DiskWriter, SegmentWriter, Template
from recorder.timeline import JOIN_SECONDS, Cause
from streams.bitstream import parameter_sets
from streams.edge_storage import EdgeError, EdgeStorage
from streams.media import TrackInfo, TrackKind
from streams.onvif import OnvifLink
from streams.replay_client import AccessUnit, ReplayClient, ReplayError, ReplayReason

log = logging.getLogger(__name__)

EDGE_PENDING = "edge_pending"
EDGE_UNAVAILABLE = "edge_unavailable"
ORIGIN = "backfill"
# Why part of a gap stays a gap (the ``reason`` of an edge_unavailable gap; labelled in web/static/i18n).
CARD_EMPTY = "card_empty"  # the card has nothing of that time (it was out, failed, or the camera was off)
CARD_OVERWRITTEN = "card_overwritten"  # the card's oldest footage is newer than the gap
BEFORE_KEYFRAME = "before_keyframe"  # before the card's first keyframe in the gap: segments start at keyframes
RETRIEVAL_FAILED = "retrieval_failed"  # every try failed (the job's detail says how)
_DETAILS = {
    CARD_EMPTY: "the camera's card has no recording of this time",
    CARD_OVERWRITTEN: "the camera's card no longer holds this time (its oldest footage is newer)",
    BEFORE_KEYFRAME: "before the first keyframe the card has in the gap: a segment starts only at a keyframe, "
                     "and the stream is never re-encoded",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS backfill_jobs (
    id INTEGER PRIMARY KEY,
    camera TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    reason TEXT,
    detail TEXT,
    segments INTEGER NOT NULL DEFAULT 0,
    retrieved_seconds REAL NOT NULL DEFAULT 0,
    overlap_dropped INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS backfill_jobs_camera ON backfill_jobs(camera, start);
CREATE TABLE IF NOT EXISTS backfill_totals (
    camera TEXT PRIMARY KEY,
    segments INTEGER NOT NULL,
    retrieved_seconds REAL NOT NULL,
    overlap_dropped INTEGER NOT NULL
);
"""
_JOB_COLUMNS = ("id, camera, start, end, state, attempts, next_try, reason, detail, segments, retrieved_seconds,"
                " overlap_dropped, created_at, finished_at")
PENDING, ACTIVE, DONE, FAILED = "pending", "active", "done", "failed"
# The time base of replayed H.264 (RTP's 90 kHz clock).
_TIME_BASE = Fraction(1, 90000)
_HOLE_ON_CARD_SECONDS = 2.0  # frames further apart than this are two runs on the card
_BATCH = 30  # access units handed to the backfill thread at a time
PRUNE_SECONDS = 600.0  # how often finished jobs whose time retention deleted are forgotten


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    camera: str
    start: float
    end: float
    state: str
    attempts: int
    next_try: float
    reason: str | None  # a code (CARD_EMPTY...) once finished with holes left
    detail: str | None  # in words: the last failure, or what the reason means
    segments: int
    retrieved_seconds: float
    overlap_dropped: int
    created_at: float
    finished_at: float | None

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "start": iso(self.start), "end": iso(self.end),
                "state": self.state, "attempts": self.attempts, "reason": self.reason, "detail": self.detail,
                "segments": self.segments,
                "retrieved_seconds": round(self.retrieved_seconds, 3), "overlap_dropped": self.overlap_dropped}


class BackfillJobs:
    """The persistent queue, in the index database; every method runs on the index thread."""

    def __init__(self, index: SegmentIndex) -> None:
        self.index = index

    def ensure_schema(self) -> None:
        self.index.db.executescript(_SCHEMA)

    def resume(self) -> int:
        """After a restart: a job that was being retrieved is pending again (its segments so far are kept)."""
        return self.index.db.execute("UPDATE backfill_jobs SET state = ?, next_try = 0 WHERE state = ?",
                                     (PENDING, ACTIVE)).rowcount

    def all(self) -> list[Job]:
        return [Job(*row) for row in self.index.db.execute(f"SELECT {_JOB_COLUMNS} FROM backfill_jobs ORDER BY id")]

    def ranges(self, camera: str, since: float) -> list[tuple[float, float]]:
        """The times of ``camera``'s jobs that end after ``since`` (a hole there is queued already)."""
        rows = self.index.db.execute("SELECT start, end FROM backfill_jobs WHERE camera = ? AND end > ?",
                                     (camera, since))
        return [(float(s), float(e)) for s, e in rows]

    def prune(self) -> list[int]:
        """Forget finished jobs whose time retention has already deleted; the ids forgotten.

        A finished job only labels its gap on the timeline (``edge_unavailable`` and why) and adds to the
        metrics' totals.  Once the camera's oldest segment is newer than the job's end, the timeline there
        is retention's, and the job would only make every read of the queue longer, day after day: its
        retrieved figures move into ``backfill_totals`` (the counters never go back) and the row goes.
        """
        rows = self.index.db.execute(
            "SELECT j.id, j.camera, j.segments, j.retrieved_seconds, j.overlap_dropped FROM backfill_jobs AS j"
            " WHERE j.state IN (?, ?) AND j.end <= (SELECT MIN(s.start) FROM segments AS s WHERE s.camera = j.camera)",
            (DONE, FAILED)).fetchall()
        if not rows:
            return []
        with self.index.transaction() as db:
            for _id, camera, segments, seconds, dropped in rows:
                db.execute("INSERT INTO backfill_totals (camera, segments, retrieved_seconds, overlap_dropped)"
                           " VALUES (?,?,?,?) ON CONFLICT(camera) DO UPDATE SET"
                           " segments = segments + excluded.segments,"
                           " retrieved_seconds = retrieved_seconds + excluded.retrieved_seconds,"
                           " overlap_dropped = overlap_dropped + excluded.overlap_dropped",
                           (camera, segments, seconds, dropped))
            db.executemany("DELETE FROM backfill_jobs WHERE id = ?", [(row[0],) for row in rows])
        return [int(row[0]) for row in rows]

    def totals(self) -> dict[str, tuple[int, float, int]]:
        """Per camera, what forgotten jobs retrieved: segments, seconds, overlapping frames dropped."""
        rows = self.index.db.execute("SELECT camera, segments, retrieved_seconds, overlap_dropped FROM backfill_totals")
        return {camera: (int(a), float(b), int(c)) for camera, a, b, c in rows}

    def add(self, camera: str, start: float, end: float) -> Job:
        cursor = self.index.db.execute(
            "INSERT INTO backfill_jobs (camera, start, end, state, created_at) VALUES (?,?,?,?,?)",
            (camera, start, end, PENDING, time.time()))
        row = self.index.db.execute(f"SELECT {_JOB_COLUMNS} FROM backfill_jobs WHERE id = ?",
                                    (cursor.lastrowid,)).fetchone()
        return Job(*row)

    def update(self, job: Job) -> None:
        self.index.db.execute(
            "UPDATE backfill_jobs SET state = ?, attempts = ?, next_try = ?, reason = ?, detail = ?, segments = ?,"
            " retrieved_seconds = ?, overlap_dropped = ?, finished_at = ? WHERE id = ?",
            (job.state, job.attempts, job.next_try, job.reason, job.detail, job.segments, job.retrieved_seconds,
             job.overlap_dropped, job.finished_at, job.id))

    def deleted_ranges(self, camera: str, start: float) -> list[tuple[float, float]]:
        rows = self.index.db.execute("SELECT start, end FROM deletions WHERE camera = ? AND end > ?", (camera, start))
        return [(float(s), float(e)) for s, e in rows]


def holes(segments: Sequence[SegmentRecord], start: float, end: float, min_gap: float) -> list[tuple[float, float]]:
    """The holes of at least ``min_gap`` between consecutive segments (by start) inside [start, end].

    Only holes with footage on both sides: the time before the first segment and after the last is not
    a gap of this camera's recording (it was not set up yet, or is being recorded now).
    """
    found = []
    ordered = sorted((s for s in segments if s.status != "missing"), key=lambda s: s.start)
    reach = None
    for seg in ordered:
        if reach is not None and seg.start - reach >= min_gap:
            lo, hi = max(reach, start), min(seg.start, end)
            if hi - lo >= min_gap:
                found.append((lo, hi))
        reach = seg.end if reach is None else max(reach, seg.end)
    return found


@dataclass(slots=True)
class WriteStats:
    segments: int = 0
    seconds: float = 0.0
    overlap_dropped: int = 0  # frames whose time falls on footage already recorded
    before_keyframe: int = 0  # frames skipped until a keyframe (a segment starts only at one)
    rejected: int = 0  # frames the muxer refused, or segments discarded because they would overlap


@dataclass(slots=True)
class _Open:
    writer: SegmentWriter
    start: float
    frames: int = 0
    last_at: float = 0.0
    interval: float = 1 / 15


class BackfillWriter:
    """Access units of one hole → segments inside [hole_start, hole_end]. Runs on the backfill thread."""

    def __init__(self, camera: str, root: Path, storage: Storage, index: SegmentIndex, hole: tuple[float, float],
                 meta: dict[str, Any], extradata: bytes = b"") -> None:
        self.camera, self.root, self.storage, self.index = camera, root, storage, index
        self.hole_start, self.hole_end = hole
        self.meta = meta
        self.extradata = extradata
        self.disk = DiskWriter(f"backfill-{camera}", threaded=False)
        self.stats = WriteStats()
        self._open: _Open | None = None
        self._template: Template | None = None
        self._video: TrackInfo | None = None
        self._last_at: float | None = None

    def feed(self, units: Sequence[tuple[float, AccessUnit]]) -> None:
        """(station time, access unit) pairs, in order."""
        for at, unit in units:
            self._one(at, unit)

    def _one(self, at: float, unit: AccessUnit) -> None:
        seg = self._open
        jump = self._last_at is not None and not 0 < at - self._last_at <= _HOLE_ON_CARD_SECONDS
        if seg is not None and (unit.discontinuity or jump):
            self._close(seg.last_at + seg.interval)  # a hole on the card: this segment ends here
            seg = None
        if self._last_at is not None and at <= self._last_at:
            self.stats.rejected += 1  # not after the previous frame: never muxed
            return
        interval = seg.interval if seg is not None else 1 / 15
        if at < self.hole_start or at + min(interval, 0.2) > self.hole_end:
            self.stats.overlap_dropped += 1
            return
        if seg is None:
            if not unit.keyframe:
                self.stats.before_keyframe += 1
                return
            seg = self._start(at, unit)
            if seg is None:
                return
        elif unit.keyframe and at - seg.start >= self.storage.segment_seconds - 0.25:
            self._close(at)
            seg = self._start(at, unit)
            if seg is None:
                return
        ticks = round((at - seg.start) / _TIME_BASE)
        try:
            seg.writer.write_video(unit.data, ticks, ticks, unit.keyframe, _TIME_BASE)
        except av.error.FFmpegError:
            self.stats.rejected += 1
            return
        if seg.frames:
            delta = at - seg.last_at
            if 0 < delta < 1.0:
                seg.interval = delta
        seg.frames += 1
        seg.last_at = at
        self._last_at = at

    def _start(self, at: float, unit: AccessUnit) -> _Open | None:
        params = parameter_sets("h264", unit.data) or self.extradata
        if not params:
            self.stats.before_keyframe += 1
            return None
        if self._template is None or self._video is None or self._video.extradata != params:
            if self._template is not None:
                self._template.close()
            probe = TrackInfo(TrackKind.VIDEO, "h264", _TIME_BASE, extradata=params)
            self._template = Template(probe, unit.data)
            context = self._template.stream.codec_context
            self._video = replace(probe, width=context.width or 0, height=context.height or 0)
        writer = SegmentWriter(self.root, self.camera, at, self._video, None, self._template, self.disk, ORIGIN)
        self._open = _Open(writer, at)
        return self._open

    def _close(self, end: float) -> None:
        seg, self._open = self._open, None
        if seg is None:
            return
        video = self._video
        assert video is not None
        if seg.frames == 0:
            seg.writer.abort()
            self.disk.discard(seg.writer.file)
            return
        end = min(max(end, seg.start + 0.001), self.hole_end)
        frames = seg.frames

        def indexed(closed: ClosedSegment) -> None:
            record = NewSegment(
                camera=self.camera, start=round(seg.start, 6), end=round(end, 6), frames=frames,
                bytes=closed.bytes, sha256=closed.sha256, codec="h264", width=video.width, height=video.height,
                params=json.dumps({"extradata": video.extradata.hex(), "time_base": str(_TIME_BASE), "audio": None,
                                   "camera_audio": None}, sort_keys=True),
                path=closed.relpath, meta=encode_meta({**self.meta, "retrieved_at": round(time.time(), 3)}))
            if self.index.submit(_add_unless_overlapping, self.index, record).result() is None:
                self.stats.rejected += 1
                log.warning("[%s] backfilled %s overlaps recorded footage; discarded", self.camera, closed.relpath)
                (self.root / closed.relpath).unlink(missing_ok=True)
                return
            self.stats.segments += 1
            self.stats.seconds += end - seg.start

        try:
            seg.writer.close(seg.start, indexed)
        except (OSError, av.error.FFmpegError):
            seg.writer.abort()
            log.error("[%s] cannot close a backfilled segment", self.camera, exc_info=True)
        if seg.writer.error:
            log.error("[%s] a backfilled segment was lost: %s", self.camera, seg.writer.error)

    def finish(self) -> WriteStats:
        if self._open is not None:
            self._close(self._open.last_at + self._open.interval)
        if self._template is not None:
            self._template.close()
            self._template = None
        return self.stats

    def abort(self) -> None:
        if self._open is not None:
            self._open.writer.abort()
            self.disk.discard(self._open.writer.file)
            self._open = None
        if self._template is not None:
            self._template.close()
            self._template = None


def _on_device(uri: str, device_url: str) -> str:
    """The replay URI on the device's own host: cameras behind NAT name an address we cannot reach, and the
    camera's credentials go to the camera only (as onvif-zeep-async does for service addresses)."""
    parts = urllib.parse.urlsplit(uri)
    host = urllib.parse.urlsplit(device_url).hostname or ""
    if parts.hostname == host or not host:
        return uri
    netloc = f"[{host}]" if ":" in host else host
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{netloc}:{parts.port}" if parts.port else netloc))


def _add_unless_overlapping(index: SegmentIndex, segment: NewSegment) -> SegmentRecord | None:
    """On the index thread: the row, unless a segment of the camera already covers part of its time."""
    clash = index.segments(segment.camera, segment.start, segment.end)
    if any(s.start < segment.end - 1e-6 and s.end > segment.start + 1e-6 for s in clash):
        return None
    return index.add_segment(segment)


def job_causes(jobs: Iterable[Job], camera: str, start: float, end: float) -> list[Cause]:
    """The timeline's causes from backfill jobs: ``edge_pending`` while one is to come, then ``edge_unavailable``
    with the reason for what is still missing (the retrieved parts are footage, not gaps)."""
    found: list[Cause] = []
    for job in jobs:
        if job.camera != camera or job.end <= start or job.start >= end:
            continue
        if job.state in (PENDING, ACTIVE):
            found.append(Cause(job.start, job.end, 0, EDGE_PENDING))  # "recorded on camera, not yet retrieved"
        else:
            found.append(Cause(job.start, job.end, 0, EDGE_UNAVAILABLE, job.reason or CARD_EMPTY))
    return found


class _Stopped(Exception):
    def __init__(self, job: Job) -> None:
        super().__init__("stopping")
        self.job = job


@dataclass(frozen=True, slots=True)
class BackfillCamera:
    id: str
    onvif: Onvif
    link: OnvifLink


@dataclass(slots=True)
class BackfillStatus:
    jobs_done: int = 0
    jobs_failed: int = 0
    segments: int = 0
    seconds: float = 0.0
    overlap_dropped: int = 0
    active: int | None = None  # the job being retrieved


class Backfill:
    def __init__(self, root: Path, storage: Storage, settings: BackfillSettings, clock_tolerance: float,
                 index: SegmentIndex, cameras: Sequence[BackfillCamera]) -> None:
        self.root, self.storage, self.settings = root, storage, settings
        self.clock_tolerance = clock_tolerance
        self.index = index
        self.jobs = BackfillJobs(index)
        self.cameras = {c.id: c for c in cameras}
        self.status = BackfillStatus()
        # The table, by id, as the loop knows it (every change goes through here): what the timeline and the
        # queue read.  Finished jobs leave it once retention has deleted their time (BackfillJobs.prune).
        self._jobs: dict[int, Job] = {}
        self._totals: dict[str, tuple[int, float, int]] = {}  # what the forgotten jobs retrieved, per camera
        self._pruned_mono = -math.inf
        self._stopping = False
        self._wake = asyncio.Event()
        self._thread: ThreadPoolExecutor | None = None  # made by run(), ended when it ends
        # Per camera, the end of the newest segment already looked at: each scan reads only what is new.
        self._scanned: dict[str, float] = {}
        self.now: Callable[[], float] = time.time  # the station's clock (tests may move it)
        # Called (on the loop) with each job that ends, done or given up: the station's audit trail records it.
        self.on_finished: Callable[[Job], None] | None = None

    # -- what the timeline reads (on the loop, from memory) -------------------------------

    def causes(self, camera: str, start: float, end: float) -> list[Cause]:
        if camera not in self.cameras:  # no longer backfilled: its old jobs explain nothing now
            return []
        return job_causes(self._jobs.values(), camera, start, end)

    def list_jobs(self, camera: str | None = None) -> list[Job]:
        return [j for j in self._jobs.values() if camera is None or j.camera == camera]

    def totals(self, camera: str) -> tuple[int, float, int]:
        """Segments, seconds retrieved and overlapping frames dropped by jobs no longer listed."""
        return self._totals.get(camera, (0, 0.0, 0))

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="backfill")
        try:
            await self._run()
        finally:
            self._thread.shutdown(wait=False)

    async def _run(self) -> None:
        await self.index.call(self.jobs.ensure_schema)
        resumed = await self.index.call(self.jobs.resume)
        if resumed:
            log.info("resuming %d backfill job(s) interrupted by the last stop", resumed)
        await self._refresh()
        while not self._stopping:
            try:
                await self._prune()
                await self._scan()
                job = self._next_job()
                if job is not None:
                    await self._retrieve(job)
                    continue
            except Exception:  # noqa: BLE001 - backfill must never end; live recording does not depend on it
                log.error("backfill round failed", exc_info=True)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.scan_seconds)
            except TimeoutError:
                pass

    async def _refresh(self) -> None:
        self._jobs = {job.id: job for job in await self.index.call(self.jobs.all)}
        self._totals = await self.index.call(self.jobs.totals)

    async def _prune(self) -> None:
        if time.monotonic() - self._pruned_mono < PRUNE_SECONDS:
            return
        self._pruned_mono = time.monotonic()
        pruned = await self.index.call(self.jobs.prune)
        if pruned:
            log.info("%d finished backfill job(s) forgotten: retention has deleted their time", len(pruned))
            await self._refresh()

    def _edge(self, camera: BackfillCamera) -> bool:
        return camera.onvif.backfill and camera.link.edge_storage is True

    async def _scan(self) -> None:
        now = self.now()
        since = now - self.settings.max_age_seconds
        for camera in self.cameras.values():
            if not self._edge(camera):
                continue
            found = await self.index.call(self._new_holes, camera.id, max(since, self._scanned.get(camera.id, since)),
                                          now)
            for lo, hi in found:
                job = await self.index.call(self.jobs.add, camera.id, lo, hi)
                self._jobs[job.id] = job
                log.info("[%s] gap %s s queued for backfill from the camera's card (job %d)", camera.id,
                         f"{hi - lo:.1f}", job.id)

    def _new_holes(self, camera: str, since: float, now: float) -> list[tuple[float, float]]:
        """On the index thread: holes not covered by a job nor made by retention."""
        segments = self.index.segments(camera, since, now)
        before = self.index.last_before(camera, since)  # a hole begun before ``since`` still counts inside it
        if before is not None:
            segments.insert(0, before)
        if segments:  # the newest segment is read again next time: a hole after it needs its end
            self._scanned[camera] = max(s.end for s in segments) - 0.001
        taken = self.jobs.ranges(camera, since) + self.jobs.deleted_ranges(camera, since)
        return [(lo, hi) for lo, hi in holes(segments, since, now, self.settings.min_gap_seconds)
                if not any(s < hi and e > lo for s, e in taken)]

    def _next_job(self) -> Job | None:
        now = self.now()
        for job in self._jobs.values():
            camera = self.cameras.get(job.camera)
            if job.state == PENDING and job.next_try <= now and camera is not None and self._edge(camera):
                return job
        return None

    async def _save(self, job: Job) -> Job:
        await self.index.call(self.jobs.update, job)
        self._jobs[job.id] = job
        return job

    # -- one job --------------------------------------------------------------------------

    def _offset(self, camera: BackfillCamera) -> float:
        """Camera clock minus station clock, as applied to the card's times (see the module docstring)."""
        measured = camera.link.clock_offset_seconds
        return measured if measured is not None and abs(measured) > self.clock_tolerance else 0.0

    async def _retrieve(self, job: Job) -> None:
        camera = self.cameras[job.camera]
        job = await self._save(replace(job, state=ACTIVE, attempts=job.attempts + 1))
        self.status.active = job.id
        offset = self._offset(camera)
        try:
            remaining = await self.index.call(self._remaining, job)
            if not remaining:
                await self._finish(job, DONE)
                return
            found = await EdgeStorage(camera.onvif).search(job.start + offset, job.end + offset)
            if not found.recordings:
                overwritten = found.card_start is not None and found.card_start > job.start + offset
                await self._finish(job, DONE, CARD_OVERWRITTEN if overwritten else CARD_EMPTY)
                return
            for lo, hi in remaining:
                for recording in found.recordings:
                    if recording.end < lo + offset or recording.start > hi + offset:
                        continue
                    uri = _on_device(recording.replay_uri, camera.onvif.url)
                    job = await self._replay(job, camera, uri, recording.token, (lo, hi), offset)
            await self._finish(job, DONE)
        except _Stopped as stopped:  # the daemon stops: what was written is kept, the rest resumes at start
            await self._save(replace(stopped.job, state=PENDING, attempts=stopped.job.attempts - 1,
                                     detail="interrupted by a stop of the daemon"))
        except (EdgeError, ReplayError) as exc:
            await self._failed(job, f"{exc.reason.value}: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - one job's failure is reported, the next one runs
            log.error("[%s] backfill job %d failed", job.camera, job.id, exc_info=True)
            await self._failed(job, f"internal error: {type(exc).__name__}")
        finally:
            self.status.active = None

    def _remaining(self, job: Job, min_gap: float | None = None) -> list[tuple[float, float]]:
        """On the index thread: the holes still open inside the job's range."""
        pad = self.storage.segment_seconds + 60
        segments = self.index.segments(job.camera, job.start - pad, job.end + pad)
        return holes(segments, job.start, job.end, self.settings.min_gap_seconds if min_gap is None else min_gap)

    async def _replay(self, job: Job, camera: BackfillCamera, uri: str, token: str, hole: tuple[float, float],
                      offset: float) -> Job:
        edge = EdgeStorage(camera.onvif)
        client = ReplayClient(uri, edge.address.user, edge.address.password, timeout=self.settings.timeout_seconds,
                              max_bytes_per_second=self.settings.max_bitrate_kbps * 1000 / 8)
        meta = {"origin": ORIGIN, "source": {"recording": token, "camera": camera.id}, "job": job.id,
                "clock_offset_applied_seconds": offset}
        if camera.link.clock_offset_seconds is not None:
            meta["clock_offset_seconds"] = camera.link.clock_offset_seconds
        loop = asyncio.get_running_loop()
        writer = BackfillWriter(camera.id, self.root, self.storage, self.index, hole, meta)
        batch: list[tuple[float, AccessUnit]] = []
        failure: ReplayError | None = None
        started = time.monotonic()
        # However the camera behaves (replaying slowly, or on and on without reaching the range's end), one
        # replay ends within twice its footage's length, and never sooner than a few read timeouts.
        deadline = max(4 * self.settings.timeout_seconds, 2 * (hole[1] - hole[0]) + self.settings.timeout_seconds)
        try:
            try:
                async with asyncio.timeout(deadline):
                    async for unit in client.replay(hole[0] + offset, hole[1] + offset):
                        if not writer.extradata:
                            writer.extradata = client.extradata
                        batch.append((unit.at - offset, unit))
                        if len(batch) >= _BATCH:
                            handed, batch = batch, []
                            await loop.run_in_executor(self._thread, writer.feed, handed)
                        if self._stopping:
                            break
            except ReplayError as exc:
                failure = exc  # what came before is kept
            except TimeoutError:
                await client.close()
                failure = ReplayError(ReplayReason.TIMEOUT, f"the replay of {hole[1] - hole[0]:.0f} s of footage "
                                      f"took over {deadline:.0f} s")
            if batch:
                await loop.run_in_executor(self._thread, writer.feed, batch)
            stats = await loop.run_in_executor(self._thread, writer.finish)
        except BaseException:
            await loop.run_in_executor(self._thread, writer.abort)
            raise
        log.info("[%s] backfill job %d: %.1f s retrieved in %d segment(s) in %.1f s (%d frame(s) on recorded "
                 "footage dropped, %d junk packet(s))", camera.id, job.id, stats.seconds, stats.segments,
                 time.monotonic() - started, stats.overlap_dropped, client.stats.junk)
        self.status.segments += stats.segments
        self.status.seconds += stats.seconds
        self.status.overlap_dropped += stats.overlap_dropped
        job = replace(job, segments=job.segments + stats.segments,
                      retrieved_seconds=job.retrieved_seconds + stats.seconds,
                      overlap_dropped=job.overlap_dropped + stats.overlap_dropped)
        await self._save(job)
        if failure is not None:
            raise failure
        if self._stopping:
            raise _Stopped(job)
        return job

    async def _finish(self, job: Job, state: str, reason: str | None = None, detail: str | None = None) -> None:
        remaining = await self.index.call(self._remaining, job, JOIN_SECONDS)
        if remaining and reason is None:
            slivers = all(hi - lo < _HOLE_ON_CARD_SECONDS for lo, hi in remaining)
            reason = BEFORE_KEYFRAME if slivers else CARD_EMPTY
        if state == DONE:
            self.status.jobs_done += 1
        if not remaining:
            reason = detail = None
        detail = detail or _DETAILS.get(reason or "")
        job = await self._save(replace(job, state=state, reason=reason, detail=detail, finished_at=time.time()))
        if self.on_finished is not None:
            self.on_finished(job)
        log.info("[%s] backfill job %d %s%s", job.camera, job.id, state,
                 f": {len(remaining)} hole(s) left: {detail}" if remaining else ", gap filled")

    async def _failed(self, job: Job, detail: str) -> None:
        if job.attempts < self.settings.attempts:
            log.warning("[%s] backfill job %d try %d failed: %s; again in %.0f s", job.camera, job.id, job.attempts,
                        detail, self.settings.retry_seconds)
            await self._save(replace(job, state=PENDING, detail=detail,
                                     next_try=self.now() + self.settings.retry_seconds))
            return
        self.status.jobs_failed += 1
        log.warning("[%s] backfill job %d given up after %d tries: %s", job.camera, job.id, job.attempts, detail)
        await self._finish(job, FAILED, RETRIEVAL_FAILED, detail)


class BackfillCollector(Collector):
    """Prometheus series of edge backfill, per camera, from the jobs (persistent, so they survive a restart)."""

    def __init__(self, backfill: Backfill) -> None:
        self.backfill = backfill

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("nvr_backfill_jobs", "Backfill jobs by state", labels=["camera", "state"])
        seconds = CounterMetricFamily("nvr_backfill_retrieved_seconds", "Seconds of footage retrieved from the "
                                      "camera's card", labels=["camera"])
        segments = CounterMetricFamily("nvr_backfill_segments", "Segments written from the camera's card",
                                       labels=["camera"])
        dropped = CounterMetricFamily("nvr_backfill_overlap_dropped_frames", "Frames from the card whose time was "
                                      "already recorded (dropped)", labels=["camera"])
        for camera in sorted(self.backfill.cameras):
            mine = self.backfill.list_jobs(camera)
            old_segments, old_seconds, old_dropped = self.backfill.totals(camera)
            for state in (PENDING, ACTIVE, DONE, FAILED):
                jobs.add_metric([camera, state], sum(1 for j in mine if j.state == state))
            seconds.add_metric([camera], old_seconds + sum(j.retrieved_seconds for j in mine))
            segments.add_metric([camera], old_segments + sum(j.segments for j in mine))
            dropped.add_metric([camera], old_dropped + sum(j.overlap_dropped for j in mine))
        yield from (jobs, seconds, segments, dropped)
