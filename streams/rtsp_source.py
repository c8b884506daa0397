"""A supervised RTSP client for one camera stream, feeding a :class:`Hub`.

Each connection runs its demux loop in a thread of its own (PyAV reads
without holding the GIL).  That thread does everything a packet needs: it
counts it, turns it into a :class:`MediaPacket` and feeds the hub, whose
thread-side sinks (the recorder) consume it right there; the event loop is
woken only for what it needs (state changes, and the packets its readers ask
for, in batches; see :mod:`streams.hub`).  The open and every read are
bounded by FFmpeg's socket timeout, the open by PyAV's open timeout
(``ingest.open_timeout_seconds``), and the first read of a session by PyAV's
read timeout (``ingest.read_timeout_seconds``).  Once a session streams, the
supervisor on the loop bounds it from outside: a stream that stays connected
but delivers nothing is declared ``stalled`` after ``health.stall_seconds``
without waiting for TCP, and ending a session interrupts the read its thread
is blocked in (:mod:`streams.read_interrupt`: no Python callback per socket
read).  The old session is torn down before a new one is opened, with capped
exponential backoff between attempts.  The backoff holds for the set-up only: while waiting, a cheap probe
(:func:`probe_rtsp`, an RTSP ``OPTIONS`` bounded by
``ingest.probe_timeout_seconds``) runs every ``ingest.probe_interval_seconds``,
and a camera seen down and then answering is set up at once.  A session
thread that does not end in time is abandoned, at most
``_MAX_ABANDONED_THREADS`` per camera.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import cast

import av
import av.error
from av.audio.codeccontext import AudioCodecContext
from av.video.codeccontext import VideoCodecContext

from nvr.base import secrets
from nvr.base.config import Health, Ingest
from streams import bitstream
from streams.hub import Hub
from streams.media import MediaPacket, Session, TrackInfo, TrackKind
from streams.read_interrupt import ReadInterrupt

log = logging.getLogger(__name__)

_WATCH_INTERVAL = 0.1  # while connecting
_MIN_WAIT = 0.01
_RATE_WINDOW = 5.0
# A session thread stuck in FFmpeg beyond its timeouts is abandoned; a camera may hold this many such.
_MAX_ABANDONED_THREADS = 2


class SourceState(StrEnum):
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"


class OfflineReason(StrEnum):
    UNREACHABLE = "unreachable"
    AUTH_FAILED = "auth_failed"
    STALLED = "stalled"
    STREAM_ERROR = "stream_error"
    STOPPED = "stopped"


class _SessionFailed(Exception):
    def __init__(self, reason: OfflineReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """A snapshot of the source for the API and metrics."""

    state: SourceState
    reason: OfflineReason | None
    message: str | None
    changed_at: float
    codec: str | None
    width: int
    height: int
    fps: float
    bitrate_bps: float
    last_packet_at: float | None
    has_audio: bool
    audio_codec: str | None
    reconnects: int
    packets: int
    bytes: int
    garbage_packets: int


class RateMeter:
    """Packets per second and bits per second over a sliding window."""

    def __init__(self, window: float = _RATE_WINDOW) -> None:
        self.window = window
        self._video: deque[tuple[float, float]] = deque()  # (receive time, media time)
        self._bytes: deque[tuple[float, int]] = deque()
        self._byte_sum = 0
        # Packets are counted on the demux thread, rates read on the loop.
        self._lock = threading.Lock()

    def add(self, now: float, size: int, media_time: float | None) -> None:
        """Count a packet; ``media_time`` (seconds, from its timestamp) for video packets only."""
        with self._lock:
            if media_time is not None:
                self._video.append((now, media_time))
            self._bytes.append((now, size))
            self._byte_sum += size
            self._expire(now)

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._video and self._video[0][0] < horizon:
            self._video.popleft()
        while self._bytes and self._bytes[0][0] < horizon:
            self._byte_sum -= self._bytes.popleft()[1]

    def reset(self) -> None:
        with self._lock:
            self._video.clear()
            self._bytes.clear()
            self._byte_sum = 0

    def fps(self, now: float) -> float:
        with self._lock:
            self._expire(now)
            # Media time, not arrival time: a burst after connecting is not a frame rate.
            if len(self._video) < 2:
                return 0.0
            span = self._video[-1][1] - self._video[0][1]
            return (len(self._video) - 1) / span if span > 0 else 0.0

    def bitrate(self, now: float) -> float:
        with self._lock:
            self._expire(now)
            if not self._bytes:
                return 0.0
            span = max(now - self._bytes[0][0], 1.0)
            return self._byte_sum * 8 / span


class _SessionStop(threading.Event):
    """The loop's end of one session: setting it also interrupts the read its demux thread is blocked in."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: ReadInterrupt | None = None  # the session's container, once open (its thread sets it)

    def set(self) -> None:
        super().set()
        reads = self.reads
        if reads is not None:
            reads.interrupt()


