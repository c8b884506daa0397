"""The shared-packetization sender up close: its cut of the bitstream, its send path, hostile NACKs.

In process, with real aiortc viewers on loopback and real H.264 (tests/test_live_relay.py's fixtures);
the stories with Chromium and simulated cameras are in tests/test_live_viewers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import re
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection

from nvr.station import Station
from streams.media import MediaPacket, TrackKind
from tests.test_live_relay import Publisher, frames, relay_app, units, until, whep_viewer  # noqa: F401 - fixtures
from web.live_packetizer import MAX_OVERHEAD, MAX_RUN_BYTES, MAX_RUN_SEGMENTS, LivePacketizer, runs_of
from web.live_sender import LiveRtpSender
from web.whep import WHEP

FU_A = 28
STAP_A = 24


def _reassemble(payloads: tuple[bytes, ...]) -> list[bytes]:
    """The NAL units an RFC 6184 depacketizer gets back from ``payloads``."""
    nals: list[bytes] = []
    fragment = b""
    for payload in payloads:
        kind = payload[0] & 0x1F
        if kind == FU_A:
            if payload[1] & 0x80:
                fragment = bytes([(payload[0] & 0xE0) | (payload[1] & 0x1F)])
            fragment += payload[2:]
            if payload[1] & 0x40:
                nals.append(fragment)
        elif kind == STAP_A:
            offset = 1
            while offset < len(payload):
                size = int.from_bytes(payload[offset:offset + 2], "big")
                nals.append(payload[offset + 2:offset + 2 + size])
                offset += 2 + size
        else:
            nals.append(payload)
    return nals


def _packet(data: bytes) -> MediaPacket:
    from tests.media import make_session

    return MediaPacket(session=make_session([(data, True)], width=320, height=180, fps=15), kind=TrackKind.VIDEO,
                       data=data, pts=0, dts=0, time_base=Fraction(1, 90000), is_keyframe=True, received_at=0.0,
                       received_mono=0.0)


@pytest.mark.parametrize("sizes", [[2, 28, 4, 700, 64_894, 71_433], [2, 113, 537], [1301], [1300], [2597],
                                   [200_000], [5] * 12])
def test_each_unit_is_cut_into_payloads_that_reassemble_and_fit_few_sends(sizes: list[int]) -> None:
    rng = random.Random(sum(sizes))
    nals = [bytes([0x09 if i == 0 and size == 2 else 0x65]) + rng.randbytes(size - 1) for i, size in enumerate(sizes)]
    cut = LivePacketizer("t").cut(_packet(b""), b"".join(b"\x00\x00\x00\x01" + nal for nal in nals))
    # Byte for byte what the camera sent, but its AUD (see the next test).
    assert _reassemble(cut.payloads) == [nal for nal in nals if nal[0] != 0x09]
    assert all(len(p) <= 1300 for p in cut.payloads)
    # The runs cover every payload once, in order; each is one GSO send: equal sizes, a shorter last one.
    assert [i for start, stop in cut.runs for i in range(start, stop)] == list(range(len(cut.payloads)))
    for start, stop in cut.runs:
        run = cut.payloads[start:stop]
        assert len({len(p) for p in run[:-1]}) <= 1 and len(run[-1]) <= len(run[0])
        assert len(run) <= MAX_RUN_SEGMENTS and len(run) * (len(run[0]) + MAX_OVERHEAD) <= MAX_RUN_BYTES
    if sizes == [200_000]:
        assert len(cut.runs) == 4  # 155 fragments in runs of at most 47


def test_nal_units_a_decoder_ignores_are_not_sent() -> None:
    """Access unit delimiters (one per picture) and filler cost a viewer a datagram each and decode to nothing."""
    rng = random.Random(7)
    aud, sei, eos, filler = b"\x09\xf0", b"\x06" + rng.randbytes(20), b"\x0a", b"\x0c" + b"\xff" * 300
    slices = [b"\x65" + rng.randbytes(5000), b"\x65" + rng.randbytes(3000)]
    unit = b"".join(b"\x00\x00\x00\x01" + nal for nal in [aud, sei, slices[0], filler, slices[1], eos])
    cut = LivePacketizer("t").cut(_packet(unit), unit)
    assert _reassemble(cut.payloads) == [sei, *slices]
    assert len(cut.runs) == 3  # the SEI alone, then each slice's fragments in one send: no datagram for the AUD
    assert LivePacketizer("t").cut(_packet(aud), b"\x00\x00\x01" + aud).payloads == ()


def test_runs_never_put_a_longer_datagram_after_shorter_ones() -> None:
    assert runs_of((b"a" * 10, b"b" * 10, b"c" * 12, b"d" * 3)) == ((0, 2), (2, 4))
    assert runs_of((b"a" * 5,)) == ((0, 1),)
    assert runs_of(()) == ()


def test_the_cut_is_made_once_and_handed_to_every_viewer() -> None:
    packetizer = LivePacketizer("t", cached_units=4)
    packets = [_packet(b"\x00\x00\x01\x65" + os.urandom(3000)) for _ in range(6)]
    first = packetizer.cut(packets[0], packets[0].data)
    assert packetizer.cut(packets[0], packets[0].data) is first  # the second viewer gets the same objects
    for packet in packets[1:]:
        packetizer.cut(packet, packet.data)
    assert (packetizer.units_cut, packetizer.units_shared) == (6, 1)
    # The oldest fell out of the bounded cache: a viewer that far behind cuts it again, to the same bytes.
    again = packetizer.cut(packets[0], packets[0].data)
    assert again is not first and again == first and packetizer.units_cut == 7


@contextlib.asynccontextmanager
async def _one_viewer(client: TestClient) -> AsyncIterator[tuple[RTCPeerConnection, LiveRtpSender]]:
    """An aiortc viewer that has decoded its first frames, and the daemon's sender for it; closed afterwards."""
    pc, location, _ = await whep_viewer(client)
    try:
        await frames(pc, 3)
        yield pc, _sender(client)
    finally:
        await client.delete(location)
        await pc.close()


