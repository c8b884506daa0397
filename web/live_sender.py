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
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from aioice.ice import StunProtocol
from aiortc import RTCRtpSender
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import pack_header_extensions
from aiortc.utils import random32

from web.aiortc_fixes import current_ntp_time
from web.live_feed import FeedClosed, LiveFeed
from web.live_packetizer import Cut, LivePacketizer

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
    which then goes to the kernel as it is (one ``sendmsg`` for the run).  Where pylibsrtp's internals are not
    what this was written for, its ``protect`` and a join make the same bytes.
    """

    __slots__ = ("session", "_ctx", "_buf", "_view", "_memory", "_length", "_protect")

    BUFFER_BYTES = 66 * 1024  # a run is at most 65,000 bytes (web.live_packetizer.MAX_RUN_BYTES)

    def __init__(self, session: Any) -> None:
        self.session = session  # the viewer's pylibsrtp.Session, whose keys and state these are
        self._protect: Any = None
        try:
            from pylibsrtp._binding import ffi, lib

            self._ctx = session._srtp[0]
            self._buf = ffi.new("char[]", self.BUFFER_BYTES)
            self._view = ffi.buffer(self._buf)
            self._memory = memoryview(self._view)
            self._length = ffi.new("int *")
            self._protect = lib.srtp_protect
        except (ImportError, AttributeError, TypeError) as exc:
            log.info("pylibsrtp's binding is not the one expected (%s): packets are protected one by one", exc)

    def protect(self, protect: Callable[[bytes], bytes], payloads: tuple[bytes, ...], start: int, stop: int,
                last: int, first_byte: int, payload_type: int, sequence: int, tail: bytes) -> tuple[Any, int]:
        """Packets ``start``..``stop`` of a unit, protected end to end, and the size of the first (all but the last)."""
        head = _HEAD.pack
        c_protect = self._protect
        if c_protect is None:
            datagrams = [protect(b"".join((head(first_byte, payload_type | (0x80 if i == last else 0),
                                                (sequence + i) & 0xFFFF), tail, payloads[i])))
                         for i in range(start, stop)]
            return b"".join(datagrams), len(datagrams[0])
        view, buf, length, ctx = self._view, self._buf, self._length, self._ctx
        tail_end = 4 + len(tail)
        marked = payload_type | 0x80
        offset = size = 0
        for i in range(start, stop):
            payload = payloads[i]
            view[offset:offset + 4] = head(first_byte, marked if i == last else payload_type, (sequence + i) & 0xFFFF)
            view[offset + 4:offset + tail_end] = tail
            end = offset + tail_end + len(payload)
            view[offset + tail_end:end] = payload
            length[0] = end - offset
            status = c_protect(ctx, buf + offset, length)
            if status:
                raise RuntimeError(f"SRTP protection failed (libsrtp status {status})")
            if not size:
                size = length[0]
            offset += length[0]
        return self._memory[:offset], size


class _Sent:
    """One access unit as this viewer sent it: what a retransmission needs."""

    __slots__ = ("first_seq", "timestamp", "extensions", "payloads")

    def __init__(self, first_seq: int, timestamp: int, extensions: bytes, payloads: tuple[bytes, ...]) -> None:
        self.first_seq = first_seq
        self.timestamp = timestamp
        self.extensions = extensions  # the extension block as sent (profile, length, elements), or b""
        self.payloads = payloads


class LiveRtpSender(RTCRtpSender):
    """aiortc's sender with a shared-packetization RTP loop for one viewer's relayed H.264 track."""

    _live_feed: LiveFeed
    _live_packetizer: LivePacketizer
    _live_parameters: RTCRtpSendParameters | None
    _live_history: deque[_Sent]
    _live_history_packets: int
    _live_rtx_sequence: int
    _live_runs: _RunProtector | None
    _live_gso: bool  # send runs of equal datagrams with one sendmsg (UDP_SEGMENT) until the kernel refuses
    _live_retransmit_budget: int
    retransmitted: int  # packets sent again on a NACK
    nack_refused: int  # NACKed packets not resent: the viewer asked for more than it was sent
    gso_sends: int  # sendmsg calls that carried a run of datagrams
    gso_blocked: int  # runs the full socket buffer refused, queued by asyncio instead
    units_unsent: int  # access units not sent: asyncio already held MAX_QUEUED_BYTES for the socket
    nack_missed: int  # NACKed packets no longer (or never) in the history

    @classmethod
    def adopt(cls, sender: RTCRtpSender, feed: LiveFeed, packetizer: LivePacketizer) -> bool:
        """Make ``sender`` (not started yet) send ``feed`` this way; False, and aiortc's own loop, if aiortc changed."""
        missing = [name for name in _SENDER_STATE if not hasattr(sender, name)]
        missing += [name for name in _TRANSPORT_STATE if not hasattr(sender.transport, name)]
        if not hasattr(getattr(sender.transport.transport, "_connection", None), "_nominated"):
            missing.append("RTCIceTransport._connection._nominated")  # aioice's selected pair, sent on directly
        if type(sender) is not RTCRtpSender or missing:
            log.warning("aiortc's sender is not the one the shared live sender was written for (%s): "
                        "each viewer packetizes on its own", ", ".join(missing) or type(sender).__name__)
            return False
        sender.__class__ = cls
        assert isinstance(sender, LiveRtpSender)
        sender._live_feed = feed
        sender._live_packetizer = packetizer
        sender._live_parameters = None
        sender._live_history = deque()
        sender._live_history_packets = 0
        sender._live_rtx_sequence = random_sequence_number()
        sender._live_gso = True
        sender._live_runs = None
        sender._live_retransmit_budget = 0
        sender.retransmitted = 0
        sender.nack_refused = 0
        sender.gso_sends = 0
        sender.gso_blocked = 0
        sender.units_unsent = 0
        sender.nack_missed = 0
        return True

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
            await self._relay(codec)
        except (asyncio.CancelledError, ConnectionError, FeedClosed, MediaStreamError):
            pass  # cancelled by stop(), the transport closed, or the viewer's feed ended: as aiortc's loop
        except Exception:  # noqa: BLE001 - stop() waits for rtp_exited: never leave without setting it
            log.warning("[%s] live sender stopped", self._live_feed.name, exc_info=True)
        track = self.track
        if track is not None:
            track.stop()
        getattr(self, "_RTCRtpSender__rtp_exited").set()  # noqa: B009

    async def _relay(self, codec: RTCRtpCodecParameters) -> None:
        feed = self._live_feed
        packetizer = self._live_packetizer
        mid_id, abs_id, mid = self._extension_ids()
        payload_type = (codec.payloadType or 0) & 0x7F
        ssrc = self._ssrc
        sequence = random_sequence_number()
        timestamp_origin = random32()
        history = self._live_history
        packets = 0
        octets = 0
        while True:
            unit = await feed.next_video_unit()
            if not self._enabled:
                continue
            cut = packetizer.cut(unit.packet, unit.data)
            payloads = cut.payloads
            if not payloads:
                continue
            timestamp = (timestamp_origin + unit.pts) & 0xFFFFFFFF
            ntp = current_ntp_time()
            elements: list[tuple[int, bytes]] = []
            if mid_id:
                elements.append((mid_id, mid))
            if abs_id:
                # The send time of the whole unit: it leaves in one burst, with no await between its packets.
                elements.append((abs_id, ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big")))
            profile, value = pack_header_extensions(elements)
            extensions = _EXT_HEAD.pack(profile, len(value) // 4) + value if value else b""
            first_byte = 0x90 if extensions else 0x80
            tail = _TS_SSRC.pack(timestamp, ssrc) + extensions
            await self._send_unit(cut, first_byte, payload_type, sequence, tail)

            history.append(_Sent(sequence, timestamp, extensions, payloads))
            self._live_history_packets += len(payloads)
            while self._live_history_packets - len(history[0].payloads) >= HISTORY_PACKETS:
                self._live_history_packets -= len(history.popleft().payloads)
            sequence = (sequence + len(payloads)) & 0xFFFF
            self._live_retransmit_budget = min(HISTORY_PACKETS, self._live_retransmit_budget + len(payloads))
            packets += len(payloads)
            octets += sum(map(len, payloads))
            # What aiortc's loop keeps for its RTCP sender reports and getStats().
            setattr(self, "_RTCRtpSender__ntp_timestamp", ntp)  # noqa: B010 - mangled names
            setattr(self, "_RTCRtpSender__rtp_timestamp", timestamp)  # noqa: B010
            setattr(self, "_RTCRtpSender__packet_count", packets)  # noqa: B010
            setattr(self, "_RTCRtpSender__octet_count", octets)  # noqa: B010

    def _protect(self) -> Callable[[bytes], bytes]:
        """This viewer's SRTP protection (ConnectionError before DTLS is up or after it closed, as aiortc)."""
        dtls = self.transport
        if dtls._state != DtlsState.CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        protect: Callable[[bytes], bytes] = dtls._tx_srtp.protect
        return protect

    async def _send_unit(self, cut: Cut, first_byte: int, payload_type: int, sequence: int, tail: bytes) -> None:
        """Protect and send one access unit, run by run; each run of equal datagrams in one GSO ``sendmsg``."""
        dtls = self.transport
        protect = self._protect()
        runs = self._live_runs
        if runs is None or runs.session is not dtls._tx_srtp:
            runs = self._live_runs = _RunProtector(dtls._tx_srtp)
        ice = dtls.transport
        pair = ice._connection._nominated.get(1)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        protocol = pair.protocol
        transport = getattr(protocol, "transport", None)
        plain = type(protocol).send_data is StunProtocol.send_data and transport is not None
        sock = getattr(transport, "_sock", None) if plain else None
        addr = pair.remote_addr
        payloads = cut.payloads
        if plain and transport is not None and transport.get_write_buffer_size() > MAX_QUEUED_BYTES:
            self.units_unsent += 1  # memory stays bounded whatever the viewer's link; see MAX_QUEUED_BYTES
            return
        last = len(payloads) - 1
        sent = 0
        for start, stop in cut.runs:
            data, size = runs.protect(protect, payloads, start, stop, last, first_byte, payload_type, sequence, tail)
            sent += len(data)
            if not plain:  # not aioice's plain UDP protocol: its own path, a copy per datagram (it may send later)
                for offset in range(0, len(data), size):
                    await ice._send(bytes(data[offset:offset + size]))
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
            # (asyncio's when the socket is full; aioice's TURN transport always, from a task).
            for offset in range(0, len(data), size):
                transport.sendto(bytes(data[offset:offset + size]), addr)
        setattr(dtls, "_RTCDtlsTransport__tx_bytes",  # noqa: B010 - mangled names
                getattr(dtls, "_RTCDtlsTransport__tx_bytes") + sent)  # noqa: B009
        setattr(dtls, "_RTCDtlsTransport__tx_packets",  # noqa: B010
                getattr(dtls, "_RTCDtlsTransport__tx_packets") + len(payloads))  # noqa: B009

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
        if self._live_retransmit_budget <= 0:
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
