"""HLS playback as an auditor's player sees it: the playlist of a range, seeks by byte range, clips by Range.

In process: the real daemon object (its cameras point at a closed port),
real recordings written below the RTSP layer with real H.264, the real
aiohttp app with its access control on loopback, and FFmpeg as the
independent client that reads the playlist end to end.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nvr.base.config import Config, Storage
from nvr.base.timeutil import iso as _iso
from nvr.base.timeutil import parse_iso
from nvr.identity.authdb import AuthDatabase
from nvr.identity.roles import Role
from nvr.station import Station
from recorder import hls
from recorder.index import NewSegment, SegmentIndex, SegmentRecord
from recorder.recorder import RecorderCore
from recorder.storage import init_storage
from recorder.timeline import Timeline
from recorder.timeline import build as build_timeline
from streams.media import SessionEnded
from tests.media import encode_h264, make_session, packets
from tests.test_handlers import Audit, Recording, station_config
from tests.test_handlers import Station as StubStation
from web import hls as web_hls
from web.access import ACCESS
from web.app import create_app
from web.http import STATION, json_errors

FPS = 15


def iso(timestamp: float) -> str:
    return _iso(timestamp) or ""


@pytest.fixture(scope="module")
def units() -> list[tuple[bytes, bool]]:
    return encode_h264(FPS * 10, gop=FPS)  # 10 s, a keyframe every second


@dataclass
class Site:
    client: TestClient
    daemon: Station
    tokens: dict[str, str]
    start: float  # first run: [start, start + 10); outage; second run: [start + 20, start + 26)

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who != "anonymous" else {}

    @property
    def base(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    def range(self, lo: float, hi: float) -> dict[str, str]:
        return {"start": iso(self.start + lo), "end": iso(self.start + hi)}


def write_config(tmp_path: Path) -> Config:
    data = {
        "station": {"id": "st-hls", "name": "HLS"},
        "storage": {"path": str(tmp_path / "storage"), "segment_seconds": 4},
        "ingest": {"backoff_initial_seconds": 5, "backoff_max_seconds": 30},
        "cameras": [{"id": "hall", "name": "Hall", "url": "rtsp://127.0.0.1:9/none"},
                    {"id": "cell", "name": "Cell", "url": "rtsp://127.0.0.1:9/none"}],
    }
    (tmp_path / "config.yaml").write_text(json.dumps(data))
    return Config.model_validate(data)


async def record(daemon: Station, camera: str, units: list[tuple[bytes, bool]], at: float, frames: int) -> None:
    index = daemon.recording.index
    assert index is not None
    config = daemon.config
    session = make_session(units[:frames], started_at=at)
    core = RecorderCore(camera, config.storage.path, config.storage, index.add_segment)
    await index.call(core.handle, packets(session, units[:frames], wall_start=at))
    await index.call(core.handle, [SessionEnded(session, "test")])


@pytest.fixture
async def site(tmp_path: Path, units: list[tuple[bytes, bool]]) -> AsyncIterator[Site]:
    config = write_config(tmp_path)
    init_storage(config.storage.path, config.station.id)
    db = AuthDatabase(config.auth_database)
    tokens = {role.value: db.create_token(role.value, role, None, "test") for role in (Role.AUDITOR, Role.MONITOR)}
    tokens["auditor2"] = db.create_token("auditor2", Role.AUDITOR, None, "test")
    tokens["cell-auditor"] = db.create_token("cell-auditor", Role.AUDITOR, frozenset({"cell"}), "test")
    db.close()
    daemon = Station(config, tmp_path / "config.yaml")
    await daemon.start()
    start = float(int(time.time()) - 120)
    # Two segment boundaries (4 + 4 + 2 s), a 10 s outage, then 6 s more (4 + 2 s).
    await record(daemon, "hall", units, start, FPS * 10)
    await record(daemon, "hall", units, start + 20, FPS * 6)
    client = TestClient(TestServer(create_app(daemon), host="127.0.0.1"))
    await client.start_server()
    try:
        yield Site(client, daemon, tokens, start)
    finally:
        await client.close()
        await daemon.stop()


async def run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[bytes]:
    """A subprocess without blocking the loop (the server under test runs on it)."""
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return subprocess.CompletedProcess(list(args), proc.returncode or 0, out, err)


@dataclass
class Entry:
    pdt: float
    duration: float
    offset: int
    size: int
    url: str
    after_discontinuity: bool
    init: tuple[str, int]  # url, size


def entries(text: str) -> list[Entry]:
    out: list[Entry] = []
    pdt, duration, byterange, disc = 0.0, 0.0, (0, 0), False
    init = ("", 0)
    for line in text.splitlines():
        if line == "#EXT-X-DISCONTINUITY":
            disc = True
        elif m := re.match(r'#EXT-X-MAP:URI="([^"]+)",BYTERANGE="(\d+)@0"', line):
            init = (m.group(1), int(m.group(2)))
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = parse_iso(line.split(":", 1)[1])
        elif line.startswith("#EXTINF:"):
            duration = float(line[8:].rstrip(","))
        elif line.startswith("#EXT-X-BYTERANGE:"):
            size, offset = line[17:].split("@")
            byterange = (int(offset), int(size))
        elif line and not line.startswith("#"):
            out.append(Entry(pdt, duration, byterange[0], byterange[1], line, disc, init))
            disc = False
            pdt += duration  # the next one follows, unless a program date time says otherwise
    return out


async def test_ffmpeg_plays_the_playlist_end_to_end_with_the_gap_at_a_discontinuity(site: Site, tmp_path: Path
                                                                                     ) -> None:
    resp = await site.client.get("/api/recordings/hall/index.m3u8", params=site.range(-5, 35),
                                 headers=site.auth("auditor"))
    text = await resp.text()
    assert resp.status == 200, text
    assert resp.content_type == "application/vnd.apple.mpegurl"
    assert text.startswith("#EXTM3U\n") and text.rstrip().endswith("#EXT-X-ENDLIST")
    got = entries(text)
    assert sum(e.duration for e in got) == pytest.approx(16.0, abs=0.01)
    # Wall-clock times: the first frame of each run, and nothing in the outage.
    assert got[0].pdt == pytest.approx(site.start, abs=0.01)
    assert not any(site.start + 10 <= e.pdt < site.start + 20 for e in got)
    jumps = [(e.pdt - (p.pdt + p.duration)) for p, e in zip(got, got[1:], strict=False)]
    gaps = [(e, jump) for e, jump in zip(got[1:], jumps, strict=True) if jump > 0.5]
    assert len(gaps) == 1 and gaps[0][1] == pytest.approx(10.0, abs=0.1)
    assert gaps[0][0].after_discontinuity and gaps[0][0].pdt == pytest.approx(site.start + 20, abs=0.01)
    assert all(abs(j) < 0.01 for j in jumps if j <= 0.5)  # everything else is continuous

    # FFmpeg, an independent client, reads it over HTTP: every frame, the right duration.
    url = f"{site.base}/api/recordings/hall/index.m3u8?start={iso(site.start - 5)}&end={iso(site.start + 35)}"
    headers = f"Authorization: Bearer {site.tokens['auditor']}\r\n"
    out = tmp_path / "played.mp4"
    done = await run("ffmpeg", "-v", "error", "-headers", headers, "-i", url, "-c", "copy", "-y", str(out))
    assert done.returncode == 0, done.stderr.decode()
    probe = await run("ffprobe", "-v", "error", "-count_frames", "-show_entries",
                      "stream=nb_read_frames:format=duration", "-of", "json", str(out))
    info = json.loads(probe.stdout)
    assert int(info["streams"][0]["nb_read_frames"]) == FPS * 16
    assert float(info["format"]["duration"]) == pytest.approx(16.0, abs=0.1)
    # ... and decodes every frame of it with no timestamp complaint (the media times are continuous).
    decoded = await run("ffmpeg", "-v", "warning", "-headers", headers, "-i", url, "-f", "null", "-")
    assert decoded.returncode == 0 and b"out of order" not in decoded.stderr, decoded.stderr.decode()

    # One audit entry for the playlist (the view), none per fragment.
    await asyncio.sleep(0.2)
    resp = await site.client.get("/api/audit", params={"action": "recordings.play"}, headers=site.auth("auditor"))
    plays = [e for e in (await resp.json())["entries"] if e["action"] == "recordings.play"]
    assert len(plays) == 3, plays  # this test fetched the playlist three times
    assert plays[0]["camera"] == "hall"


async def test_a_seek_fetches_the_init_and_a_few_seconds_and_they_play(site: Site, tmp_path: Path) -> None:
    auditor = site.auth("auditor")
    resp = await site.client.get("/api/recordings/hall/index.m3u8", params=site.range(0, 26), headers=auditor)
    got = entries(await resp.text())
    wanted = site.start + 22.5  # a moment in the second run
    entry = next(e for e in got if e.pdt <= wanted < e.pdt + e.duration)
    base = "/api/recordings/hall/"
    init = await site.client.get(base + entry.init[0], headers={**auditor, "Range": f"bytes=0-{entry.init[1] - 1}"})
    assert init.status == 206 and init.headers["Content-Range"].startswith(f"bytes 0-{entry.init[1] - 1}/")
    frag = await site.client.get(base + entry.url, headers={
        **auditor, "Range": f"bytes={entry.offset}-{entry.offset + entry.size - 1}"})
    assert frag.status == 206
    body = await init.read() + await frag.read()
    total = sum(e.size for e in got)
    assert len(body) < total / 2  # a seek fetches a piece, not the range
    (tmp_path / "seek.mp4").write_bytes(body)
    probe = await run("ffprobe", "-v", "error", "-show_entries", "frame=pts_time,key_frame", "-of", "json",
                      str(tmp_path / "seek.mp4"))
    frames = json.loads(probe.stdout)["frames"]
    assert frames and frames[0]["key_frame"] == 1  # it starts on a keyframe: it plays on its own
    assert len(frames) == round(entry.duration * FPS)
    # Its media time is where the playlist puts it (the sum of the durations before it).
    position = sum(e.duration for e in got[:got.index(entry)])
    assert float(frames[0]["pts_time"]) == pytest.approx(position, abs=0.01)


async def test_bad_requests_get_clear_errors_and_the_allow_lists_apply(site: Site) -> None:
    client, auditor = site.client, site.auth("auditor")
    path = "/api/recordings/hall/index.m3u8"

    async def error(resp: Any) -> tuple[int, str]:
        return resp.status, (await resp.json())["error"]

    assert await error(await client.get(path, params=site.range(11, 19), headers=auditor)) == (
        404, "nothing_recorded")
    assert await error(await client.get(path, params={"start": "yesterday", "end": iso(site.start)},
                                        headers=auditor)) == (400, "invalid_start")
    assert await error(await client.get(path, params={"start": iso(site.start)}, headers=auditor)) == (
        400, "invalid_end")
    assert await error(await client.get(path, params=site.range(10, 0), headers=auditor)) == (400, "invalid_end")
    assert await error(await client.get(path, params=site.range(0, 25 * 3600), headers=auditor)) == (
        400, "invalid_end")
    assert await error(await client.get("/api/recordings/ghost/index.m3u8", params=site.range(0, 9),
                                        headers=auditor)) == (404, "unknown_camera")
    assert (await client.get(path, params=site.range(0, 9))).status == 401
    assert (await client.get(path, params=site.range(0, 9), headers=site.auth("monitor"))).status == 403
    assert await error(await client.get(path, params=site.range(0, 9), headers=site.auth("cell-auditor"))) == (
        403, "camera_forbidden")

    # The media URLs are the playlist's user's: not another auditor's, not forged, not for another camera.
    text = await (await client.get(path, params=site.range(0, 9), headers=auditor)).text()
    media = "/api/recordings/hall/" + entries(text)[0].url
    assert (await client.get(media, headers=auditor)).status == 200
    assert await error(await client.get(media, headers=site.auth("auditor2"))) == (403, "playlist_required")
    assert (await client.get(media.replace("/hall/", "/cell/"), headers=site.auth("cell-auditor"))).status == 403
    forged = re.sub(r"sig=[0-9a-f]+", "sig=" + "0" * 24, media)
    assert await error(await client.get(forged, headers=auditor)) == (403, "playlist_required")
    later = re.sub(r"exp=(\d+)", lambda m: f"exp={int(m.group(1)) + 1}", media)
    assert await error(await client.get(later, headers=auditor)) == (403, "playlist_required")
    assert await error(await client.get(re.sub(r"shift=-?\d+", "shift=x", media), headers=auditor)) == (
        400, "invalid_shift")
    assert (await client.get("/api/recordings/hall/hls/1.m4s", headers=auditor)).status == 400


async def test_a_damaged_file_is_left_out_and_a_torn_one_plays_up_to_its_last_whole_fragment(site: Site) -> None:
    index = site.daemon.recording.index
    assert index is not None
    first, second, *_ = await index.call(index.segments, "hall", site.start, site.start + 10)
    root = site.daemon.config.storage.path
    (root / first.path).write_bytes(b"\x00\x00\x00\x08free" + b"not a segment" * 100)
    data = (root / second.path).read_bytes()
    (root / second.path).write_bytes(data[: len(data) * 3 // 4])  # a crash inside its last fragments
    resp = await site.client.get("/api/recordings/hall/index.m3u8", params=site.range(0, 10),
                                 headers=site.auth("auditor"))
    got = entries(await resp.text())
    assert resp.status == 200
    assert got[0].pdt == pytest.approx(second.start, abs=0.01)  # the unreadable file is a hole
    in_second = [e for e in got if e.pdt < second.end]
    assert 1.0 <= sum(e.duration for e in in_second) < 4.0  # what is whole of the torn one
    assert all(e.offset + e.size <= len(data) * 3 // 4 for e in in_second)


def ranged(headers: dict[str, str], spec: str) -> dict[str, str]:
    return {**headers, "Range": spec}


async def test_adversarial_ranges_on_media_files_and_clips(site: Site) -> None:
    client, auditor = site.client, site.auth("auditor")
    text = await (await client.get("/api/recordings/hall/index.m3u8", params=site.range(0, 9),
                                   headers=auditor)).text()
    url = "/api/recordings/hall/" + entries(text)[0].url
    clip = "/api/recordings/hall/clip.mp4?" + "&".join(f"{k}={v}" for k, v in site.range(1, 9).items())
    for resource in (url, clip):
        whole = await client.get(resource, headers=auditor)
        assert whole.status == 200 and whole.headers["Accept-Ranges"] == "bytes"
        full = await whole.read()
        size = len(full)
        cases: dict[str, tuple[int, int, int]] = {  # spec: status, the bytes [start, stop) it answers
            "bytes=100-199": (206, 100, 200),
            "bytes=-100": (206, size - 100, size),
            f"bytes={size - 10}-": (206, size - 10, size),
            f"bytes=0-{10**40}": (206, 0, size),  # the end is clamped
            "BYTES = 5 - 9": (206, 5, 10),
            f"bytes=-{size * 2}": (206, 0, size),
            "bytes=0-1,5-9": (200, 0, size),  # several ranges: ignored, the whole resource
            "bytes=9-5": (200, 0, size),  # invalid: ignored
            "items=0-5": (200, 0, size),
            "bytes=abc": (200, 0, size),
            "bytes=-": (200, 0, size),
        }
        for spec, (status, start, stop) in cases.items():
            resp = await client.get(resource, headers=ranged(auditor, spec))
            assert resp.status == status, (resource, spec, resp.status)
            assert await resp.read() == full[start:stop], (resource, spec)
            if status == 206:
                assert resp.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}", spec
        for spec in (f"bytes={size}-", f"bytes={10**40}-", "bytes=-0"):
            resp = await client.get(resource, headers=ranged(auditor, spec))
            assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{size}", spec
            assert (await resp.json())["error"] == "range_not_satisfiable"
        # HEAD: the headers, no body (the connection stays usable for the next request).
        head = await client.head(resource, headers=auditor)
        assert head.status == 200 and await head.read() == b""
        assert head.headers["Content-Length"] == str(size) and head.headers["Accept-Ranges"] == "bytes"
    # A clip whose length is not known yet: the server builds it once to learn it, then answers the range.
    fresh = "/api/recordings/hall/clip.mp4?" + "&".join(f"{k}={v}" for k, v in site.range(2, 9).items())
    resp = await client.get(fresh, headers=ranged(auditor, "bytes=1000-1999"))
    part = await resp.read()
    assert resp.status == 206 and len(part) == 1000
    whole = await (await client.get(fresh, headers=auditor)).read()
    assert part == whole[1000:2000]
    # A client that stops reading a range mid-way costs nothing lasting: the next request is served.
    resp = await client.get(fresh, headers=ranged(auditor, "bytes=10-"))
    await resp.content.read(100)
    resp.close()
    again = await client.get(fresh, headers=ranged(auditor, "bytes=0-99"))
    assert again.status == 206 and await again.read() == whole[:100]


# -- a day of footage -------------------------------------------------------------------------------------------


@contextmanager
def new_storage(tmp_path: Path) -> Iterator[tuple[Path, SegmentIndex]]:
    """An initialised storage root and its open index."""
    root = tmp_path / "storage"
    init_storage(root, "st")
    index = SegmentIndex(root / "index.sqlite3")
    index.open()
    try:
        yield root, index
    finally:
        index.close()


def test_a_day_long_playlist_is_built_quickly_and_in_bounded_memory(tmp_path: Path) -> None:
    """A day in 60 s files of a second per fragment: 1,440 files, 86,400 fragments."""
    with new_storage(tmp_path) as (root, index):
        fps = 2
        units = encode_h264(fps * 60, width=64, height=64, fps=fps, gop=fps)
        day = 1_750_000_000.0
        session = make_session(units, width=64, height=64, fps=fps, started_at=day)
        core = RecorderCore("cam", root, Storage(path=root, segment_seconds=60), index.add_segment)
        core.handle(packets(session, units, fps=fps))
        core.handle([SessionEnded(session, "test")])
        (first,) = index.all_segments("cam")
        source = root / first.path
        index.db.execute("PRAGMA synchronous=OFF")  # 1,439 more rows: no fsync each (a test's own database)
        for n in range(1, 1440):
            rel = f"recordings/cam/day/{n}.mp4"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(source, root / rel)
            index.add_segment(NewSegment(camera="cam", start=day + 60 * n, end=first.end + 60 * n,
                                         frames=first.frames, bytes=first.bytes, sha256=first.sha256,
                                         codec=first.codec, width=64, height=64, params=first.params, path=rel))
        timeline = build_timeline("cam", day, day + 86400, index.segments("cam", day, day + 86400))
        cache = hls.LayoutCache()

        def playlist_of(timeline: Timeline, cache: hls.LayoutCache) -> tuple[hls.Playlist, str]:
            playlist = hls.build(timeline, lambda seg: cache.get(seg, root / seg.path))
            return playlist, hls.render(playlist, lambda part: f"hls/{part.segment.id}.m4s?shift={part.shift}")

        began = time.monotonic()
        playlist, text = playlist_of(timeline, cache)
        took = time.monotonic() - began
        assert playlist.fragments == 1440 * 15  # 4 s media segments
        assert playlist.duration == pytest.approx(86400, abs=1)
        assert text.count("#EXT-X-DISCONTINUITY") == 1439
        assert took < 45, took  # 1.7 s in bench_playback; loose for a CPU-starved machine (load 12 on 2 cores)
        began = time.monotonic()
        playlist_of(timeline, cache)
        assert time.monotonic() - began < took / 2  # the second time from the cache
        # Memory: the cached layouts and the text, not the footage (three hours of it, traced).
        part = build_timeline("cam", day, day + 3 * 3600, index.segments("cam", day, day + 3 * 3600))
        small = hls.LayoutCache(capacity=3000)  # bounded by fragments: 50 of the 180 files
        tracemalloc.start()
        playlist, _ = playlist_of(part, small)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 8 << 20, peak
        assert playlist.duration == pytest.approx(3 * 3600, abs=1) and small.fragments <= 3000


async def test_footage_only_in_the_archive_is_said_so_not_called_unrecorded(aiohttp_client: Any, tmp_path: Path
                                                                           ) -> None:
    """Footage deleted locally after it was archived (issue 19) plays as a clip; the playlist says so."""
    index = SegmentIndex(tmp_path / "index.sqlite3")
    index.open()
    gone = SegmentRecord(7, "cell-1", 1000.0, 1060.0, 10, 100, "0" * 64, "h264", 1, 1, "{}", "x/7.mp4", "ok",
                         "0" * 64, "0" * 64)

    class Db:
        async def call(self, fn: Any, *args: Any) -> Any:
            return fn(*args)

    reader = SimpleNamespace(db=Db(), find=lambda camera, start, end: [SimpleNamespace(record=gone)]
                             if camera == "cell-1" else [])
    recording = Recording(index=index, root=tmp_path, archiver=SimpleNamespace(reader=reader))
    station = StubStation(station_config(tmp_path), recording, cameras={"cell-1": object(), "cell-2": object()})
    app = web.Application(middlewares=[json_errors])
    app[STATION] = station  # type: ignore[misc]
    app[ACCESS] = SimpleNamespace(audit=Audit())  # type: ignore[misc]
    web_hls.setup(app)
    client = await aiohttp_client(app)
    try:
        query = {"start": "1970-01-01T00:16:00Z", "end": "1970-01-01T00:18:00Z"}
        resp = await client.get("/api/recordings/cell-1/index.m3u8", params=query)
        body = await resp.json()
        assert (resp.status, body["error"]) == (404, "only_in_archive") and "clip.mp4" in body["message"]
        resp = await client.get("/api/recordings/cell-2/index.m3u8", params=query)
        assert (resp.status, (await resp.json())["error"]) == (404, "nothing_recorded")
    finally:
        index.close()
