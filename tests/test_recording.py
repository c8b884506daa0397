"""Continuous recording with real simulated cameras, checked the way an auditor would: with ffprobe."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from recorder.index import SegmentIndex, SegmentRecord
from tests.conftest import wait_until


def rows(storage: Path, camera: str) -> list[SegmentRecord]:
    index = SegmentIndex(storage / "index.sqlite3")
    try:
        return index.all_segments(camera)
    finally:
        index.close()


def probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,width,height:format=duration",
         "-of", "json", str(path)], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def video_frames(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "frame=key_frame,pts_time",
         "-of", "json", str(path)], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)["frames"]  # type: ignore[no-any-return]


def decodes_cleanly(path: Path) -> None:
    # -enc_time_base -1 keeps the stream's 90 kHz time base: with the default (1/frame rate), two frames a
    # loaded camera sent 10 ms apart round to one tick and ffmpeg reports "non monotonically increasing
    # dts" for a file whose timestamps do increase.
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-fps_mode", "passthrough", "-enc_time_base", "-1",
                          "-f", "null", "-"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and not out.stderr.strip(), f"{path.name}: {out.stderr[-500:]}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entry(cam_id: str, url: str) -> dict[str, object]:
    return {"id": cam_id, "name": cam_id, "zone": "corridor", "url": url}


FPS = 15
GOP = 15  # one keyframe a second


def test_gapless_keyframe_aligned_segments(cameras, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    a = cameras("a", fps=FPS, gop=GOP)
    b = cameras("b", fps=FPS, gop=GOP, audio="pcmu")
    daemon = daemon_factory([entry("a", a.url), entry("b", b.url)], storage={"segment_seconds": 10})
    daemon.wait_state("a", "online")
    daemon.wait_state("b", "online")
    online_at = time.time()
    wait_until(lambda: len(rows(daemon.storage, "a")) >= 3 and len(rows(daemon.storage, "b")) >= 3, 60,
               "three segments per camera never appeared")
    assert daemon.camera("a")["recording"] is True and daemon.camera("a")["last_segment_at"]
    stopped_at = time.time()
    assert daemon.stop() == 0
    frame = 1 / FPS
    for cam in ("a", "b"):
        segs = rows(daemon.storage, cam)
        assert len(segs) >= 4  # three full ones and the one closed at shutdown
        for prev, cur in zip(segs, segs[1:], strict=False):
            assert 0 <= cur.start - prev.end <= frame + 1e-3, (prev, cur)
        for seg in segs[:-1]:
            assert 10 - frame <= seg.duration <= 10 + 1.0 + frame  # cut at the first keyframe after 10 s
        total = sum(s.duration for s in segs)
        span = segs[-1].end - segs[0].start
        assert abs(total - span) <= 1.0  # within one GOP
        # recorded from (about) when the camera came online until the stop
        assert segs[0].start - online_at < 1.5 and stopped_at - segs[-1].end < 2.0
        for seg in segs:
            path = daemon.storage / seg.path
            assert sha256(path) == seg.sha256 and path.stat().st_size == seg.bytes
            frames = video_frames(path)
            assert frames[0]["key_frame"] == 1 and len(frames) == seg.frames
            info = probe(path)
            assert abs(float(info["format"]["duration"]) - seg.duration) < 0.2
            decodes_cleanly(path)
        kinds = {s["codec_type"]: s["codec_name"] for s in probe(daemon.storage / segs[0].path)["streams"]}
        assert kinds["video"] == "h264"
        if cam == "b":  # G.711 from the camera is kept as AAC next to the untouched video
            assert kinds["audio"] == "aac"


def test_sigkill_loses_at_most_last_fragment(cameras, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    cam = cameras("k", fps=FPS, gop=GOP)
    daemon = daemon_factory([entry("k", cam.url)], storage={"segment_seconds": 6})
    daemon.wait_state("k", "online")
    wait_until(lambda: len(rows(daemon.storage, "k")) >= 1, 30, "no segment closed")
    before = rows(daemon.storage, "k")
    wait_until(lambda: any(p.name.endswith(".part") for p in (daemon.storage / "recordings").rglob("*")), 10,
               "no open segment")
    time.sleep(3)  # well into the open segment
    killed_at = time.time()
    daemon.kill()
    parts = [p for p in (daemon.storage / "recordings").rglob("*.part")]
    assert len(parts) == 1

    daemon.start()
    daemon.wait_state("k", "online")
    after = rows(daemon.storage, "k")
    recovered = [r for r in after if r.status == "recovered"]
    assert len(recovered) == 1
    seg = recovered[0]
    assert killed_at - seg.end < 1.0 + 1.5  # at most the last fragment (1 s) lost, plus delivery lag
    decodes_cleanly(daemon.storage / seg.path)
    assert video_frames(daemon.storage / seg.path)[0]["key_frame"] == 1
    for old in before:  # earlier segments untouched
        assert sha256(daemon.storage / old.path) == old.sha256
    assert not list((daemon.storage / "recordings").rglob("*.part.*"))
    wait_until(lambda: len([r for r in rows(daemon.storage, "k") if r.start > seg.end]) >= 1, 30,
               "recording did not continue after restart")
    newest = rows(daemon.storage, "k")[-1]
    assert newest.start >= seg.end


def test_camera_restart_and_resolution_change_new_segments_no_overlap(cameras, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    cam = cameras("r", fps=FPS, gop=GOP, width=640, height=360)
    daemon = daemon_factory([entry("r", cam.url)], storage={"segment_seconds": 60})
    daemon.wait_state("r", "online")
    wait_until(lambda: daemon.camera("r")["recording"], 15, "never recording")
    time.sleep(2)
    cam.restart()  # a camera reboot: the connection drops, timestamps restart
    daemon.wait_state("r", "online", timeout=20)
    wait_until(lambda: len(rows(daemon.storage, "r")) >= 1, 15, "segment not closed on disconnect")
    time.sleep(2)
    cam.command("resolution 480x272")
    wait_until(lambda: len(rows(daemon.storage, "r")) >= 2, 20, "no new segment on resolution change")
    time.sleep(2)
    daemon.stop()
    segs = rows(daemon.storage, "r")
    assert len(segs) >= 3
    for prev, cur in zip(segs, segs[1:], strict=False):
        assert cur.start >= prev.end
    assert (segs[0].width, segs[0].height) == (640, 360)
    assert (segs[-1].width, segs[-1].height) == (480, 272)
    last = probe(daemon.storage / segs[-1].path)
    video = next(s for s in last["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (480, 272)
    for seg in segs:
        decodes_cleanly(daemon.storage / seg.path)
    assert "Traceback" not in daemon.log()


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_pressure_deletes_oldest_unprotected_and_keeps_recording(small_disk, cameras, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    cam = cameras("p", fps=FPS, gop=GOP, bitrate_kbps=1500)
    storage = small_disk / "nvr"
    # 12 MB disk, half of it taken by other data: pressure starts after about 2 MB of recordings.
    (small_disk / "filler").write_bytes(os.urandom(6 * 1024 * 1024))
    daemon = daemon_factory(
        [entry("p", cam.url)], start=False,
        storage={"path": str(storage), "segment_seconds": 2, "min_free_percent": 33, "retention_check_seconds": 1},
    )
    daemon.start()
    daemon.wait_state("p", "online")
    wait_until(lambda: len(rows(daemon.storage, "p")) >= 2, 30, "no segments")
    first = rows(daemon.storage, "p")[0]
    index = SegmentIndex(daemon.storage / "index.sqlite3")
    index.add_hold("p", first.start, first.end, "complaint 17")
    index.close()

    def deleted() -> list[dict[str, Any]]:
        idx = SegmentIndex(daemon.storage / "index.sqlite3")
        try:
            return idx.deletions("p")
        finally:
            idx.close()

    wait_until(lambda: len(deleted()) >= 3, 60, "disk pressure never deleted anything")
    gone = deleted()
    assert all("disk pressure" in d["reason"] for d in gone)
    assert first.id not in {d["segment_id"] for d in gone}  # the held segment survives
    assert (daemon.storage / first.path).exists()
    starts = [d["start"] for d in gone]
    assert starts == sorted(starts)  # oldest first
    kept = rows(daemon.storage, "p")
    assert all(d["start"] < kept[-1].start for d in gone)
    before = len(kept)
    wait_until(lambda: rows(daemon.storage, "p")[-1].id > kept[-1].id, 20, "recording stopped")
    assert daemon.camera("p")["recording"] is True
    assert before >= 2


def test_write_error_on_one_camera_is_reported_and_retried_while_the_other_records(cameras, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    a = cameras("wa", fps=FPS, gop=GOP)
    b = cameras("wb", fps=FPS, gop=GOP)
    daemon = daemon_factory([entry("a", a.url), entry("b", b.url)], storage={"segment_seconds": 2})
    wait_until(lambda: len(rows(daemon.storage, "a")) >= 1 and len(rows(daemon.storage, "b")) >= 1, 30,
               "both cameras recording")
    # Camera a's directory turns into something that cannot hold files (an I/O failure on its path).
    directory = daemon.storage / "recordings" / "a"
    moved = directory.with_name("a.moved")
    directory.rename(moved)
    directory.write_bytes(b"not a directory")
    try:
        failing = wait_until(lambda: daemon.camera("a")["recording_error"], 15, "the write error was not reported")
        assert "director" in failing.lower() or "exists" in failing.lower(), failing
        before_b = len(rows(daemon.storage, "b"))
        wait_until(lambda: len(rows(daemon.storage, "b")) >= before_b + 2, 20, "camera b stopped recording")
        assert daemon.camera("b")["recording_error"] is None and daemon.camera("b")["recording"] is True
    finally:
        directory.unlink()
        moved.rename(directory)
    before_a = len(rows(daemon.storage, "a"))
    wait_until(lambda: len(rows(daemon.storage, "a")) >= before_a + 1, 30, "camera a never recorded again")
    assert daemon.camera("a")["recording_error"] is None
