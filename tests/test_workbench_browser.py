"""The auditor's workbench in real Chromium: two simulated cameras, the real daemon, one shared recording.

The recording (made once for the module) runs over several segment
boundaries (``segment_seconds: 2``) and holds an outage of the hall camera.
The checks are what an auditor sees: the burned-in clock of the simulated
camera (read from the decoded picture, so independent of the page's own
arithmetic) shows the moment clicked; scrubbing changes the picture; two
cameras stay in step (each video's position mapped to wall-clock time through
the playlist as ``ffmpeg`` or any player reads it, not through the page's
code); thumbnails on hover; the Persian page right to left with a Jalali date
for a fixed instant (screenshot saved); an unknown ``?lang=`` in English.
The station keeps Asia/Tehran time (+03:30), so a page that read times in the
browser's zone (UTC here) would be off by hours.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nvr.base.timeutil import iso, parse_iso
from tests.conftest import StationProcess, wait_until
from tests.test_live import CHROMIUM_ARGS

USER, PASSWORD = "auditor.anne", "correct horse battery staple"
ZONE = "Asia/Tehran"
# Names are the station's own configuration, but still shown as text, never as markup.
CELL_NAME = 'Cell 2 <img src=x onerror="window.__pwned=1">'

# The simulated camera burns its wall clock (HH:MM:SS, the test's local zone) into the picture as
# seven-segment digits (sim/scene.py _draw_clock); at 640x360 a unit is 3 px, the second line at y=36.
READ_CLOCK = """(arg) => {
  const [selector, line] = Array.isArray(arg) ? arg : [arg, 1];
  const video = document.querySelector(selector);
  if (!video || !video.videoWidth) return null;
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(video, 0, 0);
  const u = Math.max(2, Math.floor(Math.max(14, Math.floor(video.videoHeight / 16)) / 7));
  const x0 = Math.max(2, Math.floor(video.videoHeight / 60)) & ~1;
  const y = x0 + (line ? 10 : 2) * u;  // line 0: the frame counter, line 1: the clock
  const segs = { a: [2, 0.5], b: [3.5, 2], c: [3.5, 5], d: [2, 6.5], e: [0.5, 5], f: [0.5, 2], g: [2, 3.5] };
  const digits = { abcdef: "0", bc: "1", abdeg: "2", abcdg: "3", bcfg: "4", acdfg: "5", acdefg: "6", abc: "7",
                   abcdefg: "8", abcdfg: "9" };
  const lit = (px, py) => { const d = ctx.getImageData(Math.round(px), Math.round(py), 1, 1).data;
                            return (d[0] + d[1] + d[2]) / 3 > 128; };
  let x = x0 + 2 * u, out = "";
  for (const ch of line ? "00:00:00" : "00000000") {
    if (ch === ":") { out += ":"; x += 3 * u; continue; }
    const on = Object.entries(segs).filter(([, [cx, cy]]) => lit(x + cx * u, y + cy * u)).map(([s]) => s).join("");
    out += digits[on] ?? "?";
    x += 6 * u;
  }
  return out;
}"""


@dataclass
class Recording:
    daemon: StationProcess
    start: float              # the range the tests open
    end: float
    outage: tuple[float, float]  # the hall camera's gap, as the daemon reports it
    hall_spans: list[tuple[float, float]]
    cell_spans: list[tuple[float, float]]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    from sim.client import SimCamera

    hall, cell = SimCamera("hall"), SimCamera("cell", width=640, height=360, fps=15, gop=15)
    hall.gop = 15
    for cam in (hall, cell):
        cam.start()
    daemon = StationProcess(tmp_path_factory.mktemp("workbench"), [
        {"id": "hall", "name": "Hall", "zone": "hall", "url": hall.url},
        {"id": "cell", "name": CELL_NAME, "zone": "holding_cell", "url": cell.url},
    ], storage={"segment_seconds": 2}, station={"timezone": ZONE})
    try:
        daemon.start()
        daemon.wait_state("hall", "online", timeout=30)
        daemon.wait_state("cell", "online", timeout=30)
        begin = time.time()
        time.sleep(7)
        hall.stop()  # an outage of the hall camera; the cell camera keeps recording
        daemon.wait_state("hall", "offline", timeout=15)
        time.sleep(2)
        hall.start()
        daemon.wait_state("hall", "online", timeout=30)
        time.sleep(7)
        end = time.time()

        def searched(camera: str) -> dict[str, Any]:
            query = urllib.parse.urlencode({"camera": camera, "start": iso(begin - 3), "end": iso(end + 3)})
            status, body = daemon.get("/api/recordings?" + query)
            assert status == 200, body
            return dict(body)

        def both_sides() -> dict[str, Any] | None:
            body = searched("hall")
            return body if len(body["spans"]) == 2 and len(body["segments"]) >= 5 else None

        body = wait_until(both_sides, 30, "the hall camera's recording on both sides of the outage")
        spans = [(parse_iso(s["start"]), parse_iso(s["end"])) for s in body["spans"]]
        cell_spans = [(parse_iso(s["start"]), parse_iso(s["end"])) for s in searched("cell")["spans"]]
        daemon.add_user(USER, "auditor", PASSWORD)
        yield Recording(daemon, begin - 3, end + 3, (spans[0][1], spans[1][0]), spans, cell_spans)
    finally:
        daemon.stop()
        for cam in (hall, cell):
            cam.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One Chromium for the module, with test_live's flags; each test opens contexts of its own."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        yield p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)


def signed_in(chromium: Any, recording: Recording, locale: str = "en-GB") -> Any:
    """A new browser context (its own Accept-Language) with the auditor signed in."""
    context = chromium.new_context(locale=locale, viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.goto(recording.daemon.base_url + "/login")
    page.fill("#username", USER)
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_url(lambda url: urllib.parse.urlsplit(url).path == "/")
    return page


def open_workbench(page: Any, recording: Recording, sources: str = "hall") -> None:
    query = urllib.parse.urlencode({"sources": sources, "start": iso(recording.start), "end": iso(recording.end)})
    page.goto(recording.daemon.base_url + "/playback?" + query)
    page.wait_for_selector("#rows .row .span", timeout=20_000)
    wait_until(lambda: all(s["ready"] >= 1 for s in page.evaluate("nvrPlayback.sources()")), 20,
               "the players never loaded their playlists", interval=0.2)


def playlist_map(recording: Recording, camera: str) -> list[tuple[float, float, float]]:
    """(wall start, media start, duration) of every media segment, as any HLS client reads the playlist."""
    query = urllib.parse.urlencode({"start": iso(recording.start), "end": iso(recording.end)})
    status, body = recording.daemon.get(f"/api/recordings/{camera}/index.m3u8?" + query)
    assert status == 200, body
    out: list[tuple[float, float, float]] = []
    media, pdt, duration = 0.0, None, 0.0
    for line in body.decode().splitlines():
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = parse_iso(line.split(":", 1)[1])
        elif line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",")[0])
        elif line and not line.startswith("#"):
            assert pdt is not None, "a media segment without a program date time"
            out.append((pdt, media, duration))
            media += duration
            pdt += duration
    return out


def wall_of(segments: list[tuple[float, float, float]], media_time: float) -> float:
    for wall, start, duration in segments:
        if start <= media_time < start + duration + 1e-3:
            return wall + media_time - start
    raise AssertionError(f"media time {media_time} is in no segment of the playlist")


def x_for(page: Any, recording: Recording, at: float) -> tuple[float, float]:
    """Where on the screen the timeline shows the instant ``at`` (the first row)."""
    box = page.locator("#rows .row").first.bounding_box()
    view = page.evaluate("[nvrPlayback.state.viewStart, nvrPlayback.state.viewEnd]")
    fraction = (at * 1000 - view[0]) / (view[1] - view[0])
    return box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2


def clock_seconds(text: str | None) -> int | None:
    if not text or not re.fullmatch(r"\d\d:\d\d:\d\d", text):
        return None
    h, m, s = (int(x) for x in text.split(":"))
    return h * 3600 + m * 60 + s


def local_seconds(at: float) -> int:
    moment = time.localtime(at)  # the camera burns in its own (this process's) local time
    return moment.tm_hour * 3600 + moment.tm_min * 60 + moment.tm_sec


def burned_in(page: Any, selector: str, near: float, tolerance: float) -> int:
    """Wait until the picture's clock reads within ``tolerance`` s of ``near``; return the clock."""
    def check() -> int | None:
        shown = clock_seconds(page.evaluate(READ_CLOCK, selector))
        return shown if shown is not None and abs(shown - local_seconds(near)) <= tolerance else None

    return wait_until(check, 10, f"the picture never showed {time.strftime('%H:%M:%S', time.localtime(near))}"
                      f" (it shows {page.evaluate(READ_CLOCK, selector)})", interval=0.1)


