"""Live view: time to first frame, relay latency, and daemon CPU per viewer stream.

Phases (each prints one JSON line, also appended to bench/results/results.jsonl):

- ``live_first_frame``: a 640x360@15 camera (2 s GOP) and headless Chromium
  with its default features (mDNS-hidden candidates) on loopback.  Twenty
  times: a fresh RTCPeerConnection, WHEP POST, first decoded frame
  (``requestVideoFrameCallback``).  Median, p95 and max of: offer creation
  with ICE gathering, POST→answer (and the daemon's own time to answer),
  answer→connected, POST→first decoded frame.  Goal: POST→first frame under
  250 ms.
- ``live_relay_delay``: the daemon's own added latency, from a packet
  arriving in the hub to it being handed to aiortc's packetizer (mean per
  session, with the viewers of the CPU phase).
- ``live_cpu``: one 1080p25 4 Mbit/s camera (pre-encoded clip), recorded;
  daemon CPU with no viewer, then with 1, 4 and 16 headless aiortc viewers
  (they assemble frames but do not decode them: sixteen Python decoders would
  take the cores from the daemon).  Reports the first viewer's cost and each
  extra viewer's, as percent of one core.
- ``live_cpu_wall``: 16 such cameras, all recorded, one viewer each.
- ``live_transcode_cpu``: an H.265 720p15 camera with ``live.transcode: h264``,
  1 and 4 viewers: the transcode's CPU and what extra viewers add.

    python bench/bench_live.py [--runs 20] [--viewers 1 4 16] [--cameras 16] [--seconds 15]
        [--skip first_frame|cpu|wall|transcode]
"""

from __future__ import annotations

import argparse
import asyncio
import math
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
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {"median": round(statistics.median(values), 1), "p95": round(p95, 1), "max": round(max(values), 1)}


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
            goal_first_frame_ms=250, chromium_features="default (mDNS-hidden candidates)",
        )
    finally:
        daemon.stop()
        cam.stop()


class _CountingDecoder:
    """Stands in for aiortc's H.264 decoder in the load viewers: counts whole frames, decodes nothing.

    Sixteen Python decoders of 1080p would take the two cores from the daemon being measured; the
    daemon's work (relaying and packetizing) is the same whether or not the viewer decodes.
    """

    frames = 0

    def decode(self, _frame: Any) -> list[Any]:
        _CountingDecoder.frames += 1
        return []


def _headless_viewers() -> None:
    import aiortc.rtcrtpreceiver

    aiortc.rtcrtpreceiver.get_decoder = lambda _codec: _CountingDecoder()  # type: ignore[assignment,return-value]


