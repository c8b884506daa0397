"""Tests for the simulated RTSP camera (sim/camsim.py + sim/client.py).

Real end-to-end: a camsim child process per camera, ffprobe/ffmpeg as RTSP clients
over TCP interleaved.  Skipped when the system pieces are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from sim.client import SimCamera, SimCameraError

PY = os.environ.get("CAMSIM_PYTHON", "/usr/bin/python3")


def _system_ok() -> bool:
    if not (shutil.which("ffprobe") and shutil.which("ffmpeg") and os.path.exists(PY)):
        return False
    r = subprocess.run([PY, "-c", "import gi, numpy; gi.require_version('GstRtspServer', '1.0'); "
                        "from gi.repository import GstRtspServer"], capture_output=True)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not _system_ok(), reason="needs ffmpeg + Debian python3 with gi/GstRtspServer/numpy")

PASSWORD = "Pa55@w:rd%21!"


def probe(url: str, timeout: float = 20.0, extra: tuple[str, ...] = ()) -> tuple[int, list[dict], str]:
    r = subprocess.run(
        ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-analyzeduration", "1000000", *extra,
         "-show_entries", "stream=codec_name,codec_type,width,height,sample_rate", "-of", "json", url],
        capture_output=True, text=True, timeout=timeout)
    streams = json.loads(r.stdout or "{}").get("streams", []) if r.returncode == 0 else []
    return r.returncode, streams, r.stderr


def grab_gray(cam: SimCamera, timeout: float = 15.0) -> bytes:
    """One decoded frame as 8-bit gray (full range)."""
    r = subprocess.run(
        ["ffmpeg", "-v", "error", "-rtsp_transport", "tcp", "-analyzeduration", "0", "-probesize", "32768",
         "-i", cam.url, "-frames:v", "1",
         "-f", "rawvideo", "-pix_fmt", "gray", "-"], capture_output=True, timeout=timeout)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert len(r.stdout) == cam_size(cam), (len(r.stdout), cam_size(cam))
    return r.stdout


def cam_size(cam: SimCamera) -> int:
    return cam.width * cam.height


def mean(b: bytes) -> float:
    return sum(b) / len(b)


def mean_abs_diff(a: bytes, b: bytes) -> float:
    return sum(abs(x - y) for x, y in zip(a[::7], b[::7], strict=False)) / len(a[::7])


@pytest.fixture
def cam_factory(tmp_path):
    cams: list[SimCamera] = []

    def make(name="cam", **kw) -> SimCamera:
        cam = SimCamera(name, log_path=tmp_path / f"{name}.log", **kw)
        cams.append(cam)
        cam.start()
        return cam

    yield make
    for c in cams:
        c.stop()


def test_h264_stream(cam_factory):
    cam = cam_factory()
    assert cam.url == f"rtsp://127.0.0.1:{cam.port}/stream"
    rc, streams, err = probe(cam.url)
    assert rc == 0, err
    assert [(s["codec_name"], s["width"], s["height"]) for s in streams] == [("h264", 640, 360)]


def test_h265_stream(cam_factory):
    cam = cam_factory("h265", codec="h265", width=320, height=240)
    rc, streams, err = probe(cam.url)
    assert rc == 0, err
    assert [(s["codec_name"], s["width"], s["height"]) for s in streams] == [("hevc", 320, 240)]


def test_pcmu_audio_track(cam_factory):
    cam = cam_factory("audio", audio="pcmu")
    rc, streams, err = probe(cam.url)
    assert rc == 0, err
    kinds = {s["codec_type"]: s for s in streams}
    assert kinds["video"]["codec_name"] == "h264"
    assert kinds["audio"]["codec_name"] == "pcm_mulaw"
    assert kinds["audio"]["sample_rate"] == "8000"


def test_auth_with_special_password(cam_factory):
    cam = cam_factory("auth", user="admin", password=PASSWORD)
    good = cam.url_with("admin", PASSWORD)
    assert "Pa55%40w%3Ard%2521%21@" in good
    rc, streams, err = probe(good)
    assert rc == 0, err
    assert streams and streams[0]["codec_name"] == "h264"
    for url in (cam.url_with("admin", "wrong"), cam.url):
        rc, _, err = probe(url)
        assert rc != 0
        assert "401" in err
    # the password never appears on the child's command line
    cmdline = Path(f"/proc/{cam.pid}/cmdline").read_bytes().decode(errors="replace")
    assert PASSWORD not in cmdline


def test_stop_start_same_port_with_client_connected(cam_factory):
    cam = cam_factory("restart")
    port = cam.port
    viewer = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-rtsp_transport", "tcp", "-i", cam.url, "-c", "copy", "-f", "null", "-"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        cam.stop()
        assert not cam.running
        cam.stop()  # idempotent
        cam.start()
        assert cam.port == port
        rc, streams, err = probe(cam.url)
        assert rc == 0, err
        assert streams[0]["width"] == 640
    finally:
        viewer.kill()
        viewer.wait()
    cam.restart()
    assert cam.running and cam.port == port


def test_black_freeze_and_normal_picture(cam_factory):
    cam = cam_factory("faults", width=320, height=180)
    normal = grab_gray(cam)
    assert 60 < mean(normal) < 190

    cam.command("black")
    black = grab_gray(cam)
    assert mean(black) < 25

    cam.command("normal")
    again = grab_gray(cam)
    assert 60 < mean(again) < 190

    # a moving scene differs between two grabs; a frozen one does not
    time.sleep(0.6)
    moved = grab_gray(cam)
    assert mean_abs_diff(again, moved) > 0.5
    cam.command("freeze")
    f1 = grab_gray(cam)
    time.sleep(0.8)
    f2 = grab_gray(cam)
    assert mean_abs_diff(f1, f2) < 0.5


def test_bad_command_raises(cam_factory):
    cam = cam_factory("errs", width=160, height=90)
    with pytest.raises(SimCameraError):
        cam.command("explode")
    with pytest.raises(SimCameraError):
        cam.command("resolution 33x7")
    cam.command("scene")
    cam.command("blur")
    cam.command("normal")
    assert cam.running


def test_resolution_change_seen_by_connected_client(cam_factory):
    cam = cam_factory("res", width=320, height=180)
    out: list[str] = []
    viewer = subprocess.Popen(
        ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_entries", "frame=width,height",
         "-of", "csv=p=0", cam.url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    reader = threading.Thread(target=lambda: out.extend(viewer.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 15
        while not any(line.startswith("320,180") for line in out):
            assert time.monotonic() < deadline, "no frames before resolution change"
            time.sleep(0.1)
        cam.command("resolution 256x144")
        while not any(line.startswith("256,144") for line in out):
            assert time.monotonic() < deadline, f"new size not seen: {Counter(out)}"
            time.sleep(0.1)
    finally:
        viewer.terminate()
        viewer.wait(5)
    # and a client connecting afterwards gets the new size directly
    rc, streams, err = probe(cam.url)
    assert rc == 0, err
    assert (streams[0]["width"], streams[0]["height"]) == (256, 144)


def test_inband_only_sdp_has_no_sprop(cam_factory):
    cam = cam_factory("inband", width=160, height=90, inband_only=True)
    r = subprocess.run(["ffprobe", "-v", "debug", "-rtsp_transport", "tcp", cam.url],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr[-2000:]
    fmtp = [ln for ln in r.stderr.splitlines() if ln.startswith("a=fmtp")]
    assert fmtp and not any("sprop" in ln for ln in fmtp)
    assert "Video: h264" in r.stderr and "160x90" in r.stderr


def test_file_mode_serves_preencoded_stream(cam_factory, tmp_path):
    out = tmp_path / "clip.h264"
    r = subprocess.run([PY, str(Path(__file__).resolve().parents[1] / "sim" / "camsim.py"), "encode",
                        "--out", str(out), "--width", "320", "--height", "240", "--fps", "10",
                        "--seconds", "2", "--bitrate-kbps", "300"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 1000
    cam = cam_factory("file", file=out, fps=10)
    rc, streams, err = probe(cam.url)
    assert rc == 0, err
    assert [(s["codec_name"], s["width"], s["height"]) for s in streams] == [("h264", 320, 240)]


def test_quit_command_and_start_failure(cam_factory):
    cam = cam_factory("quit", width=160, height=90)
    cam.command("quit")
    deadline = time.monotonic() + 5
    while cam.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not cam.running
    # a second camera on a port that is already taken fails with a useful error
    busy = cam_factory("busy", width=160, height=90)
    clash = SimCamera("clash", port=busy.port, width=160, height=90)
    with pytest.raises(SimCameraError, match="cannot listen"):
        clash.start(timeout=10)
