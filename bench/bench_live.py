"""Live view: time to first frame, relay latency, and daemon CPU per viewer stream.

Phases (each prints one JSON line, also appended to bench/results/results.jsonl):

- ``live_first_frame``: a 640x360@15 camera (2 s GOP) and headless Chromium
  with its default features, in a namespace of its own with a default route
  (so that it offers its address as an mDNS name; the report counts the offers
  that did, and those that showed an address), the daemon across a veth.  Twenty
  times: a fresh RTCPeerConnection, WHEP POST, first decoded frame
  (``requestVideoFrameCallback``).  Median, p95 and max of: offer creation
  with ICE gathering, POST→answer (and the daemon's own time to answer),
  answer→connected, POST→first decoded frame.  Goal: POST→first frame under
  250 ms.
- relay delay (in each ``live_cpu`` line): the daemon's own added latency,
  from a packet arriving in the hub to it being handed to the sender; the
  largest per-session mean over the measuring window
  (``relay_delay_ms_window_max``) and over the whole session, the GOP burst
  that starts it included (``relay_delay_ms_session_max``).
- ``live_cpu``: one 1080p25 4 Mbit/s camera (pre-encoded clip), recorded;
  daemon CPU with no viewer, then with 1, 4 and 16 headless aiortc viewers
  spread over up to four load-generator processes (they complete ICE, DTLS
  and SRTP, then only count RTP packets, marker bits and sequence gaps: a
  Python receiver that parses and assembles fell behind at 16 viewers and its
  NACKs inflated the daemon's figure).  Reports the first viewer's cost and
  each extra viewer's, as percent of one core, for the shared-packetization
  sender and for aiortc's own (``live.shared_packetization: false``), in
  interleaved rounds (``--rounds``); ``live_cpu_extra_viewer`` sums them up.
  The shared sender is measured a second way where the bench runs as root:
  its viewers in a network namespace of their own behind a veth pair whose
  receiving runs in a kernel thread (``bench/viewer_net.py``). On loopback
  the viewers' kernel receive work runs in the daemon's system calls and is
  billed to it; on a monitoring room's network it is the viewers' machines'.
  Each line says which (``viewers_network``).
- ``live_cpu_wall``: 16 such cameras, all recorded, one viewer each.
- ``live_transcode_cpu``: an H.265 720p15 camera with ``live.transcode: h264``,
  1 and 4 viewers: the transcode's CPU and what extra viewers add.

    python bench/bench_live.py [--runs 20] [--viewers 1 4 16] [--cameras 16] [--seconds 15] [--rounds 2]
        [--skip first_frame|cpu|wall|transcode]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402

from bench import viewer_net  # noqa: E402
from bench.common import clip_1080p, cpu_seconds, kernel_cpu_seconds, report  # noqa: E402
from bench.viewer_net import ViewerNetwork  # noqa: E402
from sim.client import SimCamera  # noqa: E402
from tests.conftest import StationProcess, wait_until  # noqa: E402
from tests.test_live import CHROMIUM_ARGS  # noqa: E402
from tests.test_live_networks import chromium_in, station_on_all_addresses  # noqa: E402

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
  const hosts = pc.localDescription.sdp.split("\\r\\n")
    .filter((l) => l.startsWith("a=candidate") && l.includes(" typ host"));
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
           total_ms: tFrame - t0, location, host_candidates: hosts.length,
           mdns_candidates: hosts.filter((l) => l.includes(".local ")).length };
}"""


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {"median": round(statistics.median(values), 1), "p95": round(p95, 1), "max": round(max(values), 1)}


def first_frame_phase(root: Path, runs: int) -> None:
    """Chromium as it comes, on "another machine" with a default route (bench/viewer_net.py).

    For a page without camera permission Chromium gathers only on the default route's interface and offers that
    address as an mDNS name: in a namespace without a default route (tests/isolated.sh's) it offers no candidate
    at all, and the figure would not be the one a monitoring room sees.  The report counts what it offered.
    """
    from playwright.sync_api import sync_playwright

    cam = SimCamera("ff", width=640, height=360, fps=15, gop=30)
    cam.start()
    root.mkdir()
    daemon = StationProcess(root, [{"id": "cam", "name": "Cam", "url": cam.url}], log={"level": "info"})
    why_not = viewer_net.available()
    network = viewer_net.ViewerNetwork().open() if why_not is None else None
    if network is not None:
        station_on_all_addresses(daemon)
        url, chromium = f"http://{viewer_net.DAEMON_ADDRESS}:{daemon.port}", chromium_in(network.name, root)
    else:
        print(f"bench_live: Chromium in this namespace: one of its own {why_not}", file=sys.stderr)
        url, chromium = daemon.base_url, "/usr/bin/chromium"
    try:
        daemon.start()
        daemon.wait_state("cam", "online", timeout=30)
        samples: list[dict[str, Any]] = []
        server_answer: list[float] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_extra_http_headers({"Authorization": f"Bearer {daemon.token}"})  # deny-by-default access
            page.goto(url + "/healthz")
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
            goal_first_frame_ms=250, chromium_features="default",
            chromium_network="own namespace with a default route" if network is not None else "this namespace",
            offers_with_mdns_host_candidates=sum(1 for s in samples if s["mdns_candidates"]),
            offers_with_address_host_candidates=sum(1 for s in samples if s["host_candidates"] > s["mdns_candidates"]),
        )
    finally:
        daemon.stop()
        cam.stop()
        if network is not None:
            network.close()