async def _viewer(base_url: str, camera_id: str, token: str) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http, http.post(
        f"{base_url}/api/cameras/{camera_id}/whep", data=pc.localDescription.sdp,
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
        except MediaStreamError:
            pass  # the viewer was closed

    asyncio.get_running_loop().create_task(drain())
    return pc


async def _measure(daemon: StationProcess, targets: list[str], seconds: float) -> dict[str, Any]:
    """Daemon CPU (% of one core) while one headless viewer per entry of ``targets`` watches."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    pcs = [await _viewer(daemon.base_url, camera_id, daemon.token) for camera_id in targets]
    await asyncio.sleep(3)  # connected, past the GOP burst
    c0, w0, f0 = cpu_seconds(pid), time.monotonic(), _CountingDecoder.frames
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - w0
    percent = (cpu_seconds(pid) - c0) / elapsed * 100
    frames = _CountingDecoder.frames - f0
    live = await asyncio.to_thread(daemon.get, "/api/live/sessions")
    sessions = live[1]["sessions"]
    for pc in pcs:
        await pc.close()
    await asyncio.sleep(1)
    return {
        "cpu_percent": percent,
        "frames_per_viewer_per_second": round(frames / elapsed / max(1, len(targets)), 1),
        "dropped_packets": sum(s["dropped_packets"] for s in sessions),
        "relay_delay_ms": [s["relay_delay_ms"] for s in sessions if s["relay_delay_ms"] is not None],
        "transcoders": live[1].get("transcoders", {}),
    }


def _idle_cpu(daemon: StationProcess, seconds: float) -> float:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    time.sleep(3)  # settle after connecting
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100


def _station(root: Path, cams: list[SimCamera], **sections: Any) -> StationProcess:
    for cam in cams:
        cam.start()
    root.mkdir()
    daemon = StationProcess(root, [{"id": f"cam{i}", "name": f"Cam {i}", "url": cam.url} for i, cam in enumerate(cams)],
                            log={"level": "info"}, **sections)
    daemon.start(timeout=60)
    for i in range(len(cams)):
        daemon.wait_state(f"cam{i}", "online", timeout=60)
    return daemon


def cpu_phase(root: Path, counts: list[int], seconds: float) -> None:
    """One recorded 1080p25 camera; N headless viewers of it, for each N in ``counts``."""
    cam = SimCamera("cpu", file=clip_1080p(), fps=25)
    daemon = _station(root, [cam])
    try:
        wait_until(lambda: daemon.camera("cam0")["last_segment_at"], 90, "recording never started")
        recording_only = _idle_cpu(daemon, seconds)
        bitrate = daemon.camera("cam0")["bitrate_bps"]
        results = {n: asyncio.run(_measure(daemon, ["cam0"] * n, seconds)) for n in counts}
        first = results[counts[0]]["cpu_percent"] - recording_only
        for n, result in results.items():
            added = result["cpu_percent"] - recording_only
            report(
                "live_cpu", camera="1920x1080@25, recorded", camera_bitrate_kbps=round(bitrate / 1000), viewers=n,
                seconds=seconds, client="aiortc, frames assembled but not decoded",
                daemon_cpu_percent_recording_only=round(recording_only, 1),
                daemon_cpu_percent_with_viewers=round(result["cpu_percent"], 1),
                added_cpu_percent=round(added, 2),
                first_viewer_cpu_percent=round(first, 2),
                extra_viewer_cpu_percent=round((added - first) / (n - 1), 2) if n > 1 else None,
                viewer_frames_per_second=result["frames_per_viewer_per_second"],
                relay_dropped_packets=result["dropped_packets"],
            )
        delays = results[counts[-1]]["relay_delay_ms"]
        report("live_relay_delay", sessions=len(delays), camera="1920x1080@25",
               mean_ms_per_session=[round(d, 2) for d in delays])
    finally:
        daemon.stop()
        cam.stop()


def cameras_phase(root: Path, cameras: int, seconds: float) -> None:
    """``cameras`` recorded 1080p25 cameras, one headless viewer each (a monitoring wall)."""
    cams = [SimCamera(f"wall{i}", file=clip_1080p(), fps=25) for i in range(cameras)]
    daemon = _station(root, cams)
    try:
        recording_only = _idle_cpu(daemon, seconds)
        result = asyncio.run(_measure(daemon, [f"cam{i}" for i in range(cameras)], seconds))
        added = result["cpu_percent"] - recording_only
        report("live_cpu_wall", cameras=cameras, camera="1920x1080@25 each, all recorded", viewers=cameras,
               seconds=seconds, daemon_cpu_percent_recording_only=round(recording_only, 1),
               daemon_cpu_percent_with_viewers=round(result["cpu_percent"], 1),
               added_cpu_percent_per_viewer=round(added / cameras, 2),
               viewer_frames_per_second=result["frames_per_viewer_per_second"],
               relay_dropped_packets=result["dropped_packets"])
    finally:
        daemon.stop()
        for cam in cams:
            cam.stop()


def transcode_phase(root: Path, seconds: float) -> None:
    """An H.265 1280x720@15 camera transcoded for live view: CPU of the transcode, 1 and 4 viewers."""
    cam = SimCamera("h265", codec="h265", width=1280, height=720, fps=15, bitrate_kbps=1500)
    daemon = _station(root, [cam], live={"transcode": "h264"})
    try:
        recording_only = _idle_cpu(daemon, seconds)
        for n in (1, 4):
            result = asyncio.run(_measure(daemon, ["cam0"] * n, seconds))
            transcoder = result["transcoders"].get("cam0", {})
            report("live_transcode_cpu", camera="H.265 1280x720@15 1.5 Mbit/s, recorded",
                   output="H.264 1280x720 Constrained Baseline, libx264 ultrafast", viewers=n, seconds=seconds,
                   daemon_cpu_percent_recording_only=round(recording_only, 1),
                   daemon_cpu_percent_with_viewers=round(result["cpu_percent"], 1),
                   added_cpu_percent=round(result["cpu_percent"] - recording_only, 1),
                   transcoder_thread_cpu_percent=transcoder.get("cpu_percent"),
                   transcoder_frames_out=transcoder.get("frames_out"),
                   camera_fps_measured=daemon.camera("cam0")["fps"],
                   viewer_frames_per_second=result["frames_per_viewer_per_second"])
    finally:
        daemon.stop()
        cam.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--viewers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--cameras", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--skip", choices=["first_frame", "cpu", "wall", "transcode"], action="append", default=[])
    args = parser.parse_args()
    _headless_viewers()
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        root = Path(tmp)
        if "first_frame" not in args.skip:
            first_frame_phase(root / "ff", args.runs)
        if "cpu" not in args.skip:
            cpu_phase(root / "cpu", args.viewers, args.seconds)
        if "wall" not in args.skip:
            cameras_phase(root / "wall", args.cameras, args.seconds)
        if "transcode" not in args.skip:
            transcode_phase(root / "transcode", args.seconds)


if __name__ == "__main__":
    main()
