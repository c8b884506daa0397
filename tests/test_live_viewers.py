"""Several rooms watching the same camera: one shared packetization, every viewer's own RTP stream.

The daemon cuts each access unit into RTP payloads once per camera (web/live_packetizer.py) and per
viewer only writes the header, SRTP-protects and sends (web/live_sender.py).  Real Chromium viewers
with default features, the real daemon and a simulated camera, on loopback.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.conftest import StationProcess, wait_until
from tests.test_live import OPEN_VIEWER_JS, browser, recvonly_peer, whep_connect  # noqa: F401 - browser is a fixture

VIEWERS_JS = """async ({camera, count}) => {""" + OPEN_VIEWER_JS + """
  window.viewers = window.viewers || [];
  for (let i = 0; i < count; i++) {
    const { pc, video, response, answer } = await openViewer(camera);
    if (response.status !== 201) throw new Error(`WHEP ${response.status}: ${answer}`);
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    window.viewers.push({ pc, video, location: response.headers.get("Location") });
  }
}"""

# Per viewer, Chromium's own account of what it received and decoded.  A packet the daemon numbered
# wrongly is counted lost; a unit it cut wrongly fails to decode and Chromium asks for a keyframe (PLI).
STATS_JS = """async () => Promise.all(window.viewers.map(async ({ pc, video }) => {
  let inbound = null;
  (await pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") inbound = s; });
  return {
    frames: inbound ? (inbound.framesDecoded || 0) : 0,
    lost: inbound ? (inbound.packetsLost || 0) : 0,
    packets: inbound ? (inbound.packetsReceived || 0) : 0,
    pli: inbound ? (inbound.pliCount || 0) : 0,
    keyframes: inbound ? (inbound.keyFramesDecoded || 0) : 0,
    width: video.videoWidth, height: video.videoHeight, state: pc.connectionState,
  };
}))"""

CLOSE_JS = """async () => { for (const { pc, location } of window.viewers) {
  pc.close(); await fetch(location, { method: "DELETE" }); } }"""


def _all_decoding(page: Any, since: list[dict[str, Any]], frames: int, timeout: float) -> list[dict[str, Any]]:
    """Wait until every viewer decoded ``frames`` more frames than in ``since``; their stats."""
    def check() -> list[dict[str, Any]] | None:
        stats: list[dict[str, Any]] = page.evaluate(STATS_JS)
        return stats if all(s["frames"] >= b["frames"] + frames and s["width"] > 0
                            for s, b in zip(stats, since, strict=True)) else None

    return wait_until(check, timeout, "a viewer stopped decoding", interval=0.3)


class _StalledViewer:
    """An aiortc viewer, on its own thread and loop, that connects, takes a few frames, then stops reading."""

    def __init__(self, daemon: StationProcess, camera_id: str) -> None:
        self.daemon, self.camera_id = daemon, camera_id
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="stalled-viewer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._view())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            self.stalled.set()

    async def _view(self) -> None:
        pc = await recvonly_peer()
        try:
            await whep_connect(pc, self.daemon.base_url, self.camera_id, self.daemon.token)
            track = pc.getTransceivers()[0].receiver.track
            for _ in range(5):
                await asyncio.wait_for(track.recv(), 20)
            # Stop reading the sockets altogether (RTP and RTCP): the kernel's receive buffer fills and drops.
            connection = pc.getTransceivers()[0].receiver.transport.transport._connection
            loop = asyncio.get_running_loop()
            for protocol in connection._protocols:
                loop._remove_reader(protocol.transport.get_extra_info("socket").fileno())  # type: ignore[attr-defined]
            self.stalled.set()
            while not self.release.is_set():
                await asyncio.sleep(0.1)
        finally:
            await pc.close()


def test_four_chromium_viewers_of_one_camera_share_its_packetization_and_all_decode_cleanly(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess],
        browser: Any) -> None:  # noqa: F811
    cam = cameras("cell", width=640, height=360, fps=15, gop=15)
    daemon = daemon_factory([{"id": "cell-1", "name": "Holding cell 1", "url": cam.url}])
    daemon.wait_state("cell-1", "online", timeout=30)
    page = browser.new_page()
    page.set_extra_http_headers({"Authorization": f"Bearer {daemon.token}"})
    page.goto(daemon.base_url + "/healthz")
    page.evaluate(VIEWERS_JS, {"camera": "cell-1", "count": 4})
    zero = [{"frames": 0}] * 4
    stats = _all_decoding(page, zero, 45, timeout=60)
    for s in stats:
        assert (s["width"], s["height"]) == (640, 360)
        assert s["lost"] == 0 and s["pli"] == 0, stats  # every packet numbered right, every unit decodable
        assert s["keyframes"] >= 1
    live = daemon.get("/api/live/sessions")[1]
    assert len(live["sessions"]) == 4
    assert all(s["shared_packetization"] for s in live["sessions"]), live["sessions"]
    cut = live["packetizers"]["cell-1"]
    # Each unit was cut once and taken by the other viewers (the first GOP of each new viewer is a burst).
    assert cut["units_shared"] >= 2 * cut["units_cut"], cut

    # A fifth viewer stops reading: the other four keep their frame rate, the camera keeps recording.
    stalled = _StalledViewer(daemon, "cell-1")
    assert stalled.stalled.wait(40) and stalled.error is None, stalled.error
    try:
        before, started = page.evaluate(STATS_JS), time.monotonic()
        stats = _all_decoding(page, before, 40, timeout=30)
        rate = min(s["frames"] - b["frames"] for s, b in zip(stats, before, strict=True)) / (
            time.monotonic() - started)
        assert rate > 5, f"{rate:.1f} frames/s per viewer while one viewer was stuck"  # loosely: the camera sends 15
        assert all(s["lost"] == 0 and s["pli"] == 0 for s in stats), stats
        camera = daemon.camera("cell-1")
        assert camera["state"] == "online" and camera["recording"], camera
    finally:
        stalled.release.set()
        stalled.thread.join(20)

    # The camera reboots mid-view: every viewer plays again, without a new session.
    cam.stop()
    daemon.wait_state("cell-1", "offline", timeout=30)
    cam.start()
    daemon.wait_state("cell-1", "online", timeout=40)
    before = page.evaluate(STATS_JS)
    stats = _all_decoding(page, before, 30, timeout=40)
    assert all(s["state"] == "connected" and (s["width"], s["height"]) == (640, 360) for s in stats), stats
    assert len(daemon.get("/api/live/sessions")[1]["sessions"]) == 4
    page.evaluate(CLOSE_JS)
    wait_until(lambda: daemon.get("/api/live/sessions")[1]["sessions"] == [], 10, "sessions left open")
    assert daemon.get("/api/live/sessions")[1]["readers"] == {"cell-1": 0}
    page.close()
