"""Continuous recording of one camera: a thread-side sink of the camera's hub that writes keyframe-aligned segments.

Time model.  A *run* is a stretch of packets whose media timestamps are
continuous.  It is anchored to the wall clock at its first keyframe and
advances by media time, so consecutive segments of a run meet exactly (the
keyframe that ends one segment starts the next).  A new run starts on a new
camera session (reconnect, reboot, new codec parameters), a timestamp jump,
a wall-clock/media-time drift beyond ``storage.drift_tolerance_seconds``, or
a host clock step.  A run never starts before the previous segment's end, so
segments of one camera never overlap.

Threads.  :class:`RecorderCore` is fed by the hub on the camera's own demux
thread (no hop per packet): it cuts, muxes in memory and queues each finished
fragment on the camera's :class:`~recorder.segment_writer.DiskWriter` thread,
which writes, hashes, fsyncs and adds the index row (on the index thread)
only after the file is closed and fsynced.  :class:`Recorder`, on the loop,
only attaches the core to the hub and detaches it at shutdown.  A write error
or a disk that falls behind drops this camera's current segment, is reported,
and recording is retried after a pause; other cameras are unaffected.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error

from nvr.base.config import Storage
from recorder.index import NewSegment, SegmentIndex, SegmentRecord, encode_meta
from recorder.segment_writer import ClosedSegment, DiskWriter, SegmentWriter, Template
from streams.hub import Hub
from streams.media import HubItem, MediaPacket, Session, SessionEnded, TrackKind

log = logging.getLogger(__name__)

_JUMP_SECONDS = 10.0  # a forward timestamp jump this large is a discontinuity, not a gap in motion
_CLOCK_STEP_SECONDS = 1.0
_RETRY_SECONDS = 5.0
_RECORDING_FRESH_SECONDS = 10.0
_SHUTDOWN_SECONDS = 8.0
# Keyframe timestamps jitter; a keyframe this close to the segment length ends the segment.
_CUT_TOLERANCE = 0.25


@dataclass(slots=True)
class _Run:
    session: Session
    anchor_wall: float  # wall-clock time of media time anchor_ts
    anchor_ts: float  # media time (s) of the run's first keyframe
    last_ts: float
    frame_interval: float
    clock_offset: float  # time.time() - time.monotonic() when the run started
    refine: bool = True  # anchor may still move earlier: first seconds of the run, first segment open

    def wall(self, ts: float) -> float:
        return self.anchor_wall + (ts - self.anchor_ts)


@dataclass(slots=True)
class _Open:
    writer: SegmentWriter
    origin_ticks: int  # dts of the first keyframe, in video time-base ticks
    origin_ts: float
    time_base: Fraction


class RecorderCore:
    """Thread-side state machine of one camera's recording. Not thread-safe: one thread at a time.

    ``disk`` does the file work; without one, it is done at once on the calling
    thread (tests drive the core that way, with real H.264 and no event loop).
    """

    def __init__(
        self,
        camera: str,
        root: Path,
        storage: Storage,
        commit: Callable[[NewSegment], SegmentRecord],
        last_end: float | None = None,
        on_error: Callable[[str], None] | None = None,
        disk: DiskWriter | None = None,
    ) -> None:
        self.camera = camera
        self.root = root
        self.storage = storage
        self.commit = commit
        self.on_error = on_error
        self.disk = disk or DiskWriter(camera, threaded=False)
        self.last_end = last_end or 0.0
        self.run: _Run | None = None
        self.open: _Open | None = None
        self.pending_cut: str | None = None
        self.error: str | None = None
        self.retry_at = 0.0
        self.dropped = 0
        self.segments_written = 0  # these three are updated by the disk thread
        self.bytes_written = 0
        self.last_segment: SegmentRecord | None = None
        # What a segment's index row carries beyond the media (e.g. the camera's clock offset), asked for on
        # the disk thread as each segment is indexed; must be cheap and thread-safe.
        self.segment_meta: Callable[[], dict[str, Any]] | None = None
        self._template: Template | None = None  # the current session's codec parameters
        self._time_base: Fraction = Fraction(1, 90000)
        self._seconds_per_tick = 1 / 90000  # float of _time_base: the per-packet arithmetic stays in floats

    @property
    def last_write_mono(self) -> float:
        """When bytes last reached a segment file (monotonic; 0 before the first)."""
        return self.disk.last_write_mono

    # -- entry points ---------------------------------------------------------------------

    def feed(self, item: HubItem, raw: av.Packet | None = None) -> None:
        """One item from the hub, on the camera's thread (a :class:`~streams.hub.PacketSink`)."""
        if self.open is not None and self.open.writer.error is not None:
            self._fail(self.open.writer.error)
        if isinstance(item, SessionEnded):
            if self.run is not None and item.session is self.run.session:
                self.end_run(f"session ended: {item.reason}")
        elif item.kind is TrackKind.VIDEO:
            self._video(item, raw)
        elif self.open is not None and self.run is not None and item.session is self.run.session:
            self._audio(item)

    def handle(self, items: list[HubItem]) -> None:
        for item in items:
            self.feed(item)

    def end_run(self, why: str) -> None:
        if self.open is not None and self.run is not None:
            self._close(self.run.wall(self.run.last_ts + self.run.frame_interval), why)
        self.run = None

    # -- video ----------------------------------------------------------------------------

    def _video(self, packet: MediaPacket, raw: av.Packet | None) -> None:
        ticks = packet.dts if packet.dts is not None else packet.pts
        run = self.run
        if ticks is None:
            if run is None or self.open is None:
                self.dropped += 1
                return
            # No timestamp at all: place it one frame after the previous one.
            ticks = round((run.last_ts + run.frame_interval) / packet.time_base)
        if packet.time_base is not self._time_base:
            self._time_base, self._seconds_per_tick = packet.time_base, float(packet.time_base)
        ts = ticks * self._seconds_per_tick

        if run is not None and packet.session is not run.session:
            self.end_run("new camera session")
            run = None
        if run is not None:
            reason = self._discontinuity(run, packet, ts)
            if reason == "jump":
                self.end_run("timestamp jump")
                run = None
            elif reason == "duplicate":
                self.dropped += 1
                return
            elif reason is not None and self.pending_cut is None:
                self.pending_cut = reason

        if self.error is not None:
            if time.monotonic() < self.retry_at:
                self.dropped += 1
                return
            if not packet.is_keyframe:
                self.dropped += 1
                return
            log.info("[%s] retrying recording after: %s", self.camera, self.error)
            self.error = None
            self.end_run("write error")
            run = None

        if run is None:
            if not packet.is_keyframe:
                self.dropped += 1
                return
            run = self._start_run(packet, ts)
        elif self.pending_cut is not None and packet.is_keyframe:
            why = self.pending_cut
            self.pending_cut = None
            self.end_run(why)
            log.info("[%s] new recording run: %s", self.camera, why)
            run = self._start_run(packet, ts)

        if self.open is None:
            if not packet.is_keyframe:
                self.dropped += 1
                return
            self._open_segment(run, packet, ticks, ts)
        elif packet.is_keyframe and ts - self.open.origin_ts >= self.storage.segment_seconds - _CUT_TOLERANCE:
            boundary = run.wall(ts)
            self._close(boundary, "segment length reached")
            self._open_segment(run, packet, ticks, ts)
        if self.open is None:
            return
        if self._refining(run, ts):
            # Packets buffered while connecting arrive late; the earliest
            # arrival relative to media time is the best anchor we get.
            earliest = packet.received_at - (ts - run.anchor_ts)
            if earliest < run.anchor_wall:
                run.anchor_wall = max(earliest, self.last_end)
        self._write_video(packet, ticks, ts, raw)

    def _discontinuity(self, run: _Run, packet: MediaPacket, ts: float) -> str | None:
        delta = ts - run.last_ts
        if delta < 0 or delta > _JUMP_SECONDS:
            return "jump"
        if delta == 0:
            return "duplicate"
        offset = packet.received_at - packet.received_mono
        if abs(offset - run.clock_offset) > _CLOCK_STEP_SECONDS:
            return "host clock step"
        if not self._refining(run, ts):
            drift = packet.received_at - run.wall(ts)
            if abs(drift) > self.storage.drift_tolerance_seconds:
                return f"media time drifted {drift:+.1f} s from the wall clock"
        return None

    def _refining(self, run: _Run, ts: float) -> bool:
        """Packets buffered while connecting arrive in a burst: for the first seconds of a run the
        anchor is refined, after that a difference between media time and arrival is drift."""
        return run.refine and ts - run.anchor_ts < self.storage.drift_tolerance_seconds

    def _start_run(self, packet: MediaPacket, ts: float) -> _Run:
        anchor = max(packet.received_at, self.last_end)
        rate = packet.session.video.average_rate if packet.session.video else None
        interval = float(1 / rate) if rate else 1 / 15
        run = _Run(
            session=packet.session,
            anchor_wall=anchor,
            anchor_ts=ts,
            last_ts=ts,
            frame_interval=interval,
            clock_offset=packet.received_at - packet.received_mono,
        )
        self.run = run
        return run

    def _open_segment(self, run: _Run, packet: MediaPacket, ticks: int, ts: float) -> None:
        session = packet.session
        assert session.video is not None
        try:
            if self._template is None or self._template.video is not session.video:
                if self._template is not None:
                    self._template.close()
                    self._template = None
                self._template = Template(session.video, packet.data)
            writer = SegmentWriter(self.root, self.camera, run.wall(ts), session.video, session.audio,
                                   self._template, self.disk)
        except (OSError, av.error.FFmpegError) as exc:
            self._fail(f"cannot open a segment: {_describe(exc)}")
            return
        self.open = _Open(writer=writer, origin_ticks=ticks, origin_ts=ts, time_base=packet.time_base)

    def _write_video(self, packet: MediaPacket, ticks: int, ts: float, raw: av.Packet | None) -> None:
        assert self.open is not None and self.run is not None
        seg = self.open
        pts = packet.pts if packet.pts is not None else ticks
        # Rescale into the segment's time base if the camera's changed mid-run.
        if packet.time_base is not seg.time_base and packet.time_base != seg.time_base:
            ticks = round(ts / seg.time_base)
            pts = round(float(pts * packet.time_base) / seg.time_base)
        try:
            seg.writer.write_video(
                packet.data, pts - seg.origin_ticks, ticks - seg.origin_ticks, packet.is_keyframe, seg.time_base, raw
            )
        except av.error.FFmpegError as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS):
                self._fail(f"write failed: {_describe(exc)}")
                return
            # A packet the muxer rejects is dropped; the recording goes on.
            self.dropped += 1
            log.debug("[%s] muxer rejected a packet: %s", self.camera, exc)
            return
        except OSError as exc:
            self._fail(f"write failed: {_describe(exc)}")
            return
        delta = ts - self.run.last_ts
        if 0 < delta < 1.0:
            self.run.frame_interval = delta
        self.run.last_ts = ts

    # -- audio ----------------------------------------------------------------------------

    def _audio(self, packet: MediaPacket) -> None:
        assert self.open is not None
        if packet.pts is None:
            return
        offset = float(packet.pts * packet.time_base) - self.open.origin_ts
        if offset < 0:
            return
        try:
            self.open.writer.write_audio(packet.data, offset)
        except OSError as exc:
            self._fail(f"write failed: {_describe(exc)}")

    # -- closing --------------------------------------------------------------------------

    def _close(self, end: float, why: str) -> None:
        seg = self.open
        run = self.run
        self.open = None
        if seg is None or run is None:
            return
        start = run.wall(seg.origin_ts)
        run.refine = False
        writer = seg.writer
        if writer.frames == 0:
            writer.abort()
            self.disk.discard(writer.file)
            return
        video = run.session.video
        assert video is not None
        params = {
            "extradata": video.extradata.hex(),
            "time_base": str(video.time_base),
            "audio": "aac" if run.session.audio is not None and not writer.audio_failed else None,
            "camera_audio": run.session.audio.codec if run.session.audio is not None else None,
        }
        end = max(end, start + 0.001)
        frames = writer.frames

        def indexed(closed: ClosedSegment) -> None:
            # On the disk thread, once the file is fsynced under its final name.
            record = NewSegment(
                camera=self.camera,
                start=round(start, 6),
                end=round(end, 6),
                frames=frames,
                bytes=closed.bytes,
                sha256=closed.sha256,
                codec=video.codec,
                width=video.width,
                height=video.height,
                params=json.dumps(params, sort_keys=True),
                path=closed.relpath,
                meta=self._meta(),
            )
            try:
                self.last_segment = self.commit(record)
            except Exception as exc:  # noqa: BLE001 - the file is safe on disk; reconcile indexes it at next start
                log.error("[%s] cannot index %s: %s", self.camera, closed.relpath, exc, exc_info=True)
            self.segments_written += 1
            self.bytes_written += closed.bytes
            log.debug("[%s] segment %s closed (%s): %.2f s, %d frames", self.camera, closed.relpath, why,
                      end - start, frames)

        try:
            writer.close(start, indexed)
        except (OSError, av.error.FFmpegError) as exc:
            writer.abort()
            self._fail(f"cannot close a segment: {_describe(exc)}")
            return
        self.last_end = end

    def _fail(self, message: str) -> None:
        if self.open is not None:
            self.open.writer.abort()
            self.open = None
        self.run = None
        if self.error is None:
            log.error("[%s] recording interrupted: %s; retrying in %.0f s", self.camera, message, _RETRY_SECONDS)
        self.error = message
        self.retry_at = time.monotonic() + _RETRY_SECONDS
        if self.on_error is not None:
            self.on_error(message)

    def close(self) -> None:
        self.end_run("shutdown")
        if self._template is not None:
            self._template.close()
            self._template = None


    def _meta(self) -> str:
        if self.segment_meta is None:
            return "{}"
        try:
            return encode_meta(self.segment_meta())
        except Exception:  # noqa: BLE001 - provenance extras never cost a segment its index row
            log.error("[%s] segment meta unavailable", self.camera, exc_info=True)
            return "{}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