def _sender(client: TestClient) -> LiveRtpSender:
    (session,) = client.app[WHEP].sessions.values()
    assert isinstance(session.sender, LiveRtpSender)
    return session.sender


class _FailingSocket:
    """A viewer's socket as a kernel in trouble shows it: ``sendmsg`` (and ``sendto`` if asked) raise ``error``."""

    def __init__(self, sock: Any, error: OSError, sendto_too: bool = False) -> None:
        self._sock, self._error, self._sendto_too = sock, error, sendto_too

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def sendmsg(self, *_args: Any) -> int:
        raise self._error

    def sendto(self, *args: Any) -> int:
        if self._sendto_too:
            raise self._error
        return int(self._sock.sendto(*args))


async def test_a_viewer_keeps_playing_when_the_kernel_refuses_segmentation_offload(
        relay_app: tuple[TestClient, Station, Publisher], caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.INFO, logger="web.live_sender")
    client, _daemon, _ = relay_app
    async with _one_viewer(client) as (pc, sender):
        assert sender.gso_sends > 0  # the keyframe went out in runs
        runs = sender._live_runs
        # protected in place, with room for the trailer of the profile aiortc and the viewer agreed on
        assert runs is not None and runs._protect is not None and runs.trailer in (10, 16)
        transport = sender.transport.transport._connection._nominated[1].protocol.transport
        real = transport._sock
        # An old kernel, a device without checksum offload.
        transport._sock = _FailingSocket(real, OSError(errno.EIO, "Input/output error"))
        try:
            got = await frames(pc, 30)  # two keyframes' worth: runs of fragments now go one by one
        finally:
            transport._sock = real
        assert len(got) == 30 and all(f.width == 320 for f in got)
        assert not sender._live_gso
        assert "UDP segmentation offload not available" in caplog.text


