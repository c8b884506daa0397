"""The camera's live fan-out: one hub reader and one task send each unit to every shared-sender viewer.

In process, real aiortc viewers on loopback and real H.264 (tests/test_live_relay.py's fixtures); what a
monitoring room does: several viewers of one camera, one joining late, one whose link is stuck, one whose
transport dies, a camera reconnect, keyframe requests and NACKs, and the last viewer leaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection

from nvr.station import Station
from tests.test_live_relay import (  # noqa: F401 - fixtures
    FPS,
    Publisher,
    admin_headers,
    frames,
    make_config,
    relay_app,
    units,
    until,
    whep_viewer,
)
from tests.test_live_sender import _FailingSocket
from web.app import create_app
from web.live_fanout import FanoutUnit, LiveFanout
from web.live_sender import LiveRtpSender
from web.whep import WHEP


def _sender(client: TestClient, location: str) -> LiveRtpSender:
    session = next(s for s in client.app[WHEP].sessions.values() if s.id in location)
    assert isinstance(session.sender, LiveRtpSender)
    return session.sender


def _fanout(client: TestClient, daemon: Station) -> LiveFanout:
    return client.app[WHEP].fanouts[daemon.cameras["hall"].view_hub]


def _ssrc(pc: RTCPeerConnection) -> int:
    match = re.search(r"a=ssrc:(\d+) ", pc.remoteDescription.sdp)
    assert match is not None
    return int(match.group(1))


class _Sent:
    """Records, per viewer, the units its sender actually sent: (keyframe, hub arrival, RTP timestamp, session)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.units: dict[str, list[tuple[bool, float, int, Any]]] = {}
        original = LiveRtpSender.deliver

        def deliver(sender: LiveRtpSender, unit: FanoutUnit) -> None:
            before = sender._live_feed.video_sent
            original(sender, unit)
            if sender._live_feed.video_sent > before:
                self.units.setdefault(sender.viewer_name, []).append(
                    (unit.packet.is_keyframe, unit.packet.received_mono, sender._RTCRtpSender__rtp_timestamp,
                     unit.packet.session))

        monkeypatch.setattr(LiveRtpSender, "deliver", deliver)

    def of(self, sender: LiveRtpSender) -> list[tuple[bool, float, int, Any]]:
        return self.units.get(sender.viewer_name, [])


@contextlib.asynccontextmanager
async def _watching(client: TestClient, count: int) -> AsyncIterator[list[tuple[RTCPeerConnection, str]]]:
    """``count`` viewers of the hall camera, each past its first frames; gone (DELETE) afterwards."""
    viewers = [(pc, location) for pc, location, _ in [await whep_viewer(client) for _ in range(count)]]
    try:
        for pc, _location in viewers:
            await frames(pc, 3)
        yield viewers
    finally:
        await _close(client, viewers)


async def _close(client: TestClient, viewers: list[tuple[RTCPeerConnection, str]]) -> None:
    for pc, location in viewers:
        await client.delete(location)
        await pc.close()


async def test_three_viewers_of_a_camera_share_one_reader_and_task_and_the_last_to_leave_stops_it(
        relay_app: tuple[TestClient, Station, Publisher]) -> None:  # noqa: F811
    client, daemon, _ = relay_app
    hub = daemon.cameras["hall"].view_hub
    viewers = [(pc, location) for pc, location, _ in [await whep_viewer(client) for _ in range(3)]]
    try:
        for pc, _location in viewers:
            got = await frames(pc, 10)
            assert all(f.width == 320 for f in got)
        fanout = _fanout(client, daemon)
        assert len(fanout.viewers) == 3
        # One reader of the hub for all three (no audio here): no per-viewer queue, no per-viewer wake-up.
        assert [r.name for r in hub.readers] == ["whep-fanout:" + hub.name]
        listing = await (await client.get("/api/live/sessions")).json()
        assert listing["readers"] == {"hall": 3, "cell": 0}
        assert all(s["shared_packetization"] and s["dropped_packets"] == 0 for s in listing["sessions"])
        packetizer = listing["packetizers"]["hall"]
        assert packetizer["units_shared"] >= packetizer["units_cut"]  # each cut went to the other two as well
        task = fanout.task
        assert task is not None and not task.done()
        # Joining and leaving at once, while the three watch: nothing leaks, nobody else is disturbed.
        churn = [await whep_viewer(client) for _ in range(4)]
        await asyncio.gather(*(frames(pc, 2) for pc, _, _ in churn))
        await asyncio.gather(*(client.delete(location) for _, location, _ in churn))
        for pc, _, _ in churn:
            await pc.close()
        await until(lambda: len(fanout.viewers) == 3, 10, "viewers that left stayed attached")
        for pc, _location in viewers:
            await frames(pc, 5)
    finally:
        await _close(client, viewers)
    await until(lambda: task.done(), 10, "the fan-out's task outlived its last viewer")
    assert fanout.task is None and fanout.reader is None
    assert not [r for r in hub.readers if r.name.startswith("whep")]
    listing = await (await client.get("/api/live/sessions")).json()
    assert listing["readers"] == {"hall": 0, "cell": 0}


