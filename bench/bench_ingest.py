"""Ingest and recording CPU per camera, next to ffmpeg recording the same cameras in the same run.

N simulated 1080p25 H.264 cameras at about 4 Mbps (2 s GOP) are served from a
pre-encoded looping clip, at 16 and at 64 cameras by default.  For each camera
count, in this order and on the same cameras:

- ``ffmpeg_before``: ``ffmpeg -rtsp_transport tcp -i URL -c copy -f segment`` per camera;
- ``pyav_demux``:    PyAV's RTSP demuxer alone, every camera on a thread of one process
  (``bench/pyav_demux.py``): the floor under any daemon that demuxes with PyAV;
- ``ingest``:        nvr with ``record: false`` and the picture checks idle (``analyse_seconds: 300``);
- ``recording``:     nvr recording, picture checks idle;
- ``recording_health``: nvr recording with the health checks as configured by default;
- ``recording_health_substream_main`` and ``_auto`` (with ``--substream``): the
  same, each camera also giving a 640x360 substream (``live_url``, from a second
  simulator per camera, as a real camera's second profile), which the daemon
  ingests for live view; the picture checks on the main stream
  (``health.analyse_stream: main``) and on the substream (``auto``, the default);
- ``ffmpeg_after``:  ffmpeg again, so a drift of the machine's load shows.

Each phase reports the CPU of its process(es) as percent of one core per camera
(and CPU-seconds per camera-minute), the daemon's resident memory per camera, the
recorded coverage, and the simulated cameras' own CPU.  The goal of issue 13 is
printed with every daemon phase: ``recording_health`` at most 1.2x ffmpeg (the
mean of before and after).

The cameras come from one ``sim/light_rtsp.py`` process for all of them
(``--cameras-from light``, the default: about a tenth of GStreamer's cost per
camera, so 64 cameras leave the machine to what is measured), or from one
GStreamer RTSP server per camera (``--cameras-from gstreamer``, ``sim/camsim.py``,
what the tests use).  ``camera_server`` in the report says which, and
``cameras_core_percent_per_camera`` what they cost meanwhile.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, clip_1080p, python, report, rss_bytes, total_cpu  # noqa: E402
from bench.common import clip as bench_clip  # noqa: E402
from sim.client import SimCamera, SimCameraError  # noqa: E402
from sim.light_rtsp import LightCameras  # noqa: E402

GOAL_RATIO = 1.2


class Camera(Protocol):
    """What a phase reads of a simulated camera (``SimCamera`` or one of a ``LightCameras`` process)."""

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def pid(self) -> int | None: ...


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class Measured:
    cpu: float  # CPU-seconds of the measured process(es)
    cams_cpu: float  # CPU-seconds of the simulated cameras meanwhile
    seconds: float
    rss: int = 0  # bytes, the daemon only
    coverage: float | None = None
    analysis_cpu: float | None = None  # CPU-seconds the daemon's picture-check threads counted meanwhile


def measure(pids: list[int], cams: list[Camera], seconds: float) -> tuple[float, float, float]:
    cam_pids = sorted({c.pid for c in cams if c.pid is not None})  # a light server serves many: counted once
    start, cams_start, t0 = total_cpu(pids), total_cpu(cam_pids), time.monotonic()
    time.sleep(seconds)
    return total_cpu(pids) - start, total_cpu(cam_pids) - cams_start, time.monotonic() - t0


def ffmpeg_phase(cams: list[Camera], seconds: float, workdir: Path, settle: float) -> Measured:
    procs = []
    for cam in cams:
        target = workdir / f"ff-{cam.name}-%05d.mp4"
        out = ["-f", "segment", "-segment_time", "10", "-segment_format", "mp4", "-reset_timestamps", "1",
               str(target)]
        procs.append(subprocess.Popen(
            ["ffmpeg", "-nostdin", "-v", "error", "-rtsp_transport", "tcp", "-i", cam.url, "-c", "copy", *out],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        time.sleep(settle)  # connect and settle
        cpu, cams_cpu, elapsed = measure([p.pid for p in procs], cams, seconds)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
    for f in workdir.glob("ff-*.mp4"):
        f.unlink()
    return Measured(cpu, cams_cpu, elapsed)


def pyav_demux_phase(cams: list[Camera], seconds: float, settle: float) -> Measured:
    proc = subprocess.Popen([python(), str(REPO / "bench" / "pyav_demux.py"), *(c.url for c in cams)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("pyav_demux: cameras never gave a packet")
        time.sleep(settle)
        cpu, cams_cpu, elapsed = measure([proc.pid], cams, seconds)
        rss = rss_bytes(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    return Measured(cpu, cams_cpu, elapsed, rss=rss)


def analysis_cpu(port: int, token: str) -> float:
    """The daemon's own count of thread CPU spent decoding and judging keyframes, all cameras."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("nvr_health_analysis_cpu_seconds_total{"))


