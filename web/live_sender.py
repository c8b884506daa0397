"""The RTP sender of a relayed H.264 track: per viewer only a header, SRTP and the send.

py-spy on main put an extra viewer's cost in aiortc's per-packet path: an
``RtpPacket`` object per packet, its header extensions serialized through
``HeaderExtensionsMap`` and a ``datetime`` clock, the RTP history, three
coroutine layers per datagram down to the socket (``RTCDtlsTransport._send_rtp``
→ aioice ``Connection.send`` → ``sendto`` → ``StunProtocol.send_data``), and
the H.264 packetization of the same access unit once per viewer.
:class:`LiveRtpSender` replaces only the RTP loop of aiortc's
:class:`~aiortc.RTCRtpSender` for the passthrough video track; RTCP (sender
reports, receiver reports, NACK and PLI/FIR routing, BYE), the DTLS-SRTP keys
and ICE stay aiortc's.  Per access unit it

* takes the payloads from the camera's :class:`~web.live_packetizer.LivePacketizer`
  (cut once for all viewers);
* builds the header tail (timestamp, SSRC, the negotiated ``mid`` and
  ``abs-send-time`` extensions, the only ones aiortc's video sender writes)
  once, so a packet costs one 4-byte ``struct`` pack and one join;
* SRTP-protects with this viewer's keys (pylibsrtp, C) and hands the
  datagrams straight to the selected ICE pair's datagram transport, the very
  call aioice's ``StunProtocol.send_data`` makes (TURN relays included:
  aioice gives those a transport with the same ``sendto``);
* sends each run of equal-size datagrams (a NAL unit's FU-A fragments, see
  :mod:`web.live_packetizer`) with one ``sendmsg`` and ``UDP_SEGMENT``
  (generic segmentation offload, Linux 4.18): the kernel cuts it into the
  same datagrams after one pass down its stack.  The UDP send was the largest
  cost left (most of it kernel time, one syscall and stack traversal per
  packet per viewer); where the kernel refuses GSO the sender falls back to
  one ``sendto`` per datagram for that viewer.  Only while asyncio has
  nothing queued for the socket, so that the order is kept;
* keeps the same RTCP sender-report figures aiortc's loop keeps (NTP/RTP
  timestamp pair, packet and octet counts) in aiortc's own attributes, so its
  RTCP loop reports them.

NACKs are answered from a per-viewer history of the last
:data:`HISTORY_PACKETS` packets, kept as references to the shared payloads
(aiortc keeps 128 ``RtpPacket`` objects: less than one 1080p keyframe), as RTX
when the viewer negotiated it.  A viewer is resent at most as many packets as
it was sent (a budget that each sent packet adds one to, up to the history's
size): a viewer that NACKs everything, again and again, at most doubles its own
stream instead of making the daemon send without bound.  A keyframe request is still heard by
:func:`web.aiortc_fixes.on_keyframe_request`.

The sender reads private state of aiortc and aioice; :meth:`LiveRtpSender.adopt`
checks that it is there and otherwise leaves aiortc's own sender in place
(with a warning), which sends the same stream, only at a higher cost.
Runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aioice.ice import StunProtocol
from aiortc import RTCRtpSender
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import SRTP_PROFILES
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import pack_header_extensions
from aiortc.utils import random32

from streams.media import Session
from web.aiortc_fixes import current_ntp_time
from web.live_fanout import FanoutEnded, FanoutUnit, LiveFanout
from web.live_feed import FeedClosed, LiveFeed
from web.live_packetizer import Cut

log = logging.getLogger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
# Packets a NACK can still be answered from: a 1080p keyframe is 100-200 packets, and a viewer on a lossy link
# NACKs a burst a round trip after it was sent.
HISTORY_PACKETS = 1024
# What asyncio may hold queued for one viewer's socket (a link slower than the camera, a full send buffer) before
# the sender stops adding to it: units past it are not sent (counted), as if lost on the way, and the viewer's
# NACKs and keyframe requests recover it.  About two seconds of a 4 Mbit/s camera.
MAX_QUEUED_BYTES = 1 << 20

_HEAD = struct.Struct("!BBH")  # version and extension bit, marker and payload type, sequence number
_TS_SSRC = struct.Struct("!II")
_EXT_HEAD = struct.Struct("!HH")
_ABS_PLACEHOLDER = b"\xff\xfe\xfd"  # stands for a unit's abs-send-time in the prebuilt extension block
_OSN = struct.Struct("!H")  # RTX: the original sequence number in front of the payload (RFC 4588)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # Linux >= 4.18: the size the kernel cuts a send into
_SEGMENT = struct.Struct("=H")

# aiortc's RTCRtpSender and RTCDtlsTransport state the RTP loop must keep up to date (by their mangled names):
# stop() waits for the two events; the RTCP loop reports the figures; getStats() reads the counts.
_SENDER_STATE = (
    "_RTCRtpSender__rtp_started", "_RTCRtpSender__rtp_exited", "_RTCRtpSender__ntp_timestamp",
    "_RTCRtpSender__rtp_timestamp", "_RTCRtpSender__packet_count", "_RTCRtpSender__octet_count",
)
_TRANSPORT_STATE = ("_RTCDtlsTransport__tx_bytes", "_RTCDtlsTransport__tx_packets", "_tx_srtp", "_state")


class _RunProtector:
    """SRTP-protects a run of an access unit's packets into one buffer, the datagrams end to end.

    pylibsrtp's ``protect`` copies each packet into its own buffer and out again as new bytes; called through
    pylibsrtp's own cffi binding, libsrtp protects every packet in place in one preallocated buffer per viewer,
    which then goes to the kernel as it is (one ``sendmsg`` for the run).  The run's payloads come laid out once
    for all viewers (:meth:`web.live_packetizer.Cut.layout`): per packet a viewer writes only its header and calls
    libsrtp.  Where pylibsrtp's internals or aiortc's profile are not what this was written for (``trailer`` None),
    its ``protect`` and a join make the same bytes.
    """

    __slots__ = ("session", "trailer", "_ctx", "_buf", "_memory", "_length", "_protect", "_heads")

    BUFFER_BYTES = 66 * 1024  # a run is at most 65,000 bytes (web.live_packetizer.MAX_RUN_BYTES)

    def __init__(self, session: Any, trailer: int | None) -> None:
        self.session = session  # the viewer's pylibsrtp.Session, whose keys and state these are
        self.trailer = trailer or 0  # what SRTP adds to each packet (its authentication tag)
        self._protect: Any = None
        self._heads: dict[int, struct.Struct] = {}  # header tail length -> the whole header's struct
        if trailer is None:
            return
        try:
            from pylibsrtp._binding import ffi, lib

            self._ctx = session._srtp[0]
            self._buf = ffi.new("char[]", self.BUFFER_BYTES)
            self._memory = memoryview(ffi.buffer(self._buf))
            self._length = ffi.new("int *")
            self._protect = lib.srtp_protect
        except (ImportError, AttributeError, TypeError) as exc:
            log.info("pylibsrtp's binding is not the one expected (%s): packets are protected one by one", exc)

    def protect(self, protect: Callable[[bytes], bytes], cut: Cut, run: int, first_byte: int, payload_type: int,
                sequence: int, tail: bytes) -> tuple[Any, int]:
        """Run ``run`` of ``cut`` (its first packet numbered ``sequence``), protected end to end, and the size of
        its first datagram (all but the last have it)."""
        start, stop = cut.runs[run]
        last = len(cut.payloads) - 1
        c_protect = self._protect
        if c_protect is None:
            head = _HEAD.pack
            payloads = cut.payloads
            datagrams = [protect(b"".join((head(first_byte, payload_type | (0x80 if i == last else 0),
                                                (sequence + i - start) & 0xFFFF), tail, payloads[i])))
                         for i in range(start, stop)]
            return b"".join(datagrams), len(datagrams[0])
        layout = cut.layout(4 + len(tail), self.trailer)[run]
        pack = self._heads.get(len(tail))
        if pack is None:
            pack = self._heads[len(tail)] = struct.Struct(f"!BBH{len(tail)}s")
        pack_into = pack.pack_into
        memory, buf, length, ctx = self._memory, self._buf, self._length, self._ctx
        memory[:len(layout.template)] = layout.template
        offsets, sizes = layout.offsets, layout.sizes
        final = len(offsets) - 1
        marked = final if stop - 1 == last else -1  # the unit's last packet carries the marker
        for i in range(final + 1):
            offset = offsets[i]
            pack_into(memory, offset, first_byte, payload_type | (0x80 if i == marked else 0),
                      (sequence + i) & 0xFFFF, tail)
            length[0] = sizes[i]
            status = c_protect(ctx, buf + offset, length)
            if status:
                raise RuntimeError(f"SRTP protection failed (libsrtp status {status})")
        if length[0] != sizes[final] + self.trailer:  # the layout left the wrong room: the datagrams would overlap
            raise RuntimeError(f"SRTP added {length[0] - sizes[final]} bytes to a packet, not {self.trailer}")
        return memory[:offset + length[0]], sizes[0] + self.trailer


@functools.cache
def _srtp_trailer_of(libsrtp_profile: int, key_bytes: int) -> int:
    """What SRTP adds to a packet under a profile: protect an empty packet with a throwaway key and see."""
    from pylibsrtp import Policy, Session

    policy = Policy(key=bytes(key_bytes), ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=libsrtp_profile)
    return len(Session(policy).protect(b"\x80" + bytes(11))) - 12


def _srtp_trailer(dtls: Any) -> int | None:
    """What SRTP adds to each packet for this viewer: the profile its DTLS handshake chose; None if unknown."""
    try:
        chosen = dtls._ssl.get_selected_srtp_profile()
        for profile in SRTP_PROFILES:
            if profile.openssl_profile == chosen:
                return _srtp_trailer_of(profile.libsrtp_profile, profile.key_length + profile.salt_length)
    except (AttributeError, TypeError, ValueError) as exc:
        log.info("the SRTP profile of a viewer is not known (%s): packets are protected one by one", exc)
        return None
    log.info("the SRTP profile %r is not one aiortc knows: packets are protected one by one", chosen)
    return None


class _Sent:
    """One access unit as this viewer sent it: what a retransmission needs."""

    __slots__ = ("first_seq", "timestamp", "extensions", "payloads")

    def __init__(self, first_seq: int, timestamp: int, extensions: bytes, payloads: tuple[bytes, ...]) -> None:
        self.first_seq = first_seq
        self.timestamp = timestamp
        self.extensions = extensions  # the extension block as sent (profile, length, elements), or b""
        self.payloads = payloads


def _plain_udp(protocol: Any) -> Any:
    """The asyncio transport of aioice's plain UDP protocol, sent to directly; None for any other (TURN)."""
    transport = getattr(protocol, "transport", None)
    return transport if transport is not None and type(protocol).send_data is StunProtocol.send_data else None