# -- the stories ----------------------------------------------------------------------------


def test_the_timeline_shows_each_cameras_spans_and_the_outage_with_its_cause(
        chromium: Any, recording: Recording) -> None:
    page = signed_in(chromium, recording)
    open_workbench(page, recording, "hall,cell")
    assert page.locator('#rows .row[data-source="hall"] .span').count() == 2
    assert page.locator('#rows .row[data-source="cell"] .span').count() == 1
    gap = page.locator('#rows .row[data-source="hall"] .gap.cause-offline')
    assert gap.count() >= 1 and "camera offline" in (gap.first.get_attribute("title") or "")
    assert "camera offline" in page.inner_text("#gaps")
    assert page.inner_text('#rows .row[data-source="cell"] .row-label') == CELL_NAME
    assert CELL_NAME in page.inner_text("#gaps") or CELL_NAME in page.inner_text("#status")
    assert page.evaluate("window.__pwned") is None and page.locator("img[src=x]").count() == 0
    assert "+03:30" in page.inner_text("#now") or "GMT+3:30" in page.inner_text("#now")
    page.context.close()


def test_clicking_a_moment_mid_range_plays_from_there_within_a_second(chromium: Any, recording: Recording) -> None:
    page = signed_in(chromium, recording)
    open_workbench(page, recording)
    second = recording.hall_spans[1]
    target = second[0] + (second[1] - second[0]) * 0.5
    x, y = x_for(page, recording, target)
    page.evaluate("""() => {
      window.__clicked = 0; window.__playing = 0;
      const v = document.querySelector('.tile[data-source="hall"] video');
      document.getElementById("timeline").addEventListener("pointerdown", () => {
        window.__clicked = performance.now();
        const started = v.currentTime;
        const poll = () => {
          if (!v.paused && v.readyState >= 3 && Math.abs(v.currentTime - started) > 0.04) window.__playing = performance.now();
          else requestAnimationFrame(poll);
        };
        requestAnimationFrame(poll);
      }, { once: true });
    }""")
    page.click("#play")  # playing, then the click moves the play head: the auditor's usual move
    page.mouse.click(x, y)
    wait_until(lambda: page.evaluate("window.__playing") > 0, 10, "playback never started after the click",
               interval=0.05)
    latency = (page.evaluate("window.__playing") - page.evaluate("window.__clicked")) / 1000
    print(f"click to first moving frame: {latency:.3f} s")
    assert latency < 1.0, f"first moving frame {latency:.2f} s after the click"
    clicked = page.evaluate("nvrPlayback.clock.now()") / 1000  # the page's reading, checked two ways below
    segments = playlist_map(recording, "hall")
    state = page.evaluate("nvrPlayback.sources()")[0]
    played = wall_of(segments, state["time"])
    elapsed = time.time()
    assert abs(played - clicked) < 0.3, (played, clicked)
    # The instant the timeline showed under the pointer, as the camera itself stamped it.
    burned_in(page, '.tile[data-source="hall"] video', target + (time.time() - elapsed), 1.5)
    assert abs(clicked - target) < 2.0
    page.context.close()


