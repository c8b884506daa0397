"""Live view as the monitoring staff see it: simulated cameras, the real daemon, real Chromium and aiortc.

Everything runs on loopback.  Waits are conditions with generous deadlines:
other test suites share the two cores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from tests.conftest import StationProcess, wait_until

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    # Chromium's default features: it hides local addresses behind mDNS names, as a monitoring-room browser
    # does; the daemon answers without resolving them (web/whep.py, tests/test_live_mdns.py).
    "--autoplay-policy=no-user-gesture-required",
]

# A recvonly video peer with a <video> element, its gathered offer POSTed to the camera's WHEP endpoint; the
# answer is not applied yet.  A JS function declaration, for the body of a page.evaluate() function.
OPEN_VIEWER_JS = """
async function openViewer(camera) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  const video = document.createElement("video");
  video.muted = true; video.autoplay = true; video.playsInline = true;
  document.body.appendChild(video);
  pc.ontrack = (e) => { video.srcObject = new MediaStream([e.track]); video.play().catch(() => {}); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const t = setTimeout(resolve, 2000);
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") { clearTimeout(t); resolve(); } };
  });
  const offer = pc.localDescription.sdp;
  const posted = performance.now();
  const response = await fetch(`/api/cameras/${camera}/whep`, {
    method: "POST", headers: { "Content-Type": "application/sdp" }, body: offer });
  return { pc, video, offer, response, answer: await response.text(), posted };
}
"""

TILE_STATS = """async (id) => {
  const tile = document.querySelector(`.tile[data-camera-id="${id}"]`);
  const player = window.nvrConsole.players[id];
  const video = tile && tile.querySelector("video");
  const frames = player ? await player.framesDecoded() : 0;
  return {
    frames, width: video ? video.videoWidth : 0, height: video ? video.videoHeight : 0,
    badge: tile ? tile.querySelector(".badge").dataset.state : null,
    cell: tile ? tile.classList.contains("cell") : false,
    muted: video ? video.muted : null,
  };
}"""


@pytest.fixture
def browser() -> Iterator[Any]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def frames_rising(page: Any, camera_id: str, timeout: float) -> dict[str, Any]:
    """Wait until the tile decodes new frames; returns its stats."""
    start = page.evaluate(TILE_STATS, camera_id)["frames"]

    def check() -> dict[str, Any] | None:
        stats: dict[str, Any] = page.evaluate(TILE_STATS, camera_id)
        return stats if stats["frames"] >= start + 10 and stats["width"] > 0 else None

    return wait_until(check, timeout, f"tile {camera_id} shows no moving picture", interval=0.3)


def test_console_shows_live_video_and_recovers_after_an_outage(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess], browser: Any) -> None:
    hall = cameras("hall", width=640, height=360, fps=15, audio="pcmu")
    cell = cameras("cell", width=640, height=360, fps=15)
    daemon = daemon_factory([
        {"id": "hall-1", "name": "Front hall", "zone": "hall", "url": hall.url},
        {"id": "cell-1", "name": "Holding cell 1", "zone": "holding_cell", "url": cell.url},
    ])
    daemon.wait_state("hall-1", "online", timeout=30)
    daemon.wait_state("cell-1", "online", timeout=30)
    daemon.add_user("duty.officer", "monitor", "correct horse battery")
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    page.goto(daemon.base_url + "/")  # no session yet: the sign-in page, then back to the console
    page.wait_for_url(lambda url: urlsplit(url).path == "/login")
    page.fill("#username", "duty.officer")
    page.fill("#password", "correct horse battery")
    page.click("#submit")
    page.wait_for_url(daemon.base_url + "/")
    page.wait_for_selector("#session-user")

    for camera_id in ("hall-1", "cell-1"):
        stats = frames_rising(page, camera_id, timeout=30)
        assert (stats["width"], stats["height"]) == (640, 360)  # decoded at the camera's size: no transcoding
        assert stats["badge"] == "online"
        assert stats["muted"] is True
    assert page.evaluate(TILE_STATS, "cell-1")["cell"] and not page.evaluate(TILE_STATS, "hall-1")["cell"]
    wait_until(lambda: page.locator('.tile[data-camera-id="hall-1"].has-audio').count() == 1, 10,
               "G.711 not forwarded")  # the audio track may arrive a moment after the picture

    # The camera goes away: the operator sees it, and the picture comes back by itself.
    hall.stop()
    wait_until(lambda: page.evaluate(TILE_STATS, "hall-1")["badge"] == "offline", 30, "no offline badge")
    assert page.locator('.tile[data-camera-id="hall-1"] .tile-message-title').inner_text() == "No signal"
    hall.start()
    wait_until(lambda: page.evaluate(TILE_STATS, "hall-1")["badge"] == "online", 40, "badge never online again")
    stats = frames_rising(page, "hall-1", timeout=40)
    assert (stats["width"], stats["height"]) == (640, 360)
    frames_rising(page, "cell-1", timeout=20)  # the other camera never stopped
    page.close()
    # Closing the page ends its sessions (DELETE, or the peers closing).
    wait_until(lambda: daemon.get("/api/live/sessions")[1]["sessions"] == [], 30, "console sessions left open")


async def recvonly_peer() -> RTCPeerConnection:
    """An aiortc viewer (no STUN) whose local description is a gathered video-only offer."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc


async def whep_connect(pc: RTCPeerConnection, base_url: str, camera_id: str, token: str) -> tuple[str, str]:
    """POST ``pc``'s offer, expect 201, apply the answer; the answer's SDP and the session's Location."""
    async with aiohttp.ClientSession() as http, http.post(
        f"{base_url}/api/cameras/{camera_id}/whep", data=pc.localDescription.sdp,
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
    ) as resp:
        answer = await resp.text()
        assert resp.status == 201, answer
        location = resp.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return answer, location


async def _whep_client(base_url: str, camera_id: str, token: str) -> tuple[RTCPeerConnection, str]:
    pc = await recvonly_peer()
    _answer, location = await whep_connect(pc, base_url, camera_id, token)
    return pc, location


async def _frames(pc: RTCPeerConnection, count: int, timeout: float) -> list[Any]:
    track = pc.getTransceivers()[0].receiver.track
    return [await asyncio.wait_for(track.recv(), timeout) for _ in range(count)]


async def test_whep_client_receives_frames_and_delete_frees_the_session(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess]) -> None:
    cam = cameras("door", width=640, height=360, fps=15)
    daemon = daemon_factory([{"id": "door", "name": "Door", "zone": "entrance", "url": cam.url}])
    daemon.wait_state("door", "online", timeout=30)
    before = daemon.get("/api/live/sessions")[1]
    assert before["sessions"] == [] and before["readers"] == {"door": 0}

    started = time.monotonic()
    pc, location = await _whep_client(daemon.base_url, "door", daemon.token)
    frames = await _frames(pc, 10, timeout=20)
    first_frames = time.monotonic() - started
    assert (frames[-1].width, frames[-1].height) == (640, 360)
    assert first_frames < 10
    during = daemon.get("/api/live/sessions")[1]
    assert len(during["sessions"]) == 1 and during["readers"] == {"door": 1}
    assert during["sessions"][0]["state"] == "connected"

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {daemon.token}"}) as http:
        async with http.delete(daemon.base_url + location) as resp:
            assert resp.status == 204
        async with http.delete(daemon.base_url + location) as resp:
            assert resp.status == 404
    after = daemon.get("/api/live/sessions")[1]
    assert after["sessions"] == [] and after["readers"] == {"door": 0}
    await pc.close()


async def test_viewers_that_never_read_do_not_stall_recording(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess]) -> None:
    cam = cameras("yard", width=640, height=360, fps=15)
    daemon = daemon_factory([{"id": "yard", "name": "Yard", "url": cam.url}], storage={"segment_seconds": 2})
    daemon.wait_state("yard", "online", timeout=30)
    wait_until(lambda: daemon.camera("yard")["last_segment_at"], 30, "recording never started")

    # One viewer that never calls recv(), one that completes the offer and never connects,
    # and one whose whole process stops reading (this event loop is blocked below).
    idle, _ = await _whep_client(daemon.base_url, "yard", daemon.token)
    stalled, _ = await _whep_client(daemon.base_url, "yard", daemon.token)
    await _frames(stalled, 1, timeout=20)
    status, _ = daemon.request("POST", "/api/cameras/yard/whep", body=idle.localDescription.sdp.encode(),
                               headers={"Content-Type": "application/sdp"})
    assert status == 201

    # From here on the test's loop is blocked: no RTP or RTCP is read by either aiortc client.
    first = daemon.camera("yard")["last_segment_at"]
    segments: list[str] = [first]

    def recorded_more() -> bool:
        at = daemon.camera("yard")["last_segment_at"]
        if at != segments[-1]:
            segments.append(at)
        return len(segments) >= 4

    wait_until(recorded_more, 40, "recording stalled while viewers did not read")
    camera = daemon.camera("yard")
    assert camera["recording"] and camera["state"] == "online"
    sessions = daemon.get("/api/live/sessions")[1]["sessions"]
    assert len(sessions) == 3
    await idle.close()
    await stalled.close()
