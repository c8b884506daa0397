"""Live view of an H.265 camera in a browser: decoded once, encoded to H.264 once, shared by all its viewers.

Browsers play H.265 over WebRTC only with a hardware decoder, and aiortc has no H.265 packetizer, so an
H.265 camera's live view is refused (409 ``h265_needs_transcode``) unless ``live.transcode: h264`` is set,
globally or for that camera in ``live.cameras``.  Then one :class:`LiveTranscoder` per camera runs while
the camera has viewers, at most ``live.max_transcodes`` at once (one more answers 503
``too_many_transcodes``):

* it reads the camera's view hub through one ordinary bounded hub reader, so a transcoder that falls
  behind drops to the next keyframe like any slow reader; the source and the recorder never wait for it
  and the recording is never touched;
* a thread of its own decodes (PyAV), scales to fit ``live.transcode_width`` x ``live.transcode_height``
  (never up) and encodes with libx264 (ultrafast, zerolatency, Constrained Baseline, no B-frames, SPS/PPS
  before every keyframe, a keyframe every 2 s) at ``live.transcode_bitrate_kbps``;
* the encoded packets go into a :class:`~streams.hub.Hub` of its own, which every viewer of the camera reads
  through its own :class:`~web.live_feed.LiveFeed`: the same packets, the same GOP cache and bounds as a
  camera that sends H.264 itself.

Only video is transcoded; a transcoded view has no sound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import cast

import av
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType

from nvr.base.config import Live
from streams import bitstream
from streams.hub import Hub, HubReader, ReaderClosed
from streams.media import MediaPacket, Session, SessionEnded, TrackInfo, TrackKind
from web.h264_profile import ProfileLevel

log = logging.getLogger(__name__)

CLOCK = 90_000
GOP_SECONDS = 2
KEYFRAME_REQUEST_INTERVAL = 1.0  # keyframes forced by viewers' requests: at most this often (all viewers)


def fit(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    """The largest even size within the bounds with the picture's aspect ratio, never larger than it is."""
    scale = min(1.0, max_width / width, max_height / height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def level_for(width: int, height: int) -> int:
    """The H.264 level_idc for this size at up to 30 fps (3.1 up to 720p, 4.0 up to 1080p, else 5.1)."""
    macroblocks = -(-width // 16) * -(-height // 16)
    return 31 if macroblocks <= 3600 else 40 if macroblocks <= 8192 else 51


def output_profile(width: int, height: int) -> ProfileLevel:
    """What the encoder writes in its SPS: Constrained Baseline at :func:`level_for` (asked of x264 explicitly)."""
    return ProfileLevel(0x42, 0xC0, level_for(width, height))


class Transcoding:
    """The synchronous half: decoder, scaler and encoder of one camera session (one thread calls it)."""

    def __init__(self, config: Live) -> None:
        self.config = config
        self.input: Session | None = None
        self.output: Session | None = None
        self.decoder: VideoCodecContext | None = None
        self.encoder: VideoCodecContext | None = None
        self.size = (0, 0)
        self.last_pts = -1
        self.frames_in = 0
        self.frames_out = 0
        self.errors = 0
        self.cpu_seconds = 0.0  # this thread's CPU time in decode + scale + encode
        self.force_keyframe = False  # a viewer lost a picture: the next one encoded is a keyframe
        self.keyframes_forced = 0

    def reset(self) -> None:
        """Forget the camera session: the next one starts on its keyframe with fresh codecs."""
        self.input = self.output = None
        self.decoder = self.encoder = None
        self.last_pts = -1

    def transcode(self, packet: MediaPacket) -> list[MediaPacket]:
        started = time.thread_time()
        try:
            return self._transcode(packet)
        finally:
            self.cpu_seconds += time.thread_time() - started

    def _transcode(self, packet: MediaPacket) -> list[MediaPacket]:
        video = packet.session.video
        if video is None:
            return []
        if packet.session is not self.input:
            self.reset()
            self.input = packet.session
        if self.decoder is None:
            if not packet.is_keyframe:
                return []  # a decoder starts on a keyframe
            self.decoder = cast(VideoCodecContext, av.CodecContext.create(video.codec, "r"))
            self.decoder.thread_count = 1  # all of it on this thread: bounded, and measured by cpu_seconds
            if video.extradata:
                self.decoder.extradata = video.extradata
        source = av.Packet(packet.data)
        source.pts = packet.pts
        source.dts = packet.dts
        try:
            frames = self.decoder.decode(source)
        except av.error.FFmpegError as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("live transcode: cannot decode a packet (%d so far): %s", self.errors, exc)
            return []
        out: list[MediaPacket] = []
        for frame in frames:
            self.frames_in += 1
            out += self._encode(frame, packet)
        return out

    def _encode(self, frame: av.VideoFrame, packet: MediaPacket) -> list[MediaPacket]:
        if self.encoder is None:
            self.size = fit(frame.width, frame.height, self.config.transcode_width, self.config.transcode_height)
            self.encoder = self._open_encoder(packet.session.video, *self.size)
        width, height = self.size
        picture = frame.reformat(width=width, height=height, format="yuv420p")
        ts = packet.pts if packet.pts is not None else packet.dts
        pts = ts * packet.time_base.numerator * CLOCK // packet.time_base.denominator if ts is not None else 0
        if pts <= self.last_pts:
            pts = self.last_pts + 1  # x264 needs strictly increasing timestamps
        self.last_pts = pts
        picture.pts = pts
        picture.time_base = Fraction(1, CLOCK)
        if self.force_keyframe:
            self.force_keyframe = False
            self.keyframes_forced += 1
            picture.pict_type = PictureType.I
        out = []
        for encoded in self.encoder.encode(picture):
            data = bytes(encoded)
            if not data:
                continue
            if self.output is None:
                if not encoded.is_keyframe:
                    continue
                self.output = self._output_session(data, packet.session)
            self.frames_out += 1
            out.append(MediaPacket(
                session=self.output, kind=TrackKind.VIDEO, data=data, pts=encoded.pts, dts=encoded.dts,
                time_base=Fraction(1, CLOCK), is_keyframe=encoded.is_keyframe, received_at=packet.received_at,
                received_mono=packet.received_mono,
            ))
        return out

    def _open_encoder(self, video: TrackInfo | None, width: int, height: int) -> VideoCodecContext:
        rate = video.average_rate if video is not None and video.average_rate else Fraction(25)
        fps = max(1, round(float(rate)))
        encoder = cast(VideoCodecContext, av.CodecContext.create("libx264", "w"))
        encoder.width, encoder.height = width, height
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = Fraction(1, CLOCK)
        encoder.framerate = Fraction(fps)
        encoder.bit_rate = self.config.transcode_bitrate_kbps * 1000
        encoder.gop_size = fps * GOP_SECONDS
        encoder.max_b_frames = 0
        level = level_for(width, height)
        encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline",
                           "level": f"{level // 10}.{level % 10}", "threads": "1"}
        encoder.open()
        return encoder

    def _output_session(self, keyframe: bytes, source: Session) -> Session:
        width, height = self.size
        video = TrackInfo(kind=TrackKind.VIDEO, codec="h264", time_base=Fraction(1, CLOCK),
                          extradata=bitstream.parameter_sets("h264", keyframe), width=width, height=height,
                          average_rate=self.encoder.framerate if self.encoder is not None else None)
        return Session(video=video, audio=None, started_at=source.started_at, started_mono=source.started_mono)


class LiveTranscoder:
    """One camera's shared transcode, from its first viewer to its last (see the module docstring)."""

    def __init__(self, camera_id: str, source: Hub, config: Live) -> None:
        self.camera_id = camera_id
        self.source = source
        self.config = config
        self.hub = Hub(f"{camera_id}/h264", reader_queue_packets=config.viewer_queue_packets)
        self.work = Transcoding(config)
        self.viewers = 0
        self.started_mono = time.monotonic()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"transcode-{camera_id}")
        self._reader: HubReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_forced = 0.0
        self.failed = False  # it stopped by itself (an error): the next viewer gets a new one

    def request_keyframe(self) -> None:
        """A viewer asked for a keyframe (PLI/FIR): the next picture is encoded as one, at most one a second."""
        now = time.monotonic()
        if now - self._last_forced >= KEYFRAME_REQUEST_INTERVAL:
            self._last_forced = now
            self.work.force_keyframe = True

    def predicted_profile(self) -> ProfileLevel | None:
        """The profile and level viewers will get, before the first picture is encoded if need be."""
        session = self.hub.session
        if session is not None and session.video is not None:
            return ProfileLevel.from_extradata(session.video.extradata)
        camera = self.source.session
        if camera is None or camera.video is None or not camera.video.width:
            return None
        return output_profile(*fit(camera.video.width, camera.video.height, self.config.transcode_width,
                                   self.config.transcode_height))

    def start(self) -> None:
        self._reader = self.source.reader(f"transcode:{self.camera_id}", maxsize=self.config.viewer_queue_packets)
        self._task = asyncio.get_running_loop().create_task(self._run(self._reader),
                                                            name=f"transcode:{self.camera_id}")
        log.info("[%s] live transcode H.265 -> H.264 started", self.camera_id)

    async def _run(self, reader: HubReader) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await reader.get()
                if isinstance(item, SessionEnded):
                    await loop.run_in_executor(self._pool, self.work.reset)
                    self.hub.end_session(item.reason)
                    continue
                if item.kind is not TrackKind.VIDEO:
                    continue
                for packet in await loop.run_in_executor(self._pool, self.work.transcode, item):
                    self.hub.publish(packet)
        except ReaderClosed:
            pass
        except Exception:
            log.error("[%s] live transcode failed", self.camera_id, exc_info=True)
            self.failed = True
            self.hub.close()  # its viewers' sessions end; the next viewer starts a new transcoder

    async def stop(self) -> None:
        """Stop reading the camera and close the viewers' hub. Idempotent."""
        if self._reader is not None:
            self._reader.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.hub.close()
        work = self.work
        log.info("[%s] live transcode stopped after %.0f s: %d frame(s) in, %d out, %.1f s CPU, %d error(s)",
                 self.camera_id, time.monotonic() - self.started_mono, work.frames_in, work.frames_out,
                 work.cpu_seconds, work.errors)

    def to_json(self) -> dict[str, object]:
        work = self.work
        age = time.monotonic() - self.started_mono
        return {
            "viewers": self.viewers, "width": work.size[0], "height": work.size[1],
            "frames_in": work.frames_in, "frames_out": work.frames_out, "errors": work.errors,
            "keyframes_forced": work.keyframes_forced,
            "cpu_percent": round(work.cpu_seconds / age * 100, 1) if age > 0 else 0.0,
            "dropped_packets": self._reader.dropped if self._reader is not None else 0,
        }