def test_a_link_with_a_moment_opens_there_playing_after_sign_in(chromium: Any, recording: Recording) -> None:
    """Case pages link here as ?sources=...&at=...; the console's older links said ?camera=."""
    context = chromium.new_context(locale="en-GB")
    page = context.new_page()
    second = recording.hall_spans[1]
    at = second[0] + 2.0
    query = urllib.parse.urlencode({"sources": "hall,cell", "start": iso(recording.start), "end": iso(recording.end),
                                    "at": iso(at)})
    page.goto(recording.daemon.base_url + "/playback?" + query)
    page.wait_for_url(lambda url: urllib.parse.urlsplit(url).path == "/login")
    page.fill("#username", USER)
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_url(lambda url: urllib.parse.urlsplit(url).path == "/playback")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)["at"] == [iso(at)]
    page.wait_for_selector('#rows .row[data-source="cell"] .span', timeout=20_000)
    wait_until(lambda: page.evaluate("nvrPlayback.sources()[0].time") > 0, 10, "never played", interval=0.1)
    elapsed = page.evaluate("nvrPlayback.clock.now()") / 1000 - at
    assert 0 <= elapsed < 5, elapsed  # it opened at the moment linked, and plays on from there
    burned_in(page, '.tile[data-source="hall"] video', at + elapsed, 1.5)
    assert page.evaluate("nvrPlayback.clock.playing") is True
    old = urllib.parse.urlencode({"camera": "cell", "start": iso(recording.start), "end": iso(recording.end)})
    page.goto(recording.daemon.base_url + "/playback?" + old)
    page.wait_for_selector('#rows .row[data-source="cell"] .span', timeout=20_000)
    assert page.locator("#rows .row").count() == 1
    # A hand-edited link: repeated, unknown and too many sources. Four distinct ones are taken, and the
    # unknown ones are named in the error (nothing is played from a search that failed).
    bad = urllib.parse.urlencode({"sources": "hall,cell,hall,no-such-cam,x1,x2", "start": iso(recording.start),
                                  "end": iso(recording.end)})
    page.goto(recording.daemon.base_url + "/playback?" + bad)
    page.wait_for_selector("#status.error", timeout=10_000)
    # Each taken source is searched at once; the error names every unknown one.
    status = page.inner_text("#status")
    assert "no-such-cam" in status and "'x1'" in status, status
    assert page.locator("#sources input:checked").count() == 4
    assert page.locator("#rows .row").count() == 0
    context.close()