def api(port: int, token: str, path: str) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def coverage(storage: Path, cameras: list[str], start: float, end: float) -> float:
    """Share of [start, end] that the index covers, averaged over cameras."""
    from recorder.index import SegmentIndex

    index = SegmentIndex(storage / "index.sqlite3")
    try:
        shares = []
        for camera in cameras:
            covered, cursor = 0.0, start
            for row in index.all_segments(camera):
                lo, hi = max(row.start, cursor), min(row.end, end)
                if hi > lo:
                    covered += hi - lo
                    cursor = hi
            shares.append(covered / (end - start))
    finally:
        index.close()
    return sum(shares) / len(shares)


def nvr_phase(cams: list[Camera], seconds: float, workdir: Path, name: str, record: bool, health: bool,
              settle: float, subs: list[Camera] | None = None, analyse_stream: str = "auto") -> Measured:
    port = free_port()
    storage = workdir / f"storage-{len(cams)}-{name}"
    config: dict[str, Any] = {
        "station": {"id": "st-bench", "name": "bench"},
        "storage": {"path": str(storage), "segment_seconds": 10},
        "web": {"listen": f"127.0.0.1:{port}"},
        "log": {"level": "warning"},
        "cameras": [{"id": c.name, "name": c.name, "url": c.url, "record": record} for c in cams],
    }
    for entry, sub in zip(config["cameras"], subs or [], strict=False):
        entry["live_url"] = sub.url
    config["health"] = {"analyse_stream": analyse_stream}
    if not health:
        config["health"]["analyse_seconds"] = 300  # one analysis at start, none while measuring
    cfg = workdir / f"config-{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    subprocess.run([python(), "-m", "nvr", "init-storage", "-c", str(cfg)], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    from nvr.identity.accounts_cli import create_token
    from nvr.identity.roles import Role

    token = create_token(storage / "auth.sqlite3", "bench", Role.ADMIN)  # access control: deny by default
    proc = subprocess.Popen([python(), "-m", "nvr", "run", "-c", str(cfg)], cwd=REPO)
    try:
        # 64 cameras opening at once on a loaded 2-core box take a while; some need a retry.
        deadline = time.monotonic() + 60 + 2 * len(cams)
        while time.monotonic() < deadline:
            try:
                listing = api(port, token, "/api/cameras")
                if all(c["state"] == "online" and (c["recording"] or not record) for c in listing):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("cameras never came online")
        time.sleep(settle)
        started = time.time()
        analysed = analysis_cpu(port, token)
        cpu, cams_cpu, elapsed = measure([proc.pid], [*cams, *(subs or [])], seconds)
        analysed = analysis_cpu(port, token) - analysed
        ended = time.time()
        rss = rss_bytes(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    covered = coverage(storage, [c.name for c in cams], started, ended) if record else None
    return Measured(cpu, cams_cpu, elapsed, rss=rss, coverage=covered, analysis_cpu=analysed if health else None)


def percent_per_camera(m: Measured, cameras: int) -> float:
    return 100 * m.cpu / m.seconds / cameras


def start_camera(name: str, clip: Path, width: int = 1920, height: int = 1080) -> SimCamera:
    """A started simulated camera; another port if the one it picked was taken meanwhile."""
    for attempt in range(3):
        cam = SimCamera(name, file=str(clip), fps=25, width=width, height=height)
        try:
            cam.start()
            return cam
        except SimCameraError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class CameraFleet:
    """The simulated cameras of one run, from the light server (one process) or GStreamer (one per camera)."""

    def __init__(self, server: str) -> None:
        self.server = server
        self._lights: list[LightCameras] = []
        self._sims: list[SimCamera] = []

    def start(self, count: int, clip: Path, prefix: str, width: int = 1920, height: int = 1080) -> list[Camera]:
        if self.server == "light":
            light = LightCameras(count, clip, fps=25, prefix=prefix)
            self._lights.append(light)
            light.start()
            return list(light.cameras)
        sims = [start_camera(f"{prefix}{i}", clip, width, height) for i in range(count)]
        self._sims += sims
        return list(sims)

    def dropped_frames(self) -> int | None:
        """Frames the light server(s) dropped so far for clients that did not keep up; GStreamer does not say."""
        return sum(light.dropped_frames() for light in self._lights) if self.server == "light" else None

    def stop(self) -> None:
        for server in [*self._lights, *self._sims]:
            server.stop()


def run_count(cameras: int, seconds: float, settle: float, work: Path, substream: bool, server: str) -> None:
    fleet = CameraFleet(server)
    subs: list[Camera] = []
    phases: dict[str, Measured] = {}
    dropped: dict[str, int | None] = {}

    def phase(name: str, run: Callable[[], Measured]) -> None:
        before = fleet.dropped_frames()
        phases[name] = run()
        after = fleet.dropped_frames()
        dropped[name] = None if before is None or after is None else after - before

    try:
        cams = fleet.start(cameras, clip_1080p(), "b")
        phase("ffmpeg_before", lambda: ffmpeg_phase(cams, seconds, work, settle))
        phase("pyav_demux", lambda: pyav_demux_phase(cams, seconds, settle))
        phase("ingest", lambda: nvr_phase(cams, seconds, work, "ingest", record=False, health=False, settle=settle))
        phase("recording", lambda: nvr_phase(cams, seconds, work, "recording", record=True, health=False,
                                             settle=settle))
        phase("recording_health", lambda: nvr_phase(cams, seconds, work, "recording_health", record=True,
                                                    health=True, settle=settle))
        if substream:
            small = bench_clip(640, 360, bitrate_kbps=512)
            subs = fleet.start(cameras, small, "b-sub", 640, 360)
            for analyse in ("main", "auto"):
                name = f"recording_health_substream_{analyse}"
                phase(name, lambda name=name, analyse=analyse: nvr_phase(
                    cams, seconds, work, name, record=True, health=True, settle=settle, subs=subs,
                    analyse_stream=analyse))
        phase("ffmpeg_after", lambda: ffmpeg_phase(cams, seconds, work, settle))
    finally:
        fleet.stop()
    ff = sum(percent_per_camera(phases[p], cameras) for p in ("ffmpeg_before", "ffmpeg_after")) / 2
    out: dict[str, Any] = {}
    for name, m in phases.items():
        entry: dict[str, Any] = {
            "core_percent_per_camera": round(percent_per_camera(m, cameras), 3),
            "cpu_s_per_camera_min": round(m.cpu / m.seconds * 60 / cameras, 3),
            "cameras_core_percent_per_camera": round(100 * m.cams_cpu / m.seconds / cameras, 3),
        }
        if not name.startswith("ffmpeg"):
            entry["ratio_to_ffmpeg"] = round(percent_per_camera(m, cameras) / ff, 2) if ff else None
            entry["rss_mb_per_camera"] = round(m.rss / cameras / (1 << 20), 1)
        if dropped[name] is not None:  # frames the camera server dropped for a reader that fell behind
            entry["camera_server_dropped_frames"] = dropped[name]
        if m.coverage is not None:
            entry["coverage_percent"] = round(100 * m.coverage, 2)
        if m.analysis_cpu is not None:
            entry["picture_checks_core_percent_per_camera"] = round(100 * m.analysis_cpu / m.seconds / cameras, 3)
        out[name] = entry
    ratio = out["recording_health"]["ratio_to_ffmpeg"]
    # What the goal leaves room for: PyAV's demuxer alone plus the picture checks' own threads, before the
    # daemon records a byte (its time model, hub, muxer, SHA-256, writes and fsyncs all come on top).
    checks = out["recording_health"].get("picture_checks_core_percent_per_camera")
    floor = out["pyav_demux"]["core_percent_per_camera"] + (checks or 0.0)
    floor_ratio = round(floor / ff, 2) if ff else None
    rss = out["recording_health"]["rss_mb_per_camera"]
    if substream:
        for analyse in ("main", "auto"):
            out[f"recording_health_substream_{analyse}"]["note"] = (
                "CPU includes ingesting the substream, as for live view; its simulators' CPU is in"
                f" cameras_core_percent_per_camera; picture checks on the {analyse} stream")
    report(
        "ingest", cameras=cameras, seconds=seconds, stream="1080p25 H.264 ~4 Mbps, 2 s GOP",
        camera_server={"light": "sim/light_rtsp.py, one process for all cameras",
                       "gstreamer": "sim/camsim.py (GStreamer rtsp-server), one process per camera"}[server],
        ffmpeg="ffmpeg -rtsp_transport tcp -i URL -c copy -f segment (mean of before and after)",
        ffmpeg_core_percent_per_camera=round(ff, 3), phases=out,
        goal=f"recording_health <= {GOAL_RATIO}x ffmpeg, RSS <= 15 MB per camera",
        floor_with_health={"core_percent_per_camera": round(floor, 3), "ratio_to_ffmpeg": floor_ratio,
                           "what": "pyav_demux + the picture checks' threads in recording_health"},
        goal_met=bool(ratio is not None and ratio <= GOAL_RATIO and rss <= 15),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", default="16,64", help="comma-separated camera counts (default 16,64)")
    parser.add_argument("--seconds", type=float, default=30, help="measured seconds per phase")
    parser.add_argument("--settle", type=float, default=5, help="seconds after connecting before measuring")
    parser.add_argument("--cameras-from", choices=("light", "gstreamer"), default="light",
                        help="the simulated cameras: one light RTSP server for all (default), or GStreamer per camera")
    parser.add_argument("--substream", action="store_true",
                        help="also a phase with a 640x360 substream per camera, the picture checks on it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nvr-bench-") as tmp:
        for count in (int(c) for c in args.cameras.split(",")):
            run_count(count, args.seconds, args.settle, Path(tmp), args.substream, args.cameras_from)


if __name__ == "__main__":
    main()
