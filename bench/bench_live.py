"""Live view: time to first frame, relay latency, and daemon CPU per viewer stream.

Phases (each prints one JSON line, also appended to bench/results/results.jsonl):

- ``live_first_frame``: a 640x360@15 camera (2 s GOP) and headless Chromium on
  loopback.  Ten times: a fresh RTCPeerConnection, WHEP POST, first decoded
  frame (``requestVideoFrameCallback``).  Median and max of: offer creation
  with ICE gathering, POST→answer (and the daemon's own time to answer),
  answer→connected, POST→first decoded frame.  Goal: POST→first frame under
  500 ms.
- ``live_relay_delay``: the daemon's own added latency, from a packet
  arriving in the hub to it being handed to aiortc's packetizer (mean per
  session, with the viewers of the CPU phase).
- ``live_cpu``: one 1080p25 4 Mbit/s camera (pre-encoded clip), recorded;
  daemon CPU with no viewer, then with N aiortc viewers (the viewers decode
  in this process, not in the daemon).  Reports recording-only CPU and the
  added CPU per viewer stream, as percent of one core.

    python bench/bench_live.py [--runs 10] [--viewers 3] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402

from bench.common import clip_1080p, cpu_seconds, report  # noqa: E402
from sim.client import SimCamera  # noqa: E402
from tests.conftest import StationProcess, wait_until  # noqa: E402
from tests.test_live import CHROMIUM_ARGS  # noqa: E402

MEASURE_JS = """async (camera) => {
  const t0 = performance.now();
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const video = document.createElement("video");
  video.muted = true; video.autoplay = true; video.playsInline = true;
  document.body.appendChild(video);
  let tConnected = null;
  pc.onconnectionstatechange = () => { if (pc.connectionState === "connected") tConnected = performance.now(); };
  pc.ontrack = (e) => {
    if (e.track.kind === "video") { video.srcObject = new MediaStream([e.track]); video.play().catch(() => {}); }
  };
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== "complete") {
    await new Promise((resolve) => {
      const t = setTimeout(resolve, 2000);
      pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") { clearTimeout(t); resolve(); } };
    });
  }
  const tPost = performance.now();
  const response = await fetch(`/api/cameras/${camera}/whep`, {
    method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp });
  const answer = await response.text();
  const tAnswer = performance.now();
  const location = response.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  await new Promise((resolve) => video.requestVideoFrameCallback(() => resolve()));
  const tFrame = performance.now();
  await fetch(location, { method: "DELETE" });
  pc.close();
  video.remove();
  return { gather_ms: tPost - t0, answer_ms: tAnswer - tPost,
           connect_ms: tConnected === null ? null : tConnected - tAnswer, first_frame_ms: tFrame - tPost,
           total_ms: tFrame - t0, location };
}"""


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}


def first_frame_phase(root: Path, runs: int) -> None:
    from playwright.sync_api import sync_playwright

    cam = SimCamera("ff", width=640, height=360, fps=15, gop=30)
    cam.start()
    root.mkdir()
    daemon = StationProcess(root, [{"id": "cam", "name": "Cam", "url": cam.url}], log={"level": "info"})
    try:
        daemon.start()
        daemon.wait_state("cam", "online", timeout=30)
        samples: list[dict[str, Any]] = []
        server_answer: list[float] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_extra_http_headers({"Authorization": f"Bearer {daemon.token}"})  # deny-by-default access
            page.goto(daemon.base_url + "/healthz")
            page.evaluate(MEASURE_JS, "cam")  # warm-up: Chromium's first peer loads its WebRTC stack
            for _ in range(runs):
                sample = page.evaluate(MEASURE_JS, "cam")
                samples.append(sample)
                time.sleep(0.3)
            browser.close()
        for line in daemon.log().splitlines():
            if "live view opened" in line and "answered in" in line:
                server_answer.append(float(line.rsplit("answered in ", 1)[1].split()[0]))
        keys = ("gather_ms", "answer_ms", "connect_ms", "first_frame_ms", "total_ms")
        report(
            "live_first_frame", runs=runs, camera="640x360@15 gop 2 s", client="chromium",
            **{k: summary([s[k] for s in samples if s[k] is not None]) for k in keys},
            daemon_answer_ms=summary(server_answer[1:]) if len(server_answer) > 1 else None,
            goal_first_frame_ms=500,
        )
    finally:
        daemon.stop()
        cam.stop()


async def _viewer(base_url: str, counter: list[int], token: str) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http, http.post(
        f"{base_url}/api/cameras/cam/whep", data=pc.localDescription.sdp,
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
    ) as resp:
        answer = await resp.text()
        assert resp.status == 201, answer
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    track = pc.getTransceivers()[0].receiver.track

    async def drain() -> None:
        try:
            while True:
                await track.recv()
                counter[0] += 1
        except MediaStreamError:
            pass  # the viewer was closed

    asyncio.get_running_loop().create_task(drain())
    return pc


def cpu_phase(root: Path, viewers: int, seconds: float) -> None:
    cam = SimCamera("cpu", file=clip_1080p(), fps=25)
    cam.start()
    root.mkdir()
    daemon = StationProcess(root, [{"id": "cam", "name": "Cam", "url": cam.url}], log={"level": "info"})
    try:
        daemon.start()
        daemon.wait_state("cam", "online", timeout=30)
        wait_until(lambda: daemon.camera("cam")["last_segment_at"], 90, "recording never started")
        assert daemon.proc is not None
        pid = daemon.proc.pid
        time.sleep(3)  # settle after connecting
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        recording_only = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100

        async def with_viewers() -> tuple[float, int, int]:
            frames = [0]
            pcs = [await _viewer(daemon.base_url, frames, daemon.token) for _ in range(viewers)]
            await asyncio.sleep(3)
            c0, w0, f0 = cpu_seconds(pid), time.monotonic(), frames[0]
            await asyncio.sleep(seconds)
            percent = (cpu_seconds(pid) - c0) / (time.monotonic() - w0) * 100
            decoded = frames[0] - f0
            sessions = daemon.get("/api/live/sessions")[1]["sessions"]
            dropped = sum(s["dropped_packets"] for s in sessions)
            delays = [s["relay_delay_ms"] for s in sessions if s["relay_delay_ms"] is not None]
            for pc in pcs:
                await pc.close()
            return percent, decoded, dropped, delays

        bitrate = daemon.camera("cam")["bitrate_bps"]
        total, decoded, dropped, delays = asyncio.run(with_viewers())
        report("live_relay_delay", sessions=len(delays), camera="1920x1080@25",
               mean_ms_per_session=[round(d, 2) for d in delays])
        report(
            "live_cpu", camera="1920x1080@25, recorded", camera_bitrate_kbps=round(bitrate / 1000), viewers=viewers,
            seconds=seconds,
            daemon_cpu_percent_recording_only=round(recording_only, 1),
            daemon_cpu_percent_with_viewers=round(total, 1),
            added_cpu_percent_per_viewer=round((total - recording_only) / viewers, 1),
            viewer_frames_decoded_per_second=round(decoded / seconds / viewers, 1),
            relay_dropped_packets=dropped,
        )
    finally:
        daemon.stop()
        cam.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--viewers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--skip", choices=["first_frame", "cpu"], action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        root = Path(tmp)
        if "first_frame" not in args.skip:
            first_frame_phase(root / "ff", args.runs)
        if "cpu" not in args.skip:
            cpu_phase(root / "cpu", args.viewers, args.seconds)


if __name__ == "__main__":
    main()