class RtspSource:
    """Pulls one RTSP stream forever (until stopped), publishing into ``hub``."""

    def __init__(
        self,
        name: str,
        url: str,
        hub: Hub,
        *,
        ingest: Ingest,
        health: Health,
        on_state: Callable[[RtspSource], None] | None = None,
    ) -> None:
        self.name = name
        self._url = url
        self.hub = hub
        self.ingest = ingest
        self.health = health
        self.on_state = on_state
        self.state = SourceState.CONNECTING
        self.reason: OfflineReason | None = None
        self.message: str | None = None
        self.changed_at = time.time()
        self.session: Session | None = None
        self.last_packet_at: float | None = None
        self.last_packet_mono: float | None = None
        self.reconnects = 0
        self.packets = 0
        self.bytes = 0
        self.garbage_packets = 0
        self._rates = RateMeter()
        self._stopping = False
        self._wake = asyncio.Event()
        self._abandoned_threads = 0
        self._stop_reason: str | None = None  # why the loop ended the current session, for the sinks
        self._abandoned: list[threading.Thread] = []  # session threads given up on, maybe still alive
        self.probes = 0
        self._probe_down = False  # what the last probe found

    # -- public ---------------------------------------------------------------------------

    def status(self) -> SourceStatus:
        now = time.monotonic()
        video = self.session.video if self.session else None
        audio = self.session.audio if self.session else None
        online = self.state is SourceState.ONLINE
        return SourceStatus(
            state=self.state,
            reason=self.reason,
            message=self.message,
            changed_at=self.changed_at,
            codec=video.codec if video else None,
            width=video.width if video else 0,
            height=video.height if video else 0,
            fps=round(self._rates.fps(now), 2) if online else 0.0,
            bitrate_bps=round(self._rates.bitrate(now)) if online else 0.0,
            last_packet_at=self.last_packet_at,
            has_audio=audio is not None,
            audio_codec=audio.codec if audio else None,
            reconnects=self.reconnects,
            packets=self.packets,
            bytes=self.bytes,
            garbage_packets=self.garbage_packets,
        )

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Connect, stream, and on failure back off and retry, until :meth:`stop`."""
        backoff = self.ingest.backoff_initial_seconds
        failures = 0
        self.hub.loop = asyncio.get_running_loop()
        while not self._stopping:
            self._set_state(SourceState.CONNECTING, None, None)
            reason, message, streamed = await self._run_session()
            self.hub.end_session(reason.value)
            self.session = None
            self._rates.reset()
            if self._stopping:
                break
            if streamed:
                backoff = self.ingest.backoff_initial_seconds
                failures = 0
                self._probe_down = False
            failures += 1
            self._set_state(SourceState.OFFLINE, reason, message)
            level = logging.WARNING if failures == 1 else logging.DEBUG
            log.log(level, "[%s] offline (%s): %s; retrying in %.1f s", self.name, reason.value, message, backoff)
            if await self._back_off(backoff):
                # It came back: should its first set-up fail (a camera still booting), retry soon again.
                backoff = self.ingest.backoff_initial_seconds
            else:
                backoff = min(backoff * 2, self.ingest.backoff_max_seconds)
            self.reconnects += 1
        self._set_state(SourceState.OFFLINE, OfflineReason.STOPPED, "stopped")

    async def _back_off(self, delay: float) -> bool:
        """Wait ``delay`` before the next set-up, or less if a cheap probe sees the camera come back.

        Only a camera seen *not* answering and then answering ends the wait early (and says so):
        one that answers the probe all along (it rejects the set-up, or answers but sends nothing)
        waits the whole backoff, so it is not hammered with set-ups once a probe interval, and is
        not probed again during that wait either.
        """
        deadline = time.monotonic() + delay
        # Across waits: a camera whose last probe found it down and that then failed a set-up (it came
        # back in between, not ready yet) is back now if this wait's first probe finds it answering.
        seen_down = self._probe_down
        probing = True
        while not self._stopping:
            now = time.monotonic()
            if now >= deadline:
                return False
            self._wake.clear()
            wait = min(deadline - now, self.ingest.probe_interval_seconds) if probing else deadline - now
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            except TimeoutError:
                pass
            if not probing or self._stopping or time.monotonic() >= deadline:
                continue
            answering = await probe_rtsp(self._url, self.ingest.probe_timeout_seconds)
            self.probes += 1
            self._probe_down = not answering
            if not answering:
                seen_down = True
            elif seen_down:
                log.info("[%s] the camera answers again; reconnecting now", self.name)
                return True
            else:
                probing = False  # it answers: the set-up's own failure is why we wait
        return False

    # -- one session ----------------------------------------------------------------------

    async def _run_session(self) -> tuple[OfflineReason, str, bool]:
        loop = asyncio.get_running_loop()
        stop = _SessionStop()
        finished: asyncio.Future[tuple[OfflineReason, str]] = loop.create_future()
        packets_before = self.packets
        self._abandoned = [t for t in self._abandoned if t.is_alive()]
        if len(self._abandoned) >= _MAX_ABANDONED_THREADS:
            # Abandoned sessions' threads are still inside FFmpeg (a camera streaming junk that never
            # parses): a camera never holds more threads than this, so wait for them rather than open another.
            return OfflineReason.STREAM_ERROR, "earlier sessions have not closed yet", False
        self._stop_reason = None
        thread = threading.Thread(
            target=self._demux_thread, args=(loop, stop, finished), name=f"rtsp-{self.name}", daemon=True
        )
        opened_mono = time.monotonic()
        thread.start()
        outcome: tuple[OfflineReason, str] | None = None
        open_limit = self.ingest.open_timeout_seconds + 2.0
        try:
            while not finished.done():
                if self._stopping:
                    outcome = (OfflineReason.STOPPED, "stopped")
                    break
                now = time.monotonic()
                if self.state is SourceState.ONLINE and self.last_packet_mono is not None:
                    silent = now - self.last_packet_mono
                    if silent >= self.health.stall_seconds:
                        outcome = (OfflineReason.STALLED, f"no packets for {silent:.1f} s")
                        break
                    deadline = self.last_packet_mono + self.health.stall_seconds
                else:
                    if now - opened_mono > open_limit:
                        outcome = (OfflineReason.UNREACHABLE, "no answer within the open timeout")
                        break
                    deadline = min(opened_mono + open_limit, now + _WATCH_INTERVAL)
                # Sleep until the stall deadline (packets move it on), the session's end or stop():
                # one wake-up per stall period on a healthy stream, not one per poll.
                self._wake.clear()
                stopper = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait((finished, stopper), timeout=max(deadline - now, _MIN_WAIT),
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopper.cancel()
        finally:
            if outcome is not None:
                self._stop_reason = outcome[0].value
            stop.set()
        if outcome is not None and not self._stopping:
            # Declared from outside: report it now, then tear the session down.
            self._set_state(SourceState.OFFLINE, outcome[0], outcome[1])
        teardown_limit = self.ingest.read_timeout_seconds + 2.0
        try:
            thread_outcome = await asyncio.wait_for(asyncio.shield(finished), timeout=teardown_limit)
        except TimeoutError:
            self._abandoned_threads += 1
            self._abandoned.append(thread)
            log.error("[%s] RTSP session did not close within %.0f s; abandoning it", self.name, teardown_limit)
            thread_outcome = (OfflineReason.STREAM_ERROR, "session did not close")
        reason, message = outcome or thread_outcome
        return reason, message, self.packets > packets_before

    def _demux_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        stop: _SessionStop,
        finished: asyncio.Future[tuple[OfflineReason, str]],
    ) -> None:
        try:
            result = self._demux(loop, stop)
        except BaseException as exc:  # noqa: BLE001 - the thread must always report back
            result = _classify(exc)
            if result[0] is OfflineReason.STREAM_ERROR:
                log.debug("[%s] demux failed", self.name, exc_info=True)
        try:
            loop.call_soon_threadsafe(_resolve, finished, result)
        except RuntimeError:
            pass  # loop closed during shutdown

    def _demux(self, loop: asyncio.AbstractEventLoop, stop: _SessionStop) -> tuple[OfflineReason, str]:
        options = open_options(self.ingest.read_timeout_seconds)
        # PyAV's timeouts: FFmpeg's socket timeout alone does not end a read while the camera sends RTCP but
        # no media (an encoder hung behind a live RTSP stack), nor an open whose probing waits for media that
        # never comes.  Their price is PyAV's interrupt callback, which takes the GIL on every socket read:
        # once the session streams, the read timeout is switched off and the loop's stall watch ends the
        # session instead (streams.read_interrupt).
        container = av.open(
            self._url,
            options=options,
            timeout=(self.ingest.open_timeout_seconds, self.ingest.read_timeout_seconds),
        )
        tracker: _SessionTracker | None = None
        outcome: tuple[OfflineReason, str] = (OfflineReason.STOPPED, "stopped")
        reads = stop.reads = ReadInterrupt(container)
        try:
            video_stream = next((s for s in container.streams if s.type == "video"), None)
            audio_stream = next((s for s in container.streams if s.type == "audio"), None)
            if video_stream is None:
                outcome = (OfflineReason.STREAM_ERROR, "the stream has no video track")
                return outcome
            streams = [s for s in (video_stream, audio_stream) if s is not None]
            tracker = _SessionTracker(self.name, video_stream, audio_stream)
            video_index = video_stream.index
            seconds_per_tick = float(tracker.video_time_base)
            hub, rates = self.hub, self._rates
            announced: Session | None = None
            demux = container.demux(streams)
            consecutive_errors = 0
            while not stop.is_set():
                try:
                    packet = next(demux)
                except StopIteration:
                    outcome = (OfflineReason.UNREACHABLE, "the camera closed the stream")
                    return outcome
                except av.error.InvalidDataError:
                    consecutive_errors += 1
                    self.garbage_packets += 1
                    if consecutive_errors > 50:
                        outcome = (OfflineReason.STREAM_ERROR, "too many invalid packets in a row")
                        return outcome
                    demux = container.demux(streams)  # PyAV's read timeout again, until its first packet
                    reads.relaxed = False
                    continue
                except av.error.ExitError:
                    if stop.is_set():
                        return outcome  # the loop ended the session and interrupted the read
                    raise
                if not reads.relaxed:
                    reads.relax()
                consecutive_errors = 0
                if packet.size == 0:
                    continue
                if packet.is_corrupt:
                    self.garbage_packets += 1
                    continue
                item = tracker.convert(packet, packet.stream_index == video_index)
                if item is None or stop.is_set():
                    continue
                # Counted here, on the demux thread: the loop only reads the numbers.
                self.packets += 1
                self.bytes += len(item.data)
                self.last_packet_at = item.received_at
                self.last_packet_mono = item.received_mono
                media_time = None
                if item.kind is TrackKind.VIDEO and item.pts is not None:
                    media_time = item.pts * seconds_per_tick
                rates.add(item.received_mono, len(item.data), media_time)
                if item.session is not announced:
                    announced = item.session
                    loop.call_soon_threadsafe(self._on_session, announced)
                hub.feed(item, None if tracker.reassembled else packet)
            return outcome
        except BaseException as exc:
            outcome = _classify(exc)
            raise
        finally:
            if tracker is not None and tracker.session is not None:
                hub_reason = outcome[0].value if outcome[0] is not OfflineReason.STOPPED else (
                    self._stop_reason or outcome[0].value)
                self.hub.end_feed(tracker.session, hub_reason)
            container.close()

    # -- loop thread ----------------------------------------------------------------------

    def _on_session(self, session: Session) -> None:
        """The demux thread saw the first packet of a new session (a connection, or new parameters)."""
        if self._stopping or self.state is SourceState.OFFLINE:
            # OFFLINE only while a session declared dead (stalled) is torn down:
            # its late packets must not flip the camera back online for a moment.
            return
        self.session = session
        video = session.video
        if video is not None:
            log.info(
                "[%s] online: %s %dx%d%s",
                self.name,
                video.codec,
                video.width,
                video.height,
                f" + {session.audio.codec}" if session.audio else "",
            )
        if self.state is not SourceState.ONLINE:
            self._set_state(SourceState.ONLINE, None, None)

    def _set_state(self, state: SourceState, reason: OfflineReason | None, message: str | None) -> None:
        message = secrets.redact(message) if message else None
        if (state, reason) == (self.state, self.reason) and message == self.message:
            return
        if state is not self.state or reason is not self.reason:
            self.changed_at = time.time()
        self.state, self.reason, self.message = state, reason, message
        if state is SourceState.ONLINE:
            self.last_packet_mono = time.monotonic()
        if self.on_state is not None:
            self.on_state(self)


async def probe_rtsp(url: str, timeout: float) -> bool:
    """Whether an RTSP server answers at ``url``'s host and port, within ``timeout`` seconds.

    For ``rtsp://`` an ``OPTIONS`` request (without credentials) must draw any RTSP status line,
    which an accepting-but-dead TCP stack or a port forward with nothing behind it does not;
    for ``rtsps://`` a TCP connect (no TLS handshake, no certificate to judge) is the probe.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host:
        return False
    try:
        port = parts.port or (322 if parts.scheme == "rtsps" else 554)
    except ValueError:
        return False
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    target = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            if parts.scheme == "rtsps":
                return True
            writer.write(f"OPTIONS {target} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: nvr-probe\r\n\r\n".encode())
            await writer.drain()
            line = await reader.readline()
            return line.startswith(b"RTSP/1.")
    except (OSError, TimeoutError, ValueError, UnicodeError):
        return False
    finally:
        if writer is not None:
            writer.close()


