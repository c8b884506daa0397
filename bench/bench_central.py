"""Central console: following many stations, alarm latency, and what each followed station costs.

Ten real station daemons with two cameras each (to spare the CPU, four simulated
320x240 cameras are shared: camera 1 of every station pulls sim A or B, camera 2
pulls sim C or D) and one ``nvr console`` following all ten.

- ``central_alarm_latency``: sim C is stopped, so camera 2 of five stations goes
  offline at once; the time from the stop to each alarm arriving on the console's
  own event stream (``/api/fleet/stream``), median and max over every station and
  run.  The station needs ``health.stall_seconds``-independent time to see the
  RTSP connection drop; the console adds the feed relay.
- ``central_cost``: the console process's CPU (share of one core) and resident
  memory over a steady window, total and per station followed.

    python bench/bench_central.py [--stations 10] [--runs 3] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, cpu_seconds, report  # noqa: E402
from nvr.identity.accounts_cli import create_token  # noqa: E402
from nvr.identity.roles import Role  # noqa: E402
from sim.client import SimCamera  # noqa: E402
from tests.conftest import StationProcess, free_port, wait_until  # noqa: E402

CAMERA = {"width": 320, "height": 240, "fps": 10}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class FeedWatcher(threading.Thread):
    """Reads the console's SSE feed and timestamps every alarm.opened as it arrives."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        self.opened: list[tuple[float, str, str | None]] = []
        self.ready = threading.Event()

    def run(self) -> None:
        with urllib.request.urlopen(self.request, timeout=600) as resp:
            event = ""
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                    if event == "fleet":
                        self.ready.set()
                elif line.startswith("data: ") and event == "alarm.opened":
                    body = json.loads(line[6:])
                    self.opened.append((time.monotonic(), body["station"], body["alarm"].get("camera")))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stations", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    sims = [SimCamera(f"sim-{x}", **CAMERA) for x in "abcd"]
    daemons: list[StationProcess] = []
    console: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-central-") as tmp:
        try:
            for sim in sims:
                sim.start()
            env: dict[str, str] = {}
            stations = []
            for i in range(args.stations):
                workdir = Path(tmp) / f"st{i}"
                workdir.mkdir()
                daemon = StationProcess(workdir, [
                    {"id": "cam-1", "name": "Hall", "zone": "hall", "url": sims[i % 2].url},
                    {"id": "cam-2", "name": "Cell", "zone": "holding_cell", "url": sims[2 + i % 2].url},
                ], station={"id": f"st-{i}", "name": f"Station {i}"}, log={"level": "info"})
                env[f"TOKEN_{i}"] = create_token(daemon.auth_db, "central", Role.CENTRAL)
                daemon.start()
                daemons.append(daemon)
                stations.append({"id": f"st-{i}", "url": daemon.base_url, "token": f"${{TOKEN_{i}}}"})
            port = free_port()
            config = Path(tmp) / "console.yaml"
            config.write_text(json.dumps({
                "console": {"id": "central", "listen": f"127.0.0.1:{port}"},
                "storage": {"path": str(Path(tmp) / "console")}, "log": {"level": "info"},
                "stations": stations,
            }))
            token = create_token(Path(tmp) / "console" / "auth.sqlite3", "bench", Role.ADMIN)
            with (Path(tmp) / "console.log").open("wb") as log:
                console = subprocess.Popen([sys.executable, "-m", "nvr", "console", "-c", str(config)], cwd=REPO,
                                           stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
            base = f"http://127.0.0.1:{port}"

            def fleet() -> dict[str, Any]:
                req = urllib.request.Request(base + "/api/fleet", headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return json.loads(resp.read())  # type: ignore[no-any-return]

            def all_online() -> bool:
                try:
                    totals = fleet()["totals"]
                except OSError:
                    return False
                return totals["online"] == 2 * args.stations and totals["alarms_open"] == 0

            wait_until(all_online, 120, "the console never saw every camera online")

            # Steady-state cost of the console.
            pid = console.pid
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(args.seconds)
            cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            rss = rss_mb(pid)
            report("central_cost", stations=args.stations, cameras=2 * args.stations,
                   console_cpu_percent=round(cpu * 100, 2),
                   cpu_percent_per_station=round(cpu * 100 / args.stations, 3),
                   console_rss_mb=round(rss, 1), rss_mb_per_station=round(rss / args.stations, 2))

            # Alarm latency: stop sim C (camera 2 of every even station), time each alarm on the console.
            watcher = FeedWatcher(base + "/api/fleet/stream", token)
            watcher.start()
            watcher.ready.wait(10)
            victims = {f"st-{i}" for i in range(0, args.stations, 2)}
            latencies: list[float] = []
            for _ in range(args.runs):
                seen = len(watcher.opened)
                stopped_at = time.monotonic()
                sims[2].stop()

                def arrived(seen: int = seen) -> bool:
                    got = {(s, c) for _, s, c in watcher.opened[seen:]}
                    return all((s, "cam-2") in got for s in victims)

                wait_until(arrived, 60, "not every alarm reached the console", interval=0.05)
                for at, station_id, camera in watcher.opened[seen:]:
                    if station_id in victims and camera == "cam-2":
                        latencies.append(at - stopped_at)
                sims[2].start()
                wait_until(all_online, 90, "the cameras never came back")
            report("central_alarm_latency", stations=args.stations, runs=args.runs, alarms=len(latencies),
                   median_seconds=round(statistics.median(latencies), 3),
                   max_seconds=round(max(latencies), 3))
        finally:
            if console is not None:
                console.terminate()
                console.wait(15)
            for daemon in daemons:
                try:
                    daemon.stop()
                except subprocess.TimeoutExpired:
                    pass
            for sim in sims:
                sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
