"""One segment: fragmented MP4 muxed in memory, written and hashed by a disk thread in large buffers.

Two halves, on two threads:

- :class:`SegmentWriter` muxes on the camera's thread (the one that demuxes
  it) into memory.  Video packets are stream-copied (the demuxer's own
  packets when they are whole access units; Annex-B start codes become MP4
  length prefixes, every NAL unit, SEI included, is kept).  Audio is
  re-encoded to AAC, because G.711 cannot be carried in MP4.  FFmpeg cuts a
  fragment every second and hands the finished bytes over once per
  fragment, so the camera's thread never touches the disk.
- :class:`DiskWriter` (one thread per camera) writes those buffers to
  ``<name>.mp4.part``, hashing each on its way to the kernel; a crash loses at
  most the last fragment.  Closing fsyncs the file, renames it to its final
  name and fsyncs the directory; only then is its index row added.

A slow or stuck disk never blocks the camera's thread: the disk thread's queue
is bounded (``MAX_QUEUED_BYTES``); beyond it the recorder gives the segment up
and says so, as for any write error.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import av.error
from av.audio.codeccontext import AudioCodecContext
from av.audio.stream import AudioStream

from recorder.storage import PART_SUFFIX, fsync_dir, segment_relpath
from streams.media import TrackInfo

log = logging.getLogger(__name__)

MUX_OPTIONS = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "frag_duration": "1000000",
    # After each packet FFmpeg passes on what it has written: a finished fragment, or nothing
    # (the muxer keeps the fragment being built in memory), so this costs no write per packet.
    "flush_packets": "1",
}
# FFmpeg's I/O buffer for the in-memory sink: a fragment of a 4 Mbit/s camera in two or three pieces.
_IO_BUFFER = 256 << 10
# What a camera's disk thread may have queued before the recorder gives the segment up (~30 s at 4 Mbit/s).
MAX_QUEUED_BYTES = 16 << 20


class MemorySink(io.RawIOBase):
    """Write-only, non-seekable sink that keeps what FFmpeg writes until it is taken."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []
        self.size = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self.chunks.append(chunk)
        self.size += len(chunk)
        return len(chunk)

    def take(self) -> bytes:
        chunks, self.chunks = self.chunks, []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@dataclass(frozen=True, slots=True)
class ClosedSegment:
    relpath: str
    bytes: int
    sha256: str


def make_template(video: TrackInfo, keyframe: bytes) -> av.container.InputContainer:
    # av.open's return type covers output containers too; this one is an input.
    """An in-memory input holding the codec parameters of ``video`` (for add_stream_from_template).

    Parsing the parameter sets and one keyframe with FFmpeg's own raw demuxer
    gives exactly the codec parameters a remux from the camera would have.
    """
    fmt = "hevc" if video.codec == "hevc" else "h264"
    return av.open(io.BytesIO(video.extradata + keyframe), format=fmt)  # type: ignore[return-value]


class Template:
    """The codec parameters of one camera session, parsed once and reused by each of its segments.

    Opening the template probes the keyframe (FFmpeg decodes it to learn the
    stream's parameters): about as costly as muxing ten seconds of video, so not
    something to repeat at every cut.
    """

    def __init__(self, video: TrackInfo, keyframe: bytes) -> None:
        self.video = video
        self.container = make_template(video, keyframe)
        self.stream = self.container.streams.video[0]

    def close(self) -> None:
        self.container.close()


@dataclass(eq=False)
class SegmentFile:
    """The disk side of one segment; touched only by its :class:`DiskWriter`'s thread."""

    root: Path
    camera: str
    part_path: Path
    origin: str | None = None  # recorder.storage.ORIGINS; None: the live stream
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0
    error: str | None = None  # set by the disk thread; the recorder reads it
    file: io.FileIO | None = None

    def open(self) -> None:
        self.part_path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.part_path, "wb", buffering=0)  # noqa: SIM115 - closed in finish() or abandon()

    def write(self, data: bytes) -> None:
        assert self.file is not None
        self.sha256.update(data)  # hashlib releases the GIL for large buffers
        view = memoryview(data)
        while view:
            written = self.file.write(view) or 0
            view = view[written:]
        self.size += len(data)

    def finish(self, final_start: float) -> ClosedSegment:
        """Fsync, rename to the final name, fsync the directory."""
        assert self.file is not None
        os.fsync(self.file.fileno())
        self.file.close()
        relpath = segment_relpath(self.camera, final_start, self.origin)
        final = self.root / relpath
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.part_path, final)
        fsync_dir(final.parent)
        if final.parent != self.part_path.parent:
            fsync_dir(self.part_path.parent)
        return ClosedSegment(relpath=relpath, bytes=self.size, sha256=self.sha256.hexdigest())

    def abandon(self) -> None:
        """After an error: close without renaming; the .part file is recovered at the next start."""
        if self.file is not None and not self.file.closed:
            self.file.close()