async def test_a_viewer_flooding_nacks_gets_at_most_what_it_was_sent(
        relay_app: tuple[TestClient, Station, Publisher]) -> None:  # noqa: F811
    client, _daemon, _ = relay_app
    async with _one_viewer(client) as (pc, sender):
        listing = await (await client.get("/api/live/sessions")).json()
        assert listing["sessions"][0]["shared_packetization"]
        answer = pc.remoteDescription.sdp
        ssrc = int(re.search(r"a=ssrc:(\d+) ", answer).group(1))  # type: ignore[union-attr]
        receiver = pc.getTransceivers()[0].receiver
        oldest, newest = sender._live_history[0].first_seq, sender._live_history[-1].first_seq
        sent_seq = newest
        # Every packet of the history, twenty times over, plus numbers never sent (ascending, as NACKs carry them;
        # sequence numbers start below 32768, so no wrap here).
        recent = list(range(oldest, newest + 1))
        for _ in range(20):
            await receiver._send_rtcp_nack(ssrc, recent)
        await receiver._send_rtcp_nack(ssrc, [(sent_seq + 20_000 + i) & 0xFFFF for i in range(50)])
        await until(lambda: sender.nack_missed >= 50, 5, "the forged NACKs were never heard")
        packets = sender._RTCRtpSender__packet_count
        assert 0 < sender.retransmitted <= packets, (sender.retransmitted, packets)  # never more than it was sent
        assert sender.nack_refused > 0
        got = await frames(pc, 15)  # and the picture goes on
        assert all(f.width == 320 for f in got)
        listing = await (await client.get("/api/live/sessions")).json()
        assert listing["sessions"][0]["nacks_unanswered"] >= 50


@pytest.mark.parametrize("profile", ["AES128_CM_SHA1_80", "AEAD_AES_128_GCM", "AEAD_AES_256_GCM"])
def test_protecting_in_place_makes_the_bytes_pylibsrtp_makes(profile: str) -> None:
    from pylibsrtp import Policy, Session

    from web.live_sender import _RunProtector, _srtp_trailer_of

    srtp_profile = getattr(Policy, f"SRTP_PROFILE_{profile}")
    key = os.urandom({"AES128_CM_SHA1_80": 30, "AEAD_AES_128_GCM": 28, "AEAD_AES_256_GCM": 44}[profile])

    def session() -> Session:
        return Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=srtp_profile))

    trailer = _srtp_trailer_of(srtp_profile, len(key))
    assert trailer == (10 if profile == "AES128_CM_SHA1_80" else 16)
    nal = bytes([0x65]) + os.urandom(30_000)
    cut = LivePacketizer("t").cut(_packet(b""), b"\x00\x00\x00\x01" + bytes([0x41]) + os.urandom(900)
                                  + b"\x00\x00\x00\x01" + nal)  # a short NAL unit, then FU-A runs
    assert len(cut.runs) > 1
    tail = (123456).to_bytes(4, "big") + (0xCAFE).to_bytes(4, "big") + b"\xbe\xde\x00\x01\x10\x30\x00\x00"
    fast, slow = _RunProtector(session(), trailer), _RunProtector(session(), None)
    other = _RunProtector(session(), trailer)  # a second viewer of the same cut (shared layout), fewer extensions
    assert fast._protect is not None  # libsrtp through pylibsrtp's binding, in place
    assert slow._protect is None  # the fallback: pylibsrtp's protect and a join
    references = {fast: session(), other: session()}  # pylibsrtp's own protect, under the same keys
    for run, (start, stop) in enumerate(cut.runs):
        for sender, first, head in ((fast, 0x90, tail), (other, 0x80, tail[:8])):
            data, size = sender.protect(sender.session.protect, cut, run, first, 102, 30_000 + start, head)
            expected = [references[sender].protect(bytes([first, 102 | (0x80 if i == len(cut.payloads) - 1 else 0)])
                                             + (30_000 + i).to_bytes(2, "big") + head + cut.payloads[i])
                        for i in range(start, stop)]
            assert bytes(data) == b"".join(expected) and size == len(expected[0])
            if sender is fast:
                slow_data, slow_size = slow.protect(slow.session.protect, cut, run, 0x90, 102, 40_000 + start, tail)
                assert len(slow_data) == len(data) and slow_size == size
    # and a viewer's decryption takes them: the last datagram carries the marker bit
    receiver = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=srtp_profile))
    start, stop = cut.runs[-1]
    data, size = fast.protect(fast.session.protect, cut, len(cut.runs) - 1, 0x90, 102, 50_000 + start, tail)
    plain = receiver.unprotect(bytes(data[-(len(data) - size * (stop - start - 1)):]))
    assert plain[1] == 0x80 | 102 and plain.endswith(cut.payloads[-1])
    assert int.from_bytes(plain[2:4], "big") == 50_000 + stop - 1
    # Room for a trailer other than the one SRTP adds would make the datagrams overlap: refused, not sent.
    wrong = _RunProtector(session(), trailer + 2)
    with pytest.raises(RuntimeError, match="SRTP added"):
        wrong.protect(wrong.session.protect, cut, len(cut.runs) - 1, 0x90, 102, 60_000, tail)