def open_options(read_timeout_seconds: float) -> dict[str, str]:
    """FFmpeg's options for opening a camera's RTSP stream (also the benchmark's PyAV-demuxer floor)."""
    return {
        "rtsp_transport": "tcp",
        # FFmpeg's socket timeout bounds every read (and the connect) without a Python callback.
        "timeout": str(int(read_timeout_seconds * 1_000_000)),
        "analyzeduration": "2000000",
        "probesize": "5000000",
    }


def _resolve(future: asyncio.Future[tuple[OfflineReason, str]], result: tuple[OfflineReason, str]) -> None:
    if not future.done():
        future.set_result(result)


class _SessionTracker:
    """Demux-thread side: turns av.Packets into MediaPackets, opening a new
    :class:`Session` at the first keyframe and whenever the in-band parameter
    sets change (a new resolution needs a new init section downstream)."""

    def __init__(self, name: str, video: av.stream.Stream, audio: av.stream.Stream | None) -> None:
        self.name = name
        self.video_stream = video
        self.audio_stream = audio
        self.video_codec = video.codec_context.name
        extradata = video.codec_context.extradata or b""
        self.stream_params = (
            bitstream.parameter_sets(self.video_codec, extradata) if bitstream.is_annexb(extradata) else b""
        )
        self.stream_extradata = extradata
        self.audio_info = _audio_info(audio) if audio is not None else None
        self.video_time_base = video.time_base or Fraction(1, 90000)
        self.audio_time_base = self.audio_info.time_base if self.audio_info is not None else Fraction(1, 8000)
        self.session: Session | None = None
        self.params = b""
        self.carry = b""
        self.carry_key = False
        self.reassembled = False
        self.connected_at = time.time()
        self.connected_mono = time.monotonic()

    def convert(self, packet: av.Packet, is_video: bool) -> MediaPacket | None:
        """The packet as a MediaPacket; ``reassembled`` says afterwards whether its bytes are not the packet's."""
        data = bytes(packet)
        keyframe = bool(packet.is_keyframe)
        self.reassembled = False
        if is_video:
            # Some cameras (and RTP depacketizers) emit parameter sets or SEI as
            # a packet of their own with the frame's timestamp; carry them into
            # the frame so that every packet is one whole access unit.
            if not bitstream.has_slice(self.video_codec, data):
                self.carry += data
                self.carry_key = self.carry_key or keyframe
                return None
            if self.carry:
                data = self.carry + data
                keyframe = keyframe or self.carry_key
                self.carry, self.carry_key = b"", False
                self.reassembled = True
        if is_video and keyframe:
            params = bitstream.parameter_sets(self.video_codec, data) or self.params or self.stream_params
            if self.session is None or (params and params != self.params):
                self.session = self._new_session(params, data)
                self.params = params
        if self.session is None:
            return None  # nothing is decodable before the first keyframe
        return MediaPacket(
            session=self.session,
            kind=TrackKind.VIDEO if is_video else TrackKind.AUDIO,
            data=data,
            pts=packet.pts,
            dts=packet.dts,
            # One Fraction per stream, not one per packet (every packet of a stream has its time base).
            time_base=self.video_time_base if is_video else self.audio_time_base,
            is_keyframe=keyframe,
            received_at=time.time(),
            received_mono=time.monotonic(),
            duration=packet.duration or 0,
        )

    def _new_session(self, params: bytes, keyframe: bytes) -> Session:
        ctx = cast(VideoCodecContext, self.video_stream.codec_context)
        extradata = params or self.stream_extradata
        width, height = ctx.width, ctx.height
        if self.session is not None or not width or not height:
            # Parameters changed in-band (or were never announced): learn the
            # new picture size from this one keyframe.
            width, height = _keyframe_size(self.video_codec, extradata, keyframe) or (width, height)
        video = TrackInfo(
            kind=TrackKind.VIDEO,
            codec=self.video_codec,
            time_base=self.video_time_base,
            extradata=extradata,
            width=width,
            height=height,
            bit_rate=ctx.bit_rate or 0,
            average_rate=self.video_stream.average_rate or self.video_stream.guessed_rate,
        )
        if self.session is None:
            started_at, started_mono = self.connected_at, self.connected_mono
        else:
            started_at, started_mono = time.time(), time.monotonic()
        return Session(video=video, audio=self.audio_info, started_at=started_at, started_mono=started_mono)


