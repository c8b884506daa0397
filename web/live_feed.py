"""One live viewer's feed: a hub reader turned into ready-to-packetize ``av.Packet``s.

Nothing is decoded or encoded here.  The feed

* attaches to the hub lazily, when the first media is requested (i.e. once
  the peer has connected), so that it starts from the freshest cached GOP;
* makes sure the first picture of every camera session is a keyframe with
  its SPS/PPS in front (the camera may announce them only out of band);
* maps camera timestamps onto one continuous RTP clock per track, so that
  a camera reconnect (timestamps back to zero) never makes the viewer's
  RTP timestamps jump backwards, and squeezes the cached GOP that a new
  viewer starts with into a burst that the browser decodes at once instead
  of playing it back at camera pace (that would add the GOP length to the
  latency for the whole session).

Video and audio of one viewer share one bounded hub reader: whichever
track asks first pulls from it and parks the other kind's packets in a small
bounded queue of its own.  A viewer whose video goes out through the camera's
:class:`~web.live_fanout.LiveFanout` (the shared-packetization sender) reads
no video here: :meth:`LiveFeed.video_elsewhere` makes the feed an audio-only
one, with a hub reader only when the viewer takes the camera's audio.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import NamedTuple

import av

from streams import bitstream
from streams.hub import Hub, HubReader, ReaderClosed
from streams.media import MediaPacket, Session, SessionEnded, TrackKind

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 8_000  # G.711, the only audio we pass through
PASSTHROUGH_AUDIO = {"pcm_mulaw": "PCMU", "pcm_alaw": "PCMA"}


class FeedClosed(Exception):
    """The feed was closed (viewer gone or daemon shutting down)."""


class VideoUnit(NamedTuple):
    """One H.264 access unit as a viewer sends it."""

    packet: MediaPacket  # the hub's shared packet (the key of the camera's shared packetization)
    data: bytes  # its Annex B bytes, the session's SPS/PPS in front of a keyframe that lacks them
    pts: int  # on the viewer's continuous 90 kHz RTP clock


class RtpClock:
    """Maps camera timestamps of successive sessions onto one monotonic RTP clock.

    Within a camera session the outgoing timestamp follows the camera's own
    spacing.  At a new session the clock advances by the wall-clock time
    that passed since the last packet went out.  Packets that are only a
    backlog (cached before the viewer attached) advance it by a single tick,
    so the browser shows them as fast as it decodes them.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.last_out: int | None = None
        self._session: Session | None = None
        self._anchor_in = 0
        self._anchor_out = 0
        self._last_sent_mono = 0.0

    def to_rate(self, packet: MediaPacket) -> int:
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None:
            return round(packet.received_mono * self.rate)
        tb = packet.time_base
        return ts * tb.numerator * self.rate // tb.denominator

    def map(self, packet: MediaPacket, backlog: bool, now: float) -> int:
        t = self.to_rate(packet)
        last = self.last_out
        if last is None:
            out = 0
        elif packet.session is not self._session:
            out = last + max(1, round((now - self._last_sent_mono) * self.rate))
        elif backlog:
            out = last + 1
        else:
            out = self._anchor_out + (t - self._anchor_in)
            if out <= last:
                # The camera's clock went backwards inside a session: keep ours going.
                out = last + 1
            else:
                self.last_out, self._last_sent_mono = out, now
                return out
        self._session = packet.session
        self._anchor_in, self._anchor_out = t, out
        self.last_out, self._last_sent_mono = out, now
        return out


