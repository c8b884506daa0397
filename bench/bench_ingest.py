"""Ingest and recording CPU per camera, next to ffmpeg doing the same on the same cameras in the same run.

N simulated 1080p H.264 cameras at about 4 Mbps are served from a pre-encoded
looping clip.  For each phase we measure CPU-seconds per camera-minute:

- ingest:   ``ffmpeg -rtsp_transport tcp -i URL -c copy -f null -`` per camera  vs  nvr with record: false
- record:   ``ffmpeg -rtsp_transport tcp -i URL -c copy -f segment`` per camera vs  nvr with record: true
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
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, clip_1080p, python, report, total_cpu  # noqa: E402
from sim.client import SimCamera  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(pids: list[int], seconds: float) -> float:
    start = total_cpu(pids)
    time.sleep(seconds)
    return total_cpu(pids) - start


def ffmpeg_phase(cams: list[SimCamera], seconds: float, workdir: Path, record: bool) -> float:
    procs = []
    for cam in cams:
        out: list[str]
        if record:
            target = workdir / f"ff-{cam.name}-%05d.mp4"
            out = ["-f", "segment", "-segment_time", "10", "-segment_format", "mp4", "-reset_timestamps", "1",
                   str(target)]
        else:
            out = ["-f", "null", "-"]
        procs.append(subprocess.Popen(
            ["ffmpeg", "-nostdin", "-v", "error", "-rtsp_transport", "tcp", "-i", cam.url, "-c", "copy", *out],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(5)  # connect and settle
    used = measure([p.pid for p in procs], seconds)
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(10)
    return used


def nvr_phase(cams: list[SimCamera], seconds: float, workdir: Path, record: bool) -> float:
    port = free_port()
    storage = workdir / f"storage-{'rec' if record else 'ingest'}"
    config = {
        "station": {"id": "st-bench", "name": "bench"},
        "storage": {"path": str(storage), "segment_seconds": 10},
        "web": {"listen": f"127.0.0.1:{port}"},
        "log": {"level": "warning"},
        "cameras": [{"id": c.name, "name": c.name, "url": c.url, "record": record} for c in cams],
    }
    cfg = workdir / f"config-{record}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    subprocess.run([python(), "-m", "nvr", "init-storage", "-c", str(cfg)], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    from nvr.access_cli import create_token
    from nvr.roles import Role

    token = create_token(storage / "auth.sqlite3", "bench", Role.ADMIN)  # access control: deny by default
    proc = subprocess.Popen([python(), "-m", "nvr", "run", "-c", str(cfg)], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/cameras",
                                             headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if all(c["state"] == "online" for c in json.load(resp)):
                        break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("cameras never came online")
        time.sleep(3)
        return measure([proc.pid], seconds)
    finally:
        proc.terminate()
        proc.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    clip = clip_1080p()
    cams = [SimCamera(f"b{i}", file=str(clip), fps=25) for i in range(args.cameras)]
    per_cam_min = args.cameras * args.seconds / 60
    with tempfile.TemporaryDirectory(prefix="nvr-bench-") as tmp:
        work = Path(tmp)
        try:
            for cam in cams:
                cam.start()
            for record in (False, True):
                ff = ffmpeg_phase(cams, args.seconds, work, record) / per_cam_min
                nvr = nvr_phase(cams, args.seconds, work, record) / per_cam_min
                report(
                    "recording" if record else "ingest",
                    cameras=args.cameras, seconds=args.seconds, stream="1080p25 H.264 ~4 Mbps",
                    nvr_cpu_s_per_camera_min=round(nvr, 3), ffmpeg_cpu_s_per_camera_min=round(ff, 3),
                    ratio_nvr_to_ffmpeg=round(nvr / ff, 2) if ff else None,
                )
        finally:
            for cam in cams:
                cam.stop()


if __name__ == "__main__":
    main()
