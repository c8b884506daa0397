"""A viewer that hides its addresses behind mDNS names, as every browser with default settings does.

The daemon must answer at once (not after a 1 s multicast query nobody answers) and the session must
still connect: the viewer's connectivity checks reveal its address as a peer-reflexive candidate.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription

from tests.conftest import StationProcess
from tests.test_live import recvonly_peer
from web.whep import without_mdns_candidates

_HOST = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( .*)$", re.M)


def hide_behind_mdns(sdp: str) -> str:
    """Every candidate address replaced by a random ``.local`` name, as Chromium does by default."""
    return _HOST.sub(lambda m: f"{m.group(1)}{uuid.uuid4()}.local{m.group(3)}", sdp)


def test_offers_keep_everything_but_their_mdns_candidates() -> None:
    offer = ("v=0\r\na=candidate:1 1 udp 2122260223 0f3c4e8a-1b2c-4d5e-8f90-123456789abc.local 51234 typ host\r\n"
             "a=candidate:2 1 udp 2122260223 10.1.2.3 51235 typ host\r\n"
             "a=candidate:3 1 tcp 1518280447 ABC.LOCAL. 9 typ host tcptype active\r\na=end-of-candidates\r\n")
    kept, hidden = without_mdns_candidates(offer)
    assert hidden == 2
    # and no end-of-candidates: the hidden ones turn up as peer-reflexive candidates during the checks
    assert kept == "v=0\r\na=candidate:2 1 udp 2122260223 10.1.2.3 51235 typ host\r\n"
    assert without_mdns_candidates("v=0\r\na=end-of-candidates\r\n") == ("v=0\r\na=end-of-candidates\r\n", 0)


async def test_a_viewer_behind_mdns_names_is_answered_at_once_and_sees_video(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess]) -> None:
    cam = cameras("mdns", width=640, height=360, fps=15)
    daemon = daemon_factory([{"id": "hall", "name": "Hall", "url": cam.url}])
    daemon.wait_state("hall", "online", timeout=30)
    pc = await recvonly_peer()
    try:
        offer = hide_behind_mdns(pc.localDescription.sdp)
        assert ".local " in offer and not re.search(r"a=candidate:\S+ \d+ \S+ \d+ \d+\.\d+\.\d+\.\d+ ", offer)
        started = time.monotonic()
        async with aiohttp.ClientSession() as http, http.post(
            f"{daemon.base_url}/api/cameras/hall/whep", data=offer,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {daemon.token}"},
        ) as resp:
            answer = await resp.text()
            answered = time.monotonic() - started
            assert resp.status == 201, answer
        # Loosely: resolving one mDNS name alone costs aioice's 1 s timeout; the answer must not wait for it.
        assert answered < 0.8, f"answered in {answered * 1000:.0f} ms"
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        track = pc.getTransceivers()[0].receiver.track
        frame = await asyncio.wait_for(track.recv(), 20)
        assert (frame.width, frame.height) == (640, 360)
        assert "mDNS candidate(s) left to peer-reflexive discovery" in daemon.log()
    finally:
        await pc.close()
