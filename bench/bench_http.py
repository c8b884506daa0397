"""HTTP throughput while cameras record, and what the load costs recording.

Phases (each prints one JSON line, also appended to bench/results/results.jsonl):

- ``http_rps``: ``wrk`` (1 thread, 16 connections, keep-alive) against
  ``/healthz`` and ``/api/cameras`` (with an admin API token, so every request
  goes through access control) on loopback, once with no camera and once while
  N cameras record (1080p25 H.264 ~4 Mbps from a pre-encoded clip, so the
  simulators spend no CPU encoding).  Reports requests per second and p50/p99
  latency for each.
- ``http_recording_cpu``: the daemon's CPU per camera-minute while the N
  cameras record, with no HTTP load and under the ``wrk`` load above, split
  into the event-loop thread (HTTP, hand-off of packets) and the other threads
  (demux, muxing, hashing, picture checks), and whether every camera kept
  writing segments under the load.

    python bench/bench_http.py [--cameras 16] [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import clip_1080p, report  # noqa: E402
from sim.client import SimCamera  # noqa: E402
from tests.conftest import StationProcess, wait_until  # noqa: E402

WRK_CONNECTIONS = 16
_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> tuple[float, float]:
    """(event-loop thread, all other threads) CPU seconds of a process; its main thread runs the loop."""
    loop = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that just ended
        used = (int(fields[11]) + int(fields[12])) / _TICKS
        if task.name == str(pid):
            loop += used
        else:
            other += used
    return loop, other


def wrk(url: str, token: str | None, seconds: float) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds:.0f}s", "--latency", url]
    if token:
        command[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def percentile(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)$", out, re.MULTILINE).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": round(rps), "p50_ms": round(percentile("50"), 2), "p99_ms": round(percentile("99"), 2),
            "non_2xx": int(errors.group(1)) if errors else 0}


def load(daemon: StationProcess, seconds: float) -> dict[str, Any]:
    return {
        "healthz": wrk(daemon.base_url + "/healthz", None, seconds),
        "api_cameras": wrk(daemon.base_url + "/api/cameras", daemon.token, seconds),
    }


def segments_total(daemon: StationProcess) -> dict[str, float]:
    text = daemon.get("/metrics")[1].decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^nvr_recording_segments_total\{camera="([^"]+)"\} (\S+)$', text, re.MULTILINE)}


def per_camera_minute(before: tuple[float, float], after: tuple[float, float], cameras: int,
                      elapsed: float) -> dict[str, float]:
    minutes = cameras * elapsed / 60
    loop, other = after[0] - before[0], after[1] - before[1]
    return {"total": round((loop + other) / minutes, 3), "loop_thread": round(loop / minutes, 3),
            "other_threads": round(other / minutes, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0, help="wrk run per endpoint")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package wrk; `make system` installs it)")
    quiet = {"log": {"level": "warning"}}
    with tempfile.TemporaryDirectory(prefix="nvr-bench-http-") as tmp:
        root = Path(tmp)
        (root / "idle").mkdir()
        empty = StationProcess(root / "idle", [], **quiet)
        empty.start()
        try:
            without = load(empty, args.seconds)
        finally:
            empty.stop()

        clip = clip_1080p()
        cams = [SimCamera(f"h{i}", file=str(clip), fps=25) for i in range(args.cameras)]
        try:
            for cam in cams:
                cam.start()
            (root / "rec").mkdir()
            daemon = StationProcess(root / "rec", [{"id": c.name, "name": c.name, "url": c.url} for c in cams],
                            storage={"segment_seconds": 4}, **quiet)
            daemon.start()
            try:
                wait_until(lambda: all(v >= 1 for v in segments_total(daemon).values())
                           and len(segments_total(daemon)) == args.cameras, 60, "not every camera recorded")
                assert daemon.proc is not None
                pid = daemon.proc.pid
                quiet_window = 2 * args.seconds
                t0, cpu0 = time.monotonic(), thread_cpu(pid)
                time.sleep(quiet_window)
                idle_cpu = per_camera_minute(cpu0, thread_cpu(pid), args.cameras, time.monotonic() - t0)
                segs0 = segments_total(daemon)
                t0, cpu0 = time.monotonic(), thread_cpu(pid)
                loaded = load(daemon, args.seconds)
                elapsed = time.monotonic() - t0
                loaded_cpu = per_camera_minute(cpu0, thread_cpu(pid), args.cameras, elapsed)
                segs1 = segments_total(daemon)
                # 4 s segments: every camera closes at least (elapsed / 5) - 1 of them under the load.
                kept_recording = all(segs1[c] - segs0[c] >= elapsed / 5 - 1 for c in segs0)
            finally:
                daemon.stop()
        finally:
            for cam in cams:
                cam.stop()

    report("http_rps", cameras=0, wrk_connections=WRK_CONNECTIONS, seconds=args.seconds, **without)
    report("http_rps", cameras=args.cameras, wrk_connections=WRK_CONNECTIONS, seconds=args.seconds,
           stream="1080p25 H.264 ~4 Mbps", **loaded)
    report("http_recording_cpu", cameras=args.cameras, stream="1080p25 H.264 ~4 Mbps",
           cpu_s_per_camera_min_idle=idle_cpu, cpu_s_per_camera_min_under_http_load=loaded_cpu,
           every_camera_kept_recording=kept_recording)


if __name__ == "__main__":
    main()