class _Count:
    """What one load-generator process received: RTP packets, access units (marker bits), sequence gaps."""

    packets = 0
    units = 0
    lost = 0
    last_seq: dict[int, int] = {}


async def _counting_rtp(transport: Any, data: bytes, arrival_time_ms: int) -> None:
    """Stands in for aiortc's RTP receive path in the load viewers: counts, parses, assembles, decodes nothing.

    aiortc's receiver (header parsing, jitter buffer, frame assembly, NACK generator) cost more than the daemon's
    sender once the shared packetization was in: with 16 viewers in one process it fell behind, the kernel
    dropped packets, the viewers NACKed and the daemon's figure grew by the retransmissions.  The daemon's work
    per packet is the same whether or not the viewer parses it; SRTP is still checked (aiortc, in C).
    """
    _Count.packets += 1
    if data[1] & 0x80:
        _Count.units += 1
    key = id(transport)
    seq = (data[2] << 8) | data[3]
    last = _Count.last_seq.get(key)
    if last is not None:
        gap = (seq - last - 1) & 0xFFFF
        if gap < 0x8000:
            _Count.lost += gap
    _Count.last_seq[key] = seq


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
    return pc


def _receiver_main(base_url: str, token: str, targets: list[str], conn: Connection, netns: str | None = None) -> None:
    """One load-generator process: a viewer per entry of ``targets``; counts between "start" and "stop"."""
    import aiortc.rtcdtlstransport

    if netns is not None:
        viewer_net.enter(netns)  # before any socket: the viewers live on "another machine"

    aiortc.rtcdtlstransport.RTCDtlsTransport._handle_rtp_data = _counting_rtp  # type: ignore[method-assign]
    # Below the daemon: on a two-core machine the receivers it wakes would otherwise preempt it in the middle of
    # a frame (the monitoring-room browsers are on other machines), which shows as relay delay that is not its own.
    os.nice(10)

    async def run() -> None:
        pcs = [await _viewer(base_url, camera_id, token) for camera_id in targets]
        loop = asyncio.get_running_loop()
        conn.send("ready")
        for command in ("start", "stop"):
            assert await loop.run_in_executor(None, conn.recv) == command
            conn.send((_Count.packets, _Count.units, _Count.lost))
        await loop.run_in_executor(None, conn.recv)  # "close", once the daemon's figures are read
        for pc in pcs:
            await pc.close()

    asyncio.run(run())


