"""Camera health: analysis CPU per camera-minute, and outage detection latency (median of several runs).

Phases (each prints one JSON line, also appended to bench/results/results.jsonl):

- ``health_cpu``: one 1080p H.264 camera (pre-encoded clip, 2 s GOP, so the
  simulator spends no CPU encoding) with ``stall_seconds: 2``, run once without
  and once with recording.  Reports the thread CPU of keyframe decoding and
  analysis (from ``nvr_health_analysis_cpu_seconds_total``), the whole
  daemon's CPU, the recording share (difference of the two runs) and any
  offline alarm raised on the healthy stream (goal: none).
- ``health_latency``: a 640x360 camera, ``stall_seconds: 2``; the camera server
  is killed (``stop``) or frozen with its connection open (``stall``), N times
  each.  Reports, per kind, the median time from the action to the alarm being
  visible in ``/api/events`` and from the last packet to the alarm's
  ``opened_at`` (goal: stall_seconds + 0.5 s).

    python bench/bench_health.py [--seconds 30] [--runs 5]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import clip_1080p, cpu_seconds, report  # noqa: E402
from sim.client import SimCamera  # noqa: E402
from tests.conftest import StationProcess, wait_until  # noqa: E402

STALL = 2.0


def metric(daemon: StationProcess, name: str, camera: str) -> float:
    text = daemon.get("/metrics")[1].decode()
    match = re.search(rf'^{name}{{camera="{camera}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def offline_alarms(daemon: StationProcess, camera: str, open_only: bool = False) -> list[dict[str, Any]]:
    query = f"/api/events?camera={camera}&type=offline" + ("&open=true" if open_only else "")
    return daemon.get(query)[1]["events"]  # type: ignore[no-any-return]


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def cpu_phase(workdir: Path, cam: SimCamera, record: bool, seconds: float) -> dict[str, float]:
    daemon = StationProcess(
        workdir,
        [{"id": "cam", "name": "Cam", "url": cam.url, "record": record}],
        health={"stall_seconds": STALL},
        log={"level": "info"},
    )
    daemon.start()
    try:
        daemon.wait_state("cam", "online", timeout=30)
        time.sleep(5)  # reference learned, recorder running
        assert daemon.proc is not None
        cpu0, analysis0, t0 = (
            cpu_seconds(daemon.proc.pid),
            metric(daemon, "nvr_health_analysis_cpu_seconds_total", "cam"),
            time.monotonic(),
        )
        analyses0 = metric(daemon, "nvr_health_analyses_total", "cam")
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        minutes = elapsed / 60
        return {
            "daemon_cpu_s_per_min": (cpu_seconds(daemon.proc.pid) - cpu0) / minutes,
            "analysis_cpu_s_per_min": (metric(daemon, "nvr_health_analysis_cpu_seconds_total", "cam") - analysis0)
            / minutes,
            "analyses_per_min": (metric(daemon, "nvr_health_analyses_total", "cam") - analyses0) / minutes,
            "offline_alarms": len(offline_alarms(daemon, "cam")),
            "other_alarms": len(daemon.get("/api/events?camera=cam")[1]["events"]) - len(offline_alarms(daemon, "cam")),
        }
    finally:
        daemon.stop()


def latency_phase(workdir: Path, runs: int) -> dict[str, Any]:
    cam = SimCamera("lat", gop=15)
    cam.start()
    daemon = StationProcess(
        workdir,
        [{"id": "cam", "name": "Cam", "url": cam.url}],
        health={"stall_seconds": STALL},
        ingest={"backoff_initial_seconds": 0.2, "backoff_max_seconds": 0.5},
        log={"level": "info"},
    )
    daemon.start()
    results: dict[str, dict[str, list[float]]] = {
        "stop": {"seen": [], "from_last_packet": []},
        "stall": {"seen": [], "from_last_packet": []},
    }
    try:
        for _ in range(runs):
            for kind in ("stop", "stall"):
                daemon.wait_state("cam", "online", timeout=30)
                time.sleep(1.0)
                before = len(offline_alarms(daemon, "cam"))
                acted = time.monotonic()
                cam.stop() if kind == "stop" else cam.pause()
                alarm = wait_until(
                    lambda: [a for a in offline_alarms(daemon, "cam", True)], 15, "no alarm", interval=0.02
                )[0]
                results[kind]["seen"].append(time.monotonic() - acted)
                last = alarm["details"].get("last_packet_at")
                if last is not None:
                    results[kind]["from_last_packet"].append(epoch(alarm["opened_at"]) - float(last))
                cam.start() if kind == "stop" else cam.resume()
                wait_until(
                    lambda before=before: (
                        len(offline_alarms(daemon, "cam")) == before + 1 and not offline_alarms(daemon, "cam", True)
                    ),
                    30,
                    "alarm not closed",
                )
    finally:
        daemon.stop()
        cam.stop()
    out: dict[str, Any] = {"stall_seconds": STALL, "runs": runs}
    for kind, values in results.items():
        out[f"{kind}_to_alarm_visible_s_median"] = round(statistics.median(values["seen"]), 3)
        if values["from_last_packet"]:
            out[f"{kind}_last_packet_to_alarm_s_median"] = round(statistics.median(values["from_last_packet"]), 3)
            out[f"{kind}_last_packet_to_alarm_s_max"] = round(max(values["from_last_packet"]), 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring time of each CPU phase")
    parser.add_argument("--runs", type=int, default=5, help="outages of each kind for the latency median")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-health-") as tmp:
        root = Path(tmp)
        cam = SimCamera("cpu", file=clip_1080p(), fps=25)
        cam.start()
        try:
            (root / "a").mkdir()
            ingest_only = cpu_phase(root / "a", cam, record=False, seconds=args.seconds)
            (root / "b").mkdir()
            recording = cpu_phase(root / "b", cam, record=True, seconds=args.seconds)
        finally:
            cam.stop()
        report(
            "health_cpu",
            camera="1920x1080@25 h264 ~4 Mbps, GOP 2 s",
            analyse_seconds=3.0,
            seconds=args.seconds,
            analysis_cpu_s_per_camera_min=round(
                (ingest_only["analysis_cpu_s_per_min"] + recording["analysis_cpu_s_per_min"]) / 2, 3
            ),
            analyses_per_min=round(recording["analyses_per_min"], 1),
            daemon_cpu_s_per_min_without_recording=round(ingest_only["daemon_cpu_s_per_min"], 3),
            daemon_cpu_s_per_min_with_recording=round(recording["daemon_cpu_s_per_min"], 3),
            recording_cpu_s_per_min=round(recording["daemon_cpu_s_per_min"] - ingest_only["daemon_cpu_s_per_min"], 3),
            false_offline_alarms_at_stall_2s=ingest_only["offline_alarms"] + recording["offline_alarms"],
            other_alarms=ingest_only["other_alarms"] + recording["other_alarms"],
        )
        (root / "c").mkdir()
        report("health_latency", **latency_phase(root / "c", args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
