"""Body-worn cameras: an officer docks a camera, its files reach the station's evidence chain.

One daemon for the module (a fixed camera and two body cameras, an inbox): files made with ffmpeg
(H.264 + AAC, a creation time) are uploaded by a dock and copied into the inbox; an auditor finds them
next to the fixed camera's recordings, plays them, exports them together and verifies the package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from nvr.base.config import ConfigError, parse
from nvr.base.timeutil import iso
from nvr.identity.accounts_cli import create_token
from nvr.identity.roles import Role
from tests.conftest import REPO, StationProcess, wait_until
from tests.test_live import browser  # noqa: F401 - the Chromium fixture

pytestmark = pytest.mark.timeout(300)


def make_video(path: Path, start: float, seconds: float, *, size: str = "320x240", audio: bool = True,
               creation_time: bool = True, frames: int | None = None) -> Path:
    """A body-camera file as a camera writes one: H.264 (with B-frames) and AAC, its start in creation_time."""
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
            f"testsrc=size={size}:rate=15"]
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    args += ["-t", str(seconds)] if frames is None else ["-frames:v", str(frames)]
    args += ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "15", "-bf", "2"]
    if audio:
        args += ["-c:a", "aac", "-b:a", "64k", "-shortest"]
    if creation_time:
        args += ["-metadata", f"creation_time={iso(start)}"]
    subprocess.run([*args, str(path)], check=True, timeout=60)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Station:
    def __init__(self, daemon: StationProcess, workdir: Path, begin: float) -> None:
        self.daemon = daemon
        self.workdir = workdir
        self.begin = begin
        self.inbox = workdir / "inbox"
        self.quarantine = workdir / "quarantine"
        self.dock = create_token(daemon.auth_db, "dock-1", Role.DOCK)
        self.hall_auditor = create_token(daemon.auth_db, "hall-auditor", Role.AUDITOR, frozenset({"hall"}))
        self.auditor = create_token(daemon.auth_db, "auditor", Role.AUDITOR)

    def upload(self, device: str, body: bytes, query: dict[str, str] | None = None,
               content_type: str = "video/mp4", token: str | None = None) -> tuple[int, Any]:
        path = f"/api/bodycams/{device}/recordings" + ("?" + urllib.parse.urlencode(query) if query else "")
        return self.daemon.request("POST", path, body, headers={
            "Content-Type": content_type, "Authorization": f"Bearer {token or self.dock}"}, timeout=60)

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        return self.daemon.request("GET", path, headers={"Authorization": f"Bearer {token or self.auditor}"})

    def search(self, camera: str, start: float, end: float, token: str | None = None) -> tuple[int, Any]:
        query = urllib.parse.urlencode({"camera": camera, "start": iso(start), "end": iso(end)})
        return self.get("/api/recordings?" + query, token)

    def uploads_left(self) -> list[Path]:
        return list((self.daemon.storage / "uploads").glob("*"))

    def stored_files(self, device: str) -> list[Path]:
        return sorted((self.daemon.storage / "recordings" / device).rglob("*.*"))


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Station]:
    from sim.client import SimCamera

    workdir = tmp_path_factory.mktemp("bodycam")
    cam = SimCamera("hall", width=320, height=180, fps=15, gop=15)
    cam.start()
    daemon = StationProcess(workdir, [{"id": "hall", "name": "Front hall", "zone": "hall", "url": cam.url}],
                            storage={"segment_seconds": 3})
    daemon.config["bodycams"] = [{"id": "bwc-0142", "name": "Body camera 0142"},
                                 {"id": "bwc_7", "name": "Body camera 7"}]
    daemon.config["bodycams_inbox"] = {"path": str(workdir / "inbox"), "quarantine": str(workdir / "quarantine"),
                                       "scan_seconds": 0.5, "stable_seconds": 3}
    daemon.config["bodycam_uploads"] = {"max_file_mb": 64, "clock_tolerance_seconds": 60, "stall_seconds": 2}
    daemon.config_path.write_text(yaml.safe_dump(daemon.config, sort_keys=False))
    begin = time.time()
    daemon.start()
    try:
        daemon.wait_state("hall", "online", timeout=30)
        yield Station(daemon, workdir, begin)
    finally:
        daemon.stop()
        cam.stop()


@pytest.fixture(scope="module")
def uploaded(station: Station, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One body-camera file of the last few seconds, uploaded by the dock with its hash."""
    time.sleep(max(0.0, station.begin + 8 - time.time()))  # the fixed camera has recorded a few segments
    folder = tmp_path_factory.mktemp("files")
    start = time.time() - 6
    path = make_video(folder / "FILE0001.MP4", start, 5)
    status, body = station.upload("bwc-0142", path.read_bytes(), {"sha256": sha256(path), "name": "FILE0001.MP4"})
    assert status == 201, body
    return {"path": path, "start": start, "item": body, "folder": folder}


