"""The WHEP relay in process: real aiortc peers on loopback, real H.264, the real aiohttp app.

The daemon is built from a config but its RTSP sources are not started; a
task publishes libx264 access units into the camera's hub in real time, as
the source would.  This keeps the protocol and leak checks fast; the
end-to-end stories with simulated cameras and Chromium are in test_live.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from nvr.base.config import Config
from nvr.identity.accounts_cli import create_token
from nvr.identity.roles import Role
from nvr.station import Station
from streams.hub import Hub
from streams.media import MediaPacket, Session, TrackInfo, TrackKind
from tests.media import encode_h264, make_session
from web.app import create_app
from web.live_feed import LiveFeed, RtpClock
from web.whep import WHEP

FPS = 15
WIDTH, HEIGHT = 320, 180


def make_config(tmp_path: Path, **live: Any) -> Config:
    return Config.model_validate({
        "station": {"id": "st-test", "name": "Test"},
        "storage": {"path": str(tmp_path / "storage")},
        "live": {"connect_timeout_seconds": 5, **live},
        "cameras": [
            {"id": "hall", "name": "Hall", "url": "rtsp://127.0.0.1:9/none", "record": False},
            {"id": "cell", "name": "Cell", "zone": "holding_cell", "url": "rtsp://127.0.0.1:9/none", "record": False},
        ],
    })


class Publisher:
    """Plays pre-encoded access units into a hub in real time, looping, like a camera."""

    def __init__(self, hub: Hub, units: list[tuple[bytes, bool]], fps: int = FPS) -> None:
        self.hub = hub
        self.units = units
        self.fps = fps
        self.session = make_session(units, width=WIDTH, height=HEIGHT, fps=fps)
        self.task: asyncio.Task[None] | None = None
        self.tick = 0

    def new_session(self) -> None:
        """A camera reconnect: a new session whose timestamps restart at zero."""
        self.hub.end_session("camera lost")
        self.session = make_session(self.units, width=WIDTH, height=HEIGHT, fps=self.fps)
        self.tick = 0

    async def run(self) -> None:
        step = 90000 // self.fps
        start = time.monotonic()
        n = 0
        while True:
            data, key = self.units[n % len(self.units)]
            now = time.monotonic()
            self.hub.publish(MediaPacket(
                session=self.session, kind=TrackKind.VIDEO, data=data, pts=self.tick, dts=self.tick,
                time_base=Fraction(1, 90000), is_keyframe=key, received_at=time.time(), received_mono=now,
            ))
            self.tick += step
            n += 1
            await asyncio.sleep(max(0.0, start + n / self.fps - time.monotonic()))

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture(scope="module")
def units() -> list[tuple[bytes, bool]]:
    # Keyframe every 2 s, SPS/PPS only in the session's extradata for every other keyframe.
    out = encode_h264(FPS * 4, width=WIDTH, height=HEIGHT, fps=FPS, gop=FPS * 2)
    return out[: FPS * 4]


@pytest.fixture
async def relay_app(tmp_path: Path, units: list[tuple[bytes, bool]]) -> AsyncIterator[tuple[TestClient, Station, Publisher]]:
    daemon = Station(make_config(tmp_path))
    app = create_app(daemon)
    client = TestClient(TestServer(app, host="127.0.0.1"), headers=admin_headers(daemon))
    await client.start_server()
    publisher = Publisher(daemon.cameras["hall"].view_hub, units)
    publisher.start()
    try:
        yield client, daemon, publisher
    finally:
        await publisher.stop()
        await client.close()


def admin_headers(daemon: Station) -> dict[str, str]:
    """Access control is deny-by-default: the test client carries an admin API token."""
    token = create_token(daemon.config.auth_database, "test-admin", Role.ADMIN)
    return {"Authorization": f"Bearer {token}"}


async def until(check: Callable[[], Any], timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (after {timeout} s)")
        await asyncio.sleep(0.02)


async def whep_viewer(client: TestClient, camera: str = "hall", audio: bool = False
                      ) -> tuple[RTCPeerConnection, str, float]:
    """An aiortc WHEP client; returns the peer, the session URL and the time to answer."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    started = time.monotonic()
    resp = await client.post(f"/api/cameras/{camera}/whep", data=pc.localDescription.sdp,
                             headers={"Content-Type": "application/sdp"})
    body = await resp.text()
    answered = time.monotonic() - started
    assert resp.status == 201, body
    assert resp.content_type == "application/sdp"
    location = resp.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return pc, location, answered


