"""The auditor's workbench: a click inside a 24 h range, in real Chromium, against the whole-clip way.

A day of one camera's 1080p25 recording (1,440 one-minute segments: one real
segment written through SegmentWriter, hard-linked 1,440 times so the day
costs the disk one minute) is indexed, and the real daemon serves it.  The
workbench page opens the day (``/playback?sources=...``, hls.js over
``index.m3u8``), then the auditor clicks five moments spread over the day.

- ``workbench_seek``: per click, milliseconds from the click to the first
  moving frame (the video playing and its time advancing) and the bytes the
  browser fetched for it (media byte ranges); median and worst.  Also the
  playlist's size and the time to the page's first playable state.
- beside it, in the same run, the way the page worked before: a ``<video>``
  on ``clip.mp4`` from the clicked moment (the old page asked for up to 3 h),
  the same five moments: time to the first moving frame and the bytes fetched
  by then (the clip is remuxed and streamed from the start of the range).

    python bench/bench_workbench.py [--clicks 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_evidence import one_minute_segment  # noqa: E402
from bench.common import report  # noqa: E402
from nvr.base.timeutil import iso  # noqa: E402
from recorder.index import NewSegment, SegmentIndex  # noqa: E402
from recorder.storage import INDEX_FILE, segment_relpath  # noqa: E402
from tests.conftest import StationProcess, wait_until  # noqa: E402
from tests.test_live import CHROMIUM_ARGS  # noqa: E402

USER, PASSWORD = "bench.auditor", "bench password for playback"
CAMERA = "cam-00"

# Resolves when the video plays and its time has moved; bytes are the browser's own resource entries.
FIRST_FRAME = """(selector) => new Promise((resolve) => {
  const video = document.querySelector(selector);
  const start = performance.now();
  const from = video.currentTime;
  const poll = () => {
    if (!video.paused && video.readyState >= 3 && Math.abs(video.currentTime - from) > 0.04) {
      resolve(performance.now() - start);
    } else if (performance.now() - start > 30000) resolve(-1);
    else requestAnimationFrame(poll);
  };
  poll();
})"""


class Received:
    """Bytes the browser received (Chrome DevTools protocol), counted as they arrive, streamed or not."""

    def __init__(self, page: Any) -> None:
        self.bytes = 0
        session = page.context.new_cdp_session(page)
        session.send("Network.enable")
        session.on("Network.dataReceived", self._on_data)

    def _on_data(self, event: dict[str, Any]) -> None:
        self.bytes += int(event.get("encodedDataLength") or event.get("dataLength") or 0)

    def since(self, mark: int) -> int:
        return self.bytes - mark


def fill_day(storage: Path, start: float) -> int:
    """1,440 one-minute segments from ``start`` (hard links of one real segment); returns the bytes of one."""
    rel, size, frames = one_minute_segment(storage, start)
    template = storage / rel
    digest = hashlib.sha256(template.read_bytes()).hexdigest()
    index = SegmentIndex(storage / INDEX_FILE)
    try:
        for minute in range(1440):
            seg_start = start + minute * 60
            path = segment_relpath(CAMERA, seg_start)
            if path != rel:
                (storage / path).parent.mkdir(parents=True, exist_ok=True)
                os.link(template, storage / path)
            index.add_segment(NewSegment(camera=CAMERA, start=seg_start, end=seg_start + 60, frames=frames,
                                         bytes=size, sha256=digest, codec="h264", width=1920, height=1080,
                                         params='{"extradata": ""}', path=path))
    finally:
        index.close()
    return size


def sign_in(browser: Any, base: str) -> Any:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.goto(base + "/login")
    page.fill("#username", USER)
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_url(lambda url: urllib.parse.urlsplit(url).path == "/")
    return page


def workbench(browser: Any, base: str, day: float, moments: list[float]) -> dict[str, Any]:
    page = sign_in(browser, base)
    playlist: dict[str, int] = {}
    page.on("response", lambda r: playlist.update(bytes=int(r.headers.get("content-length") or 0))
            if "index.m3u8" in r.url else None)
    query = urllib.parse.urlencode({"sources": CAMERA, "start": iso(day), "end": iso(day + 86400)})
    opened = time.perf_counter()
    page.goto(base + "/playback?" + query)
    wait_until(lambda: page.evaluate("nvrPlayback.sources().length && nvrPlayback.sources()[0].ready >= 1"), 120,
               "the workbench never loaded the day's playlist", interval=0.05)
    ready_ms = (time.perf_counter() - opened) * 1000
    received = Received(page)
    page.click("#play")
    latencies, fetched = [], []
    for at in moments:
        mark = received.bytes
        page.evaluate("(at) => nvrPlayback.seek(at)", at * 1000)
        latencies.append(page.evaluate(FIRST_FRAME, ".tile video"))
        fetched.append(received.since(mark))
    page.context.close()
    return {"ready_ms": ready_ms, "playlist_bytes": playlist.get("bytes", 0), "latencies": latencies,
            "fetched": fetched}


def whole_clip(browser: Any, base: str, moments: list[float]) -> dict[str, Any]:
    page = sign_in(browser, base)
    page.goto(base + "/healthz")  # this origin, for the session cookie
    page.set_content('<video muted playsinline style="width:640px"></video>')
    received = Received(page)
    latencies, fetched = [], []
    for at in moments:
        mark = received.bytes
        url = f"{base}/api/recordings/{CAMERA}/clip.mp4?" + urllib.parse.urlencode(
            {"start": iso(at), "end": iso(at + 3 * 3600)})
        page.evaluate("(url) => { const v = document.querySelector('video'); v.src = url; v.play().catch(() => {}); }",
                      url)
        latencies.append(page.evaluate(FIRST_FRAME, "video"))
        fetched.append(received.since(mark))
        page.evaluate("() => { const v = document.querySelector('video'); v.pause(); v.removeAttribute('src');"
                      " v.load(); }")
    page.context.close()
    return {"latencies": latencies, "fetched": fetched}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clicks", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="nvr-bench-playback-") as tmp:
        daemon = StationProcess(Path(tmp), [{"id": CAMERA, "name": "Cam", "url": "rtsp://127.0.0.1:9/none"}],
                                station={"timezone": "Asia/Tehran"})
        day = float(int(time.time() - 26 * 3600))
        segment_bytes = fill_day(daemon.storage, day)
        daemon.add_user(USER, "auditor", PASSWORD)
        daemon.start(timeout=60)
        moments = [day + 86400 * (i + 0.5) / args.clicks + 17.3 for i in range(args.clicks)]
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                hls = workbench(browser, daemon.base_url, day, moments)
                clip = whole_clip(browser, daemon.base_url, moments)
                browser.close()
        finally:
            daemon.stop()
    ok = [x for x in hls["latencies"] if x >= 0]
    clip_ok = [x for x in clip["latencies"] if x >= 0]
    report("workbench_seek", range="24 h of 1080p25 ~4 Mbps (1440 x 1 min segments)", clicks=args.clicks,
           segment_mb=round(segment_bytes / 1e6, 1), playlist_kb=round(hls["playlist_bytes"] / 1e3, 1),
           page_ready_ms=round(hls["ready_ms"]),
           hls_first_frame_ms_median=round(statistics.median(ok)) if ok else None,
           hls_first_frame_ms_worst=round(max(ok)) if ok else None,
           hls_mb_per_click_median=round(statistics.median(hls["fetched"]) / 1e6, 2),
           clip_first_frame_ms_median=round(statistics.median(clip_ok)) if clip_ok else None,
           clip_first_frame_ms_worst=round(max(clip_ok)) if clip_ok else None,
           clip_mb_by_first_frame_median=round(statistics.median(clip["fetched"]) / 1e6, 2),
           failed_clicks=len(hls["latencies"]) - len(ok), failed_clips=len(clip["latencies"]) - len(clip_ok),
           first_frame_ratio_clip_to_hls=round(statistics.median(clip_ok) / statistics.median(ok), 2)
           if ok and clip_ok else None)


if __name__ == "__main__":
    main()