# -- config -----------------------------------------------------------------------------------


def test_a_body_camera_id_that_is_a_camera_id_is_a_config_error_naming_both() -> None:
    text = """
station: {id: st, name: St}
cameras:
  - {id: cell-1, name: Cell, url: "rtsp://127.0.0.1/x"}
bodycams:
  - {id: bwc-1, name: One}
  - {id: cell-1, name: Clash}
"""
    with pytest.raises(ConfigError) as caught:
        parse(text, environ={})
    message = "\n".join(caught.value.problems)
    assert "bodycams[1].id" in message and "cameras[0].id" in message and "cell-1" in message
    with pytest.raises(ConfigError) as caught:
        parse("station: {id: st, name: St}\nbodycams: [{id: 'BWC 1', name: x}]\n", environ={})
    assert "bodycams[0].id" in "\n".join(caught.value.problems)


# -- upload -----------------------------------------------------------------------------------


def test_an_uploaded_file_is_stored_as_received_and_found_next_to_the_fixed_camera(
        station: Station, uploaded: dict[str, Any]) -> None:
    item, path = uploaded["item"], uploaded["path"]
    assert item["sha256"] == sha256(path) and item["bytes"] == path.stat().st_size
    assert abs(item["duration_seconds"] - 5) < 0.5
    assert item["start_source"] == "container" and item["clock_flag"] is False
    assert item["start"] == iso(round(uploaded["start"], 3))[:19] + item["start"][19:]
    stored = station.stored_files("bwc-0142")
    assert len(stored) == 1 and stored[0].read_bytes() == path.read_bytes()  # byte for byte
    assert stored[0].suffix == ".mp4" and "FILE0001" not in stored[0].name  # the server chose the path
    # The same file again: not stored twice.
    status, again = station.upload("bwc-0142", path.read_bytes())
    assert status == 200 and again["id"] == item["id"] and again["duplicate"] is True
    assert len(station.stored_files("bwc-0142")) == 1

    start, end = uploaded["start"] - 2, uploaded["start"] + 7
    status, device = station.search("bwc-0142", start, end)
    assert status == 200 and [s["id"] for s in device["segments"]] == [item["id"]]
    assert device["spans"] and device["segments"][0]["sha256"] == item["sha256"]
    assert all(g["cause"] in ("not_recording", "future") for g in device["gaps"])
    status, fixed = station.search("hall", start, end)
    assert status == 200 and fixed["segments"], "the fixed camera recorded the same range"

    status, listing = station.get("/api/bodycams")
    assert status == 200
    assert [d["id"] for d in listing["bodycams"]] == ["bwc-0142", "bwc_7"]
    assert listing["bodycams"][0]["name"] == "Body camera 0142" and listing["bodycams"][0]["last_recording_end"]
    status, recordings = station.get("/api/bodycams/bwc-0142/recordings")
    assert status == 200 and recordings["recordings"][0]["original_name"] == "FILE0001.MP4"
    status, coverage = station.get("/api/coverage?" + urllib.parse.urlencode(
        {"camera": "bwc-0142", "start": iso(start), "end": iso(end)}))
    assert status == 200 and coverage["cameras"][0]["kind"] == "bodycam"
    assert 4 < coverage["cameras"][0]["recorded_seconds"] < 6


def test_a_matroska_file_without_creation_time_takes_the_docks_start_and_flags_a_drifting_clock(
        station: Station, tmp_path: Path) -> None:
    start = time.time() - 30
    path = tmp_path / "clip.mkv"
    make_video(path, start, 3, creation_time=False)
    status, body = station.upload("bwc_7", path.read_bytes(), content_type="video/x-matroska")
    assert status == 422 and body["error"] == "no_start_time", body
    device_clock = iso(time.time() + 600)  # the device's clock is ten minutes ahead of the dock's
    assert device_clock is not None
    status, body = station.upload("bwc_7", path.read_bytes(), {"start": iso(start) or "",
                                                               "device_time": device_clock},
                                  content_type="video/x-matroska")
    assert status == 201, body
    assert body["start_source"] == "dock" and body["container"] == "mkv" and body["clock_flag"] is True
    assert 590 < body["clock_difference_seconds"] < 610 and body["clock_basis"] == "device_time"
    assert station.stored_files("bwc_7")[0].suffix == ".mkv"