_Job = Callable[[], None]


class DiskWriter:
    """A camera's disk thread: opens, writes (hashing) and finishes its segment files in order.

    ``threaded=False`` runs every job at once in the caller's thread (tests that
    drive a recorder without threads).
    """

    def __init__(self, camera: str, *, threaded: bool = True, max_queued_bytes: int = MAX_QUEUED_BYTES) -> None:
        self.camera = camera
        self.threaded = threaded
        self.max_queued_bytes = max_queued_bytes
        self.queued_bytes = 0
        self.last_write_mono = 0.0  # the last time bytes reached a file
        self._jobs: deque[tuple[_Job, int]] = deque()
        self._cond = threading.Condition()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._thread: threading.Thread | None = None

    def open(self, file: SegmentFile) -> None:
        def job() -> None:
            self._run(file, file.open, "cannot open a segment")

        self._submit(job, 0)

    def write(self, file: SegmentFile, data: bytes) -> bool:
        """Queue bytes for ``file``; False (nothing queued) when the disk is that far behind."""
        if self.queued_bytes + len(data) > self.max_queued_bytes:
            return False

        def job() -> None:
            if self._run(file, lambda: file.write(data), "write failed"):
                self.last_write_mono = time.monotonic()

        self._submit(job, len(data))
        return True

    def finish(self, file: SegmentFile, final_start: float, done: Callable[[ClosedSegment], None]) -> None:
        """Fsync and rename ``file``, then call ``done`` (on the disk thread) unless an error came first."""

        def job() -> None:
            closed: list[ClosedSegment] = []
            if self._run(file, lambda: closed.append(file.finish(final_start)), "cannot close a segment"):
                done(closed[0])

        self._submit(job, 0)

    def abandon(self, file: SegmentFile) -> None:
        self._submit(file.abandon, 0)

    def discard(self, file: SegmentFile) -> None:
        """Close and delete (a segment that got no frame)."""

        def job() -> None:
            file.abandon()
            file.part_path.unlink(missing_ok=True)

        self._submit(job, 0)

    def _run(self, file: SegmentFile, action: Callable[[], object], what: str) -> bool:
        if file.error is not None:
            return False
        try:
            action()
            return True
        except OSError as exc:
            file.error = f"{what}: {exc.strerror or type(exc).__name__}"
            file.abandon()
            return False

    def _submit(self, job: _Job, size: int) -> None:
        if not self.threaded:
            job()
            return
        with self._cond:
            if self._closed:
                raise RuntimeError("disk writer closed")
            self.queued_bytes += size
            self._jobs.append((job, size))
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"disk-{self.camera}", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._idle.set()
                    if self._closed:
                        return
                    self._cond.wait()
                job, size = self._jobs.popleft()
            try:
                job()
            except Exception:  # noqa: BLE001 - one bad job must not end the camera's disk thread
                log.error("[%s] disk job failed", self.camera, exc_info=True)
            finally:
                with self._cond:
                    self.queued_bytes -= size

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued job ran (True) or ``timeout`` passed (False)."""
        return self._idle.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Run what is queued, then end the thread. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()


class SegmentWriter:
    """The camera-thread half of one segment: muxes into memory and queues the bytes on a :class:`DiskWriter`."""

    def __init__(
        self,
        root: Path,
        camera: str,
        start: float,
        video: TrackInfo,
        audio: TrackInfo | None,
        template: Template,
        disk: DiskWriter,
        origin: str | None = None,
    ) -> None:
        self.root = root
        self.camera = camera
        self.video_info = video
        self.disk = disk
        self.file = SegmentFile(root, camera, root / (segment_relpath(camera, start, origin) + PART_SUFFIX), origin)
        self.sink = MemorySink()
        self.frames = 0
        self.audio_failed = False
        self.overflow = False  # the disk fell too far behind for this segment
        self.out = av.open(self.sink, "w", format="mp4", options=MUX_OPTIONS, buffer_size=_IO_BUFFER)
        try:
            self.video = self.out.add_stream_from_template(template.stream)
            self.video.time_base = video.time_base
            self.audio_in: AudioCodecContext | None = None
            self.audio_out: AudioStream | None = None
            self._audio_started = False
            self._audio_next_pts = 0
            if audio is not None:
                self._open_audio(audio)
        except BaseException:
            self.out.close()
            raise
        disk.open(self.file)

    @property
    def part_path(self) -> Path:
        return self.file.part_path

    @property
    def error(self) -> str | None:
        """A disk error of this segment (set by the disk thread), or the disk falling behind."""
        if self.overflow:
            return f"the disk does not keep up ({self.disk.queued_bytes >> 20} MB waiting)"
        return self.file.error

    def _open_audio(self, audio: TrackInfo) -> None:
        try:
            decoder = cast(AudioCodecContext, av.CodecContext.create(audio.codec, "r"))
            decoder.sample_rate = audio.sample_rate or 8000
            if audio.extradata:
                decoder.extradata = audio.extradata
            decoder.layout = "stereo" if audio.channels == 2 else "mono"
            stream = cast(AudioStream, self.out.add_stream("aac", rate=decoder.sample_rate))
            stream.layout = "stereo" if audio.channels == 2 else "mono"
            stream.bit_rate = 32000 if audio.channels != 2 else 64000
            self.audio_in, self.audio_out = decoder, stream
        except (av.error.FFmpegError, ValueError):
            log.warning("[%s] cannot transcode %s audio; recording video only", self.camera, audio.codec, exc_info=True)
            self.audio_in = self.audio_out = None

    def _pass_on(self) -> None:
        """Queue what the muxer wrote (a finished fragment, the header or the trailer) for the disk."""
        if self.sink.chunks and not self.overflow and not self.disk.write(self.file, self.sink.take()):
            self.overflow = True

    def write_video(self, data: bytes, pts: int, dts: int, keyframe: bool, time_base: Fraction,
                    raw: av.Packet | None = None) -> None:
        """One access unit; ``raw`` is the demuxer's packet holding exactly ``data`` (muxed without a copy)."""
        if raw is not None:
            packet = raw
        else:
            packet = av.Packet(data)
            packet.is_keyframe = keyframe
        packet.stream = self.video
        packet.time_base = time_base
        packet.pts = pts
        packet.dts = dts
        self.out.mux_one(packet)
        self.frames += 1
        if self.sink.chunks:
            self._pass_on()

    def write_audio(self, data: bytes, offset_seconds: float) -> None:
        """Audio at ``offset_seconds`` from the segment's origin; any audio failure only drops audio."""
        if self.audio_in is None or self.audio_out is None or self.audio_failed:
            return
        try:
            frames = self.audio_in.decode(av.Packet(data))
            for frame in frames:
                if not self._audio_started:
                    self._audio_next_pts = round(offset_seconds * frame.sample_rate)
                    self._audio_started = True
                # Contiguous sample timestamps: the encoder re-chunks samples into its own frames.
                frame.pts = self._audio_next_pts
                frame.time_base = Fraction(1, frame.sample_rate)
                self._audio_next_pts += frame.samples
                for out_packet in self.audio_out.encode(frame):
                    self.out.mux_one(out_packet)
        except (av.error.FFmpegError, ValueError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, av.error.FFmpegError):
                raise
            self.audio_failed = True
            log.warning("[%s] audio failed in this segment; video continues: %s", self.camera, exc)
        self._pass_on()

    def close(self, final_start: float, done: Callable[[ClosedSegment], None]) -> None:
        """Write the trailer; the disk thread then fsyncs, renames, fsyncs the directory and calls ``done``."""
        if self.audio_out is not None and not self.audio_failed and self._audio_started:
            try:
                for out_packet in self.audio_out.encode(None):
                    self.out.mux_one(out_packet)
            except (av.error.FFmpegError, ValueError):
                log.debug("[%s] audio flush failed", self.camera, exc_info=True)
        self.out.close()
        self._pass_on()
        if self.overflow:
            self.disk.abandon(self.file)
            return
        self.disk.finish(self.file, final_start, done)

    def abort(self) -> None:
        """Best effort after an error: leave the .part file for recovery at next start."""
        try:
            self.out.close()
        except Exception:  # noqa: BLE001 - already failing; the .part file is recovered later
            log.debug("[%s] closing a failed segment", self.camera, exc_info=True)
        if not self.overflow:
            self._pass_on()  # what was muxed is still worth keeping for recovery
        self.disk.abandon(self.file)