def test_scrubbing_moves_the_picture(chromium: Any, recording: Recording) -> None:
    page = signed_in(chromium, recording)
    open_workbench(page, recording)
    first, second = recording.hall_spans
    a = first[0] + 1.5
    b = second[1] - 1.5
    xa, y = x_for(page, recording, a)
    xb, _ = x_for(page, recording, b)
    page.mouse.move(xa, y)
    page.mouse.down()
    burned_in(page, '.tile[data-source="hall"] video', a, 1.2)
    before = page.evaluate(READ_CLOCK, '.tile[data-source="hall"] video')
    for i in range(1, 11):
        page.mouse.move(xa + (xb - xa) * i / 10, y)
        page.wait_for_timeout(60)
    page.mouse.up()
    shown = burned_in(page, '.tile[data-source="hall"] video', b, 1.2)
    assert clock_seconds(before) != shown
    assert page.evaluate("nvrPlayback.clock.playing") is False  # a scrub of a paused player leaves it paused
    # Frame by frame, paused: the camera's own frame counter moves by exactly one per step.
    video = '.tile[data-source="hall"] video'

    def counter() -> int | None:
        text = page.evaluate(READ_CLOCK, [video, 0])
        return int(text) if text and text.isdigit() else None

    def steps_to(expected: int) -> None:
        wait_until(lambda: counter() == expected, 5, f"frame {expected} never shown (shows {counter()})",
                          interval=0.05)

    page.wait_for_timeout(300)
    start = wait_until(counter, 5, "the frame counter cannot be read")
    page.click("#frame-forward")
    steps_to(start + 1)
    page.click("#frame-forward")
    steps_to(start + 2)
    page.click("#frame-back")
    steps_to(start + 1)
    page.keyboard.press("ArrowLeft")
    steps_to(start)
    page.context.close()


