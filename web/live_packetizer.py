"""One camera's H.264 access units cut into RTP payloads once, for all its viewers.

aiortc's sender packetizes every access unit again for each viewer (split the
Annex B stream, FU-A fragments, STAP-A aggregates): the same bytes, N times.
A :class:`LivePacketizer` belongs to one live stream (a camera's view hub, or
its transcoder's) and remembers the payloads of the last few access units by
the identity of the hub's shared :class:`~streams.media.MediaPacket`: the
first viewer to send a unit cuts it, the others reuse the very same payload
objects.  Only the RTP header, SRTP and the send stay per viewer
(:mod:`web.live_sender`).

The cut is aiortc's own (``H264Encoder._split_bitstream`` and
``_packetize``, 1300-byte payloads), so a viewer receives byte for byte what
it received before.  Runs on the event loop thread only.
"""

from __future__ import annotations

from collections import OrderedDict

from aiortc.codecs.h264 import H264Encoder

from streams.media import MediaPacket

# A viewer more than this many access units behind the freshest one cuts its own (same result, only slower): at
# 25 frames a second it covers 2.5 s, while the payloads of a 1080p GOP stay a few MB at most.
CACHED_UNITS = 64


class LivePacketizer:
    """RTP payloads of the access units of one live stream, shared by its viewers."""

    def __init__(self, name: str, cached_units: int = CACHED_UNITS) -> None:
        self.name = name
        self.cached_units = cached_units
        # id(packet) -> (packet, payloads); the packet is held so that its id is not reused while cached.
        self._cache: OrderedDict[int, tuple[MediaPacket, tuple[bytes, ...]]] = OrderedDict()
        self.units_cut = 0  # access units packetized
        self.units_shared = 0  # access units a viewer took from the cache

    def payloads(self, packet: MediaPacket, data: bytes) -> tuple[bytes, ...]:
        """The RTP payloads of ``data``, the bitstream the viewers send for ``packet`` (the last one has the marker).

        ``data`` must be a function of ``packet`` alone (its bytes, with the session's parameter sets put in
        front of a keyframe that lacks them), as every viewer's feed makes it.
        """
        key = id(packet)
        entry = self._cache.get(key)
        if entry is not None and entry[0] is packet:
            self.units_shared += 1
            return entry[1]
        payloads = tuple(H264Encoder._packetize(H264Encoder._split_bitstream(data)))
        self.units_cut += 1
        self._cache[key] = (packet, payloads)
        if len(self._cache) > self.cached_units:
            self._cache.popitem(last=False)
        return payloads