def _measure(daemon: StationProcess, targets: list[str], seconds: float, processes: int = 4,
             network: ViewerNetwork | None = None) -> dict[str, Any]:
    """Daemon CPU (% of one core) while one headless viewer per entry of ``targets`` watches.

    The viewers are spread over up to ``processes`` load-generator processes, so that the receiving side is
    not one process's single core. With a ``network`` they run in its namespace (see bench/viewer_net.py),
    else beside the daemon, on loopback.
    """
    assert daemon.proc is not None
    pid = daemon.proc.pid
    ctx = multiprocessing.get_context("spawn")
    groups = [targets[i::processes] for i in range(min(processes, len(targets)))]
    base_url = f"http://{viewer_net.DAEMON_ADDRESS}:{daemon.port}" if network is not None else daemon.base_url
    receive_errors = network.udp_receive_errors if network is not None else _udp_receive_errors
    links, procs = [], []
    for group in groups:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_receiver_main, daemon=True,
                           args=(base_url, daemon.token, group, child, network.name if network else None))
        proc.start()
        links.append(parent)
        procs.append(proc)
    try:
        for link in links:
            if not link.poll(120) or link.recv() != "ready":
                raise RuntimeError("a load-generator process never connected its viewers")
        time.sleep(3)  # connected, past the GOP burst
        before = {s["id"]: s for s in daemon.request("GET", "/api/live/sessions", timeout=60)[1]["sessions"]}
        for link in links:
            link.send("start")
        start = [link.recv() for link in links]
        c0, k0, w0, r0 = cpu_seconds(pid), kernel_cpu_seconds(pid), time.monotonic(), receive_errors()
        time.sleep(seconds)
        percent = (cpu_seconds(pid) - c0) / (time.monotonic() - w0) * 100
        kernel = (kernel_cpu_seconds(pid) - k0) / (time.monotonic() - w0) * 100
        overflowed = receive_errors() - r0
        for link in links:
            link.send("stop")
        stop = [link.recv() for link in links]
        elapsed = time.monotonic() - w0
        live = daemon.request("GET", "/api/live/sessions", timeout=60)[1]
        sessions = live["sessions"]
        for link in links:
            link.send("close")
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    time.sleep(1)
    packets, units, lost = (sum(b[i] - a[i] for a, b in zip(start, stop, strict=True)) for i in range(3))
    return {
        "cpu_percent": percent,
        "kernel_cpu_percent": kernel,
        "frames_per_viewer_per_second": round(units / elapsed / max(1, len(targets)), 1),
        "packets_per_viewer_per_second": round(packets / elapsed / max(1, len(targets))),
        "viewer_lost_packets": lost,
        "viewer_socket_overflows": overflowed,
        "dropped_packets": sum(s["dropped_packets"] for s in sessions),
        "retransmitted_packets": sum(s.get("retransmitted_packets") or 0 for s in sessions),
        "relay_delay_ms": [s["relay_delay_ms"] for s in sessions if s["relay_delay_ms"] is not None],
        "relay_delay_window_ms": [d for d in (_window_delay(before.get(s["id"]), s) for s in sessions)
                                  if d is not None],
        "gso_sends": sum(s.get("gso_sends") or 0 for s in sessions),
        "gso_blocked": sum(s.get("gso_blocked") or 0 for s in sessions),
        "transcoders": live.get("transcoders", {}),
        "load_processes": len(groups),
    }


def _udp_receive_errors() -> int:
    """Datagrams the kernel dropped for a full receive buffer, in this network namespace (/proc/net/snmp)."""
    return viewer_net.rcvbuf_errors(Path("/proc/net/snmp").read_text())


def _window_delay(before: dict[str, Any] | None, after: dict[str, Any]) -> float | None:
    """A session's mean relay delay over the measuring window only (past the GOP burst that starts a session)."""
    if before is None or not before["relay_delay_ms"] or not after["relay_delay_ms"]:
        return None
    samples = after["relay_delay_samples"] - before["relay_delay_samples"]
    if samples <= 0:
        return None
    return (after["relay_delay_ms"] * after["relay_delay_samples"]
            - before["relay_delay_ms"] * before["relay_delay_samples"]) / samples


def _idle_cpu(daemon: StationProcess, seconds: float) -> float:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    time.sleep(3)  # settle after connecting
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100


def _station(root: Path, cams: list[SimCamera], cameras: list[dict[str, Any]] | None = None,
             all_addresses: bool = False, **sections: Any) -> StationProcess:
    """A daemon recording ``cams`` (started here) as cam0, cam1...; or the ``cameras`` given, already started.

    ``all_addresses``: its web server listens on every address, for viewers in another namespace.
    """
    for cam in cams:
        cam.start()
    cameras = cameras or [{"id": f"cam{i}", "name": f"Cam {i}", "url": cam.url} for i, cam in enumerate(cams)]
    root.mkdir(parents=True)
    daemon = StationProcess(root, cameras, log={"level": "info"}, **sections)
    if all_addresses:
        station_on_all_addresses(daemon)
    daemon.start(timeout=60)
    for camera in cameras:
        daemon.wait_state(camera["id"], "online", timeout=60)
    return daemon


LOOPBACK = "loopback (the viewers' kernel receive work is billed to the daemon)"
NAPI = "own namespace, veth, receive in a NAPI thread (as on another machine)"


