"""Edge backfill: how fast a gap comes off a camera's card, and the CPU it costs beside live recording.

One phase per bandwidth cap (each prints one JSON line, also appended to
bench/results/results.jsonl).  ``--cameras`` simulated 640x360 cameras (800
kbit/s, a keyframe a second) record; one of them has edge storage (the
simulated camera's SD card and replay server, replaying as fast as the
connection takes it).  Its network is cut for ``--gap`` seconds and restored;
the backfill job then retrieves the gap.  Reported:

- ``footage_s_per_s``: seconds of footage retrieved per second of the job
  being active (the job's state is polled every 0.1 s through the API);
- ``cpu_s_per_s_live`` (baseline: every camera recording, nothing to backfill,
  measured over ``--baseline`` seconds just before the cut) and
  ``cpu_s_per_s_backfilling`` (the daemon's CPU while the job was active), and
  their ratio;
- ``recorder_dropped``: packets the live recorders lost meanwhile (0 expected).

    python bench/bench_backfill.py [--cameras 4] [--gap 60] [--baseline 10] [--caps 16000,1000000]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds, report  # noqa: E402
from sim.client import SimCamera  # noqa: E402
from sim.onvif_camera import OnvifCamera  # noqa: E402
from tests.conftest import StationProcess, wait_until  # noqa: E402

PASSWORD = "bench-pass"


def dropped(daemon: StationProcess) -> float:
    _, text = daemon.get("/metrics")
    return sum(float(v) for v in re.findall(r'^nvr_reader_dropped_packets_total\{[^}]*reader="recorder:[^"]*"\} (\S+)$',
                                            text.decode(), re.M))


def phase(workdir: Path, cams: list[SimCamera], cap_kbps: float, gap: float, baseline: float) -> dict[str, Any]:
    edge = OnvifCamera(rtsp_url=cams[0].url, user="admin", password=PASSWORD, edge_storage=True).start()
    entries: list[dict[str, Any]] = [{"id": "edge", "name": "Edge", "url": edge.live_url,
                                      "onvif": {"url": edge.url_with("admin", "${ONVIF_PASS}")}}]
    entries += [{"id": f"c{i}", "name": f"C{i}", "url": cam.url} for i, cam in enumerate(cams[1:], 1)]
    daemon = StationProcess(workdir, entries, env={"ONVIF_PASS": PASSWORD}, log={"level": "info"},
                            storage={"segment_seconds": 4},
                            backfill={"scan_seconds": 0.5, "max_bitrate_kbps": cap_kbps})
    daemon.start()
    try:
        for entry in entries:
            daemon.wait_state(entry["id"], "online", timeout=60)
        wait_until(lambda: (daemon.camera("edge").get("onvif") or {}).get("edge_storage"), 60, "no edge storage")
        time.sleep(5)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(baseline)
        live = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        edge.cut_network()
        daemon.wait_state("edge", "offline", timeout=30)
        time.sleep(gap)
        edge.restore_network()
        daemon.wait_state("edge", "online", timeout=30)
        drops0 = dropped(daemon)

        def job() -> dict[str, Any] | None:
            jobs = [j for j in daemon.camera("edge")["backfill"] or [] if j["end"] > j["start"]]
            return max(jobs, key=lambda j: j["retrieved_seconds"] + (1e9 if j["state"] == "active" else 0)) \
                if jobs else None

        started = wait_until(lambda: (j := job()) is not None and j["state"] in ("active", "done") and j,
                             60, "the backfill never started", interval=0.05)
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        done = wait_until(lambda: (j := job()) is not None and j["state"] == "done" and j, 300,
                          "the backfill never finished", interval=0.1)
        elapsed = time.monotonic() - t1
        busy = (cpu_seconds(pid) - cpu1) / elapsed
        return {"cap_kbps": cap_kbps, "gap_s": gap, "retrieved_s": done["retrieved_seconds"],
                "job_s": round(elapsed, 2), "seen_active": started["state"] == "active",
                "footage_s_per_s": round(done["retrieved_seconds"] / elapsed, 1),
                "cpu_s_per_s_live": round(live, 3), "cpu_s_per_s_backfilling": round(busy, 3),
                "cpu_ratio": round(busy / live, 2) if live else None,
                "recorder_dropped": dropped(daemon) - drops0}
    finally:
        daemon.stop()
        edge.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--gap", type=float, default=60)
    parser.add_argument("--baseline", type=float, default=10)
    parser.add_argument("--caps", default="16000,1000000", help="backfill.max_bitrate_kbps values, one run each")
    args = parser.parse_args()
    cams = [SimCamera(f"bf{i}", gop=15) for i in range(args.cameras)]
    for cam in cams:
        cam.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
            for n, cap in enumerate(float(c) for c in args.caps.split(",")):
                workdir = Path(tmp) / f"run{n}"
                workdir.mkdir()
                report("backfill", cameras=args.cameras, **phase(workdir, cams, cap, args.gap, args.baseline))
    finally:
        for cam in cams:
            cam.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
