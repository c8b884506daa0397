"""Cameras as they really are: what the ONVIF link costs beside recording, and how soon a returning camera records.

Phases (each prints one JSON line, also appended to bench/results/results.jsonl):

- ``onvif_cpu``: N simulated 640x360 cameras recording, run once without and once
  with an ONVIF link per camera (the simulated ONVIF camera; clock read every 5 s,
  a PullPoint subscription, one tamper change a second per camera).  Reports the
  daemon's CPU seconds per camera-minute in each run and their ratio (the
  baseline is the run without ONVIF, in the same invocation).
- ``reconnect``: one camera, backoff grown to 30 s, down for ``--outage`` seconds,
  then back; the time from the camera's RTSP server answering again to the first
  recorded frame (the first segment's start), with the cheap probe
  (``ingest.probe_interval_seconds: 0.5``, the default) and without it (probe interval 60 s,
  longer than any backoff wait: the capped backoff alone), ``--runs`` times each.

    python bench/bench_onvif.py [--cameras 8] [--seconds 60] [--outage 20] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds, report  # noqa: E402
from sim.client import SimCamera  # noqa: E402
from sim.onvif_camera import TAMPER, OnvifCamera  # noqa: E402
from tests.conftest import StationProcess, wait_until  # noqa: E402
from tests.test_recording import rows  # noqa: E402

PASSWORD = "bench-pass"


def cpu_phase(workdir: Path, cams: list[SimCamera], with_onvif: bool, seconds: float) -> float:
    sims = [OnvifCamera(rtsp_url=c.url, user="admin", password=PASSWORD).start() for c in cams] if with_onvif else []
    entries: list[dict[str, Any]] = []
    for index, cam in enumerate(cams):
        entry: dict[str, Any] = {"id": f"c{index}", "name": f"C{index}", "url": cam.url}
        if with_onvif:
            entry["onvif"] = {"url": sims[index].url_with("admin", "${ONVIF_PASS}"), "clock_check_seconds": 5}
        entries.append(entry)
    daemon = StationProcess(workdir, entries, env={"ONVIF_PASS": PASSWORD}, log={"level": "info"})
    stop = threading.Event()

    def flap() -> None:
        state = False
        while not stop.wait(1.0):
            state = not state
            for sim in sims:
                sim.raise_event(TAMPER, state)

    daemon.start()
    try:
        for index in range(len(cams)):
            daemon.wait_state(f"c{index}", "online", timeout=60)
        if with_onvif:
            wait_until(lambda: all(daemon.camera(f"c{i}")["onvif"]["events_subscribed"] for i in range(len(cams))),
                       60, "not subscribed")
        flapper = threading.Thread(target=flap, daemon=True)
        flapper.start()
        time.sleep(5)
        assert daemon.proc is not None
        cpu0, t0 = cpu_seconds(daemon.proc.pid), time.monotonic()
        time.sleep(seconds)
        minutes = (time.monotonic() - t0) / 60
        return (cpu_seconds(daemon.proc.pid) - cpu0) / minutes / len(cams)
    finally:
        stop.set()
        daemon.stop()
        for sim in sims:
            sim.stop()


def reconnect_phase(workdir: Path, probe: bool, outage: float) -> float:
    cam = SimCamera("rc", gop=15)
    cam.start()
    interval = 0.5 if probe else 60.0
    daemon = StationProcess(workdir, [{"id": "rc", "name": "RC", "url": cam.url}], storage={"segment_seconds": 4},
                            ingest={"backoff_initial_seconds": 0.5, "backoff_max_seconds": 30,
                                    "probe_interval_seconds": interval}, log={"level": "info"})
    daemon.start()
    try:
        daemon.wait_state("rc", "online", timeout=30)
        cam.stop()
        daemon.wait_state("rc", "offline", timeout=10)
        time.sleep(outage)
        cam.start()
        back = time.time()
        daemon.wait_state("rc", "online", timeout=60)
        time.sleep(2)
    finally:
        daemon.stop()
        cam.stop()
    after = [s for s in rows(daemon.storage, "rc") if s.start > back - 1]
    return after[0].start - back if after else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--outage", type=float, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=("cpu", "reconnect"), help="run one phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-onvif-") as tmp:
        root = Path(tmp)
        if args.only != "reconnect":
            cpu(root, args)
        if args.only != "cpu":
            reconnect(root, args)
    return 0


def cpu(root: Path, args: argparse.Namespace) -> None:
    cams = [SimCamera(f"b{i}", gop=30) for i in range(args.cameras)]
    for cam in cams:
        cam.start()
    try:
        (root / "plain").mkdir()
        (root / "onvif").mkdir()
        plain = cpu_phase(root / "plain", cams, False, args.seconds)
        onvif = cpu_phase(root / "onvif", cams, True, args.seconds)
    finally:
        for cam in cams:
            cam.stop()
    report("onvif_cpu", cameras=args.cameras, seconds=args.seconds,
           recording_cpu_s_per_camera_min=round(plain, 3), with_onvif_cpu_s_per_camera_min=round(onvif, 3),
           ratio=round(onvif / plain, 3) if plain else None)


def reconnect(root: Path, args: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {"probe": [], "backoff_only": []}
    for run in range(args.runs):
        for kind in results:
            workdir = root / f"rc-{kind}-{run}"
            workdir.mkdir()
            results[kind].append(reconnect_phase(workdir, kind == "probe", args.outage))
    report("reconnect", outage_s=args.outage, runs=args.runs, backoff_max_s=30,
           **{f"{kind}_first_frame_after_return_s_median": round(statistics.median(v), 3)
              for kind, v in results.items()},
           **{f"{kind}_first_frame_after_return_s_max": round(max(v), 3) for kind, v in results.items()})


if __name__ == "__main__":
    raise SystemExit(main())
