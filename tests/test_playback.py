"""An auditor plays back a recording in the console: timeline of spans and gaps, click, and the video plays."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from nvr.base.timeutil import iso
from tests.conftest import StationProcess, wait_until
from tests.test_live import browser  # noqa: F401 - the Chromium fixture

VIDEO_STATE = """() => {
  const v = document.getElementById("video");
  return {width: v.videoWidth, time: v.currentTime, ready: v.readyState, src: v.currentSrc};
}"""


def test_playback_page_shows_spans_and_gap_and_plays_from_a_click(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess], browser: Any) -> None:  # noqa: F811
    cam = cameras("cell", width=640, height=360, fps=15, gop=15)
    daemon = daemon_factory([{"id": "cell-2", "name": "Holding cell 2", "zone": "holding_cell", "url": cam.url}],
                            storage={"segment_seconds": 3})
    daemon.wait_state("cell-2", "online", timeout=30)
    begin = time.time()
    time.sleep(7)
    cam.stop()  # an outage: the timeline must show a gap
    daemon.wait_state("cell-2", "offline", timeout=10)
    time.sleep(3)
    cam.start()
    daemon.wait_state("cell-2", "online", timeout=30)
    time.sleep(7)

    def two_spans() -> bool:
        query = urllib.parse.urlencode({"camera": "cell-2", "start": iso(begin - 5), "end": iso(time.time())})
        status, body = daemon.get("/api/recordings?" + query)
        return status == 200 and len(body["spans"]) == 2

    wait_until(two_spans, 20, "recordings on both sides of the outage")
    daemon.add_user("auditor.anne", "auditor", "correct horse battery staple")
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    query = urllib.parse.urlencode({"camera": "cell-2", "start": iso(begin - 5), "end": iso(time.time())})
    page.goto(daemon.base_url + "/playback?" + query)
    page.wait_for_url(lambda url: urllib.parse.urlsplit(url).path == "/login")
    page.fill("#username", "auditor.anne")
    page.fill("#password", "correct horse battery staple")
    page.click("#submit")
    page.wait_for_url(lambda url: urllib.parse.urlsplit(url).path == "/playback")
    if "camera=" not in page.url:
        page.goto(daemon.base_url + "/playback?" + query)
    page.wait_for_selector("#timeline .span", timeout=20_000)
    assert page.locator("#timeline .span").count() == 2
    assert "gap" in page.inner_text("#status") or "2 span(s)" in page.inner_text("#status")
    assert page.locator("#gaps li").count() >= 1 and "offline" in page.inner_text("#gaps")

    box = page.locator("#timeline .span").first.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)

    def playing() -> dict[str, Any] | None:
        state: dict[str, Any] = page.evaluate(VIDEO_STATE)
        return state if state["width"] == 640 and state["time"] > 1.0 else None

    state = wait_until(playing, 30, "the clip never played", interval=0.3)
    assert "/api/recordings/cell-2/clip.mp4" in state["src"]