async def test_a_viewer_whose_socket_never_drains_holds_bounded_memory_and_recovers(
        relay_app: tuple[TestClient, Station, Publisher], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    bound = 30_000  # the test camera sends some 10 kB a second; the daemon's 1 MB would take minutes to fill
    monkeypatch.setattr("web.live_sender.MAX_QUEUED_BYTES", bound)
    client, daemon, _ = relay_app
    pc, location, _ = await whep_viewer(client)
    other, other_location, _ = await whep_viewer(client)
    try:
        await frames(pc, 3)
        await frames(other, 3)
        sessions = list(client.app[WHEP].sessions.values())
        sender = next(s.sender for s in sessions if s.id in location)
        assert isinstance(sender, LiveRtpSender)
        transport = sender.transport.transport._connection._nominated[1].protocol.transport
        real = transport._sock
        # A link far slower than the camera: the send buffer never drains.
        transport._sock = _FailingSocket(real, BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"),
                                         sendto_too=True)
        try:
            # The stuck viewer's queue fills to the bound and stops there; the other viewer plays on.
            got = await frames(other, 45)
            assert len(got) == 45
            await until(lambda: sender.units_unsent > 10, 30, "the stuck viewer's queue was never bounded")
            assert transport.get_write_buffer_size() <= bound + 20_000  # one unit past the bound at most
        finally:
            transport._sock = real
        got = await frames(pc, 20, timeout=30)  # the link is back: asyncio drains its queue, the picture resumes
        assert all(f.width == 320 for f in got)
        listing = await (await client.get("/api/live/sessions")).json()
        assert any(s["unsent_units"] > 10 for s in listing["sessions"])
        assert daemon.cameras["hall"].view_hub.readers  # the hub never waited for anyone
    finally:
        await client.delete(location)
        await client.delete(other_location)
        await pc.close()
        await other.close()


class _SendsLater:
    """A datagram transport that sends from a later callback, as aioice's TURN transport does (from a task)."""

    _sock = None  # not a plain socket: the sender cannot write to it directly

    def __init__(self, real: Any) -> None:
        self._real = real
        self.deferred = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def sendto(self, data: Any, addr: Any) -> None:
        self.deferred += 1
        # Later than the next frame (15 a second here), so a buffer rewritten by then would show.
        asyncio.get_running_loop().call_later(0.15, self._real.sendto, data, addr)


async def test_a_viewer_behind_a_transport_that_sends_later_gets_intact_packets(
        relay_app: tuple[TestClient, Station, Publisher]) -> None:  # noqa: F811
    client, _daemon, _ = relay_app
    async with _one_viewer(client) as (pc, sender):
        protocol = sender.transport.transport._connection._nominated[1].protocol
        real = protocol.transport
        protocol.transport = later = _SendsLater(real)
        try:
            # Through a keyframe: its runs reuse the sender's buffer while earlier datagrams still wait to go.
            got = await frames(pc, 40, timeout=30)
        finally:
            protocol.transport = real
        assert later.deferred > 40 and all(f.width == 320 for f in got)
        receiver = pc.getTransceivers()[0].receiver
        stats = await receiver.getStats()
        inbound = next(s for s in stats.values() if s.type == "inbound-rtp")
        assert inbound.packetsLost == 0, inbound  # none failed SRTP authentication or went missing
        assert sender.retransmitted == 0  # ... nor had to be asked for again (on loopback nothing is lost)