class LiveRtpSender(RTCRtpSender):
    """aiortc's sender with a shared-packetization RTP loop for one viewer's relayed H.264 track."""

    _live_feed: LiveFeed
    _live_fanout: LiveFanout
    _live_parameters: RTCRtpSendParameters | None
    _live_history: deque[_Sent]
    _live_history_packets: int
    _live_rtx_sequence: int
    _live_runs: _RunProtector | None
    _live_gso: bool  # send runs of equal datagrams with one sendmsg (UDP_SEGMENT) until the kernel refuses
    _live_retransmit_budget: int
    _live_session: Session | None  # the camera session whose first keyframe this viewer was sent
    _live_resume: bool  # units went unsent (the socket's queue was full): nothing more until a keyframe
    _live_outbox: deque[bytes]  # datagrams for a transport that is not a plain UDP socket (TURN), sent by the task
    _live_outbox_bytes: int
    _live_wake: asyncio.Event
    _live_ended: BaseException | None
    _live_dropped_at: int | None  # the fan-out's drops when this viewer attached
    _live_dropped_final: int | None  # ... and this viewer's share once it left
    # Per unit: set by _live_start from the negotiated parameters.
    _live_payload_type: int
    _live_sequence: int
    _live_timestamp_origin: int
    _live_first_byte: int
    _live_ext_fixed: bytes  # the extension block when it has no abs-send-time (or b"")
    _live_ext_before: bytes  # ... else the block up to the 3 abs-send-time bytes, and what follows them
    _live_ext_after: bytes
    _live_packets: int
    _live_octets: int
    # aiortc's own state the RTCP loop reads (mangled names, written as such).
    _RTCRtpSender__ntp_timestamp: int
    _RTCRtpSender__rtp_timestamp: int
    _RTCRtpSender__packet_count: int
    _RTCRtpSender__octet_count: int
    retransmitted: int  # packets sent again on a NACK
    nack_refused: int  # NACKed packets not resent: more asked than sent, or MAX_QUEUED_BYTES already queued
    gso_sends: int  # sendmsg calls that carried a run of datagrams
    gso_blocked: int  # runs the full socket buffer refused, queued by asyncio instead
    units_unsent: int  # access units not sent: MAX_QUEUED_BYTES were queued for the socket, or waiting for a keyframe
    nack_missed: int  # NACKed packets no longer (or never) in the history

    @classmethod
    def adopt(cls, sender: RTCRtpSender, feed: LiveFeed, fanout: LiveFanout) -> bool:
        """Make ``sender`` (not started yet) send ``feed``'s viewer ``fanout``'s video; False if aiortc changed."""
        missing = [name for name in _SENDER_STATE if not hasattr(sender, name)]
        missing += [name for name in _TRANSPORT_STATE if not hasattr(sender.transport, name)]
        if not hasattr(getattr(sender.transport.transport, "_connection", None), "_nominated"):
            missing.append("RTCIceTransport._connection._nominated")  # aioice's selected pair, sent on directly
        if not hasattr(sender, "_enabled"):
            missing.append("RTCRtpSender._enabled")
        if type(sender) is not RTCRtpSender or missing:
            log.warning("aiortc's sender is not the one the shared live sender was written for (%s): "
                        "each viewer packetizes on its own", ", ".join(missing) or type(sender).__name__)
            return False
        sender.__class__ = cls
        assert isinstance(sender, LiveRtpSender)
        sender._live_feed = feed
        sender._live_fanout = fanout
        sender._live_parameters = None
        sender._live_history = deque()
        sender._live_history_packets = 0
        sender._live_rtx_sequence = random_sequence_number()
        sender._live_gso = True
        sender._live_runs = None
        sender._live_retransmit_budget = 0
        sender._live_session = None
        sender._live_resume = False
        sender._live_outbox = deque()
        sender._live_outbox_bytes = 0
        sender._live_wake = asyncio.Event()
        sender._live_ended = None
        sender._live_dropped_at = sender._live_dropped_final = None
        sender.retransmitted = 0
        sender.nack_refused = 0
        sender.gso_sends = 0
        sender.gso_blocked = 0
        sender.units_unsent = 0
        sender.nack_missed = 0
        return True

    @property
    def viewer_name(self) -> str:
        return self._live_feed.name

    @property
    def fanout_dropped(self) -> int:
        """Video packets this viewer missed because the camera's fan-out fell behind (skipped to a keyframe)."""
        if self._live_dropped_final is not None:
            return self._live_dropped_final
        if self._live_dropped_at is None:
            return 0
        return self._live_fanout.dropped - self._live_dropped_at

    @property
    def fanout_queued(self) -> int:
        """Packets waiting in the fan-out's hub reader (while this viewer is attached)."""
        return self._live_fanout.queued if self._live_dropped_at is not None and self._live_ended is None else 0

    async def send(self, parameters: RTCRtpSendParameters) -> None:
        if self._live_parameters is None:
            self._live_parameters = parameters  # _run_rtp needs the extension ids and RTX payload type
        await super().send(parameters)

    def _extension_ids(self) -> tuple[int, int, bytes]:
        """The negotiated ids of mid and abs-send-time (0: not negotiated) and the mid value."""
        parameters = self._live_parameters
        assert parameters is not None
        mid_id = abs_id = 0
        for ext in parameters.headerExtensions:
            if ext.uri == MID_URI:
                mid_id = ext.id
            elif ext.uri == ABS_SEND_TIME_URI:
                abs_id = ext.id
        mid = (parameters.muxId or "").encode()
        return (mid_id if mid else 0), abs_id, mid

    def _rtx_payload_type(self, codec: RTCRtpCodecParameters) -> int | None:
        assert self._live_parameters is not None
        for candidate in self._live_parameters.codecs:
            if is_rtx(candidate) and candidate.parameters.get("apt") == codec.payloadType:
                return candidate.payloadType
        return None

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        getattr(self, "_RTCRtpSender__rtp_started").set()  # noqa: B009 - a mangled name
        try:
            self._live_start(codec)
            await self._serve()
        except (asyncio.CancelledError, ConnectionError, FeedClosed, FanoutEnded, MediaStreamError):
            pass  # cancelled by stop(), the transport closed, or the viewer's feed ended: as aiortc's loop
        except Exception:  # noqa: BLE001 - stop() waits for rtp_exited: never leave without setting it
            log.warning("[%s] live sender stopped", self._live_feed.name, exc_info=True)
        finally:
            self._live_dropped_final = self.fanout_dropped
            self._live_fanout.detach(self)
        track = self.track
        if track is not None:
            track.stop()
        getattr(self, "_RTCRtpSender__rtp_exited").set()  # noqa: B009

    def _live_start(self, codec: RTCRtpCodecParameters) -> None:
        """What every unit's header takes from the negotiation: built once, as aiortc would serialize it."""
        mid_id, abs_id, mid = self._extension_ids()
        self._live_payload_type = (codec.payloadType or 0) & 0x7F
        self._live_sequence = random_sequence_number()
        self._live_timestamp_origin = random32()
        self._live_packets = self._live_octets = 0
        elements: list[tuple[int, bytes]] = [(mid_id, mid)] if mid_id else []
        if abs_id:
            elements.append((abs_id, _ABS_PLACEHOLDER))  # where each unit's send time goes
        profile, value = pack_header_extensions(elements)
        block = _EXT_HEAD.pack(profile, len(value) // 4) + value if value else b""
        self._live_first_byte = 0x90 if block else 0x80
        self._live_ext_fixed = block
        self._live_ext_before = self._live_ext_after = b""
        if abs_id:
            at = block.rindex(_ABS_PLACEHOLDER)  # after the mid, which is text: never these bytes
            self._live_ext_before, self._live_ext_after = block[:at], block[at + 3:]

    async def _serve(self) -> None:
        """Attached to the camera's fan-out until the viewer ends; sends what a non-UDP transport was given."""
        feed = self._live_feed
        feed.video_elsewhere()  # FeedClosed if the session already ended
        feed.on_close(lambda: self.end(FeedClosed(feed.name)))
        if self._live_ended is not None:
            raise self._live_ended
        self._live_dropped_at = self._live_fanout.dropped
        self._live_fanout.attach(self)
        outbox = self._live_outbox
        ice = self.transport.transport
        while True:
            if self._live_ended is not None:
                raise self._live_ended
            if outbox:
                datagram = outbox.popleft()
                self._live_outbox_bytes -= len(datagram)
                await ice._send(datagram)
                continue
            self._live_wake.clear()
            await self._live_wake.wait()

    def end(self, reason: BaseException) -> None:
        """Nothing more for this viewer (its feed closed, its transport failed, the hub closed). Idempotent."""
        if self._live_ended is None:
            self._live_ended = reason
        self._live_fanout.detach(self)
        self._live_wake.set()

    def deliver(self, unit: FanoutUnit) -> None:
        """Send one access unit to this viewer, now (called by the fan-out, once per unit per viewer)."""
        if not self._enabled or self._live_ended is not None:
            return
        packet = unit.packet
        feed = self._live_feed
        if packet.session is not self._live_session:
            if not packet.is_keyframe:
                feed.skipped += 1  # each camera session starts on a keyframe for this viewer
                return
            self._live_session = packet.session
            self._live_resume = False
            feed.picture_started(packet.session)
        elif self._live_resume and not packet.is_keyframe:
            self.units_unsent += 1  # what the viewer still has would not decode: wait for a keyframe
            return
        cut = unit.cut
        payloads = cut.payloads
        if not payloads:
            return
        now = time.monotonic()
        backlog = packet.received_mono < feed.attached_mono
        timestamp = (self._live_timestamp_origin + feed.video_clock.map(packet, backlog, now)) & 0xFFFFFFFF
        ntp = current_ntp_time()
        if self._live_ext_before:
            # The send time of the whole unit: it leaves in one burst.
            extensions = self._live_ext_before + ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big") + self._live_ext_after
        else:
            extensions = self._live_ext_fixed
        sequence = self._live_sequence
        if not self._send_unit(cut, self._live_first_byte, self._live_payload_type, sequence,
                               _TS_SSRC.pack(timestamp, self._ssrc) + extensions):
            # Memory stays bounded whatever the viewer's link (see MAX_QUEUED_BYTES); it resumes at a keyframe.
            self.units_unsent += 1
            self._live_resume = True
            return
        self._live_resume = False
        feed.count_video(packet, backlog, now)
        history = self._live_history
        count = len(payloads)
        history.append(_Sent(sequence, timestamp, extensions, payloads))
        self._live_history_packets += count
        while self._live_history_packets - len(history[0].payloads) >= HISTORY_PACKETS:
            self._live_history_packets -= len(history.popleft().payloads)
        self._live_sequence = (sequence + count) & 0xFFFF
        self._live_retransmit_budget = min(HISTORY_PACKETS, self._live_retransmit_budget + count)
        self._live_packets += count
        self._live_octets += cut.octets
        # What aiortc's loop keeps for its RTCP sender reports and getStats().
        self._RTCRtpSender__ntp_timestamp = ntp
        self._RTCRtpSender__rtp_timestamp = timestamp
        self._RTCRtpSender__packet_count = self._live_packets
        self._RTCRtpSender__octet_count = self._live_octets

    def _protect(self) -> Callable[[bytes], bytes]:
        """This viewer's SRTP protection (ConnectionError before DTLS is up or after it closed, as aiortc)."""
        dtls = self.transport
        if dtls._state != DtlsState.CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        protect: Callable[[bytes], bytes] = dtls._tx_srtp.protect
        return protect

    def _queued_bytes(self, transport: Any) -> int:
        """What waits to leave for this viewer: asyncio's queue for its UDP socket, or (None: TURN) the outbox."""
        return int(transport.get_write_buffer_size()) if transport is not None else self._live_outbox_bytes

    def _send_unit(self, cut: Cut, first_byte: int, payload_type: int, sequence: int, tail: bytes) -> bool:
        """Protect and send one access unit, run by run (each run of equal datagrams in one GSO ``sendmsg``).

        False, and nothing sent, if :data:`MAX_QUEUED_BYTES` are already queued for this viewer's transport.
        """
        dtls = self.transport
        protect = self._protect()
        runs = self._live_runs
        if runs is None or runs.session is not dtls._tx_srtp:
            runs = self._live_runs = _RunProtector(dtls._tx_srtp, _srtp_trailer(dtls))
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        transport = _plain_udp(pair.protocol)
        plain = transport is not None
        if self._queued_bytes(transport) > MAX_QUEUED_BYTES:
            return False
        sock = getattr(transport, "_sock", None) if plain else None
        addr = pair.remote_addr
        payloads = cut.payloads
        sent = 0
        for run, (start, stop) in enumerate(cut.runs):
            data, size = runs.protect(protect, cut, run, first_byte, payload_type, (sequence + start) & 0xFFFF, tail)
            sent += len(data)
            if not plain:
                # Not aioice's plain UDP protocol (TURN): its own path, awaited, so from this viewer's task,
                # with a copy of each datagram (``data`` is rewritten by the next run).
                outbox = self._live_outbox
                for offset in range(0, len(data), size):
                    outbox.append(bytes(data[offset:offset + size]))
                self._live_outbox_bytes += len(data)
                self._live_wake.set()
                continue
            assert transport is not None
            # Straight to the socket only while asyncio queues nothing for it: its queue would go out after these.
            if sock is not None and not transport.get_write_buffer_size():
                try:
                    if stop - start == 1:
                        sock.sendto(data, addr)
                        continue
                    if self._live_gso:
                        sock.sendmsg([data], [(socket.SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(size))], 0, addr)
                        self.gso_sends += 1
                        continue
                except (BlockingIOError, InterruptedError):
                    self.gso_blocked += 1  # the socket buffer is full: asyncio's transport queues them
                except OSError as exc:
                    if stop - start > 1:  # no GSO here (old kernel, a device without checksum offload...)
                        self._live_gso = False
                        log.info("[%s] UDP segmentation offload not available (%s): one send per packet",
                                 self._live_feed.name, exc)
            # Copies: ``data`` is this viewer's buffer, rewritten by the next run, and a transport may send later
            # (asyncio's when the socket is full).
            for offset in range(0, len(data), size):
                transport.sendto(bytes(data[offset:offset + size]), addr)
        setattr(dtls, "_RTCDtlsTransport__tx_bytes",  # noqa: B010 - mangled names
                getattr(dtls, "_RTCDtlsTransport__tx_bytes") + sent)  # noqa: B009
        setattr(dtls, "_RTCDtlsTransport__tx_packets",  # noqa: B010
                getattr(dtls, "_RTCDtlsTransport__tx_packets") + len(payloads))  # noqa: B009
        return True

    async def _send_datagram(self, datagram: bytes) -> None:
        """One protected datagram, as aiortc sends (a retransmission is rare: no shortcut)."""
        await self.transport.transport._send(datagram)

    async def _retransmit(self, sequence_number: int) -> None:
        """Send a NACKed packet again, from the history (as RTX when negotiated)."""
        for sent in reversed(self._live_history):
            offset = (sequence_number - sent.first_seq) & 0xFFFF
            if offset < len(sent.payloads):
                break
        else:
            self.nack_missed += 1
            return
        pair = self.transport.transport._connection._nominated.get(1)
        transport = _plain_udp(pair.protocol) if pair is not None else None
        if self._live_retransmit_budget <= 0 or self._queued_bytes(transport) > MAX_QUEUED_BYTES:
            # A viewer whose link is stuck NACKs its last losses again and again, and none of the resends
            # leaves: without this bound each would be queued for good.
            self.nack_refused += 1
            return
        self._live_retransmit_budget -= 1
        assert self._live_parameters is not None
        codec = self._live_parameters.codecs[0]
        marker = 0x80 if offset == len(sent.payloads) - 1 else 0
        first_byte = 0x90 if sent.extensions else 0x80
        payload = sent.payloads[offset]
        rtx = self._rtx_payload_type(codec)
        if rtx is not None:
            header = _HEAD.pack(first_byte, marker | rtx, self._live_rtx_sequence)
            tail = _TS_SSRC.pack(sent.timestamp, self._rtx_ssrc)
            payload = _OSN.pack(sequence_number) + payload
            self._live_rtx_sequence = (self._live_rtx_sequence + 1) & 0xFFFF
        else:
            header = _HEAD.pack(first_byte, marker | ((codec.payloadType or 0) & 0x7F), sequence_number)
            tail = _TS_SSRC.pack(sent.timestamp, self._ssrc)
        try:
            await self._send_datagram(self._protect()(header + tail + sent.extensions + payload))
        except ConnectionError:
            return
        self.retransmitted += 1