async def frames(pc: RTCPeerConnection, count: int, timeout: float = 20.0) -> list[av.VideoFrame]:
    track = next(t.receiver.track for t in pc.getTransceivers() if t.kind == "video")
    out: list[av.VideoFrame] = []

    async def collect() -> None:
        while len(out) < count:
            out.append(await track.recv())

    await asyncio.wait_for(collect(), timeout)
    return out


async def test_aiortc_viewer_gets_decoded_frames_fast_and_delete_frees_it(
        relay_app: tuple[TestClient, Station, Publisher]) -> None:
    client, daemon, _ = relay_app
    hub = daemon.cameras["hall"].view_hub
    await until(lambda: hub.session is not None, 5, "publisher never started")
    readers_before = len(hub.readers)
    pc, location, answered = await whep_viewer(client)
    started = time.monotonic()
    got = await frames(pc, 5)
    first_frames = time.monotonic() - started
    assert (got[0].width, got[0].height) == (WIDTH, HEIGHT)
    assert answered < 1.0, f"answer took {answered:.2f} s"
    assert first_frames < 3.0, f"first frames took {first_frames:.2f} s"
    pts = [f.pts for f in got]
    assert pts == sorted(pts)
    listing = await (await client.get("/api/live/sessions")).json()
    assert len(listing["sessions"]) == 1 and listing["readers"]["hall"] == 1
    session = listing["sessions"][0]
    assert session["camera_id"] == "hall" and session["state"] == "connected"

    resp = await client.delete(location)
    assert resp.status == 204
    assert len(hub.readers) == readers_before
    assert daemon.cameras["hall"].view_hub is hub and not client.app[WHEP].sessions
    resp = await client.delete(location)
    assert resp.status == 404 and (await resp.json())["error"] == "unknown_session"
    await pc.close()


async def test_session_survives_a_camera_reconnect_with_monotonic_timestamps(
        relay_app: tuple[TestClient, Station, Publisher]) -> None:
    client, daemon, publisher = relay_app
    pc, location, _ = await whep_viewer(client)
    before = await frames(pc, 3)
    await publisher.stop()
    publisher.new_session()  # timestamps restart at zero
    publisher.start()
    after = await frames(pc, 20)
    pts = [f.pts for f in before + after]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False)), pts
    await client.delete(location)
    await pc.close()


async def test_bad_requests_get_json_errors(relay_app: tuple[TestClient, Station, Publisher]) -> None:
    client, _, _ = relay_app
    resp = await client.post("/api/cameras/hall/whep", data="v=0", headers={"Content-Type": "text/plain"})
    assert resp.status == 415 and (await resp.json())["error"] == "unsupported_media_type"
    resp = await client.post("/api/cameras/hall/whep", data="hello", headers={"Content-Type": "application/sdp"})
    assert resp.status == 400 and (await resp.json())["error"] == "bad_offer"
    resp = await client.post("/api/cameras/hall/whep", data="v=0\r\nm=video 9 nonsense\r\n",
                             headers={"Content-Type": "application/sdp"})
    assert resp.status == 400 and (await resp.json())["error"] == "bad_offer"
    resp = await client.post("/api/cameras/nope/whep", data="v=0", headers={"Content-Type": "application/sdp"})
    assert resp.status == 404 and (await resp.json())["error"] == "unknown_camera"
    resp = await client.delete("/api/whep/sessions/nope")
    assert resp.status == 404
    # VP8 only: we relay H.264 as it is and never transcode.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("video", direction="recvonly")
    transceiver.setCodecPreferences([c for c in _video_caps() if c.mimeType == "video/VP8"])
    await pc.setLocalDescription(await pc.createOffer())
    resp = await client.post("/api/cameras/hall/whep", data=pc.localDescription.sdp,
                             headers={"Content-Type": "application/sdp"})
    assert resp.status == 400 and (await resp.json())["error"] == "no_common_codec"
    await pc.close()


