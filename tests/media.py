"""Real H.264 access units for tests that run below the RTSP layer (encoded with libx264 in PyAV)."""

from __future__ import annotations

import time
from fractions import Fraction

import av
import numpy as np

from streams import bitstream
from streams.media import MediaPacket, Session, TrackInfo, TrackKind

TB = Fraction(1, 90000)


def encode_h264(frames: int, *, width: int = 320, height: int = 180, fps: int = 15, gop: int = 15,
                seed: int = 0) -> list[tuple[bytes, bool]]:
    """(access unit, is_keyframe) pairs of a moving synthetic picture, Annex-B, SPS/PPS in-band."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.time_base = Fraction(1, fps)
    codec.framerate = Fraction(fps, 1)
    codec.gop_size = gop
    codec.max_b_frames = 0
    codec.options = {"preset": "ultrafast", "tune": "zerolatency", "keyint_min": str(gop), "scenecut": "0",
                     "repeat-headers": "1"}
    rng = np.random.default_rng(seed)
    background = rng.integers(40, 200, size=(height, width, 3), dtype=np.uint8)
    out: list[tuple[bytes, bool]] = []
    for n in range(frames):
        img = background.copy()
        x = (n * 7) % (width - 40)
        img[40:80, x:x + 40] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = n
        for packet in codec.encode(frame):
            out.append((bytes(packet), bool(packet.is_keyframe)))
    for packet in codec.encode(None):
        out.append((bytes(packet), bool(packet.is_keyframe)))
    return out


def make_session(units: list[tuple[bytes, bool]], *, width: int = 320, height: int = 180, fps: int = 15,
                 started_at: float | None = None) -> Session:
    params = bitstream.parameter_sets("h264", units[0][0])
    video = TrackInfo(kind=TrackKind.VIDEO, codec="h264", time_base=TB, extradata=params, width=width,
                      height=height, average_rate=Fraction(fps))
    now = time.time() if started_at is None else started_at
    return Session(video=video, audio=None, started_at=now, started_mono=time.monotonic())


def packets(session: Session, units: list[tuple[bytes, bool]], *, fps: int = 15, first_tick: int = 0,
            wall_start: float | None = None) -> list[MediaPacket]:
    """MediaPackets at the nominal frame rate, arriving in real time from ``wall_start``."""
    wall = session.started_at if wall_start is None else wall_start
    mono0 = time.monotonic()
    step = 90000 // fps
    out = []
    for n, (data, key) in enumerate(units):
        tick = first_tick + n * step
        offset = n / fps
        out.append(MediaPacket(session=session, kind=TrackKind.VIDEO, data=data, pts=tick, dts=tick,
                               time_base=TB, is_keyframe=key, received_at=wall + offset,
                               received_mono=mono0 + offset))
    return out
