"""The simulated camera's SD card: what the camera's own encoder produced, kept while the network is cut.

A real camera records its encoder's output to its card whatever happens on the
network.  Here the "encoder" is the camsim RTSP server, read directly (not
through the camera's network, :mod:`sim.network`), on a thread of its own with
PyAV: every H.264 access unit (Annex-B, SPS/PPS in-band before each IDR, as
camsim sends them) is kept with the time the *camera's* clock gave it (its
``clock_offset`` from the host's), anchored at the first frame of a reading
and advanced by the stream's own timestamps.

The card is bounded (``max_seconds``, ``max_bytes``): the oldest group of
pictures goes first, as a camera overwrites its oldest recording.  It may have
holes: :meth:`SdCard.fail` (the card removed or failed) stops recording until
:meth:`SdCard.restore`, and recording starts again only at a keyframe.  Each
stretch without a hole is one *run*; replay tells a client where a run ends.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_ANCHOR_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class CardFrame:
    at: float  # the camera's clock (epoch seconds)
    data: bytes  # one access unit, Annex-B
    keyframe: bool
    run: int  # frames of one run follow each other without a hole


class SdCard:
    def __init__(self, source_url: str, clock: Callable[[], float], *, max_seconds: float = 3600.0,
                 max_bytes: int = 256 << 20) -> None:
        self.source_url = source_url
        self.clock = clock  # the camera's clock (epoch seconds)
        self.max_seconds, self.max_bytes = max_seconds, max_bytes
        self._frames: deque[CardFrame] = deque()
        self._times: deque[float] = deque()  # of _frames, for bisect
        self._bytes = 0
        self._lock = threading.Lock()
        self._failed = False
        self._stop = threading.Event()
        self._run = 0
        self._need_key = True
        self._thread: threading.Thread | None = None
        self.recorded = threading.Event()  # set once the first frame is on the card

    # -- control --------------------------------------------------------------------------

    def start(self) -> SdCard:
        self._thread = threading.Thread(target=self._record, name="sd-card", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def fail(self) -> None:
        """The card is removed (or fails): nothing is recorded until :meth:`restore`."""
        with self._lock:
            self._failed = True

    def restore(self) -> None:
        with self._lock:
            self._failed = False
            self._need_key = True
            self._run += 1

    # -- reading --------------------------------------------------------------------------

    def span(self) -> tuple[float, float] | None:
        """(first, last) frame time on the card, or None while it is empty."""
        with self._lock:
            if not self._frames:
                return None
            return self._frames[0].at, self._frames[-1].at

    def runs(self) -> list[tuple[float, float]]:
        """Each stretch without a hole, as (first frame time, last frame time)."""
        found: list[tuple[float, float]] = []
        last_run = None
        with self._lock:
            for frame in self._frames:
                if frame.run != last_run:
                    found.append((frame.at, frame.at))
                    last_run = frame.run
                else:
                    found[-1] = (found[-1][0], frame.at)
        return found

    def frames(self, start: float, end: float | None = None) -> list[CardFrame]:
        """Frames from the last keyframe at or before ``start`` (or the first after it) up to ``end``."""
        with self._lock:
            k = bisect.bisect_right(self._times, start) - 1  # the last frame at or before start
            while k > 0 and not self._frames[k].keyframe:
                k -= 1
            k = max(k, 0)  # the card starts at a keyframe (oldest out by whole groups of pictures)
            j = len(self._frames) if end is None else bisect.bisect_right(self._times, end)
            return [self._frames[n] for n in range(k, max(j, k))]

    # -- recording (its own thread) -------------------------------------------------------

    def _record(self) -> None:
        import av
        import av.error

        while not self._stop.is_set():
            try:
                container = av.open(self.source_url, options={"rtsp_transport": "tcp", "stimeout": "5000000",
                                                              "analyzeduration": "200000"}, timeout=5.0)
            except (av.error.FFmpegError, OSError):
                self._stop.wait(0.5)
                continue
            try:
                stream = container.streams.video[0]
                with self._lock:
                    self._run += 1
                    self._need_key = True
                self._read(container, stream)
            except (av.error.FFmpegError, OSError):
                log.debug("the card's reading of the encoder ended", exc_info=True)
            finally:
                container.close()

    def _read(self, container: Any, stream: Any) -> None:
        # The camera stamps each frame with its clock as the encoder makes it.  Reading the encoder through
        # RTSP delivers the first frames in a burst (FFmpeg probes the stream first): the anchor is the
        # earliest arrival relative to media time over the first seconds, the frames wait until it is known.
        anchor: float | None = None
        media0: float | None = None
        waiting: list[tuple[float, bytes, bool]] = []
        earliest = float("inf")
        for packet in container.demux(stream):
            if self._stop.is_set():
                return
            if packet.size == 0 or packet.pts is None:
                continue
            media = float(packet.pts * stream.time_base)
            if media0 is None:
                media0 = media
            if anchor is None:
                waiting.append((media - media0, bytes(packet), bool(packet.is_keyframe)))
                earliest = min(earliest, self.clock() - (media - media0))
                if media - media0 < _ANCHOR_SECONDS:
                    continue
                anchor = earliest
                for offset, data, key in waiting:
                    self._keep(anchor + offset, data, key)
                waiting.clear()
                continue
            self._keep(anchor + media - media0, bytes(packet), bool(packet.is_keyframe))

    def _keep(self, at: float, data: bytes, keyframe: bool) -> None:
        with self._lock:
            if self._failed:
                return
            if self._need_key:
                if not keyframe:
                    return
                self._need_key = False
            if self._frames and at <= self._frames[-1].at:
                return  # a camera's card never goes back in time
            self._frames.append(CardFrame(at, data, keyframe, self._run))
            self._times.append(at)
            self._bytes += len(data)
            self._trim()
        self.recorded.set()

    def _trim(self) -> None:
        # Oldest out, a whole group of pictures at a time, so the card always starts at a keyframe.
        while self._frames and (self._bytes > self.max_bytes
                                or self._frames[-1].at - self._frames[0].at > self.max_seconds):
            self._drop_one()
            while self._frames and not self._frames[0].keyframe:
                self._drop_one()

    def _drop_one(self) -> None:
        frame = self._frames.popleft()
        self._times.popleft()
        self._bytes -= len(frame.data)

