"""Health of one camera: turns connection state, picture checks and rates into alarms.

Three inputs, one output (alarms in :class:`~nvr.health.alarms.AlarmStore`):

- connection state, pushed by :class:`RtspSource` through its ``on_state``
  hook: ``offline`` opens at once (the source already waited
  ``stall_seconds`` or saw the connection fail) and closes when it is online;
- keyframes read from the camera's hub with a small reader of its own (the
  hub passes one every ``analyse_seconds`` from the camera's thread): each is
  decoded and judged by :class:`PictureCheck` in a worker thread
  (``covered``, ``blurred``, ``moved``, ``frozen``). A camera with a
  substream (``live_url``) is judged on the substream's keyframes while that
  is online (``analyse_stream: auto``): the same scene, about a tenth of the
  decoding of a 1080p keyframe. Each stream keeps its own reference view, and
  the main stream takes over the moment the substream is not online;
- a periodic look at the source's frame rate (``low_fps``) and at whether the
  recorder is writing while the camera is online (``recording_stalled``).

Picture and rate conditions are debounced: an alarm opens after
``open_after`` consecutive bad checks and closes after ``close_after`` good
ones, so one odd keyframe never raises an alarm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter

from nvr.base.config import Health, PictureChecks
from nvr.health.alarms import LAST_PACKET_AT, AlarmStore, AlarmType, Severity
from streams.hub import Hub, HubReader, ReaderClosed
from streams.media import MediaPacket, SessionEnded, TrackKind
from streams.picture_check import Condition, Findings, PictureCheck, decode_frame, gray_of
from streams.rtsp_source import OfflineReason, RtspSource, SourceState

log = logging.getLogger(__name__)

# Only keyframes matter and they are taken at once; a small queue is plenty.
_READER_PACKETS = 256
# The source's fps meter needs a full window after connecting before it means anything.
_FPS_SETTLE_SECONDS = 6.0

_PICTURE_ALARMS = {
    Condition.COVERED: AlarmType.COVERED,
    Condition.BLURRED: AlarmType.BLURRED,
    Condition.MOVED: AlarmType.MOVED,
    Condition.FROZEN: AlarmType.FROZEN,
}


@dataclass(slots=True)
class _Debounce:
    bad: int = 0
    good: int = 0


@dataclass(slots=True)
class _Stream:
    """One stream whose keyframes the picture checks can judge, with its own reference view and scaler."""

    label: str
    hub: Hub
    source: RtspSource
    check: PictureCheck
    # One analysis at a time per camera: only _analyse uses it; keeps FFmpeg's scaler set up between keyframes.
    reformatter: VideoReformatter = field(default_factory=VideoReformatter)
    reader: HubReader | None = None


class CameraHealth:
    """Watches one camera and opens/closes its alarms. Runs on the event loop; analysis in ``executor``."""

    def __init__(
        self,
        camera: str,
        severity: Severity,
        source: RtspSource,
        hub: Hub,
        health: Health,
        thresholds: PictureChecks,
        alarms: AlarmStore,
        executor: Executor,
        record: bool = False,
        last_write: Callable[[], float | None] | None = None,
        thumbnail: Callable[[float, VideoFrame], None] | None = None,
        substream: tuple[Hub, RtspSource] | None = None,
    ) -> None:
        self.camera = camera
        self.severity = severity
        self.source = source
        self.hub = hub
        self.health = health
        self.thresholds = thresholds
        self.alarms = alarms
        self.executor = executor
        self.record = record
        self.last_write = last_write or (lambda: None)
        # Given each decoded keyframe of a recorded camera with its arrival time (worker thread): thumbnails.
        self.thumbnail = thumbnail if record else None
        self.thumbnail_seconds = 0.0  # CPU (thread time) spent on thumbnails, within analysis_seconds
        self._thumbnail_failing = False
        self._streams = [_Stream("main stream", hub, source, PictureCheck(thresholds))]
        if substream is not None and thresholds.analyse_stream == "auto":
            self._streams.append(_Stream("substream", *substream, PictureCheck(thresholds)))
        self._analysed: _Stream | None = None
        self.last_findings: Findings | None = None
        self.analyses = 0
        self.substream_analyses = 0
        self.analysis_seconds = 0.0  # CPU (thread time) spent decoding and analysing
        self.skipped_keyframes = 0
        self._debounce: dict[AlarmType, _Debounce] = {}
        self._relearn = False
        self._stopping = False
        self._wake = asyncio.Event()
        self._online_mono: float | None = None
        self._created_mono = time.monotonic()
        chained = source.on_state

        def on_state(src: RtspSource) -> None:
            if chained is not None:
                chained(src)
            self.on_state(src)

        source.on_state = on_state

    # -- connection state -----------------------------------------------------------------

    def on_state(self, source: RtspSource) -> None:
        if source.state is SourceState.ONLINE:
            self._online_mono = time.monotonic()
            self.alarms.close(self.camera, AlarmType.OFFLINE, at=source.changed_at)
        elif source.state is SourceState.OFFLINE:
            self._online_mono = None
            if source.reason is None or source.reason is OfflineReason.STOPPED:
                return
            details: dict[str, object] = {"reason": source.reason.value, "message": source.message}
            if source.last_packet_at is not None:
                details[LAST_PACKET_AT] = source.last_packet_at
            self.alarms.open(self.camera, AlarmType.OFFLINE, self.severity, details, at=source.changed_at)

    # -- lifecycle ------------------------------------------------------------------------

    def relearn(self) -> None:
        """Learn the reference view again from the next good keyframes (a technician re-aimed the camera)."""
        self._relearn = True

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for stream in self._streams:
            if stream.reader is not None:
                stream.reader.close()

    async def run(self) -> None:
        """Analyse keyframes and watch rates until stopped."""
        watcher = asyncio.get_running_loop().create_task(self._watch(), name=f"health-watch:{self.camera}")
        try:
            await self._analyse_keyframes()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _analyse_keyframes(self) -> None:
        loop = asyncio.get_running_loop()
        # The hubs sample keyframes on the cameras' threads at the same pace, by the same clock (arrival);
        # both streams' samples meet in one queue and the preferred online stream's are analysed.
        arrivals: asyncio.Queue[tuple[_Stream, MediaPacket | SessionEnded | None]] = asyncio.Queue()
        pumps = [loop.create_task(self._pump(stream, arrivals), name=f"health-keyframes:{stream.hub.name}")
                 for stream in self._streams]
        next_due = 0.0
        try:
            while not self._stopping:
                stream, item = await arrivals.get()
                if item is None:  # that stream's reader was closed: the camera is going away
                    return
                if isinstance(item, SessionEnded):
                    stream.check.new_session()
                    continue
                if item.kind is not TrackKind.VIDEO or not item.is_keyframe or item.session.video is None:
                    continue
                arrived = item.received_mono
                if stream is not self._preferred() or arrived < next_due:
                    self.skipped_keyframes += 1
                    continue
                next_due = arrived + self.thresholds.analyse_seconds
                if self._relearn:
                    self._relearn = False
                    for each in self._streams:
                        each.check.relearn()
                    for kind in (AlarmType.MOVED, AlarmType.BLURRED):
                        self._debounce.pop(kind, None)
                        self.alarms.close(self.camera, kind, {"closed_by": "reference relearned"})
                    log.info("[%s] learning a new reference view", self.camera)
                if stream is not self._analysed:
                    if self._analysed is not None or len(self._streams) > 1:
                        log.info("[%s] picture checks on the %s", self.camera, stream.label)
                    # Its last picture may be long gone: never compare with it (no frozen from a stale one).
                    stream.check.new_session()
                    self._analysed = stream
                findings = await loop.run_in_executor(self.executor, self._analyse, stream, item)
                if findings is not None and not self._stopping:
                    self._judge(findings)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for stream in self._streams:
                if stream.reader is not None:
                    stream.reader.close()

    async def _pump(self, stream: _Stream,
                    arrivals: asyncio.Queue[tuple[_Stream, MediaPacket | SessionEnded | None]]) -> None:
        stream.reader = reader = stream.hub.reader(f"health:{self.camera}", _READER_PACKETS, keyframes_only=True,
                                                   every=self.thresholds.analyse_seconds)
        try:
            while True:
                arrivals.put_nowait((stream, await reader.get()))
        except ReaderClosed:
            arrivals.put_nowait((stream, None))

    def _preferred(self) -> _Stream:
        """The stream to analyse: the substream while it is online (a tenth of the decoding), else the main one."""
        for stream in self._streams[1:]:
            if stream.source.state is SourceState.ONLINE:
                return stream
        return self._streams[0]

    @property
    def check(self) -> PictureCheck:
        """The picture check of the stream analysed last (the main stream's before any)."""
        return (self._analysed or self._streams[0]).check

    @property
    def analysed_stream(self) -> str | None:
        return None if self._analysed is None else self._analysed.label

    def _analyse(self, stream: _Stream, packet: MediaPacket) -> Findings | None:
        """Worker thread: decode one keyframe, downscale, judge."""
        started = time.thread_time()
        video = packet.session.video
        assert video is not None
        frame = decode_frame(video.codec, video.extradata, packet.data)
        findings = None
        if frame is not None:
            findings = stream.check.analyse(gray_of(frame, self.thresholds.analysis_width, stream.reformatter))
            if self.thumbnail is not None:
                thumbnail_started = time.thread_time()
                try:
                    self.thumbnail(packet.received_at, frame)
                    self._thumbnail_failing = False
                except Exception:  # a thumbnail is never worth a picture check; said once, not every keyframe
                    log.log(logging.DEBUG if self._thumbnail_failing else logging.WARNING,
                            "[%s] thumbnail not kept", self.camera, exc_info=True)
                    self._thumbnail_failing = True
                self.thumbnail_seconds += time.thread_time() - thumbnail_started
        self.analysis_seconds += time.thread_time() - started
        self.analyses += 1
        if stream is not self._streams[0]:
            self.substream_analyses += 1
        return findings

    def _judge(self, findings: Findings) -> None:
        was_learning = self.last_findings is None or self.last_findings.learning
        self.last_findings = findings
        if was_learning and not findings.learning:
            log.info("[%s] reference view learned", self.camera)
        for condition, kind in _PICTURE_ALARMS.items():
            if findings.learning and kind in (AlarmType.MOVED, AlarmType.BLURRED):
                continue  # no reference yet to judge them by (another stream's may have judged them bad)
            self._step(kind, condition in findings.conditions, findings.details())

    def _step(self, kind: AlarmType, bad: bool, details: Mapping[str, object]) -> None:
        state = self._debounce.setdefault(kind, _Debounce())
        if bad:
            state.bad += 1
            state.good = 0
            if state.bad >= self.thresholds.open_after:
                self.alarms.open(self.camera, kind, self.severity, dict(details))
        else:
            state.good += 1
            state.bad = 0
            if state.good >= self.thresholds.close_after and self.alarms.is_open(self.camera, kind):
                self.alarms.close(self.camera, kind, {"cleared": details})

    # -- rates and recording --------------------------------------------------------------

    async def _watch(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.thresholds.analyse_seconds)
            except TimeoutError:
                pass
            if self._stopping:
                return
            self.check_rates(time.monotonic())

    def check_rates(self, now: float) -> None:
        online_for = None if self._online_mono is None else now - self._online_mono
        # low_fps: only while online and once the meter has a full window.
        if self.thresholds.min_fps > 0 and online_for is not None and online_for >= _FPS_SETTLE_SECONDS:
            fps = self.source.status().fps
            self._step(
                AlarmType.LOW_FPS, fps < self.thresholds.min_fps, {"fps": fps, "min_fps": self.thresholds.min_fps}
            )
        elif online_for is None and self.alarms.is_open(self.camera, AlarmType.LOW_FPS):
            self._step(AlarmType.LOW_FPS, False, {"fps": 0.0, "min_fps": self.thresholds.min_fps})
        if not self.record:
            return
        limit = self.health.recording_stall_seconds
        if online_for is not None and online_for >= limit:
            last = self.last_write()
            stalled = last is None or now - last >= limit
            if stalled and not self.alarms.is_open(self.camera, AlarmType.RECORDING_STALLED):
                silent = None if last is None else round(now - last, 1)
                self.alarms.open(
                    self.camera, AlarmType.RECORDING_STALLED, self.severity, {"seconds_since_last_write": silent}
                )
            elif not stalled:
                self.alarms.close(self.camera, AlarmType.RECORDING_STALLED)
        elif online_for is None:
            # Offline explains the missing recording; that alarm is already open.
            self.alarms.close(self.camera, AlarmType.RECORDING_STALLED, {"closed_by": "camera offline"})
