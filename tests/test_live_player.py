"""The console's live player (web/static/whep-player.js) in Chromium: it comes back after a stall.

A tile whose picture stops while its camera is online starts a new session (after 8 s without a new
frame).  Each attempt must get time of its own: a browser whose ICE gathering is slow (an unreachable
STUN or TURN server: Chromium waits for it, the player up to 1.5 s) once had every attempt after a stall
torn down before its offer was sent, and the tile never came back.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from tests import test_live
from tests.conftest import StationProcess, wait_until
from tests.test_live import TILE_STATS, frames_rising

browser = test_live.browser  # Chromium with its default features

# The browser's peer connections also ask a STUN server that never answers (on the test namespace's link,
# so its address is never resolved): every ICE gathering takes the player's whole 1.5 s.
SILENT_STUN = "stun:10.213.0.99:3478"
SLOW_GATHERING = """(() => {
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = function (config) {
    return new Native({ ...(config || {}), iceServers: [...((config || {}).iceServers || []), { urls: "SILENT_STUN" }] });
  };
  window.RTCPeerConnection.prototype = Native.prototype;
})();""".replace("SILENT_STUN", SILENT_STUN)
GATHERING_MS = """async () => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  const t0 = performance.now();
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") resolve();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") resolve(); };
    setTimeout(resolve, 3000);
  });
  pc.close();
  return performance.now() - t0;
}"""


def test_a_tile_whose_ice_gathering_is_slow_comes_back_after_a_stall(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess], browser: Any) -> None:
    cam = cameras("stall", width=640, height=360, fps=15)
    daemon = daemon_factory([{"id": "cell-1", "name": "Holding cell 1", "url": cam.url}],
                            health={"stall_seconds": 30})  # the camera stays online through the daemon's pause
    daemon.wait_state("cell-1", "online", timeout=30)
    daemon.add_user("duty.officer", "monitor", "correct horse battery")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(SLOW_GATHERING)
    page = context.new_page()
    page.goto(daemon.base_url + "/login")
    page.fill("#username", "duty.officer")
    page.fill("#password", "correct horse battery")
    page.click("#submit")
    page.wait_for_url(daemon.base_url + "/")
    # The precondition: this browser's gathering really is slow (else the test shows nothing).
    gathering_ms = page.evaluate(GATHERING_MS)
    assert gathering_ms >= 1400, (f"ICE gathering took {gathering_ms:.0f} ms: {SILENT_STUN} answers or fails fast "
                                  "here (run in tests/isolated.sh's namespace, where it is silent)")
    frames_rising(page, "cell-1", timeout=30)
    first = daemon.get("/api/live/sessions")[1]["sessions"]
    assert len(first) == 1, first

    # The station stops answering for 12 s (overloaded, or the network between): no picture, and the
    # page's last word on the camera is that it is online, so the tile gives up its session and retries.
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            page.wait_for_timeout(500)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert page.evaluate("(id) => document.querySelector(`.tile[data-camera-id=\"${id}\"]`).dataset.player",
                         "cell-1") == "reconnecting"
    # Back: the tile's next attempt gets its offer through and the picture returns by itself.
    frames_rising(page, "cell-1", timeout=40)
    assert page.evaluate(TILE_STATS, "cell-1")["width"] == 640

    def one_session() -> list[dict[str, Any]] | None:
        sessions: list[dict[str, Any]] = daemon.get("/api/live/sessions")[1]["sessions"]
        ok = [s["state"] for s in sessions] == ["connected"] and sessions[0]["id"] != first[0]["id"]
        return sessions if ok else None

    wait_until(one_session, 30, "the old session was not ended, or the new one is not the only one")
    context.close()