def cpu_phase(root: Path, counts: list[int], seconds: float, rounds: int) -> None:
    """One recorded 1080p25 camera; N headless viewers of it, for each N in ``counts``.

    Both senders, in turns (``live.shared_packetization`` true, then false, the order alternating by round), on
    the same camera and machine, so that the noise of a shared machine falls on both alike; and the shared sender
    a third time with its viewers in a namespace of their own (bench/viewer_net.py), where their kernel's receive
    work is not billed to the daemon, as it is not when they sit at other machines.
    """
    cam = SimCamera("cpu", file=clip_1080p(), fps=25)
    cam.start()
    why_not = viewer_net.available()
    network = viewer_net.ViewerNetwork().open() if why_not is None else None
    if network is None:
        print(f"bench_live: viewers on loopback only: a namespace of their own {why_not}", file=sys.stderr)
    variants: list[tuple[bool, ViewerNetwork | None]] = [(True, None), (False, None)]
    if network is not None:
        variants.append((True, network))
    extra: dict[tuple[bool, ViewerNetwork | None], list[float]] = {v: [] for v in variants}
    try:
        for round_no in range(rounds):
            for shared, net in (variants if round_no % 2 == 0 else variants[::-1]):
                name = f"r{round_no}-{'shared' if shared else 'aiortc'}{'-netns' if net else ''}"
                daemon = _station(root / name, [], cameras=[{"id": "cam0", "name": "Cam 0", "url": cam.url}],
                                  all_addresses=net is not None, live={"shared_packetization": shared})
                try:
                    extra[shared, net] += _cpu_round(daemon, counts, seconds, shared, round_no, net)
                finally:
                    daemon.stop()
        for (shared, net), values in extra.items():
            if values:
                report("live_cpu_extra_viewer", sender="shared packetization" if shared else "aiortc's own",
                       viewers_network=NAPI if net else LOOPBACK,
                       rounds=rounds, extra_viewer_cpu_percent_min=round(min(values), 2),
                       extra_viewer_cpu_percent_max=round(max(values), 2),
                       extra_viewer_cpu_percent_median=round(statistics.median(values), 2), goal=0.5)
    finally:
        cam.stop()
        if network is not None:
            network.close()


def _cpu_round(daemon: StationProcess, counts: list[int], seconds: float, shared: bool, round_no: int,
               network: ViewerNetwork | None = None) -> list[float]:
    wait_until(lambda: daemon.camera("cam0")["last_segment_at"], 90, "recording never started")
    recording_only = _idle_cpu(daemon, seconds)
    bitrate = daemon.camera("cam0")["bitrate_bps"]
    results = {n: _measure(daemon, ["cam0"] * n, seconds, network=network) for n in counts}
    first = results[counts[0]]["cpu_percent"] - recording_only
    extras = []
    for n, result in results.items():
        added = result["cpu_percent"] - recording_only
        extra = (added - first) / (n - 1) if n > 1 else None
        if extra is not None:
            extras.append(extra)
        report(
            "live_cpu", sender="shared packetization" if shared else "aiortc's own", round=round_no,
            viewers_network=NAPI if network else LOOPBACK,
            camera="1920x1080@25, recorded", camera_bitrate_kbps=round(bitrate / 1000), viewers=n,
            seconds=seconds, client=f"aiortc in {result['load_processes']} process(es), RTP counted, not parsed",
            daemon_cpu_percent_recording_only=round(recording_only, 1),
            daemon_cpu_percent_with_viewers=round(result["cpu_percent"], 1),
            daemon_kernel_cpu_percent_with_viewers=round(result["kernel_cpu_percent"], 1),
            added_cpu_percent=round(added, 2),
            first_viewer_cpu_percent=round(first, 2),
            extra_viewer_cpu_percent=round(extra, 2) if extra is not None else None,
            viewer_frames_per_second=result["frames_per_viewer_per_second"],
            viewer_packets_per_second=result["packets_per_viewer_per_second"],
            viewer_lost_packets=result["viewer_lost_packets"],
            viewer_socket_overflows=result["viewer_socket_overflows"],
            retransmitted_packets=result["retransmitted_packets"],
            relay_dropped_packets=result["dropped_packets"],
            relay_delay_ms_session_max=round(max(result["relay_delay_ms"]), 2) if result["relay_delay_ms"] else None,
            relay_delay_ms_window_max=round(max(result["relay_delay_window_ms"]), 2)
            if result["relay_delay_window_ms"] else None,
            gso_sends=result["gso_sends"], gso_blocked=result["gso_blocked"],
        )
    return extras


def cameras_phase(root: Path, cameras: int, seconds: float) -> None:
    """``cameras`` recorded 1080p25 cameras, one headless viewer each (a monitoring wall)."""
    cams = [SimCamera(f"wall{i}", file=clip_1080p(), fps=25) for i in range(cameras)]
    daemon = _station(root, cams)
    try:
        recording_only = _idle_cpu(daemon, seconds)
        result = _measure(daemon, [f"cam{i}" for i in range(cameras)], seconds)
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
            result = _measure(daemon, ["cam0"] * n, seconds)
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
    parser.add_argument("--rounds", type=int, default=2, help="CPU phase: turns of each sender, interleaved")
    parser.add_argument("--skip", choices=["first_frame", "cpu", "wall", "transcode"], action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        root = Path(tmp)
        if "first_frame" not in args.skip:
            first_frame_phase(root / "ff", args.runs)
        if "cpu" not in args.skip:
            cpu_phase(root / "cpu", args.viewers, args.seconds, args.rounds)
        if "wall" not in args.skip:
            cameras_phase(root / "wall", args.cameras, args.seconds)
        if "transcode" not in args.skip:
            transcode_phase(root / "transcode", args.seconds)


if __name__ == "__main__":
    main()
