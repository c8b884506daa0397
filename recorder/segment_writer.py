"""One segment file: fragmented MP4, video stream-copied, SHA-256 computed while writing.

The file is written as ``<name>.mp4.part`` through a non-seekable sink that
hashes every byte on its way to the kernel; FFmpeg flushes after every
packet and cuts a fragment every second, so a crash loses at most the last
fragment.  Closing writes the trailer, fsyncs the file, renames it to its
final name and fsyncs the directory; only then may its index row be added.

Video packets go into the file exactly as the camera sent them (Annex-B
start codes become MP4 length prefixes; every NAL unit, SEI included, is
kept).  Audio is re-encoded to AAC, because G.711 cannot be carried in MP4.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
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
    "flush_packets": "1",
}


class HashingSink(io.RawIOBase):
    """Write-only, non-seekable file wrapper that hashes what it writes."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data)
        written = self.file.write(view)
        self.sha256.update(view[:written])
        self.size += written
        return written

    def sync_and_close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
        super().close()


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


class SegmentWriter:
    def __init__(
        self,
        root: Path,
        camera: str,
        start: float,
        video: TrackInfo,
        audio: TrackInfo | None,
        keyframe: bytes,
    ) -> None:
        self.root = root
        self.camera = camera
        self.video_info = video
        self.part_path = root / (segment_relpath(camera, start) + PART_SUFFIX)
        self.part_path.parent.mkdir(parents=True, exist_ok=True)
        self.sink = HashingSink(self.part_path)
        self.frames = 0
        self.audio_failed = False
        try:
            self.out = av.open(self.sink, "w", format="mp4", options=MUX_OPTIONS)
            template = make_template(video, keyframe)
            try:
                self.video = self.out.add_stream_from_template(template.streams.video[0])
            finally:
                template.close()
            self.video.time_base = video.time_base
            self.audio_in: AudioCodecContext | None = None
            self.audio_out: AudioStream | None = None
            self._audio_started = False
            self._audio_next_pts = 0
            if audio is not None:
                self._open_audio(audio)
        except BaseException:
            self.sink.close()
            raise

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

    def write_video(self, data: bytes, pts: int, dts: int, keyframe: bool, time_base: Fraction) -> None:
        packet = av.Packet(data)
        packet.stream = self.video
        packet.time_base = time_base
        packet.pts = pts
        packet.dts = dts
        packet.is_keyframe = keyframe
        self.out.mux(packet)
        self.frames += 1

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
                    self.out.mux(out_packet)
        except (av.error.FFmpegError, ValueError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, av.error.FFmpegError):
                raise
            self.audio_failed = True
            log.warning("[%s] audio failed in this segment; video continues: %s", self.camera, exc)

    def close(self, final_start: float) -> ClosedSegment:
        """Trailer, fsync, rename to the final name, fsync the directory."""
        if self.audio_out is not None and not self.audio_failed and self._audio_started:
            try:
                for out_packet in self.audio_out.encode(None):
                    self.out.mux(out_packet)
            except (av.error.FFmpegError, ValueError):
                log.debug("[%s] audio flush failed", self.camera, exc_info=True)
        self.out.close()
        self.sink.sync_and_close()
        relpath = segment_relpath(self.camera, final_start)
        final = self.root / relpath
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.part_path, final)
        fsync_dir(final.parent)
        if final.parent != self.part_path.parent:
            fsync_dir(self.part_path.parent)
        return ClosedSegment(relpath=relpath, bytes=self.sink.size, sha256=self.sink.sha256.hexdigest())

    def abort(self) -> None:
        """Best effort after an error: leave the .part file for recovery at next start."""
        try:
            self.out.close()
        except Exception:  # noqa: BLE001 - already failing; the .part file is recovered later
            log.debug("[%s] closing a failed segment", self.camera, exc_info=True)
        self.sink.close()
