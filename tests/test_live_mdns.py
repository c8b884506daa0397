"""A viewer that hides its addresses behind mDNS names, as every browser with default settings does.

The daemon must answer at once (not after a 1 s multicast query nobody answers) and the session must
still connect: the viewer's connectivity checks reveal its address as a peer-reflexive candidate.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription

from tests.conftest import StationProcess
from tests.test_live import browser, recvonly_peer  # noqa: F401 - the Chromium fixture
from web.whep import without_mdns_candidates

_HOST = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( .*)$", re.M)


def hide_behind_mdns(sdp: str) -> str:
    """Every candidate address replaced by a random ``.local`` name, as Chromium does by default."""
    return _HOST.sub(lambda m: f"{m.group(1)}{uuid.uuid4()}.local{m.group(3)}", sdp)


def test_offers_keep_everything_but_their_mdns_candidates() -> None:
    offer = ("v=0\r\na=candidate:1 1 udp 2122260223 0f3c4e8a-1b2c-4d5e-8f90-123456789abc.local 51234 typ host\r\n"
             "a=candidate:2 1 udp 2122260223 10.1.2.3 51235 typ host\r\n"
             "a=candidate:3 1 tcp 1518280447 ABC.LOCAL. 9 typ host tcptype active\r\na=end-of-candidates\r\n")
    kept, hidden = without_mdns_candidates(offer)
    assert hidden == 2
    # and no end-of-candidates: the hidden ones turn up as peer-reflexive candidates during the checks
    assert kept == "v=0\r\na=candidate:2 1 udp 2122260223 10.1.2.3 51235 typ host\r\n"
    assert without_mdns_candidates("v=0\r\na=end-of-candidates\r\n") == ("v=0\r\na=end-of-candidates\r\n", 0)


async def test_a_viewer_behind_mdns_names_is_answered_at_once_and_sees_video(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess]) -> None:
    cam = cameras("mdns", width=640, height=360, fps=15)
    daemon = daemon_factory([{"id": "hall", "name": "Hall", "url": cam.url}])
    daemon.wait_state("hall", "online", timeout=30)
    pc = await recvonly_peer()
    try:
        offer = hide_behind_mdns(pc.localDescription.sdp)
        assert ".local " in offer and not re.search(r"a=candidate:\S+ \d+ \S+ \d+ \d+\.\d+\.\d+\.\d+ ", offer)
        started = time.monotonic()
        async with aiohttp.ClientSession() as http, http.post(
            f"{daemon.base_url}/api/cameras/hall/whep", data=offer,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {daemon.token}"},
        ) as resp:
            answer = await resp.text()
            answered = time.monotonic() - started
            assert resp.status == 201, answer
        # Loosely: resolving one mDNS name alone costs aioice's 1 s timeout; the answer must not wait for it.
        assert answered < 0.8, f"answered in {answered * 1000:.0f} ms"
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        track = pc.getTransceivers()[0].receiver.track
        frame = await asyncio.wait_for(track.recv(), 20)
        assert (frame.width, frame.height) == (640, 360)
        assert "mDNS candidate(s) left to peer-reflexive discovery" in daemon.log()
    finally:
        await pc.close()


# Chromium as it comes: gather (its host candidates are mDNS names), POST, apply the answer, and time the POST to
# the first decoded frame.
FIRST_FRAME_JS = """async (camera) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  const video = document.createElement("video");
  video.muted = true; video.autoplay = true; video.playsInline = true;
  document.body.appendChild(video);
  pc.ontrack = (e) => { video.srcObject = new MediaStream([e.track]); video.play().catch(() => {}); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") resolve(); };
  });
  const offer = pc.localDescription.sdp;
  const tPost = performance.now();
  const response = await fetch(`/api/cameras/${camera}/whep`, {
    method: "POST", headers: { "Content-Type": "application/sdp" }, body: offer });
  const answer = await response.text();
  if (response.status !== 201) return { status: response.status, answer, offer };
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("no frame in 20 s")), 20000);
    video.requestVideoFrameCallback(() => { clearTimeout(t); resolve(); });
  });
  const result = { status: 201, offer, first_frame_ms: performance.now() - tPost, width: video.videoWidth };
  await fetch(response.headers.get("Location"), { method: "DELETE" });
  pc.close();
  video.remove();
  return result;
}"""


def test_chromium_with_its_default_features_shows_the_first_frame_without_waiting_on_mdns(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess], browser: Any) -> None:  # noqa: F811
    cam = cameras("mdns-chromium", width=640, height=360, fps=15)
    daemon = daemon_factory([{"id": "hall", "name": "Hall", "url": cam.url}])
    daemon.wait_state("hall", "online", timeout=30)
    page = browser.new_page()
    try:
        page.set_extra_http_headers({"Authorization": f"Bearer {daemon.token}"})
        page.goto(daemon.base_url + "/healthz")
        times = []
        for _ in range(3):
            result = page.evaluate(FIRST_FRAME_JS, "hall")
            assert result["status"] == 201, result.get("answer")
            # Its host candidates are mDNS names, as in every monitoring room's browser, and none is an address.
            assert ".local " in result["offer"], result["offer"]
            assert not re.search(r"a=candidate:\S+ \d+ udp \d+ \d+\.\d+\.\d+\.\d+ \d+ typ host", result["offer"])
            assert result["width"] == 640
            times.append(result["first_frame_ms"])
        # Loosely (the figure is bench_live's, about 50 ms on a quiet machine): a daemon that resolved the
        # mDNS names first would wait at least aioice's 1 s query timeout in every session; the best of three
        # is asserted so that one session slowed by the other test suites sharing the cores does not fail it.
        assert min(times) < 500, f"POST to first frame: {[round(t) for t in times]} ms"
    finally:
        page.close()
