"""Playback: a seek inside a long range by HLS against the whole clip; thumbnails per camera-hour.

- seek: a day of 1080p footage (1,440 one-minute segments of real H.264 recorded through the real
  SegmentWriter; hard links of one, so the day costs no disk, and each is a distinct indexed segment
  whose layout is read on its own) served by the real aiohttp routes on loopback.  A seek at 13.5 h is
  the playlist (first time: every file's layout is read; then cached), the init section and the one
  media segment holding the moment: time to its last byte and bytes fetched.  Beside it, in the same
  run, the whole clip of one hour of the same footage (time to first byte, to the end, bytes), and
  what a clip of the day would weigh.
- thumbnails: the cost of a 320 px JPEG of a decoded 1080p keyframe, beside the decode and picture
  check the health layer already pays for that keyframe (same run); per camera-hour at the default
  ``analyse_seconds`` (3 s: 1,200 a camera-hour).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import clip_1080p, report  # noqa: E402
from nvr.base import config as configmod  # noqa: E402
from nvr.base.config import PictureChecks, Storage  # noqa: E402
from nvr.base.timeutil import iso, parse_iso  # noqa: E402
from recorder.index import NewSegment, SegmentIndex, SegmentRecord  # noqa: E402
from recorder.recorder import RecorderCore  # noqa: E402
from recorder.storage import init_storage  # noqa: E402
from recorder.thumbnails import jpeg_of  # noqa: E402
from streams import bitstream  # noqa: E402
from streams.media import SessionEnded  # noqa: E402
from streams.picture_check import PictureCheck, decode_frame, gray_of  # noqa: E402
from tests.media import make_session, packets  # noqa: E402
from web import hls, recordings  # noqa: E402
from web.access import ACCESS  # noqa: E402
from web.http import STATION, json_errors  # noqa: E402

DAY = 86400


class _Audit:
    def record(self, action: str, **fields: Any) -> None:
        pass


def one_minute(root: Path, index: SegmentIndex, start: float) -> SegmentRecord:
    """60 s of the pre-encoded 1080p clip recorded through the real recorder (RecorderCore)."""
    units = []
    with av.open(str(clip_1080p()), format="h264") as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.size:
                units.append((bytes(packet), bool(packet.is_keyframe)))
    minute = (units * 6)[:60 * 25]
    session = make_session(minute, width=1920, height=1080, fps=25, started_at=start)
    core = RecorderCore("cam-00", root, Storage(path=root, segment_seconds=60), index.add_segment)
    core.handle(packets(session, minute, fps=25))
    core.handle([SessionEnded(session, "bench")])
    (record,) = index.all_segments("cam-00")
    return record


def day_of_footage(root: Path, start: float) -> tuple[SegmentIndex, int]:
    init_storage(root, "st-b")
    index = SegmentIndex(root / "index.sqlite3")
    index.open()
    first = one_minute(root, index, start)
    index.db.execute("PRAGMA synchronous=OFF")  # 1,439 more rows, not what is measured
    rel, size, frames, sha = first.path, first.bytes, first.frames, first.sha256
    for minute in range(1, DAY // 60):
        path = f"recordings/cam-00/day/{minute}.mp4"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        os.link(root / rel, root / path)
        index.add_segment(NewSegment(camera="cam-00", start=start + 60 * minute, end=start + 60 * (minute + 1),
                                     frames=frames, bytes=size, sha256=sha, codec="h264", width=1920, height=1080,
                                     params=first.params, path=path))
    return index, size


def app_for(root: Path, index: SegmentIndex) -> web.Application:
    config = configmod.parse(f"station: {{id: st-b, name: B}}\nstorage: {{path: {root}}}\n", environ={})
    station = SimpleNamespace(config=config, cameras={"cam-00": object()}, health=None,
                              recording=SimpleNamespace(index=index, root=root, archiver=None, error=None))
    app = web.Application(middlewares=[json_errors])
    app[STATION] = station  # type: ignore[assignment]
    app[ACCESS] = SimpleNamespace(audit=_Audit())  # type: ignore[assignment]
    recordings.setup(app)
    hls.setup(app)
    return app


async def seek(session: ClientSession, base: str, start: float, end: float, at: float) -> dict[str, float]:
    """Playlist, init, the media segment holding ``at``: seconds and bytes on the wire."""
    began = time.perf_counter()
    async with session.get(f"{base}/api/recordings/cam-00/index.m3u8",
                           params={"start": iso(start), "end": iso(end)},
                           headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
        wire = int(resp.headers.get("Content-Length") or 0) or len(text)
    listed = time.perf_counter()
    init_url = frag_url = ""
    init_size = offset = size = 0
    pdt = 0.0
    map_url, map_size = "", 0
    lines = text.splitlines()
    parsed = time.perf_counter()
    for n, line in enumerate(lines):
        if line.startswith("#EXT-X-MAP:"):
            map_url = line.split('URI="', 1)[1].split('"', 1)[0]
            map_size = int(line.split('BYTERANGE="', 1)[1].split("@", 1)[0])
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = parse_iso(line.split(":", 1)[1])
        elif line.startswith("#EXTINF:"):
            duration = float(line[8:].rstrip(","))
            if pdt <= at < pdt + duration:
                size, offset = (int(x) for x in lines[n + 1][17:].split("@"))
                frag_url, init_url, init_size = lines[n + 2], map_url, map_size
                break
            pdt += duration
    listed += time.perf_counter() - parsed  # finding the moment in the playlist: a player does it too
    fetched = 0
    for url, lo, hi in ((init_url, 0, init_size - 1), (frag_url, offset, offset + size - 1)):
        async with session.get(f"{base}/api/recordings/cam-00/{url}", headers={"Range": f"bytes={lo}-{hi}"}) as r:
            assert r.status == 206
            fetched += len(await r.read())
    done = time.perf_counter()
    return {"playlist_s": listed - began, "media_s": done - listed, "total_s": done - began,
            "playlist_wire_bytes": wire, "media_bytes": fetched}


async def whole_clip(session: ClientSession, base: str, start: float, end: float) -> dict[str, float]:
    began = time.perf_counter()
    first = None
    size = 0
    async with session.get(f"{base}/api/recordings/cam-00/clip.mp4",
                           params={"start": iso(start), "end": iso(end)}) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_chunked(1 << 20):
            first = first or time.perf_counter()
            size += len(chunk)
    return {"first_byte_s": (first or began) - began, "total_s": time.perf_counter() - began, "bytes": size}


async def playback(root: Path) -> None:
    start = 1_780_000_000.0
    index, size = await asyncio.to_thread(day_of_footage, root, start)
    server = TestServer(app_for(root, index), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        async with ClientSession() as session:
            cold = await seek(session, base, start, start + DAY, start + 13.5 * 3600)
            warm = [await seek(session, base, start, start + DAY, start + 13.5 * 3600 + 7 * n) for n in range(5)]
            hour = await seek(session, base, start + 13 * 3600, start + 14 * 3600, start + 13.5 * 3600)
            clip = await whole_clip(session, base, start + 13 * 3600, start + 14 * 3600)
    finally:
        await server.close()
        index.close()
    warm_total = statistics.median(w["total_s"] for w in warm)
    warm_media = statistics.median(w["media_s"] for w in warm)
    report("playback_seek", range="24 h of 1080p at 4 Mbit/s, 1,440 one-minute segments", seek_at="13.5 h",
           playlist_first_s=round(cold["playlist_s"], 3), playlist_cached_s=round(statistics.median(
               w["playlist_s"] for w in warm), 3), playlist_wire_kb=round(cold["playlist_wire_bytes"] / 1e3, 1),
           seek_media_ms=round(1000 * warm_media, 1), seek_with_playlist_cached_ms=round(1000 * warm_total, 1),
           seek_first_time_ms=round(1000 * cold["total_s"], 1), seek_media_kb=round(warm[0]["media_bytes"] / 1e3, 1),
           day_clip_mb=round(size * DAY / 60 / 1e6, 1),
           note="page cache warm (the same file linked 1,440 times)")
    report("playback_seek_vs_clip", range="1 h of the same footage", hls_seek_ms=round(1000 * hour["total_s"], 1),
           hls_seek_kb=round((hour["media_bytes"] + hour["playlist_wire_bytes"]) / 1e3, 1),
           clip_first_byte_ms=round(1000 * clip["first_byte_s"], 1), clip_whole_s=round(clip["total_s"], 2),
           clip_mb=round(clip["bytes"] / 1e6, 1),
           bytes_ratio_clip_to_hls=round(clip["bytes"] / (hour["media_bytes"] + hour["playlist_wire_bytes"]), 1),
           time_ratio_clip_to_hls=round(clip["total_s"] / hour["total_s"], 1))


def thumbnails() -> None:
    clip = clip_1080p()
    keyframes = []
    with av.open(str(clip), format="h264") as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.size and packet.is_keyframe:
                keyframes.append(bytes(packet))
    extradata = bitstream.parameter_sets("h264", keyframes[0])
    check = PictureCheck(PictureChecks())
    rounds = 30
    decode_s = thumb_s = 0.0
    sizes = []
    for n in range(rounds):
        data = keyframes[n % len(keyframes)]
        began = time.thread_time()
        frame = decode_frame("h264", extradata, data)
        assert frame is not None
        check.analyse(gray_of(frame, check.thresholds.analysis_width))
        decoded = time.thread_time()
        sizes.append(len(jpeg_of(frame)))
        decode_s += decoded - began
        thumb_s += time.thread_time() - decoded
    per_hour = 3600 / PictureChecks().analyse_seconds
    report("thumbnails", source="1080p keyframes", width=320, per_camera_hour=int(per_hour),
           thumbnail_ms=round(1000 * thumb_s / rounds, 2), decode_and_check_ms=round(1000 * decode_s / rounds, 2),
           thumbnail_to_check_ratio=round(thumb_s / decode_s, 3),
           cpu_s_per_camera_hour=round(per_hour * thumb_s / rounds, 2),
           mb_per_camera_hour=round(per_hour * statistics.mean(sizes) / 1e6, 2),
           kb_each=round(statistics.mean(sizes) / 1e3, 1))


def main() -> None:
    thumbnails()
    with tempfile.TemporaryDirectory(prefix="nvr-bench-playback-") as tmp:
        asyncio.run(playback(Path(tmp)))


if __name__ == "__main__":
    main()