def test_two_cameras_play_in_step_after_a_seek_and_a_speed_change(chromium: Any, recording: Recording) -> None:
    page = signed_in(chromium, recording)
    open_workbench(page, recording, "hall,cell")
    maps = {camera: playlist_map(recording, camera) for camera in ("hall", "cell")}
    second = recording.hall_spans[1]
    page.click("#play")
    x, y = x_for(page, recording, second[0] + 0.8)
    page.mouse.click(x, y)  # a seek while playing
    page.wait_for_timeout(1500)

    def spread() -> float:
        samples = []
        for _ in range(5):
            state = {s["id"]: s for s in page.evaluate("nvrPlayback.sources()")}
            assert not state["hall"]["paused"] and not state["cell"]["paused"], state
            samples.append(abs(wall_of(maps["hall"], state["hall"]["time"]) - wall_of(maps["cell"], state["cell"]["time"])))
            page.wait_for_timeout(150)
        print(f"largest of 5 spreads between the two cameras: {max(samples) * 1000:.0f} ms")
        return max(samples)

    assert spread() < 0.1
    page.select_option("#speed", "2")
    page.wait_for_timeout(1200)
    assert page.evaluate("nvrPlayback.clock.rate") == 2
    assert spread() < 0.1
    # Into the hall camera's outage: it says so, with the cause, while the cell camera plays on.
    outage = (recording.outage[0] + recording.outage[1]) / 2
    page.select_option("#speed", "1")
    x, y = x_for(page, recording, outage)
    page.mouse.click(x, y)
    message = page.locator('.tile[data-source="hall"] .tile-gap')
    message.wait_for(state="visible", timeout=5000)
    assert "Not recorded" in message.inner_text() and "camera offline" in message.inner_text()
    cell = [s for s in page.evaluate("nvrPlayback.sources()") if s["id"] == "cell"][0]
    page.wait_for_timeout(500)
    later = [s for s in page.evaluate("nvrPlayback.sources()") if s["id"] == "cell"][0]
    assert later["time"] > cell["time"] and not later["gap"]
    page.context.close()


def test_playing_into_a_gap_of_every_source_says_so_then_goes_on_to_the_next_recording(
        chromium: Any, recording: Recording) -> None:
    page = signed_in(chromium, recording)
    open_workbench(page, recording)
    assert page.is_checked("#skip-gaps")  # the default
    gap_start, gap_end = recording.outage
    page.click("#play")
    page.evaluate("(at) => nvrPlayback.seek(at)", (gap_start - 1.0) * 1000)
    started = time.monotonic()
    message = page.locator('.tile[data-source="hall"] .tile-gap')
    message.wait_for(state="visible", timeout=5000)
    assert "camera offline" in message.inner_text()
    burned_in(page, '.tile[data-source="hall"] video', gap_end + 0.5, 1.5)
    took = time.monotonic() - started
    assert took < (gap_end - gap_start), f"{took:.1f} s to get past a {gap_end - gap_start:.1f} s gap"
    assert page.evaluate("nvrPlayback.clock.playing") is True
    page.context.close()


