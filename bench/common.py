"""Shared helpers for benchmarks: CPU accounting from /proc, JSON-lines reporting, a 1080p clip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (and its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / _TICKS


def kernel_cpu_seconds(pid: int) -> float:
    """System (kernel) CPU time of one process: on loopback it includes the receiving side of what it sends."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[12]) + int(fields[14])) / _TICKS


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def report(name: str, **values: Any) -> None:
    line = json.dumps({"bench": name, **values}, sort_keys=False)
    print(line, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "results.jsonl").open("a") as f:
        f.write(json.dumps({"at": time.time(), "bench": name, **values}) + "\n")


def clip_1080p(seconds: int = 10, bitrate_kbps: int = 4000, fps: int = 25) -> Path:
    """A pre-encoded 1080p H.264 clip, so simulated cameras spend no CPU encoding."""
    return clip(1920, 1080, seconds, bitrate_kbps, fps)


def clip(width: int, height: int, seconds: int = 10, bitrate_kbps: int = 4000, fps: int = 25) -> Path:
    """A pre-encoded H.264 clip of that size (2 s GOP), made once and kept under bench/results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "1080p" if (width, height) == (1920, 1080) else f"{width}x{height}"
    path = RESULTS / f"clip-{name}-{bitrate_kbps}k-{fps}fps-{seconds}s.h264"
    if not path.exists():
        subprocess.run(
            ["/usr/bin/python3", str(REPO / "sim" / "camsim.py"), "encode", "--out", str(path), "--width", str(width),
             "--height", str(height), "--fps", str(fps), "--seconds", str(seconds), "--bitrate-kbps",
             str(bitrate_kbps), "--gop", str(fps * 2)],
            check=True,
        )
    return path


def python() -> str:
    return sys.executable