def test_a_file_docked_after_its_retention_period_is_held_not_deleted(station: Station, tmp_path: Path) -> None:
    recorded = time.time() - 40 * 86400  # storage.retention_days is 30
    path = make_video(tmp_path / "old.mp4", recorded, 2, audio=False)
    status, item = station.upload("bwc_7", path.read_bytes())
    assert status == 201, item
    holds = [h for h in station.daemon.get("/api/holds")[1] if h["camera"] == "bwc_7"]
    assert any(h["start"] <= item["start"] and h["end"] >= item["end"] and "retention" in h["reason"]
               for h in holds), holds


# -- bad input --------------------------------------------------------------------------------


def _nothing_more_indexed(station: Station, device: str, before: int) -> None:
    status, body = station.search(device, station.begin - 3600, time.time() + 3600)
    assert status == 200 and len(body["segments"]) == before
    assert station.uploads_left() == [], "a refused upload left its temp file behind"


def test_each_bad_file_is_refused_with_its_cause_and_nothing_is_kept(station: Station, tmp_path: Path) -> None:
    device = "bwc_7"
    status, body = station.search(device, station.begin - 3600, time.time() + 3600)
    before = len(body["segments"])
    good = make_video(tmp_path / "good.mp4", time.time() - 20, 3)
    moov_last = tmp_path / "moov_last.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(good), "-c", "copy",
                    str(moov_last)], check=True, timeout=30)
    one_frame = make_video(tmp_path / "one.mp4", time.time() - 20, 1, frames=1, audio=False)
    cases = [
        (b"this is not a video at all" * 100, {}, 422, "not_a_video"),
        (moov_last.read_bytes()[: moov_last.stat().st_size // 2], {}, 422, "not_a_video"),  # no moov: cut short
        (one_frame.read_bytes(), {}, 422, "zero_duration"),
        (good.read_bytes(), {"sha256": "0" * 64}, 422, "hash_mismatch"),
        (good.read_bytes(), {"sha256": "not-hex"}, 400, "invalid_sha256"),
    ]
    for data, query, expected, code in cases:
        status, answer = station.upload(device, data, query)
        assert (status, answer.get("error")) == (expected, code), (code, answer)
        assert answer["message"]
    status, answer = station.upload("bwc-9999", good.read_bytes())
    assert status == 404 and answer["error"] == "unknown_device"
    status, answer = station.upload(device, good.read_bytes(), content_type="text/plain")
    assert status == 415 and answer["error"] == "unsupported_media_type"
    _nothing_more_indexed(station, device, before)
    metrics = station.daemon.get("/metrics")[1].decode()
    for code in ("not_a_video", "zero_duration", "hash_mismatch", "unsupported_media_type"):
        assert f'nvr_bodycam_rejected_total{{error="{code}"}}' in metrics, code


def test_a_truncated_faststart_file_is_refused(station: Station, tmp_path: Path) -> None:
    good = make_video(tmp_path / "good.mp4", time.time() - 20, 4)
    faststart = tmp_path / "faststart.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(good), "-c", "copy",
                    "-movflags", "+faststart", str(faststart)], check=True, timeout=30)
    data = faststart.read_bytes()
    status, answer = station.upload("bwc_7", data[: int(len(data) * 0.6)])
    assert status == 422 and answer["error"] == "truncated_file", answer
    assert station.uploads_left() == []


