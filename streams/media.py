"""What flows from a camera to its readers: sessions, stream descriptions and packets.

These objects are immutable and shared: the hub hands the very same
:class:`MediaPacket` to every reader, so no reader may change one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction


class TrackKind(StrEnum):
    VIDEO = "video"
    AUDIO = "audio"


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """Codec parameters of one track, as the camera announced them (no decoding)."""

    kind: TrackKind
    codec: str  # FFmpeg codec name: h264, hevc, pcm_mulaw, pcm_alaw, aac, ...
    time_base: Fraction
    extradata: bytes = b""
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0
    bit_rate: int = 0
    average_rate: Fraction | None = None


_session_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Session:
    """One connection to a camera: packet timestamps are continuous only within a session."""

    video: TrackInfo | None
    audio: TrackInfo | None
    started_at: float  # wall clock (time.time()) at connect
    started_mono: float
    id: int = field(default_factory=lambda: next(_session_ids))


@dataclass(frozen=True, slots=True)
class MediaPacket:
    """One compressed access unit exactly as the camera sent it."""

    session: Session
    kind: TrackKind
    data: bytes
    pts: int | None
    dts: int | None
    time_base: Fraction
    is_keyframe: bool
    received_at: float  # wall clock when demuxed
    received_mono: float
    duration: int = 0

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """Control item: the session ended (camera lost, reconnecting or shutting down)."""

    session: Session
    reason: str


HubItem = MediaPacket | SessionEnded
