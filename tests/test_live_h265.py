"""H.265 cameras in the console: explained on the tile without a transcode, playing in Chromium with one.

The transcode is opt-in per camera (``live.cameras.<id>.transcode: h264``) or for all; it decodes once and
encodes once per camera whatever the number of viewers, at the configured size, and never touches the
recording (which stays H.265).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import StationProcess, wait_until
from tests.test_live import _frames, _whep_client, browser, frames_rising, recvonly_peer  # noqa: F401


def console(browser: Any, daemon: StationProcess) -> Any:  # noqa: F811
    daemon.add_user("duty.officer", "monitor", "correct horse battery")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(daemon.base_url + "/")
    page.wait_for_url(lambda url: urlsplit(url).path == "/login")
    page.fill("#username", "duty.officer")
    page.fill("#password", "correct horse battery")
    page.click("#submit")
    page.wait_for_url(daemon.base_url + "/")
    return page


def test_without_transcode_the_tile_says_the_stream_is_h265_and_names_the_fix(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess], browser: Any) -> None:  # noqa: F811
    cam = cameras("h265", width=640, height=360, fps=15, codec="h265")
    daemon = daemon_factory([{"id": "cell-2", "name": "Cell 2", "zone": "holding_cell", "url": cam.url}])
    daemon.wait_state("cell-2", "online", timeout=30)
    status, body = daemon.request("POST", "/api/cameras/cell-2/whep", body=b"v=0\r\n",
                                  headers={"Content-Type": "application/sdp"})
    assert (status, body["error"]) == (409, "h265_needs_transcode"), body
    assert "live.transcode: h264" in body["message"] and "live_url" in body["message"]
    page = console(browser, daemon)
    tile = '.tile[data-camera-id="cell-2"]'
    wait_until(lambda: page.locator(f"{tile} .tile-message-title").inner_text() == "Live view unavailable", 20,
               "the tile does not say live view is unavailable")
    detail = page.locator(f"{tile} .tile-message-detail").inner_text()
    assert "live stream is H.265" in detail and "browsers cannot play" in detail
    assert "live.transcode: h264" in detail and "live_url" in detail
    assert page.locator(f"{tile}.show-message").count() == 1  # shown, not hidden behind a black picture
    page.close()


async def _post_status(daemon: StationProcess, camera_id: str) -> tuple[int, Any]:
    pc = await recvonly_peer()
    try:
        return daemon.request("POST", f"/api/cameras/{camera_id}/whep", body=pc.localDescription.sdp.encode(),
                              headers={"Content-Type": "application/sdp"})
    finally:
        await pc.close()


def test_with_transcode_chromium_plays_the_h265_camera_at_the_configured_size(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess], browser: Any) -> None:  # noqa: F811
    cam = cameras("h265", width=1280, height=720, fps=15, codec="h265")
    daemon = daemon_factory(
        [{"id": "cell-2", "name": "Cell 2", "zone": "holding_cell", "url": cam.url}],
        live={"cameras": {"cell-2": {"transcode": "h264"}}, "transcode_width": 640, "transcode_height": 640},
        storage={"segment_seconds": 2},
    )
    daemon.wait_state("cell-2", "online", timeout=30)
    page = console(browser, daemon)
    stats = frames_rising(page, "cell-2", timeout=40)
    assert (stats["width"], stats["height"]) == (640, 360)  # fitted into 640x640, aspect kept
    live = daemon.get("/api/live/sessions")[1]
    assert list(live["transcoders"]) == ["cell-2"] and live["transcoders"]["cell-2"]["viewers"] == 1
    assert live["sessions"][0]["video_profile_level_id"] == "42c01f"  # Constrained Baseline 3.1, what x264 writes
    # The recording is the camera's own H.265, untouched.
    wait_until(lambda: daemon.camera("cell-2")["last_segment_at"], 30, "not recording")
    assert daemon.camera("cell-2")["codec"] == "hevc"
    page.close()
    wait_until(lambda: daemon.get("/api/live/sessions")[1]["transcoders"] == {}, 30,
               "the transcoder kept running without viewers")
    assert "live transcode stopped after" in daemon.log()


async def test_viewers_of_one_camera_share_one_transcode_and_the_cap_holds(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess]) -> None:
    first = cameras("a", width=640, height=360, fps=15, codec="h265")
    second = cameras("b", width=640, height=360, fps=15, codec="h265")
    daemon = daemon_factory(
        [{"id": "a", "name": "A", "url": first.url}, {"id": "b", "name": "B", "url": second.url}],
        live={"transcode": "h264", "max_transcodes": 1},
    )
    daemon.wait_state("a", "online", timeout=30)
    daemon.wait_state("b", "online", timeout=30)
    one, _ = await _whep_client(daemon.base_url, "a", daemon.token)
    two, _ = await _whep_client(daemon.base_url, "a", daemon.token)
    try:
        for pc in (one, two):
            frames = await _frames(pc, 5, timeout=30)
            assert (frames[-1].width, frames[-1].height) == (640, 360)
        live = daemon.get("/api/live/sessions")[1]
        assert list(live["transcoders"]) == ["a"], live  # one decode and one encode for both viewers
        assert live["transcoders"]["a"]["viewers"] == 2
        assert live["readers"] == {"a": 2, "b": 0}
        # A viewer that lost a picture asks for a keyframe (PLI): the transcoder encodes one.
        ssrc = re.search(r"a=ssrc:(\d+) ", one.remoteDescription.sdp)
        assert ssrc is not None
        await one.getTransceivers()[0].receiver._send_rtcp_pli(int(ssrc.group(1)))
        await asyncio.sleep(0.5)
        wait_until(lambda: daemon.get("/api/live/sessions")[1]["transcoders"]["a"]["keyframes_forced"] >= 1, 10,
                   "the keyframe request was not answered")
        assert sum(s["keyframe_requests"] for s in daemon.get("/api/live/sessions")[1]["sessions"]) >= 1
        status, body = await _post_status(daemon, "b")
        assert (status, body["error"]) == (503, "too_many_transcodes"), body
        assert "live.max_transcodes" in body["message"]
    finally:
        await one.close()
        await two.close()
    wait_until(lambda: daemon.get("/api/live/sessions")[1]["transcoders"] == {}, 30, "transcoder left running")
    status, _ = await _post_status(daemon, "b")  # the cap is free again
    assert status == 201


def test_the_transcode_size_keeps_the_aspect_never_enlarges_and_bad_packets_are_counted() -> None:
    import time as _time
    from fractions import Fraction

    from nvr.base.config import Live
    from streams.media import MediaPacket, Session, TrackInfo, TrackKind
    from web.live_transcode import Transcoding, fit, level_for

    assert fit(1920, 1080, 1280, 720) == (1280, 720)
    assert fit(2560, 1440, 1280, 1280) == (1280, 720)
    assert fit(640, 480, 1280, 720) == (640, 480)  # never enlarged
    assert fit(1280, 1024, 640, 640) == (640, 512)
    assert fit(1001, 563, 640, 640) == (640, 358)  # even sizes within the box
    assert (level_for(1280, 720), level_for(1920, 1080), level_for(3840, 2160)) == (31, 40, 51)
    video = TrackInfo(kind=TrackKind.VIDEO, codec="hevc", time_base=Fraction(1, 90000), width=640, height=360)
    session = Session(video=video, audio=None, started_at=_time.time(), started_mono=_time.monotonic())
    work = Transcoding(Live())
    garbage = MediaPacket(session=session, kind=TrackKind.VIDEO, data=b"\x00\x00\x01\x26\x01" + bytes(range(200)),
                          pts=0, dts=0, time_base=Fraction(1, 90000), is_keyframe=True, received_at=_time.time(),
                          received_mono=_time.monotonic())
    assert work.transcode(garbage) == []  # a broken keyframe: nothing out, nothing raised
    assert work.frames_out == 0