def _video_caps() -> list[Any]:
    from aiortc import RTCRtpSender

    return list(RTCRtpSender.getCapabilities("video").codecs)


async def test_h265_camera_answers_409(relay_app: tuple[TestClient, Station, Publisher]) -> None:
    client, daemon, _ = relay_app
    hub = daemon.cameras["cell"].view_hub
    video = TrackInfo(kind=TrackKind.VIDEO, codec="hevc", time_base=Fraction(1, 90000), width=WIDTH, height=HEIGHT)
    session = Session(video=video, audio=None, started_at=time.time(), started_mono=time.monotonic())
    hub.publish(MediaPacket(session=session, kind=TrackKind.VIDEO, data=b"\x00\x00\x01\x26\x01", pts=0, dts=0,
                            time_base=Fraction(1, 90000), is_keyframe=True, received_at=time.time(),
                            received_mono=time.monotonic()))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    resp = await client.post("/api/cameras/cell/whep", data=pc.localDescription.sdp,
                             headers={"Content-Type": "application/sdp"})
    body = await resp.json()
    assert resp.status == 409 and body["error"] == "h265_needs_transcode" and "H.265" in body["message"]
    assert "live.transcode: h264" in body["message"]
    await pc.close()


async def test_hundred_connect_disconnect_cycles_leak_nothing(
        relay_app: tuple[TestClient, Station, Publisher]) -> None:
    client, daemon, _ = relay_app
    hub = daemon.cameras["hall"].view_hub
    relay = client.app[WHEP]
    readers_before = len(hub.readers)
    tasks_before = len(media_tasks())
    udp_before = udp_sockets()

    async def cycle(n: int) -> None:
        pc, location, _ = await whep_viewer(client)
        if n % 3 == 0:
            await frames(pc, 1)
            await pc.close()  # the viewer just goes away: its DTLS close ends the session
            await until(lambda: location.rsplit("/", 1)[1] not in relay.sessions, 30, "closed peer not cleaned up")
        else:
            assert (await client.delete(location)).status == 204
            await pc.close()

    for batch in range(10):
        await asyncio.gather(*(cycle(batch * 10 + i) for i in range(10)))
    await until(lambda: not relay.sessions, 30, "sessions left over")
    assert len(hub.readers) == readers_before
    assert relay.opened_total == 100
    await until(lambda: len(media_tasks()) <= tasks_before, 30, "aiortc/aioice tasks left over")
    assert udp_sockets() == udp_before, "UDP sockets of closed peers left open"


def udp_sockets() -> int:
    """UDP sockets this process holds (every ICE candidate is one)."""
    udp: set[str] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            udp.update(line.split()[9] for line in list(f)[1:])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in udp:
            count += 1
    return count


def media_tasks() -> list[asyncio.Task[Any]]:
    """Tasks other than the HTTP client's keep-alive connections."""
    return [t for t in asyncio.all_tasks() if "RequestHandler" not in repr(t.get_coro())]