class LiveFeed:
    """The packets one viewer receives from one camera's view hub."""

    def __init__(self, hub: Hub, name: str, maxsize: int, *, audio: bool) -> None:
        self.hub = hub
        self.name = name
        self.maxsize = maxsize
        self.want_audio = audio
        self.reader: HubReader | None = None
        self.attached_mono = 0.0
        self.closed = False
        self.video_clock = RtpClock(VIDEO_CLOCK)
        self.audio_clock = RtpClock(AUDIO_CLOCK)
        self._parked: dict[TrackKind, deque[MediaPacket]] = {TrackKind.VIDEO: deque(), TrackKind.AUDIO: deque()}
        self._wake = {TrackKind.VIDEO: asyncio.Event(), TrackKind.AUDIO: asyncio.Event()}
        self._pulling = False
        self._audio_ready = asyncio.Event()
        self.parked_dropped = 0
        self._keyframe_session: Session | None = None  # session whose keyframe we already sent
        # Counters for the API and the benchmark.
        self.video_sent = 0
        self.audio_sent = 0
        self.skipped = 0  # not decodable yet (waiting for a keyframe) or unsupported
        self.first_sent_mono: float | None = None
        self.relay_delay_sum = 0.0  # hub arrival → handed to the sender, live packets only
        self.relay_delay_count = 0
        self.keyframe_requests = 0  # PLI/FIR from the viewer (answered by the camera's next keyframe)
        self.video_fanned_out = False  # video comes through the camera's fan-out, not this feed's reader
        self._on_close: list[Callable[[], None]] = []

    @property
    def dropped(self) -> int:
        return self.reader.dropped if self.reader is not None else 0

    def _attach(self) -> HubReader:
        if self.closed:
            raise FeedClosed(self.name)
        if self.reader is None:
            self.attached_mono = time.monotonic()
            self.reader = self.hub.reader(self.name, maxsize=self.maxsize)
            self._audio_ready.set()
        return self.reader

    def video_elsewhere(self) -> None:
        """The viewer's video now goes out through the camera's fan-out: this feed serves its audio only.

        Audio may start from now on (it waits for the picture): a hub reader is attached for it if the viewer
        takes audio, and video packets that reader brings are dropped on the spot, never parked.
        """
        if self.closed:
            raise FeedClosed(self.name)
        self.video_fanned_out = True
        self.attached_mono = time.monotonic()
        if self.want_audio and self.reader is None:
            self.reader = self.hub.reader(self.name, maxsize=self.maxsize)
        self._audio_ready.set()

    def picture_started(self, session: Session) -> None:
        """The fan-out sent this viewer the first keyframe of ``session``: its audio may follow."""
        self._keyframe_session = session

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once) when the feed closes."""
        if self.closed:
            callback()
        else:
            self._on_close.append(callback)

    def close(self) -> None:
        """Detach from the hub. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.reader is not None:
            self.reader.close()
        self._audio_ready.set()
        for event in self._wake.values():
            event.set()
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()

    async def next_video(self) -> av.Packet:
        unit = await self.next_video_unit()
        return _av_packet(unit.data, unit.pts, VIDEO_CLOCK)

    async def next_video_unit(self) -> VideoUnit:
        self._attach()
        while True:
            out = self._video_unit(await self._next(TrackKind.VIDEO))
            if out is not None:
                return out

    async def next_audio(self) -> av.Packet:
        while self.reader is None or (self.video_fanned_out and not self.want_audio):
            if self.closed:
                raise FeedClosed(self.name)
            # Audio waits until video has attached: it is pointless without a picture.
            self._audio_ready.clear()
            await self._audio_ready.wait()
        while True:
            out = self._audio_packet(await self._next(TrackKind.AUDIO))
            if out is not None:
                return out

    async def _next(self, kind: TrackKind) -> MediaPacket:
        """The next packet of ``kind``; a packet of the other kind is parked for its track.

        One track at a time waits on the reader; the other waits for its
        parked queue (or for its turn to pull).
        """
        parked = self._parked[kind]
        wake = self._wake[kind]
        while True:
            if self.closed or self.reader is None:
                raise FeedClosed(self.name)
            if parked:
                return parked.popleft()
            if self._pulling:
                wake.clear()
                await wake.wait()
                continue
            self._pulling = True
            try:
                item = await self.reader.get()
            except ReaderClosed:
                self.close()
                raise FeedClosed(self.name) from None
            finally:
                self._pulling = False
                for event in self._wake.values():
                    event.set()
            if isinstance(item, SessionEnded):
                continue  # the camera went away; the next session starts on a keyframe
            if item.kind is kind:
                return item
            if item.kind is TrackKind.AUDIO and not self.want_audio:
                continue
            if item.kind is TrackKind.VIDEO and self.video_fanned_out:
                continue  # the camera's fan-out sends this viewer's video
            other = self._parked[item.kind]
            if len(other) >= self.maxsize:
                # That track's sender stopped pulling: start it over at a keyframe.
                other.clear()
                self.parked_dropped += 1
                if item.kind is TrackKind.VIDEO:
                    self._keyframe_session = None
            other.append(item)

    def _video_unit(self, packet: MediaPacket) -> VideoUnit | None:
        video = packet.session.video
        if video is None or video.codec != "h264":
            self.skipped += 1
            return None
        if packet.session is not self._keyframe_session:
            if not packet.is_keyframe:
                self.skipped += 1
                return None
            self._keyframe_session = packet.session
        now = time.monotonic()
        backlog = packet.received_mono < self.attached_mono
        pts = self.video_clock.map(packet, backlog, now)
        self.count_video(packet, backlog, now)
        return VideoUnit(packet, with_parameter_sets(packet), pts)

    def count_video(self, packet: MediaPacket, backlog: bool, now: float) -> None:
        """A video unit handed to the sender at ``now``: the counters and the relay delay (live units only)."""
        if not backlog:
            self.relay_delay_sum += now - packet.received_mono
            self.relay_delay_count += 1
        if self.first_sent_mono is None:
            self.first_sent_mono = now
        self.video_sent += 1

    def _audio_packet(self, packet: MediaPacket) -> av.Packet | None:
        audio = packet.session.audio
        if (
            audio is None
            or audio.codec not in PASSTHROUGH_AUDIO
            or packet.received_mono < self.attached_mono  # stale audio is noise, not information
            or packet.session is not self._keyframe_session  # no sound before the picture
        ):
            self.skipped += 1
            return None
        pts = self.audio_clock.map(packet, False, time.monotonic())
        self.audio_sent += 1
        return _av_packet(packet.data, pts, AUDIO_CLOCK)


def with_parameter_sets(packet: MediaPacket) -> bytes:
    """An H.264 unit's bytes as viewers get them: the session's SPS/PPS in front of a keyframe that lacks them."""
    video = packet.session.video
    data = packet.data
    if packet.is_keyframe and video is not None and video.extradata and not bitstream.parameter_sets("h264", data):
        return video.extradata + data
    return data


def _av_packet(data: bytes, pts: int, rate: int) -> av.Packet:
    out = av.Packet(data)
    out.pts = pts
    out.dts = pts
    out.time_base = Fraction(1, rate)
    return out