def _raw_request(station: Station, head: str, body: bytes = b"", wait: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", station.daemon.port), timeout=15) as conn:
        conn.sendall(head.encode() + body)
        if wait:
            time.sleep(wait)
        data = b""
        try:
            while chunk := conn.recv(65536):
                data += chunk
                head, sep, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if sep and length is not None and len(rest) >= length:
                    break  # the whole answer: the server may still be discarding the rest of the body
        except (ConnectionResetError, TimeoutError):
            pass
    return data


def _head(station: Station, device: str, length: int | None) -> str:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST /api/bodycams/{device}/recordings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {station.dock}\r\nContent-Type: video/mp4\r\n{size}Connection: close\r\n\r\n")


def test_size_and_free_space_are_checked_before_the_body_is_taken(station: Station) -> None:
    free = shutil.disk_usage(station.daemon.storage).free
    answer = _raw_request(station, _head(station, "bwc_7", free + 1))
    assert b" 507 " in answer.split(b"\r\n")[0] and b"insufficient_storage" in answer
    answer = _raw_request(station, _head(station, "bwc_7", 65 << 20))
    assert b" 413 " in answer.split(b"\r\n")[0] and b"payload_too_large" in answer
    # A dock that asks first (Expect: 100-continue, as curl does) is told before it sends a byte; a
    # stranger is not invited to send at all.
    expecting = _head(station, "bwc_7", free + 1).replace("Connection: close", "Expect: 100-continue\r\nConnection: close")
    answer = _raw_request(station, expecting)
    assert answer.startswith(b"HTTP/1.1 507 ") and b"insufficient_storage" in answer, answer[:200]
    stranger = expecting.replace(station.dock, "not-a-token")
    answer = _raw_request(station, stranger)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    small = _head(station, "bwc_7", 1000).replace("Connection: close", "Expect: 100-continue\r\nConnection: close")
    with socket.create_connection(("127.0.0.1", station.daemon.port), timeout=10) as conn:
        conn.sendall(small.encode())
        assert conn.recv(100).startswith(b"HTTP/1.1 100 Continue")
    # A body of unknown length is cut off where it passes the limit.
    chunk = b"\0" * (1 << 20)
    framed = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 66 + b"0\r\n\r\n"
    answer = _raw_request(station, _head(station, "bwc_7", None), framed)
    assert b" 413 " in answer.split(b"\r\n")[0], answer[:300]
    wait_until(lambda: station.uploads_left() == [], 10, "the temp file of the refused upload is removed")


def test_a_stalled_or_vanished_uploader_holds_nothing(station: Station, tmp_path: Path) -> None:
    started = time.monotonic()
    answer = _raw_request(station, _head(station, "bwc_7", 1 << 20), b"\0" * 1000)
    assert b" 408 " in answer.split(b"\r\n")[0] and b"request_timeout" in answer
    assert time.monotonic() - started < 15
    # A dock that goes away half-way: the temp file goes, nothing is indexed.
    with socket.create_connection(("127.0.0.1", station.daemon.port), timeout=5) as conn:
        conn.sendall(_head(station, "bwc_7", 1 << 20).encode() + b"\0" * 300_000)
        time.sleep(0.5)
    wait_until(lambda: station.uploads_left() == [], 10, "the temp file of the vanished upload is removed")


def test_concurrent_uploads_beyond_the_limit_are_refused_and_recording_goes_on(station: Station) -> None:
    # bodycam_uploads.max_concurrent is 4: four docks send slowly, a fifth is told to come back.
    holders = []
    try:
        for _ in range(4):
            conn = socket.create_connection(("127.0.0.1", station.daemon.port), timeout=10)
            conn.sendall(_head(station, "bwc_7", 1 << 20).encode() + b"\0" * 1000)
            holders.append(conn)
        wait_until(lambda: b"nvr_bodycam_uploads_active 4.0" in station.daemon.get("/metrics")[1], 5,
                   "the four uploads never took their slots", interval=0.05)
        answer = _raw_request(station, _head(station, "bwc_7", 1 << 20), b"\0" * 1000)
        assert b" 503 " in answer.split(b"\r\n")[0] and b"uploads_busy" in answer
    finally:
        for conn in holders:
            conn.close()
    wait_until(lambda: station.uploads_left() == [], 10, "the stalled uploads' temp files are removed")
    def recent_segment() -> bool:
        hall = station.daemon.camera("hall")
        closed = hall["last_segment_at"]
        return bool(hall["recording"] and closed and time.time() - datetime.fromisoformat(closed).timestamp() < 8)

    wait_until(recent_segment, 10, "the fixed camera stopped recording")


def test_a_dock_token_may_upload_and_nothing_else(station: Station) -> None:
    for path in ("/api/cameras", "/api/bodycams", "/api/recordings?camera=hall&start=2026-01-01T00:00:00Z"
                 "&end=2026-01-01T01:00:00Z", "/api/me", "/api/bodycams/bwc-0142/recordings"):
        status, body = station.get(path, station.dock)
        assert status == 403 and body["error"] == "forbidden", path


def test_a_restricted_auditor_cannot_see_a_device_outside_their_list(station: Station,
                                                                      uploaded: dict[str, Any]) -> None:
    start = uploaded["start"]
    status, body = station.get("/api/bodycams", station.hall_auditor)
    assert status == 200 and body["bodycams"] == []
    status, body = station.search("bwc-0142", start - 5, start + 10, station.hall_auditor)
    assert status == 403 and body["error"] == "camera_forbidden"
    status, body = station.get(f"/api/recordings/bwc-0142/clip.mp4?start={iso(start)}&end={iso(start + 3)}",
                               station.hall_auditor)
    assert status == 403
    hold = {"camera": "bwc-0142", "start": iso(start), "end": iso(start + 3), "reason": "complaint 12"}
    status, body = station.daemon.request("POST", "/api/holds", hold,
                                          headers={"Authorization": f"Bearer {station.hall_auditor}"})
    assert status == 403
    status, held = station.daemon.request("POST", "/api/holds", hold,
                                          headers={"Authorization": f"Bearer {station.auditor}"})
    assert status == 201 and held["camera"] == "bwc-0142"  # a device's footage is held like a camera's
    status, holds = station.get("/api/holds", station.hall_auditor)
    assert status == 200 and all(h["camera"] != "bwc-0142" for h in holds)
    status, body = station.get("/api/bodycams/bwc-0142/recordings", station.hall_auditor)
    assert status == 403
    status, body = station.daemon.request("POST", "/api/exports", {
        "cameras": ["hall", "bwc-0142"], "start": iso(start), "end": iso(start + 3), "reason": "complaint 12"},
        headers={"Authorization": f"Bearer {station.hall_auditor}"})
    assert status == 403
    status, body = station.get("/api/coverage?" + urllib.parse.urlencode(
        {"start": iso(start - 5), "end": iso(start + 5)}), station.hall_auditor)
    assert status == 200 and [c["camera"] for c in body["cameras"]] == ["hall"]


# -- the inbox --------------------------------------------------------------------------------


def test_the_inbox_takes_a_copied_file_and_quarantines_a_bad_one_with_an_alarm(station: Station,
                                                                               tmp_path: Path) -> None:
    start = time.time() - 15
    source = make_video(tmp_path / "src.mp4", start, 3)
    target = station.inbox / "bwc_7_20261201_0007.mp4"
    # Copied slowly, as a dock over a network share does: never taken half-written.
    with target.open("wb") as f:
        data = source.read_bytes()
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        time.sleep(1.5)
        f.write(data[half:])
    (station.inbox / "bwc_7_broken.mp4").write_bytes(b"garbage" * 1000)
    (station.inbox / "nobody_x.mp4").write_bytes(source.read_bytes())

    def taken() -> bool:
        status, body = station.get("/api/bodycams/bwc_7/recordings")
        return status == 200 and any(r["sha256"] == sha256(source) for r in body["recordings"])

    wait_until(taken, 20, "the inbox file was never taken")
    wait_until(lambda: not target.exists(), 5, "the taken file stays in the inbox")
    status, body = station.get("/api/bodycams/bwc_7/recordings")
    item = next(r for r in body["recordings"] if r["sha256"] == sha256(source))
    assert item["via"] == "inbox" and item["original_name"] == target.name
    wait_until(lambda: (station.quarantine / "nobody_x.mp4.reason.json").exists(), 10, "unknown device quarantined")
    wait_until(lambda: (station.quarantine / "bwc_7_broken.mp4.reason.json").exists(), 10, "bad file quarantined")
    reason = json.loads((station.quarantine / "bwc_7_broken.mp4.reason.json").read_text())
    assert reason["error"] == "not_a_video" and reason["device"] == "bwc_7"
    assert (station.quarantine / "bwc_7_broken.mp4").read_bytes() == b"garbage" * 1000  # never thrown away
    assert json.loads((station.quarantine / "nobody_x.mp4.reason.json").read_text())["error"] == "unknown_device"
    status, events = station.get("/api/events?camera=bwc_7&type=bodycam_quarantined")
    assert status == 200 and events["events"], events
    assert station.uploads_left() == []


# -- playback and export ----------------------------------------------------------------------


def test_an_uploaded_file_plays_in_chromium_through_the_clip_endpoint(station: Station,
                                                                       uploaded: dict[str, Any],
                                                                       browser: Any) -> None:  # noqa: F811
    start = uploaded["start"]
    context = browser.new_context()
    try:
        context.set_extra_http_headers({"Authorization": f"Bearer {station.auditor}"})
        page = context.new_page()
        page.goto(station.daemon.base_url + "/healthz")
        query = urllib.parse.urlencode({"start": iso(start), "end": iso(start + 5)})
        page.set_content(f'<video id="v" muted autoplay src="{station.daemon.base_url}'
                         f'/api/recordings/bwc-0142/clip.mp4?{query}"></video>')

        def playing() -> dict[str, Any] | None:
            state: dict[str, Any] = page.evaluate(
                "() => { const v = document.getElementById('v'); v.play().catch(() => {});"
                " return {w: v.videoWidth, t: v.currentTime, e: v.error && v.error.code}; }")
            return state if state["w"] == 320 and state["t"] > 1.0 else None

        wait_until(playing, 30, "the body-camera clip never played", interval=0.3)
    finally:
        context.close()


def test_an_uploaded_file_plays_over_hls_on_the_workbench_beside_the_fixed_camera(
        station: Station, uploaded: dict[str, Any], browser: Any, tmp_path: Path) -> None:  # noqa: F811
    # The stored file stays as the device wrote it (not fragmented); HLS plays a fragmented copy of it.
    start, item = uploaded["start"], uploaded["item"]
    query = urllib.parse.urlencode({"start": iso(start - 3), "end": iso(start + 8)})
    url = f"{station.daemon.base_url}/api/recordings/bwc-0142/index.m3u8?{query}"
    played = tmp_path / "played.mp4"
    done = subprocess.run(["ffmpeg", "-v", "error", "-headers", f"Authorization: Bearer {station.auditor}\r\n",
                           "-i", url, "-c", "copy", "-y", str(played)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json",
                                       str(played)], capture_output=True, text=True, timeout=30).stdout)
    assert float(probe["format"]["duration"]) == pytest.approx(item["duration_seconds"], abs=0.3)
    assert sha256(station.stored_files("bwc-0142")[0]) == sha256(uploaded["path"])  # the evidence is untouched
    copies = list((station.daemon.storage / "playback").glob("*.mp4"))
    assert len(copies) == 1 and copies[0].name.startswith(f"{item['id']}-")

    context = browser.new_context()
    try:
        context.set_extra_http_headers({"Authorization": f"Bearer {station.auditor}"})
        page = context.new_page()
        link = urllib.parse.urlencode({"sources": "hall,bwc-0142", "start": iso(start - 3), "end": iso(start + 8),
                                       "at": iso(start + 0.5)})
        page.goto(f"{station.daemon.base_url}/playback?{link}")

        def device_playing() -> dict[str, Any] | None:
            sources = {s["id"]: s for s in page.evaluate("nvrPlayback.sources()")}
            device = sources.get("bwc-0142")
            return sources if device and not device["paused"] and not device["gap"] and device["time"] > 1.0 \
                else None

        sources = wait_until(device_playing, 30, "the body-camera file never played on the workbench",
                             interval=0.3)
        assert "hall" in sources
    finally:
        context.close()


