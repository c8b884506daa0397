"""A viewer on a lossy, slow link keeps seeing pictures: lost packets are asked for again and resent.

The extended test in :mod:`tests.test_live_networks` does this with netem on a routed link; this one
runs everywhere: a real aiortc viewer whose receive path loses 2 % of the RTP packets at random and
delays everything by 100 ms, against the real daemon and a simulated camera.  The viewer NACKs what
it misses; the daemon's shared-packetization sender (web/live_sender.py) resends it as RTX from its
per-viewer history.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCPeerConnection

from tests.conftest import StationProcess
from tests.test_live import recvonly_peer, whep_connect

LOSS = 0.02
DELAY = 0.1


class Impairment:
    """Loss and delay on one aiortc peer's receive path (after ICE, before DTLS/SRTP)."""

    def __init__(self, recv: Callable[[], Awaitable[bytes]], rng: random.Random) -> None:
        self.recv = recv
        self.rng = rng
        self.queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self.lost = 0
        self.rtp = 0
        self.payload_types: dict[int, int] = {}
        self.pump: asyncio.Task[None] | None = None

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await self.recv()
            except Exception as exc:  # noqa: BLE001 - handed to the reader, as aioice would raise it
                loop.call_later(DELAY, self.queue.put_nowait, exc)
                return
            if len(data) > 12 and 128 <= data[0] < 192 and not 192 <= data[1] <= 223:  # RTP, not RTCP
                self.rtp += 1
                if self.rng.random() < LOSS:
                    self.lost += 1
                    continue
                pt = data[1] & 0x7F
                self.payload_types[pt] = self.payload_types.get(pt, 0) + 1
            loop.call_later(DELAY, self.queue.put_nowait, data)

    async def impaired(self) -> bytes:
        # Started by the first read, which DTLS makes once ICE is connected (aioice refuses reads before).
        if self.pump is None:
            self.pump = asyncio.get_running_loop().create_task(self._pump())
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


def impair(pc: RTCPeerConnection) -> Impairment:
    ice = pc.getTransceivers()[0].receiver.transport.transport
    impairment = Impairment(ice._recv, random.Random(18))
    ice._recv = impairment.impaired
    return impairment


async def test_a_viewer_losing_two_percent_with_100_ms_delay_keeps_decoding(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess]) -> None:
    cam = cameras("hall", width=640, height=360, fps=15, gop=30, bitrate_kbps=1200)
    daemon = daemon_factory([{"id": "hall", "name": "Hall", "url": cam.url}])
    daemon.wait_state("hall", "online", timeout=30)
    pc = await recvonly_peer()
    impairment = impair(pc)
    try:
        answer, _ = await whep_connect(pc, daemon.base_url, "hall", daemon.token)
        rtx = {int(pt) for pt in re.findall(r"a=rtpmap:(\d+) rtx/90000", answer)}
        assert rtx, "no RTX negotiated"
        track = pc.getTransceivers()[0].receiver.track
        await asyncio.wait_for(track.recv(), 20)
        seconds = 12.0
        frames, longest_gap, first_pts, last_pts = 0, 0.0, None, None
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            frame = await asyncio.wait_for(track.recv(), 5)
            frames += 1
            # Measured in the pictures' own time, not in when this (shared, loaded) process got to them:
            # a viewer stuck waiting for a keyframe skips pictures, a slow test process only delays them.
            pts = float(frame.pts * frame.time_base)
            if last_pts is not None:
                longest_gap = max(longest_gap, pts - last_pts)
            else:
                first_pts = pts
            last_pts = pts
        assert first_pts is not None and last_pts is not None
        span = last_pts - first_pts  # the camera's time the window's pictures cover
        assert impairment.lost >= 0.01 * impairment.rtp > 0, (impairment.lost, impairment.rtp)  # it did lose
        resent = sum(n for pt, n in impairment.payload_types.items() if pt in rtx)
        assert resent >= impairment.lost * 0.5, (resent, impairment.lost)  # the losses were resent as RTX
        # Nearly every picture of that time decoded. Counted against the window's wall time instead, make
        # test's load failed it once (150 pictures in 12 s): the loaded process got through fewer seconds of
        # pictures than the window lasted, which says nothing of pictures lost.
        assert span >= seconds / 3 and frames - 1 >= 15 * span * 0.9, (frames, span)
        assert longest_gap < 1.0, longest_gap  # never stuck waiting for a keyframe
        # A keyframe request (PLI) is heard and counted; the camera's next keyframe answers it.
        ssrc = re.search(r"a=ssrc:(\d+) ", answer)
        assert ssrc is not None
        await pc.getTransceivers()[0].receiver._send_rtcp_pli(int(ssrc.group(1)))
        await asyncio.sleep(0.5)
        sessions = daemon.get("/api/live/sessions")[1]["sessions"]
        assert sessions[0]["keyframe_requests"] >= 1, sessions
        # The daemon's own count agrees: its shared-packetization sender answered the NACKs.
        assert sessions[0]["shared_packetization"], sessions
        assert sessions[0]["retransmitted_packets"] >= resent * 0.9, (sessions, resent)
    finally:
        if impairment.pump is not None:
            impairment.pump.cancel()
        await pc.close()
