"""One playable MP4 from the segments covering a time range, stream-copied and streamed as built.

The clip starts at the keyframe at or before the requested start and ends
at the requested end.  Timestamps follow the segments' wall-clock times, so
a clip across segment boundaries is continuous and a real recording gap
stays a gap.  The remux runs in a thread and hands chunks to the caller
through a small bounded queue: a slow client slows the remux down, memory
stays bounded.  A change of codec parameters ends the clip early (an MP4
has one set); the caller is told where it ended.
"""

from __future__ import annotations

import io
import json
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error

from recorder.index import SegmentRecord
from recorder.segment_writer import MUX_OPTIONS
from recorder.storage import StorageError, segment_file

log = logging.getLogger(__name__)

_CHUNK_QUEUE = 16
Locate = Callable[[SegmentRecord], Path]


class ClipError(Exception):
    pass


@dataclass(slots=True)
class ClipResult:
    start: float | None = None  # wall-clock time of the first frame
    end: float | None = None
    frames: int = 0
    truncated_at: float | None = None  # codec parameters changed here


class _QueueSink(io.RawIOBase):
    def __init__(self, chunks: queue.Queue[bytes | None], cancelled: threading.Event) -> None:
        super().__init__()
        self.chunks = chunks
        self.cancelled = cancelled

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        while True:
            if self.cancelled.is_set():
                raise BrokenPipeError("client went away")
            try:
                self.chunks.put(chunk, timeout=0.5)
                return len(chunk)
            except queue.Full:
                continue


def write_clip(root: Path, segments: list[SegmentRecord], start: float, end: float, sink: io.RawIOBase,
               result: ClipResult, locate: Locate | None = None) -> None:
    """Remux ``segments`` (oldest first) restricted to [start, end) into ``sink``.

    ``locate`` finds a segment's file when it is not the local one (a copy fetched from the archive).
    """
    path_of = locate or (lambda seg: _segment_path(root, seg))
    if not segments:
        raise ClipError("no recordings in that range")
    first_params = segments[0].params
    out = av.open(sink, "w", format="mp4", options=MUX_OPTIONS)
    try:
        v_out = a_out = None
        origin: float | None = None
        for seg in segments:
            if seg.params != first_params and _extradata(seg) != _extradata(segments[0]):
                result.truncated_at = seg.start
                break
            with av.open(str(path_of(seg))) as container:
                v_in = container.streams.video[0]
                a_in = container.streams.audio[0] if container.streams.audio else None
                if v_out is None:
                    v_out = out.add_stream_from_template(v_in)
                    v_out.time_base = Fraction(1, 90000)
                    if a_in is not None:
                        a_out = out.add_stream_from_template(a_in)
                        a_out.time_base = Fraction(1, a_in.sample_rate or 48000)
                streams = [v_in] + ([a_in] if a_in is not None and a_out is not None else [])
                keyframe_start = None
                if origin is None:
                    keyframe_start = _keyframe_at_or_before(path_of(seg), seg, start)
                for packet in container.demux(streams):
                    if packet.dts is None or packet.size == 0:
                        continue
                    assert packet.time_base is not None
                    # Our segment files start their shared timeline at 0 = the segment's start.
                    wall = seg.start + float(packet.dts * packet.time_base)
                    is_video = packet.stream.index == v_in.index
                    if origin is None:
                        if not is_video or wall + 1e-6 < (keyframe_start if keyframe_start is not None else start):
                            continue
                        if not packet.is_keyframe:
                            continue
                        origin = wall
                        result.start = wall
                    if wall < origin:
                        continue
                    if wall >= end:
                        if is_video:
                            break
                        continue
                    target = v_out if is_video else a_out
                    assert target is not None
                    out_tb = target.time_base
                    assert out_tb is not None
                    offset = wall - origin
                    pts_shift = (packet.pts - packet.dts) if packet.pts is not None else 0
                    ticks = round(offset / out_tb)
                    packet.stream = target
                    rescaled_shift = round(float(pts_shift * packet.time_base) / out_tb)
                    packet.time_base = out_tb
                    packet.dts = ticks
                    packet.pts = ticks + rescaled_shift
                    out.mux(packet)
                    if is_video:
                        result.frames += 1
                        result.end = wall
            if result.end is not None and result.end >= end:
                break
        if result.frames == 0:
            raise ClipError("no video frames in that range")
    finally:
        try:
            out.close()
        except (av.error.FFmpegError, OSError):
            log.debug("closing clip", exc_info=True)


def _segment_path(root: Path, seg: SegmentRecord) -> Path:
    try:
        return segment_file(root, seg.path)
    except StorageError as exc:
        log.error("clip: segment %d: %s", seg.id, exc)
        raise ClipError(f"segment {seg.id} cannot be read safely") from None


def _extradata(seg: SegmentRecord) -> str:
    try:
        return str(json.loads(seg.params).get("extradata", ""))
    except ValueError:
        return ""


def _keyframe_at_or_before(path: Path, seg: SegmentRecord, start: float) -> float | None:
    """Wall time of the last keyframe at or before ``start`` in this segment (its start if none).

    From the segment's start: its first keyframe, wherever it is (an uploaded body-camera MP4 with
    B-frames decodes its first frame at a negative time, a little before the time it shows)."""
    if start <= seg.start:
        return -math.inf
    best = seg.start
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.dts is None or packet.size == 0:
                continue
            assert packet.time_base is not None
            wall = seg.start + float(packet.dts * packet.time_base)
            if wall > start + 1e-6:
                break
            if packet.is_keyframe:
                best = wall
    return best


class ClipStream:
    """Runs :func:`write_clip` in a thread; iterate the chunks (blocking) or cancel."""

    def __init__(self, root: Path, segments: list[SegmentRecord], start: float, end: float,
                 locate: Locate | None = None) -> None:
        self.locate = locate
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_CHUNK_QUEUE)
        self.cancelled = threading.Event()
        self.result = ClipResult()
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(root, segments, start, end), name="clip", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _run(self, root: Path, segments: list[SegmentRecord], start: float, end: float) -> None:
        try:
            write_clip(root, segments, start, end, _QueueSink(self.chunks, self.cancelled), self.result, self.locate)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self.error = exc
        finally:
            while not self.cancelled.is_set():
                try:
                    self.chunks.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def next_chunk(self) -> bytes | None:
        """Blocking: the next chunk, or None at the end (check ``error``)."""
        while True:
            try:
                return self.chunks.get(timeout=0.5)
            except queue.Empty:
                if not self._thread.is_alive() and self.chunks.empty():
                    return None

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self.next_chunk()) is not None:
            yield chunk