async def test_peer_that_never_connects_is_closed(tmp_path: Path, units: list[tuple[bytes, bool]]) -> None:
    daemon = Station(make_config(tmp_path, connect_timeout_seconds=0.5))
    async with TestClient(TestServer(create_app(daemon), host="127.0.0.1"), headers=admin_headers(daemon)) as client:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        resp = await client.post("/api/cameras/hall/whep", data=pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"})
        assert resp.status == 201
        await pc.close()  # never applies the answer
        relay = client.app[WHEP]
        await until(lambda: not relay.sessions, 10, "unconnected session not closed")
        assert not daemon.cameras["hall"].view_hub.readers


async def test_a_feed_never_drained_drops_and_never_blocks_the_hub(units: list[tuple[bytes, bool]]) -> None:
    hub = Hub("cam")
    recorder = hub.reader("recorder", maxsize=10_000)
    feed = LiveFeed(hub, "whep:stalled", 32, audio=False)
    first = await _publish_and_take_first(hub, feed, units)
    assert first is not None
    # The viewer stops reading; the camera keeps sending 20 s of video.
    session = make_session(units, width=WIDTH, height=HEIGHT)
    started = time.monotonic()
    for n in range(FPS * 20):
        data, key = units[n % len(units)]
        hub.publish(MediaPacket(session=session, kind=TrackKind.VIDEO, data=data, pts=n * 6000, dts=n * 6000,
                                time_base=Fraction(1, 90000), is_keyframe=key, received_at=time.time(),
                                received_mono=time.monotonic()))
    assert time.monotonic() - started < 1.0
    assert recorder.queued == FPS * 20 + 1  # the recorder lost nothing
    assert feed.reader is not None and feed.reader.queued <= 32 and feed.dropped > 0
    feed.close()
    assert feed.reader not in hub.readers


async def _publish_and_take_first(hub: Hub, feed: LiveFeed, units: list[tuple[bytes, bool]]) -> av.Packet:
    session = make_session(units, width=WIDTH, height=HEIGHT)
    data, key = units[0]
    assert key
    hub.publish(MediaPacket(session=session, kind=TrackKind.VIDEO, data=data, pts=0, dts=0,
                            time_base=Fraction(1, 90000), is_keyframe=True, received_at=time.time(),
                            received_mono=time.monotonic()))
    return await asyncio.wait_for(feed.next_video(), 5)


async def test_first_keyframe_gets_parameter_sets_and_backlog_is_squeezed(units: list[tuple[bytes, bool]]) -> None:
    from streams import bitstream

    hub = Hub("cam")
    session = make_session(units, width=WIDTH, height=HEIGHT)
    # A camera that sends SPS/PPS only out of band.
    bare = [(b"".join(b"\x00\x00\x00\x01" + n for n in bitstream.iter_nal_units(d)
                      if bitstream.nal_type("h264", n) not in (7, 8)), k) for d, k in units[:10]]
    t0 = time.monotonic() - 1.0
    for n, (data, key) in enumerate(bare):  # cached GOP: arrived before the viewer
        hub.publish(MediaPacket(session=session, kind=TrackKind.VIDEO, data=data, pts=n * 6000, dts=n * 6000,
                                time_base=Fraction(1, 90000), is_keyframe=key, received_at=time.time(),
                                received_mono=t0 + n / FPS))
    feed = LiveFeed(hub, "whep:t", 300, audio=False)
    out = [await asyncio.wait_for(feed.next_video(), 5) for _ in range(10)]
    assert bitstream.parameter_sets("h264", bytes(out[0]))  # SPS/PPS put in front of the IDR
    assert [p.pts for p in out] == list(range(10))  # the backlog plays at once, one tick apart
    hub.publish(MediaPacket(session=session, kind=TrackKind.VIDEO, data=bare[1][0], pts=10 * 6000, dts=10 * 6000,
                            time_base=Fraction(1, 90000), is_keyframe=False, received_at=time.time(),
                            received_mono=time.monotonic()))
    live = await asyncio.wait_for(feed.next_video(), 5)
    assert live.pts == 9 + 6000  # live packets keep the camera's spacing
    feed.close()


def test_rtp_clock_never_goes_back_across_sessions() -> None:
    clock = RtpClock(90000)
    s1 = make_session(encode_h264(1, width=64, height=64))
    s2 = dataclasses.replace(s1, id=s1.id + 1000)

    def mk(s: Session, pts: int) -> MediaPacket:
        return MediaPacket(session=s, kind=TrackKind.VIDEO, data=b"", pts=pts, dts=pts, time_base=Fraction(1, 90000),
                           is_keyframe=False, received_at=0.0, received_mono=0.0)

    assert clock.map(mk(s1, 900_000), False, 100.0) == 0
    assert clock.map(mk(s1, 906_000), False, 100.1) == 6000
    assert clock.map(mk(s2, 0), False, 102.1) == 6000 + 180_000  # 2 s of wall clock passed
    assert clock.map(mk(s2, 6000), False, 102.2) == 192_000
    assert clock.map(mk(s2, 3000), False, 102.3) == 192_001  # a clock going back is clamped



