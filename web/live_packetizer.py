"""One camera's H.264 access units cut into RTP payloads once, for all its viewers.

aiortc's sender packetizes every access unit again for each viewer (split the
Annex B stream, FU-A fragments, STAP-A aggregates): the same bytes, N times.
A :class:`LivePacketizer` belongs to one live stream (a camera's view hub, or
its transcoder's) and remembers the payloads of the last few access units by
the identity of the hub's shared :class:`~streams.media.MediaPacket`: the
first viewer to send a unit cuts it, the others reuse the very same payload
objects.  Only the RTP header, SRTP and the send stay per viewer
(:mod:`web.live_sender`).

The cut is aiortc's (``H264Encoder._split_bitstream`` and ``_packetize``:
STAP-A for small NAL units, FU-A for large ones, payloads of at most 1300
bytes) but for two things: NAL units a decoder ignores (access unit
delimiters, filler) are left out, and a NAL unit's FU-A fragments all have the same size
but the last, which may be smaller (aiortc makes the first few one byte
larger; both are valid RFC 6184).  A run of equal datagrams can then leave in
one ``sendmsg`` with UDP generic segmentation offload (``UDP_SEGMENT``), which
the kernel cuts into the same datagrams after passing them down its stack
once; :class:`Cut` says where those runs are.  Runs on the event loop thread
only.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from aiortc.codecs.h264 import FU_A_HEADER_SIZE, NAL_HEADER_SIZE, NAL_TYPE_FU_A, PACKET_MAX, H264Encoder

from streams.media import MediaPacket

# A viewer more than this many access units behind the freshest one cuts its own (same result, only slower): at
# 25 frames a second it covers 2.5 s, while the payloads of a 1080p GOP stay a few MB at most.
CACHED_UNITS = 64
# Per datagram, on top of its payload: RTP header and extensions, SRTP tag; a run of datagrams fits one UDP datagram
# of at most 64 KB, and Linux segments at most 64 of them (UDP_MAX_SEGMENTS, 128 since 6.8).
MAX_OVERHEAD = 80
MAX_RUN_BYTES = 65_000
MAX_RUN_SEGMENTS = 64
# NAL unit types a decoder ignores (H.264 7.4.1.2.3, 7.4.2.4 and 7.4.2.7): access unit delimiter, end of sequence, end
# of stream, filler data. Cameras put an AUD in front of every picture; relayed, it is one datagram of a few bytes
# per frame per viewer (its own send and SRTP), often a quarter of a viewer's sends. RTP has its own framing (the
# marker bit, the timestamp), so it is not sent; the recording keeps every NAL unit.
DISCARDABLE_NALS = frozenset({9, 10, 11, 12})


class _EvenFragments(H264Encoder):
    """aiortc's H.264 packetization with FU-A fragments of one size but the last."""

    @staticmethod
    def _packetize_fu_a(data: bytes) -> list[bytes]:
        available = PACKET_MAX - FU_A_HEADER_SIZE
        body = memoryview(data)[NAL_HEADER_SIZE:]
        size = math.ceil(len(body) / math.ceil(len(body) / available))
        indicator = (data[0] & 0xE0) | NAL_TYPE_FU_A
        nal_type = data[0] & 0x1F
        fragments = []
        for offset in range(0, len(body), size):
            start = 0x80 if offset == 0 else 0
            end = 0x40 if offset + size >= len(body) else 0
            fragments.append(bytes((indicator, nal_type | start | end)) + body[offset:offset + size])
        return fragments


class RunLayout(NamedTuple):
    """A run's payloads as a viewer's sender lays them out before protecting them in place (web.live_sender).

    Each payload sits behind room for its RTP header and in front of room for its SRTP trailer, so that the
    protected datagrams come out end to end, as one GSO send carries them: a viewer copies ``template`` into its
    buffer once, writes the headers and protects each datagram where it lies.
    """

    template: bytes
    offsets: tuple[int, ...]  # where each datagram starts
    sizes: tuple[int, ...]  # each datagram's header and payload, before SRTP