def test_footage_only_in_the_archive_is_offered_as_a_clip(chromium: Any, recording: Recording) -> None:
    """The playlist's answer for footage kept only off-site (web/hls.py, only_in_archive), replayed here:
    running the S3 archive for it is test_archive's business."""
    page = signed_in(chromium, recording)
    answer = json.dumps({"error": "only_in_archive", "message": "the footage of hall is only in the off-site "
                         "archive: play it as a clip (clip.mp4)"})
    page.route("**/api/recordings/hall/index.m3u8*",
               lambda route: route.fulfill(status=404, content_type="application/json", body=answer))
    query = urllib.parse.urlencode({"sources": "hall", "start": iso(recording.start), "end": iso(recording.end)})
    page.goto(recording.daemon.base_url + "/playback?" + query)
    message = page.locator('.tile[data-source="hall"] .tile-gap')
    message.wait_for(state="visible", timeout=15_000)
    wait_until(lambda: "Only in the off-site archive" in message.inner_text(), 10, "no archive message")
    assert "play it as a clip" in message.inner_text()
    message.locator("button").click()
    wait_until(lambda: page.evaluate("nvrPlayback.sources()[0].time") > 0.5, 15, "the clip never played",
               interval=0.1)
    assert "/api/recordings/hall/clip.mp4?" in page.evaluate("document.querySelector('.tile video').currentSrc")
    page.context.close()


def test_a_thumbnail_appears_on_hover(chromium: Any, recording: Recording) -> None:
    page = signed_in(chromium, recording)
    open_workbench(page, recording)
    first = recording.hall_spans[0]
    x, y = x_for(page, recording, (first[0] + first[1]) / 2)
    page.mouse.move(x - 5, y)
    page.mouse.move(x, y)
    shown = """() => {
      const img = document.getElementById("preview-img");
      return !document.getElementById("preview").hidden && img.complete && img.naturalWidth > 0 && !img.hidden;
    }"""
    wait_until(lambda: page.evaluate(shown), 10, "no thumbnail appeared under the pointer", interval=0.1)
    assert page.evaluate("document.getElementById('preview-img').naturalWidth") >= 160  # a picture, not an icon
    src = page.get_attribute("#preview-img", "src") or ""
    assert "/api/recordings/hall/thumbnail.jpg?at=" in src
    # The strip under the timeline: thumbnails of the camera across the view, in time order, loaded.
    page.wait_for_selector("#strip img", timeout=10_000)
    wait_until(lambda: page.evaluate("[...document.querySelectorAll('#strip img')].every((i) => i.complete"
                                     " && i.naturalWidth > 0)"), 10, "the strip's thumbnails never loaded")
    assert page.locator("#strip img").count() >= 3
    page.context.close()


# The Persian page: a known instant and the date an officer in Tehran writes for it. 2026-03-21 12:00 UTC is
# 15:30 in Tehran on 1 Farvardin 1405 (Nowruz).
KNOWN_INSTANT = "2026-03-21T12:00:00Z"
JALALI_SHOWN = "۱۴۰۵/۰۱/۰۱, ۱۵:۳۰:۰۰ (\u200e+۳:۳۰ گرینویچ)"  # as Debian 12's Chromium (ICU) writes it