async def test_a_viewer_joining_mid_gop_starts_at_once_on_the_cached_keyframe(
        relay_app: tuple[TestClient, Station, Publisher], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    client, daemon, publisher = relay_app
    sent = _Sent(monkeypatch)
    first, first_location, _ = await whep_viewer(client)
    viewers = [(first, first_location)]
    try:
        await frames(first, 3)
        gop = FPS * 2
        # Mid-GOP: some units after a keyframe, well before the next.
        await until(lambda: gop // 4 <= publisher.tick // (90000 // FPS) % gop <= gop // 2, 10, "never mid-GOP")
        late, late_location, _ = await whep_viewer(client)
        viewers.append((late, late_location))
        got = await frames(late, 5)
        assert all(f.width == 320 for f in got)
        units_sent = sent.of(_sender(client, late_location))
        keyframe, arrived, _ts, _session = units_sent[0]
        assert keyframe, "the late viewer's first unit was not a keyframe"
        attached = _sender(client, late_location)._live_feed.attached_mono
        assert arrived < attached  # from the fan-out's cached GOP, not by waiting up to 2 s for the next keyframe
        backlog = [u for u in units_sent if u[1] < attached]
        assert len(backlog) >= gop // 4
        assert _sender(client, late_location)._live_feed.skipped == 0
    finally:
        await _close(client, viewers)


async def test_a_stuck_viewer_never_delays_the_others_and_resumes_on_a_keyframe(
        relay_app: tuple[TestClient, Station, Publisher], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    bound = 30_000  # the test camera sends some 45 kB a second, nearly all in keyframes; the daemon's 1 MB would take half a minute to fill
    monkeypatch.setattr("web.live_sender.MAX_QUEUED_BYTES", bound)
    sent = _Sent(monkeypatch)
    client, daemon, publisher = relay_app
    # The bound is checked before each unit, so one unit (at most a keyframe, most of this camera's bytes)
    # may go over it, and aiortc's RTCP reports a little more.
    allowed = bound + max(len(data) for data, _ in publisher.units) + 2_000
    async with _watching(client, 3) as viewers:
        stuck_pc, stuck_location = viewers[0]
        stuck = _sender(client, stuck_location)
        transport = stuck.transport.transport._connection._nominated[1].protocol.transport
        real = transport._sock
        transport._sock = _FailingSocket(real, BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"),
                                         sendto_too=True)
        try:
            started = time.monotonic()
            others = await asyncio.gather(*(frames(pc, 3 * FPS) for pc, _ in viewers[1:]))
            elapsed = time.monotonic() - started
            assert all(len(got) == 3 * FPS for got in others)
            assert elapsed < 3 * 2.5, f"the others got 3 s of video in {elapsed:.1f} s"  # loose: a loaded machine
            await until(lambda: stuck.units_unsent > 5, 30, "the stuck viewer's queue was never bounded")
            assert transport.get_write_buffer_size() <= allowed
            # A browser NACKs its last losses again and again while nothing reaches it; none of those resends
            # can leave, so none may be queued past the bound either.
            queued = transport.get_write_buffer_size()
            refused = stuck.nack_refused
            last = stuck._live_history[-1]
            for _ in range(200):
                await stuck._retransmit(last.first_seq)
            assert transport.get_write_buffer_size() <= queued + 2_000
            assert stuck.nack_refused >= refused + 190
            # The relay delay of the others stays the daemon's own few milliseconds.
            listing = await (await client.get("/api/live/sessions")).json()
            delays = [s["relay_delay_ms"] for s in listing["sessions"] if s["id"] not in stuck_location]
            assert all(d is not None and d < 50 for d in delays), delays
        finally:
            transport._sock = real
        resumed_from = len(sent.of(stuck))
        # The link is back: asyncio drains what it queued, and the next unit the viewer is sent is a keyframe
        # (at most one GOP, 2 s, later), never a picture that would not decode after the gap.
        await until(lambda: len(sent.of(stuck)) > resumed_from, 10, "the stuck viewer was never sent to again")
        assert sent.of(stuck)[resumed_from][0], "the stuck viewer did not resume on a keyframe"
        got = await frames(stuck_pc, 2 * FPS, timeout=30)
        assert all(f.width == 320 for f in got)
        assert daemon.cameras["hall"].view_hub.readers


async def test_a_viewer_whose_transport_dies_mid_stream_leaves_the_others_playing(
        relay_app: tuple[TestClient, Station, Publisher]) -> None:  # noqa: F811
    client, daemon, _ = relay_app
    async with _watching(client, 3) as viewers:
        fanout = _fanout(client, daemon)
        dying = _sender(client, viewers[1][1])
        # Its selected pair goes away under it: the next unit raises in its send, in the middle of the pass.
        dying.transport.transport._connection._nominated.clear()
        await until(lambda: dying not in fanout.viewers, 10, "the dead viewer stayed attached")
        await until(lambda: dying._RTCRtpSender__rtp_exited.is_set(), 10, "its sender never ended")
        for pc, _location in (viewers[0], viewers[2]):
            got = await frames(pc, 2 * FPS)
            assert all(f.width == 320 for f in got)
        assert len(fanout.viewers) == 2


async def test_a_camera_reconnect_keeps_every_viewers_timestamps_rising(
        relay_app: tuple[TestClient, Station, Publisher], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    client, _daemon, publisher = relay_app
    sent = _Sent(monkeypatch)
    viewers = [(pc, location) for pc, location, _ in [await whep_viewer(client) for _ in range(2)]]
    try:
        for pc, _location in viewers:
            await frames(pc, 5)
        before = publisher.session
        publisher.new_session()  # timestamps restart at zero
        for pc, _location in viewers:
            got = await frames(pc, FPS * 2, timeout=30)
            assert all(f.width == 320 for f in got)
        for _pc, location in viewers:
            record = sent.of(_sender(client, location))
            sessions = [u[3] for u in record]
            assert before in sessions and publisher.session in sessions
            first_after = sessions.index(publisher.session)
            assert record[first_after][0], "the new session did not start on a keyframe"
            origin = record[0][2]
            elapsed = [(ts - origin) & 0xFFFFFFFF for _k, _a, ts, _s in record]
            assert all(b > a for a, b in zip(elapsed, elapsed[1:], strict=False)), "an RTP timestamp went backwards"
        # Each viewer has its own clock origin (random, as aiortc's).
        origins = {sent.of(_sender(client, location))[0][2] for _pc, location in viewers}
        assert len(origins) == 2
    finally:
        await _close(client, viewers)


async def test_keyframe_requests_and_nacks_are_answered_per_viewer(
        relay_app: tuple[TestClient, Station, Publisher]) -> None:  # noqa: F811
    client, _daemon, _ = relay_app
    async with _watching(client, 2) as viewers:
        (asking, asking_location), (_quiet, quiet_location) = viewers
        receiver = asking.getTransceivers()[0].receiver
        await receiver._send_rtcp_pli(_ssrc(asking))
        sender = _sender(client, asking_location)
        newest = sender._live_history[-1].first_seq
        await receiver._send_rtcp_nack(_ssrc(asking), [newest])
        await until(lambda: sender.retransmitted >= 1, 5, "the NACK was never answered")
        listing = {s["id"]: s for s in (await (await client.get("/api/live/sessions")).json())["sessions"]}
        asked = next(s for sid, s in listing.items() if sid in asking_location)
        other = next(s for sid, s in listing.items() if sid in quiet_location)
        assert asked["keyframe_requests"] == 1 and other["keyframe_requests"] == 0
        assert asked["retransmitted_packets"] >= 1 and other["retransmitted_packets"] == 0
        got = await frames(asking, 10)
        assert all(f.width == 320 for f in got)


async def test_aiortcs_own_sender_still_plays_when_shared_packetization_is_off(
        tmp_path: Path, units: list[tuple[bytes, bool]]) -> None:  # noqa: F811
    daemon = Station(make_config(tmp_path, shared_packetization=False))
    async with TestClient(TestServer(create_app(daemon), host="127.0.0.1"), headers=admin_headers(daemon)) as client:
        publisher = Publisher(daemon.cameras["hall"].view_hub, units)
        publisher.start()
        try:
            pc, location, _ = await whep_viewer(client)
            got = await frames(pc, 20)
            assert all(f.width == 320 for f in got)
            (session,) = client.app[WHEP].sessions.values()
            assert session.sender is None and not client.app[WHEP].fanouts  # per viewer: a feed of its own
            assert [r.name for r in daemon.cameras["hall"].view_hub.readers] == [session.feed.name]
            await client.delete(location)
            await pc.close()
            assert not daemon.cameras["hall"].view_hub.readers
        finally:
            await publisher.stop()