@dataclass(frozen=True, slots=True)
class Cut:
    """An access unit's RTP payloads (the marker goes on the last) and its runs of equal-size payloads."""

    payloads: tuple[bytes, ...]
    # (start, stop) slices of ``payloads``: all of one length but the last, which is no longer; each one send.
    runs: tuple[tuple[int, int], ...]
    octets: int = 0  # the payloads' bytes, for the RTCP sender reports
    # (header bytes, trailer bytes) -> the runs laid out, made by the first viewer with those sizes (almost always
    # all of them: the same negotiated extensions, the same SRTP profile) and shared by the others.
    _layouts: dict[tuple[int, int], tuple[RunLayout, ...]] = field(default_factory=dict, repr=False, compare=False)

    def layout(self, header: int, trailer: int) -> tuple[RunLayout, ...]:
        """The runs laid out for datagrams with ``header`` bytes in front of the payload and ``trailer`` after it."""
        layouts = self._layouts.get((header, trailer))
        if layouts is None:
            layouts = self._layouts[header, trailer] = tuple(
                _lay_out(self.payloads[start:stop], header, trailer) for start, stop in self.runs)
        return layouts


def _lay_out(payloads: tuple[bytes, ...], header: int, trailer: int) -> RunLayout:
    room, after = bytes(header), bytes(trailer)
    offsets, offset = [], 0
    for payload in payloads:
        offsets.append(offset)
        offset += header + len(payload) + trailer
    return RunLayout(b"".join(part for payload in payloads for part in (room, payload, after)), tuple(offsets),
                     tuple(header + len(payload) for payload in payloads))


def runs_of(payloads: tuple[bytes, ...]) -> tuple[tuple[int, int], ...]:
    """Where ``payloads`` fall into runs a single GSO send can carry."""
    runs = []
    start = 0
    while start < len(payloads):
        size = len(payloads[start])
        limit = min(MAX_RUN_SEGMENTS, MAX_RUN_BYTES // (size + MAX_OVERHEAD))
        stop = start + 1
        while stop < len(payloads) and stop - start < limit and len(payloads[stop]) == size:
            stop += 1
        if stop < len(payloads) and stop - start < limit and len(payloads[stop]) < size:
            stop += 1  # a shorter datagram may close the run
        runs.append((start, stop))
        start = stop
    return tuple(runs)


class LivePacketizer:
    """RTP payloads of the access units of one live stream, shared by its viewers."""

    def __init__(self, name: str, cached_units: int = CACHED_UNITS) -> None:
        self.name = name
        self.cached_units = cached_units
        # id(packet) -> (packet, cut); the packet is held so that its id is not reused while cached.
        self._cache: OrderedDict[int, tuple[MediaPacket, Cut]] = OrderedDict()
        self.units_cut = 0  # access units packetized
        self.units_shared = 0  # access units a viewer took from the cache

    def cut(self, packet: MediaPacket, data: bytes) -> Cut:
        """The RTP payloads of ``data``, the bitstream the viewers send for ``packet``.

        ``data`` must be a function of ``packet`` alone (its bytes, with the session's parameter sets put in
        front of a keyframe that lacks them), as every viewer's feed makes it.
        """
        key = id(packet)
        entry = self._cache.get(key)
        if entry is not None and entry[0] is packet:
            self.units_shared += 1
            return entry[1]
        nals = [nal for nal in H264Encoder._split_bitstream(data) if nal and nal[0] & 0x1F not in DISCARDABLE_NALS]
        payloads = tuple(_EvenFragments._packetize(nals))
        cut = Cut(payloads, runs_of(payloads), sum(map(len, payloads)))
        self.units_cut += 1
        self._cache[key] = (packet, cut)
        if len(self._cache) > self.cached_units:
            self._cache.popitem(last=False)
        return cut