class Recorder:
    """The loop-side half: attaches the core to the camera's hub as a thread-side sink, detaches it at stop.

    Packets never pass through the loop: the hub feeds the core on the camera's
    demux thread, and the core's disk thread writes and indexes.
    """

    def __init__(
        self,
        camera: str,
        hub: Hub,
        root: Path,
        storage: Storage,
        index: SegmentIndex,
        on_error: Callable[[str], None] | None = None,
        segment_meta: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.camera = camera
        self.hub = hub
        self.index = index
        self.disk = DiskWriter(camera)
        self.core = RecorderCore(camera, root, storage, self._commit, on_error=on_error, disk=self.disk)
        self.core.segment_meta = segment_meta
        self._stopped = asyncio.Event()

    def _commit(self, segment: NewSegment) -> SegmentRecord:
        return self.index.submit(self.index.add_segment, segment).result()

    async def run(self) -> None:
        latest = await self.index.call(self.index.latest, self.camera)
        if latest is not None:
            self.core.last_end = max(self.core.last_end, latest.end)
            self.core.last_segment = self.core.last_segment or latest
        self.hub.add_sink(self.core)
        try:
            await self._stopped.wait()
        finally:
            await asyncio.to_thread(self._finish)

    def _finish(self) -> None:
        """Off the loop: once detached no demux thread is inside the core; close the segment, let the disk finish."""
        self.hub.remove_sink(self.core)
        self.core.close()
        if not self.disk.close(timeout=_SHUTDOWN_SECONDS):
            log.error("[%s] the disk did not finish writing within %.0f s", self.camera, _SHUTDOWN_SECONDS)

    def stop(self) -> None:
        self._stopped.set()

    @property
    def dropped(self) -> int:
        return self.core.dropped

    @property
    def recording(self) -> bool:
        """Packets reached a segment file recently."""
        core = self.core
        return core.open is not None and time.monotonic() - core.last_write_mono < _RECORDING_FRESH_SECONDS

    @property
    def last_segment_end(self) -> float | None:
        return self.core.last_segment.end if self.core.last_segment is not None else None

    def shutdown_executor(self) -> None:
        """Kept for the daemon's shutdown sequence: the disk thread ends in :meth:`run`."""