def _audio_info(stream: av.stream.Stream) -> TrackInfo:
    ctx = cast(AudioCodecContext, stream.codec_context)
    return TrackInfo(
        kind=TrackKind.AUDIO,
        codec=ctx.name,
        time_base=stream.time_base or Fraction(1, ctx.sample_rate or 8000),
        extradata=ctx.extradata or b"",
        sample_rate=ctx.sample_rate or 0,
        channels=ctx.layout.nb_channels if ctx.layout else 0,
        bit_rate=ctx.bit_rate or 0,
    )


def _keyframe_size(codec: str, extradata: bytes, keyframe: bytes) -> tuple[int, int] | None:
    """Decode a single keyframe to learn the picture size (rare: only on parameter changes)."""
    try:
        decoder = cast(VideoCodecContext, av.CodecContext.create(codec, "r"))
        if extradata:
            decoder.extradata = extradata
        frames = decoder.decode(av.Packet(keyframe))
        frames += decoder.decode(None)
        for frame in frames:
            return frame.width, frame.height
    except av.error.FFmpegError:
        log.debug("could not decode a keyframe to learn its size", exc_info=True)
    return None


def _classify(exc: BaseException) -> tuple[OfflineReason, str]:
    """Map an exception from PyAV to an offline reason and a message without secrets."""
    if isinstance(exc, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError)):
        return OfflineReason.AUTH_FAILED, "the camera rejected the credentials"
    if isinstance(exc, av.error.HTTPNotFoundError):
        return OfflineReason.STREAM_ERROR, "the camera has no stream at that path (404)"
    if isinstance(exc, av.error.ExitError | TimeoutError | av.error.TimeoutError):
        return OfflineReason.UNREACHABLE, "timed out"
    if isinstance(exc, av.error.EOFError):
        return OfflineReason.UNREACHABLE, "the camera closed the connection"
    if isinstance(exc, OSError) and exc.errno in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ECONNRESET,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.ECONNABORTED,
    ):
        return OfflineReason.UNREACHABLE, _os_message(exc)
    if isinstance(exc, av.error.FFmpegError):
        return OfflineReason.STREAM_ERROR, secrets.redact(str(getattr(exc, "strerror", None) or type(exc).__name__))
    if isinstance(exc, OSError):
        return OfflineReason.UNREACHABLE, _os_message(exc)
    return OfflineReason.STREAM_ERROR, secrets.redact(f"{type(exc).__name__}: {exc}")


def _os_message(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()
