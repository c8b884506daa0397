"""One live stream's video, taken from its hub once and sent to every shared-sender viewer in one pass.

Per viewer, the shared-packetization sender (:mod:`web.live_sender`) used to
have a hub reader of its own, a task woken for every access unit, and a scan
of every keyframe for its parameter sets; py-spy put those wake-ups and that
Python at about half of what an extra viewer cost.  A :class:`LiveFanout`
per live stream (a camera's view hub, or its transcoder's) does that once:

* one bounded hub reader and one task for all the stream's shared-sender
  viewers, made with the first viewer that connects and gone with the last
  (:meth:`LiveFanout.detach`);
* per access unit, once: the SPS/PPS put in front of a keyframe that lacks
  them (the feed did this per viewer), the cut into RTP payloads
  (:class:`~web.live_packetizer.LivePacketizer`), then one synchronous call
  per viewer (:meth:`FanoutViewer.deliver`): its own RTP clock, sequence
  numbers, SSRC, SRTP and send, with no await between the viewers;
* the units since the last keyframe are kept, so that a viewer joining later
  starts on a keyframe at once with the same GOP burst a hub reader of its
  own would have given it (:meth:`LiveFanout.attach`).

A viewer's own trouble stays its own: UDP sends never wait (a full socket is
a bounded queue, then units not sent until the next keyframe, see
:data:`web.live_sender.MAX_QUEUED_BYTES`), and a viewer whose ``deliver``
raises (its transport closed) is detached and ended, the others go on.  If
the fan-out itself falls behind the camera (the loop is starved), its reader
drops to the next keyframe, as any hub reader does, and every viewer skips the
same units.  Runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple, Protocol

from streams.hub import Hub, HubReader, ReaderClosed
from streams.media import MediaPacket, SessionEnded, TrackKind
from web.live_feed import with_parameter_sets
from web.live_packetizer import Cut, LivePacketizer

log = logging.getLogger(__name__)


class FanoutUnit(NamedTuple):
    """An access unit as every viewer of the stream sends it."""

    packet: MediaPacket  # the hub's packet: its session, keyframe flag, timestamps and arrival time
    cut: Cut  # its RTP payloads, SPS/PPS in front of a keyframe that lacked them


class FanoutEnded(Exception):
    """The stream's hub closed (the daemon shuts down or the camera was removed)."""


class FanoutViewer(Protocol):
    """What the fan-out needs of a viewer's sender."""

    @property
    def viewer_name(self) -> str: ...

    def deliver(self, unit: FanoutUnit) -> None:
        """Send ``unit`` now, without waiting; raises if the viewer cannot be sent to any more."""

    def end(self, reason: BaseException) -> None:
        """The viewer gets nothing more from the fan-out (it was detached), for ``reason``."""


class LiveFanout:
    """The video of one live stream, sent to all its attached viewers."""

    def __init__(self, hub: Hub, packetizer: LivePacketizer, maxsize: int) -> None:
        self.hub = hub
        self.packetizer = packetizer
        self.maxsize = maxsize
        self.viewers: list[FanoutViewer] = []
        self.reader: HubReader | None = None
        self.task: asyncio.Task[None] | None = None
        self._gop: list[FanoutUnit] = []  # the current session's units since its last keyframe
        self.units = 0  # access units sent on (to however many viewers)
        self.skipped = 0  # video the viewers cannot take (not H.264)
        self.dropped_before = 0  # the readers of earlier runs' drops (dropped counts them all)

    @property
    def dropped(self) -> int:
        """Packets the fan-out's hub reader lost because the fan-out fell behind (all its viewers skipped them)."""
        return self.dropped_before + (self.reader.dropped if self.reader is not None else 0)

    @property
    def queued(self) -> int:
        return self.reader.queued if self.reader is not None else 0

    def attach(self, viewer: FanoutViewer) -> None:
        """Start sending to ``viewer``: from the cached GOP (at once, a burst) and then every unit as it comes.

        Raises what the viewer's ``deliver`` raises for the cached units (it is then not attached).
        """
        if self.reader is None:
            # The hub hands a new reader its cached GOP: the first viewer's burst comes through the task.
            self.reader = self.hub.reader(f"whep-fanout:{self.hub.name}", maxsize=self.maxsize)
            self.task = asyncio.get_running_loop().create_task(self._run(self.reader),
                                                               name=f"live-fanout:{self.hub.name}")
        else:
            gop = tuple(self._gop)
            for unit in gop:
                viewer.deliver(unit)
            self.packetizer.units_shared += len(gop)  # the newcomer's burst: cut once, for an earlier viewer
        self.viewers.append(viewer)

    def detach(self, viewer: FanoutViewer) -> None:
        """Stop sending to ``viewer``; the last one stops the fan-out's task and reader. Idempotent."""
        try:
            self.viewers.remove(viewer)
        except ValueError:
            return
        if not self.viewers:
            self._stop()

    def _stop(self) -> None:
        reader, self.reader = self.reader, None
        task, self.task = self.task, None
        self._gop.clear()
        if reader is not None:
            self.dropped_before += reader.dropped
            reader.close()
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _run(self, reader: HubReader) -> None:
        try:
            while True:
                self._take(await reader.get())
                while (item := reader.get_nowait()) is not None:  # all that came while we sent, without a wake-up
                    self._take(item)
        except ReaderClosed:
            if self.reader is reader:  # the hub closed it, not _stop()
                self._end_all(FanoutEnded(self.hub.name))
        except Exception as exc:  # noqa: BLE001 - never leave viewers attached to a dead task
            log.warning("[%s] live fan-out stopped", self.hub.name, exc_info=True)
            if self.reader is reader:
                self._end_all(exc)

    def _end_all(self, reason: BaseException) -> None:
        viewers, self.viewers = self.viewers, []
        self._stop()
        for viewer in viewers:
            viewer.end(reason)

    def _take(self, item: MediaPacket | SessionEnded) -> None:
        gop = self._gop
        if isinstance(item, SessionEnded):
            gop.clear()  # the next session starts on its own first keyframe
            return
        if item.kind is not TrackKind.VIDEO:
            return  # audio goes through each viewer's feed (aiortc's sender)
        video = item.session.video
        if video is None or video.codec != "h264":
            self.skipped += 1
            return
        keyframe = item.is_keyframe
        if keyframe or not gop or gop[0].packet.session is not item.session:
            gop.clear()  # at a keyframe, or nothing decodable to start a newcomer from until the next one
        unit = FanoutUnit(item, self.packetizer.cut(item, with_parameter_sets(item)))
        if keyframe or gop:
            if len(gop) < self.hub.gop_cache_packets:
                gop.append(unit)
            else:
                gop.clear()  # a camera that stopped sending keyframes: stop keeping, as the hub does
        self.units += 1
        viewers = self.viewers
        if len(viewers) > 1:
            self.packetizer.units_shared += len(viewers) - 1
        for viewer in tuple(viewers):
            try:
                viewer.deliver(unit)
            except Exception as exc:  # noqa: BLE001 - one viewer's failure (its transport closed) is its own
                self.detach(viewer)
                viewer.end(exc)