def test_exported_with_a_fixed_camera_in_one_package_that_verifies_and_a_flipped_byte_fails(
        station: Station, uploaded: dict[str, Any], tmp_path: Path) -> None:
    start = uploaded["start"]
    status, job = station.daemon.request("POST", "/api/exports", {
        "cameras": ["hall", "bwc-0142"], "start": iso(start - 1), "end": iso(start + 6), "reason": "complaint 12"},
        headers={"Authorization": f"Bearer {station.auditor}"})
    assert status == 202, job

    def done() -> dict[str, Any] | None:
        _, state = station.get(f"/api/exports/{job['id']}")
        assert state["state"] != "failed", state
        return state if state["state"] == "done" else None

    wait_until(done, 60, "the export never finished")
    status, data = station.get(f"/api/exports/{job['id']}/download")
    assert status == 200
    package = tmp_path / "evidence.zip"
    package.write_bytes(data)
    with zipfile.ZipFile(package) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        names = archive.namelist()
    cameras = {c["id"]: c for c in manifest["cameras"]}
    assert set(cameras) == {"hall", "bwc-0142"} and cameras["bwc-0142"]["kind"] == "bodycam"
    device_segment = cameras["bwc-0142"]["segments"][0]
    assert device_segment["meta"]["origin"] == "upload" and device_segment["meta"]["clock_flag"] is False
    assert cameras["hall"]["segments"]
    key = tmp_path / "station.pem"
    _, pem = station.get("/api/key")
    key.write_text(pem["public_key_pem"])
    ok = subprocess.run([sys.executable, "-m", "nvr", "verify", str(package), "--pubkey", str(key)],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # One flipped byte in the body-camera file.
    flipped = tmp_path / "flipped.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(flipped, "w") as dst:
        for name in names:
            content = bytearray(src.read(name))
            if name == device_segment["file"]:
                content[len(content) // 2] ^= 0x01
            dst.writestr(name, bytes(content))
    bad = subprocess.run([sys.executable, "-m", "nvr", "verify", str(flipped), "--pubkey", str(key)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and device_segment["file"] in bad.stdout, bad.stdout


def test_storage_verification_and_the_cli_cover_devices(station: Station, uploaded: dict[str, Any],
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(station.daemon.config_path)
    assert cli(["verify-storage", "-c", config, "--camera", "bwc-0142"]) == 0
    assert "OK" in capsys.readouterr().out
    start = uploaded["start"]
    out = tmp_path / "cli.zip"
    assert cli(["export", "-c", config, "--camera", "bwc-0142", "--camera", "hall", "--start", iso(start) or "",
                "--end", iso(start + 4) or "", "--reason", "court", "-o", str(out)]) == 0, capsys.readouterr()
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert {c["id"] for c in manifest["cameras"]} == {"hall", "bwc-0142"}


def cli(argv: list[str]) -> int:
    """``nvr ARGV`` in this process (the commands open the storage as the shell user would)."""
    from nvr.cli import main

    return main(argv)


# -- officer assignment -----------------------------------------------------------------------


def test_officer_assignment_over_time_is_kept_and_audited(station: Station,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    admin = {"Authorization": f"Bearer {station.daemon.token}"}
    t0 = time.time() - 3600
    status, first = station.daemon.request("POST", "/api/bodycams/bwc-0142/assignments",
                                           {"officer": "Sgt. Rahimi (4471)", "start": iso(t0)}, headers=admin)
    assert status == 201, first
    status, second = station.daemon.request("POST", "/api/bodycams/bwc-0142/assignments",
                                            {"officer": "Off. Karimi (5120)", "start": iso(t0 + 1800)}, headers=admin)
    assert status == 201
    status, clash = station.daemon.request("POST", "/api/bodycams/bwc-0142/assignments",
                                           {"officer": "X", "start": iso(t0 - 60)}, headers=admin)
    assert status == 409 and clash["error"] == "assignment_conflict"
    status, body = station.daemon.request("POST", "/api/bodycams/bwc-0142/assignments", {"officer": "Y"},
                                          headers={"Authorization": f"Bearer {station.auditor}"})
    assert status == 403  # auditors read assignments; admins change them
    status, body = station.get("/api/bodycams/bwc-0142/assignments")
    assert [a["officer"] for a in body["assignments"]] == ["Sgt. Rahimi (4471)", "Off. Karimi (5120)"]
    assert body["assignments"][0]["end"] == second["start"]
    status, listing = station.get("/api/bodycams")
    assert listing["bodycams"][0]["worn_by"] == "Off. Karimi (5120)"
    status, audit = station.daemon.get("/api/audit?action=bodycam.assign")
    assert [e["details"]["officer"] for e in audit["entries"]] == ["Sgt. Rahimi (4471)", "Off. Karimi (5120)"]
    config = str(station.daemon.config_path)
    assert cli(["bodycam", "assign", "-c", config, "bwc_7", "--officer", "Off. Tehrani (6001)"]) == 0
    status, body = station.get("/api/bodycams/bwc_7/assignments")
    assert [a["officer"] for a in body["assignments"]] == ["Off. Tehrani (6001)"]
    capsys.readouterr()
    assert cli(["bodycam", "assignments", "-c", config, "bwc_7"]) == 0
    assert "Off. Tehrani (6001)" in capsys.readouterr().out
    assert cli(["bodycam", "assign", "-c", config, "bwc-9", "--officer", "X"]) == 2


# -- the inbox's rules, without a daemon ------------------------------------------------------


def test_a_device_id_with_underscores_is_matched_by_its_longest_prefix() -> None:
    from recorder.bodycam_inbox import device_of

    devices = ["bwc", "bwc_7", "bwc_77"]
    assert device_of("bwc_77_0001.mp4", devices) == "bwc_77"
    assert device_of("bwc_7_0001.mp4", devices) == "bwc_7"
    assert device_of("bwc_x.mp4", devices) == "bwc"
    assert device_of("bwc_.mp4", devices) == "bwc"
    assert device_of("other_1.mp4", devices) is None and device_of("bwc", devices) is None


async def test_a_file_replaced_or_written_while_it_is_read_is_waited_for_again(
        store: tuple[Path, Any], tmp_path: Path) -> None:
    from nvr.base.config import BodycamInbox, BodycamUploads
    from recorder.bodycam import BodycamIngest
    from recorder.bodycam_inbox import TAKING, BodycamInboxWatcher, FileChanged

    root, index = store
    ingest = BodycamIngest(root, index, BodycamUploads(), 0)
    await index.call(ingest.store.prepare)
    settings = BodycamInbox(path=tmp_path / "in", quarantine=tmp_path / "q", stable_seconds=0.3)
    watcher = BodycamInboxWatcher(settings, ingest, ["bwc-1"])
    watcher.prepare()
    video = make_video(tmp_path / "v.mp4", time.time() - 60, 2, audio=False)
    target = settings.path / "bwc-1_a.mp4"
    target.write_bytes(video.read_bytes()[:1000])
    assert await watcher.scan() == 0  # first sight: not taken
    time.sleep(0.1)
    target.write_bytes(video.read_bytes())  # the dock goes on writing: the stability wait starts again
    assert await watcher.scan() == 0
    # Written to through a descriptor still open while it is copied: the copy is not kept.
    import os

    from recorder.bodycam_inbox import _stamp

    stamp = _stamp(os.stat(target))
    claimed = settings.path / TAKING / target.name
    watcher._claim(target.name, stamp, claimed)
    staged = ingest.store.stage()
    with claimed.open("ab") as f:
        f.write(b"more")
    with pytest.raises(FileChanged):
        watcher._copy(claimed, stamp, staged)
    staged.discard()
    watcher._put_back(claimed, target.name)
    assert target.exists() and not claimed.exists()
    # Replaced by another file between the look and the claim: not claimed.
    stamp = _stamp(os.stat(target))
    target.unlink()
    target.write_bytes(video.read_bytes())
    with pytest.raises(FileChanged):
        watcher._claim(target.name, stamp, claimed)
    # Once stable, it is taken, stored and removed from the inbox.
    time.sleep(0.35)
    await watcher.scan()
    time.sleep(0.35)
    assert await watcher.scan() == 1
    assert not target.exists() and watcher.taken_total == 1
    assert list((root / "uploads").iterdir()) == []


async def test_a_disk_that_fills_up_mid_body_ends_the_upload_with_507(store: tuple[Path, Any]) -> None:
    import asyncio
    import errno

    from nvr.base.config import BodycamUploads
    from recorder.bodycam import BodycamIngest, UploadRejected
    from web.bodycams import _write

    root, index = store
    ingest = BodycamIngest(root, index, BodycamUploads(), 0)
    ingest.store.prepare()
    staged = ingest.store.stage()

    def full(_chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    staged.write = full  # type: ignore[method-assign,assignment]
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    queue.put_nowait(b"\0" * 1024)
    with pytest.raises(UploadRejected) as caught:
        await _write(queue, ingest, staged)
    assert caught.value.status == 507 and caught.value.code == "insufficient_storage"
    assert "No space left" in str(caught.value)
    staged.discard()
    assert list((root / "uploads").iterdir()) == []


def test_playback_copies_are_made_once_bounded_and_leave_with_the_footage(store: tuple[Path, Any],
                                                                          tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from recorder import hls, playback_copy
    from recorder.index import NewSegment, encode_meta

    root, index = store
    rows = []
    for n in range(3):
        source = make_video(tmp_path / f"f{n}.mp4", 1_700_000_000.0 + 10 * n, 2, audio=n != 1)
        stored = root / "recordings" / "bwc-1" / source.name
        stored.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, stored)
        rows.append(index.add_segment(NewSegment(
            camera="bwc-1", start=1_700_000_000.0 + 10 * n, end=1_700_000_002.0 + 10 * n, frames=30,
            bytes=stored.stat().st_size, sha256=sha256(stored), codec="h264", width=320, height=240, params="{}",
            path=f"recordings/bwc-1/{source.name}", meta=encode_meta({"origin": "upload"}))))
    original = root / rows[0].path
    with pytest.raises(hls.LayoutError):
        hls.read_layout(original)  # as the device wrote it: not fragmented
    copies = playback_copy.PlaybackCopies(root, capacity_bytes=1 << 30)
    with ThreadPoolExecutor(4) as pool:  # four viewers open it at once: one remux, one copy
        paths = set(pool.map(lambda _: copies.ensure(rows[0], original), range(4)))
    assert len(paths) == 1 and len(list((root / "playback").iterdir())) == 1
    layout = hls.read_layout(paths.pop())
    assert len(layout) >= 2 and layout.fragments[0].keyframe
    assert sha256(original) == rows[0].sha256  # the evidence is never rewritten

    # Bounded: the least recently played copies go first, never the one just made.
    first = copies.ensure(rows[0], original)
    copies.capacity_bytes = first.stat().st_size + 1
    second = copies.ensure(rows[1], root / rows[1].path)
    assert second.is_file() and not first.is_file()
    # Retention deletes the copy with the footage.
    playback_copy.remove(root, rows[1])
    assert not second.exists()
    assert not playback_copy.needs_copy(dataclasses.replace(rows[0], meta="{}"))  # a recorded segment plays as is
