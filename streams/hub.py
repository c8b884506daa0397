"""Fan-out of one camera stream to its readers (recorder, live viewers, health).

A hub has two sides, and the packets of a camera cross between them only when
a reader on the far side needs them.

*Thread side.*  The source's demux thread calls :meth:`Hub.feed` for every
packet.  The hub hands it at once, on that thread, to its :class:`PacketSink`\\ s
(the recorder: it muxes in the camera's thread and leaves the disk to a thread
of its own, so a sink never blocks the source), and keeps the packets since
the last video keyframe, so that a new reader starts on a keyframe at once.

*Loop side.*  Readers (:class:`HubReader`) live on the event loop.  The hub
forwards to the loop only what they ask for: every packet while a reader wants
them all (a live viewer), else one video keyframe every ``every`` seconds for
the picture checks, and the first packet of every camera session.  Forwarded
packets go in batches: one ``call_soon_threadsafe`` wakes the loop for
everything fed until it runs, so a busy loop gets larger batches rather than
more wake-ups.  The hub gives the same packet object to every reader through
the reader's own bounded queue.  A full queue never blocks the source or the
other readers: the reader loses packets, its ``dropped`` counter goes up, and
it skips ahead to the next keyframe so that what it does get still decodes.

:meth:`Hub.publish` is the loop-side entry for a publisher that already runs on
the loop (tests, simulated feeds): it caches and fans out in one step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import av

from streams.media import HubItem, MediaPacket, Session, SessionEnded, TrackKind

log = logging.getLogger(__name__)

_SLOW_WARNING_INTERVAL = 10.0


class ReaderClosed(Exception):
    """The reader was closed (by itself or because the hub shut down)."""


class PacketSink(Protocol):
    """A consumer fed on the source's thread, in order, one item at a time.

    ``raw`` is the demuxer's own packet for ``item`` (None when the access unit
    was reassembled from several); a sink may mux it instead of copying the
    bytes again, but must not keep it.  A sink must not block: slow work (disk)
    goes to a thread of its own, and a sink that falls behind drops and counts.
    """

    def feed(self, item: HubItem, raw: av.Packet | None) -> None: ...


class HubReader:
    """One consumer's view of a hub: an async iterator of packets and session ends."""

    def __init__(self, hub: Hub, name: str, maxsize: int, keyframes_only: bool = False, every: float = 0.0) -> None:
        self.hub = hub
        self.name = name
        self.maxsize = maxsize
        # A reader that only looks at pictures (health checks) is not woken for every packet,
        # and keyframes cross from the source's thread only every ``every`` seconds for it.
        self.keyframes_only = keyframes_only
        self.every = every
        self.dropped = 0
        self.delivered = 0
        self._items: deque[HubItem] = deque()
        self._packets = 0  # packets in _items (control items do not count against maxsize)
        self._wakeup = asyncio.Event()
        self._closed = False
        self._need_keyframe = False
        self._last_warning = 0.0
        self._after = 0  # thread-side sequence number of the last packet it already has

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
        self.session: Session | None = None  # loop side: the session readers are in
        self._readers: list[HubReader] = []
        self.packets_published = 0
        self.drop_listeners: list[Callable[[HubReader], None]] = []
        # Shared by both sides, under _lock: the GOP cache and what crosses to the loop.
        self._lock = threading.Lock()
        self._gop: list[tuple[int, MediaPacket]] = []
        self._gop_session: Session | None = None
        self._seq = 0
        self._pending: list[tuple[int, MediaPacket]] = []
        self._flush_scheduled = False
        self._wants_all = False  # a loop reader wants every packet
        self._keyframe_every: float | None = None  # keyframe-only readers want one this often
        self._next_keyframe = 0.0  # received_mono of the next keyframe due on the loop
        # Thread side only.
        self._sinks: tuple[PacketSink, ...] = ()
        self._sink_lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.forwarded = 0  # packets that crossed to the loop

    @property
    def readers(self) -> tuple[HubReader, ...]:
        return tuple(self._readers)

    # -- thread side ----------------------------------------------------------------------

    def add_sink(self, sink: PacketSink) -> None:
        with self._sink_lock:
            self._sinks = (*self._sinks, sink)

    def remove_sink(self, sink: PacketSink) -> None:
        """Once this returns, no thread is inside ``sink`` nor will enter it again."""
        with self._sink_lock:
            self._sinks = tuple(s for s in self._sinks if s is not sink)

    def feed(self, packet: MediaPacket, raw: av.Packet | None = None) -> None:
        """A packet from the source's thread: to the sinks now, to the loop if a reader wants it."""
        if self._sinks:
            with self._sink_lock:
                for sink in self._sinks:
                    sink.feed(packet, raw)
        keyframe = packet.kind is TrackKind.VIDEO and packet.is_keyframe
        with self._lock:
            seq = self._cache(packet, keyframe)
            new_session = packet.session is not self._gop_session
            if new_session:
                self._gop_session = packet.session
            forward = self._wants_all or new_session
            if not forward and keyframe and self._keyframe_every is not None:
                forward = packet.received_mono >= self._next_keyframe
            if not forward:
                return
            if keyframe and self._keyframe_every is not None:
                self._next_keyframe = packet.received_mono + self._keyframe_every
            self._pending.append((seq, packet))
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        loop = self.loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._flush)
            except RuntimeError:
                pass  # loop closed during shutdown

    def end_feed(self, session: Session, reason: str) -> None:
        """The source's thread is done with ``session``: tell the sinks (the loop learns it from the source)."""
        item = SessionEnded(session, reason)
        with self._sink_lock:
            for sink in self._sinks:
                sink.feed(item, None)

    def _cache(self, packet: MediaPacket, keyframe: bool) -> int:
        """Keep the packets since the last keyframe (under _lock); returns the packet's sequence number."""
        self._seq += 1
        gop = self._gop
        if keyframe or (gop and gop[0][1].session is not packet.session):
            gop.clear()
        if gop or keyframe:
            if len(gop) < self.gop_cache_packets:
                gop.append((self._seq, packet))
            else:
                # A camera that stopped sending keyframes: stop caching rather than grow.
                gop.clear()
        return self._seq

    # -- loop side ------------------------------------------------------------------------

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._flush_scheduled = False
        self.forwarded += len(batch)
        for seq, packet in batch:
            self._deliver(packet, seq)

    def _deliver(self, packet: MediaPacket, seq: int) -> None:
        if packet.session is not self.session:
            if self.session is not None:
                self._offer_all(SessionEnded(self.session, "parameters changed"))
            self.session = packet.session
        self.packets_published += 1
        for reader in self._readers:
            if seq > reader._after:
                reader.offer(packet)

    def _offer_all(self, item: SessionEnded) -> None:
        for reader in self._readers:
            reader.offer(item)

    def reader(
        self, name: str, maxsize: int | None = None, *, keyframes_only: bool = False, every: float = 0.0
    ) -> HubReader:
        """Attach a reader; it starts with the cached packets since the last keyframe."""
        reader = HubReader(self, name, maxsize or self.reader_queue_packets, keyframes_only, every)
        with self._lock:
            cached = list(self._gop)
            reader._after = self._seq
            self._readers.append(reader)
            self._update_wants()
        for _seq, packet in cached:
            reader.offer(packet)
        return reader

    def publish(self, packet: MediaPacket) -> None:
        """Cache a packet and hand it to every reader at once. Must be called on the loop thread."""
        keyframe = packet.kind is TrackKind.VIDEO and packet.is_keyframe
        with self._lock:
            seq = self._cache(packet, keyframe)
            self._gop_session = packet.session
        self._deliver(packet, seq)

    def end_session(self, reason: str) -> None:
        """The current session is over: tell every reader, forget the cached GOP. Loop thread."""
        with self._lock:
            self._gop.clear()
            self._gop_session = None
            batch, self._pending = self._pending, []
        for seq, packet in batch:  # fed before the end, not yet delivered
            self._deliver(packet, seq)
        session = self.session
        self.session = None
        if session is None:
            return
        self._offer_all(SessionEnded(session, reason))

    def close(self) -> None:
        self.end_session("shutdown")
        for reader in list(self._readers):
            reader.close()

    def on_reader_drop(self, reader: HubReader) -> None:
        for listener in self.drop_listeners:
            listener(reader)

    def _detach(self, reader: HubReader) -> None:
        with self._lock:
            try:
                self._readers.remove(reader)
            except ValueError:
                pass
            self._update_wants()

    def _update_wants(self) -> None:
        """What crosses from the thread (under _lock): everything for a full reader, else sampled keyframes."""
        self._wants_all = any(not r.keyframes_only for r in self._readers)
        intervals = [r.every for r in self._readers if r.keyframes_only]
        self._keyframe_every = min(intervals) if intervals else None
        self._next_keyframe = 0.0
