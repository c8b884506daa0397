"""Fan-out of one camera stream to its readers (recorder, live viewers, health).

The source publishes on the event loop thread; the hub gives the same packet
object to every reader through the reader's own bounded queue.  A full queue
never blocks the source or the other readers: the reader loses packets, its
``dropped`` counter goes up, and it skips ahead to the next keyframe so that
what it does get still decodes.  The hub keeps the packets since the last
video keyframe so that a new reader starts on a keyframe at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from streams.media import HubItem, MediaPacket, Session, SessionEnded, TrackKind

log = logging.getLogger(__name__)

_SLOW_WARNING_INTERVAL = 10.0


class ReaderClosed(Exception):
    """The reader was closed (by itself or because the hub shut down)."""


class HubReader:
    """One consumer's view of a hub: an async iterator of packets and session ends."""

    def __init__(self, hub: Hub, name: str, maxsize: int, keyframes_only: bool = False) -> None:
        self.hub = hub
        self.name = name
        self.maxsize = maxsize
        # A reader that only looks at pictures (health checks) is not woken for every packet.
        self.keyframes_only = keyframes_only
        self.dropped = 0
        self.delivered = 0
        self._items: deque[HubItem] = deque()
        self._packets = 0  # packets in _items (control items do not count against maxsize)
        self._wakeup = asyncio.Event()
        self._closed = False
        self._need_keyframe = False
        self._last_warning = 0.0

    def offer(self, item: HubItem) -> None:
        """Called by the hub on the loop thread; never blocks."""
        if self._closed:
            return
        if isinstance(item, MediaPacket):
            if self.keyframes_only and not (item.kind is TrackKind.VIDEO and item.is_keyframe):
                return
            if item.kind is TrackKind.VIDEO:
                if self._need_keyframe and not item.is_keyframe:
                    self._drop()
                    return
                if self._packets >= self.maxsize:
                    self._need_keyframe = True
                    self._drop()
                    return
                self._need_keyframe = False
            elif self._packets >= self.maxsize or self._need_keyframe:
                self._drop()
                return
            self._packets += 1
        else:
            # A session boundary: the next session starts fresh on its first keyframe.
            self._need_keyframe = False
        self._items.append(item)
        self._wakeup.set()

    def _drop(self) -> None:
        self.dropped += 1
        self.hub.on_reader_drop(self)
        now = time.monotonic()
        if now - self._last_warning >= _SLOW_WARNING_INTERVAL:
            self._last_warning = now
            log.warning(
                "[%s] reader %s is too slow, dropping packets (%d dropped so far)",
                self.hub.name,
                self.name,
                self.dropped,
            )

    @property
    def queued(self) -> int:
        return self._packets

    async def get(self) -> HubItem:
        """The next item; raises ReaderClosed once closed and drained of nothing more."""
        while not self._items:
            if self._closed:
                raise ReaderClosed(self.name)
            self._wakeup.clear()
            await self._wakeup.wait()
        item = self._items.popleft()
        if isinstance(item, MediaPacket):
            self._packets -= 1
        self.delivered += 1
        return item

    def get_nowait(self) -> HubItem | None:
        if not self._items:
            return None
        item = self._items.popleft()
        if isinstance(item, MediaPacket):
            self._packets -= 1
        self.delivered += 1
        return item

    def __aiter__(self) -> AsyncIterator[HubItem]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[HubItem]:
        while True:
            try:
                yield await self.get()
            except ReaderClosed:
                return

    def close(self) -> None:
        """Detach from the hub. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._items.clear()
        self._packets = 0
        self._wakeup.set()
        self.hub._detach(self)


class Hub:
    """Fan-out point of one stream (a camera's main stream or its live substream)."""

    def __init__(self, name: str, *, reader_queue_packets: int = 600, gop_cache_packets: int = 1200) -> None:
        self.name = name
        self.reader_queue_packets = reader_queue_packets
        self.gop_cache_packets = gop_cache_packets
        self.session: Session | None = None
        self._gop: list[MediaPacket] = []
        self._readers: list[HubReader] = []
        self.packets_published = 0
        self.drop_listeners: list[Callable[[HubReader], None]] = []

    @property
    def readers(self) -> tuple[HubReader, ...]:
        return tuple(self._readers)

    def reader(self, name: str, maxsize: int | None = None, *, keyframes_only: bool = False) -> HubReader:
        """Attach a reader; it starts with the cached packets since the last keyframe."""
        reader = HubReader(self, name, maxsize or self.reader_queue_packets, keyframes_only)
        for packet in self._gop:
            reader.offer(packet)
        self._readers.append(reader)
        return reader

    def publish(self, packet: MediaPacket) -> None:
        """Hand a packet to every reader. Must be called on the loop thread."""
        if packet.session is not self.session:
            self.session = packet.session
            self._gop.clear()
        self.packets_published += 1
        if packet.kind is TrackKind.VIDEO and packet.is_keyframe:
            self._gop.clear()
        if self._gop or (packet.kind is TrackKind.VIDEO and packet.is_keyframe):
            if len(self._gop) < self.gop_cache_packets:
                self._gop.append(packet)
            else:
                # A camera that stopped sending keyframes: stop caching rather than grow.
                self._gop.clear()
        for reader in self._readers:
            reader.offer(packet)

    def end_session(self, reason: str) -> None:
        """The current session is over: tell every reader, forget the cached GOP."""
        session = self.session
        self._gop.clear()
        self.session = None
        if session is None:
            return
        item = SessionEnded(session, reason)
        for reader in self._readers:
            reader.offer(item)

    def close(self) -> None:
        self.end_session("shutdown")
        for reader in list(self._readers):
            reader.close()

    def on_reader_drop(self, reader: HubReader) -> None:
        for listener in self.drop_listeners:
            listener(reader)

    def _detach(self, reader: HubReader) -> None:
        try:
            self._readers.remove(reader)
        except ValueError:
            pass