def test_the_persian_page_reads_right_to_left_with_jalali_dates(
        chromium: Any, recording: Recording, tmp_path: Path) -> None:
    page = signed_in(chromium, recording, locale="fa-IR")
    html = page.evaluate("document.documentElement.outerHTML.slice(0, 60)")
    assert page.evaluate("[document.documentElement.lang, document.documentElement.dir]") == ["fa", "rtl"], html
    query = urllib.parse.urlencode({"sources": "hall", "start": KNOWN_INSTANT, "end": "2026-03-21T13:00:00Z"})
    response = page.goto(recording.daemon.base_url + "/playback?" + query)
    assert response is not None
    assert response.text().startswith('<!doctype html>\n<html lang="fa" dir="rtl">')  # from the first byte
    page.wait_for_selector("#start + output:not(:empty)")
    # The date the page shows for the range's start: Solar Hijri, Persian digits, Tehran time with its offset.
    assert page.inner_text("#start + output") == JALALI_SHOWN
    hover = page.get_attribute("#start + output", "title") or ""
    assert "2026-03-21T12:00:00Z" in hover and "۲۰۲۶" in hover  # Gregorian and UTC on hover
    assert page.input_value("#start") == "2026-03-21T15:30"  # the input is in station time (UTC 12:00)
    assert page.inner_text("#play") == "پخش"
    # Laid out right to left: the back link is at the right, the search button left of the inputs.
    back = page.locator(".back").bounding_box()
    assert back is not None and back["x"] > 1366 / 2
    shot = tmp_path / "workbench-fa.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot of the Persian workbench: {shot}")
    assert shot.stat().st_size > 10_000
    # And with the module's recording playing: the timeline right to left (earlier times at the right).
    open_workbench(page, recording, "hall,cell")
    page.click("#play")
    spans = page.locator('#rows .row[data-source="hall"] .span')
    first, second = spans.nth(0).bounding_box(), spans.nth(1).bounding_box()
    assert first is not None and second is not None and first["x"] > second["x"]
    wait_until(lambda: page.evaluate("nvrPlayback.sources()[0].time") > 0.5, 10, "never played", interval=0.1)
    playing = tmp_path / "workbench-fa-playing.png"
    page.screenshot(path=str(playing), full_page=True)
    print(f"screenshot of the Persian workbench playing: {playing}")
    page.context.close()


def test_an_unknown_language_in_the_link_falls_back_to_english(chromium: Any, recording: Recording) -> None:
    context = chromium.new_context(locale="de-DE")
    page = context.new_page()
    response = page.goto(recording.daemon.base_url + "/login?lang=xx")
    assert response is not None and response.text().startswith('<!doctype html>\n<html lang="en" dir="ltr">')
    assert page.inner_text("#submit") == "Sign in"
    page.goto(recording.daemon.base_url + "/login?lang=fa")  # a language it knows, for a German browser
    assert page.evaluate("document.documentElement.dir") == "rtl"
    context.close()


def test_station_time_across_a_daylight_saving_change(chromium: Any) -> None:
    """The inputs and labels of a London station across the spring and autumn changes of 2026."""
    context = chromium.new_context(timezone_id="Asia/Tokyo")  # the browser's own zone must not matter
    page = context.new_page()
    page.set_content('<script type="application/json" id="nvr-i18n">'
                     '{"lang": "en", "dir": "ltr", "timeZone": "Europe/London", "strings": {}}</script>')
    page.add_script_tag(path=str(Path(__file__).parent.parent / "web" / "static" / "i18n.js"))
    read = "(v) => nvrI18n.isoUtc(nvrI18n.fromInput(v))"
    assert page.evaluate(read, "2026-03-29T00:30:00") == "2026-03-29T00:30:00Z"  # GMT
    assert page.evaluate(read, "2026-03-29T02:30:00") == "2026-03-29T01:30:00Z"  # BST, after the jump
    assert page.evaluate(read, "2026-03-29T01:30:00") == "2026-03-29T01:30:00Z"  # skipped: read as GMT
    assert page.evaluate(read, "2026-10-25T01:30:00") == "2026-10-25T00:30:00Z"  # twice: the first one
    assert page.evaluate(read, "2026-10-25T02:30:00") == "2026-10-25T02:30:00Z"
    show = "(v) => [nvrI18n.toInput(Date.parse(v)), nvrI18n.dateTime(Date.parse(v))]"
    assert page.evaluate(show, "2026-03-29T00:59:59Z") == ["2026-03-29T00:59:59", "29/03/2026, 00:59:59 GMT+0"]
    assert page.evaluate(show, "2026-03-29T01:00:00Z") == ["2026-03-29T02:00:00", "29/03/2026, 02:00:00 GMT+1"]
    assert page.evaluate(show, "2026-10-25T00:30:00Z")[1] == "25/10/2026, 01:30:00 GMT+1"
    assert page.evaluate(show, "2026-10-25T01:30:00Z")[1] == "25/10/2026, 01:30:00 GMT+0"
    context.close()
