"""Offers a live view cannot serve: a clear 4xx naming the cause, or a session that ends with a logged reason.

Never a viewer slot left hanging, and the camera keeps recording: each case ends with the session list
empty, no hub reader attached, and a good viewer still getting pictures.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest
from aiortc import RTCRtpSender, RTCSessionDescription

from tests.conftest import StationProcess, wait_until
from tests.test_live import _frames, _whep_client, recvonly_peer
from tests.test_live_mdns import hide_behind_mdns

CONNECT_TIMEOUT = 3.0


@pytest.fixture
def station(cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess]) -> StationProcess:
    cam = cameras("gate", width=640, height=360, fps=15)
    daemon = daemon_factory([{"id": "gate", "name": "Gate", "url": cam.url}],
                            live={"connect_timeout_seconds": CONNECT_TIMEOUT})
    daemon.wait_state("gate", "online", timeout=30)
    return daemon


def post(daemon: StationProcess, offer: str) -> tuple[int, Any]:
    return daemon.request("POST", "/api/cameras/gate/whep", body=offer.encode(),
                          headers={"Content-Type": "application/sdp"})


def left_behind(daemon: StationProcess) -> dict[str, Any] | None:
    live: dict[str, Any] = daemon.get("/api/live/sessions")[1]
    return None if live["sessions"] == [] and live["readers"] == {"gate": 0} else live


def nothing_left(daemon: StationProcess) -> None:
    assert left_behind(daemon) is None


async def nothing_left_soon(daemon: StationProcess, timeout: float) -> None:
    """Waits without blocking this loop: the test's own aiortc peer must keep running meanwhile."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (live := await asyncio.to_thread(left_behind, daemon)) is not None:
        assert asyncio.get_running_loop().time() < deadline, f"left behind after {timeout} s: {live}"
        await asyncio.sleep(0.2)


async def test_offers_that_can_never_connect_are_refused_with_the_reason(station: StationProcess) -> None:
    pc = await recvonly_peer()
    good = pc.localDescription.sdp
    await pc.close()
    assert "typ host" in good and " udp " in good.lower()
    tcp_only = re.sub(r"(a=candidate:\S+ \d+ )udp( \d+ \S+ \d+ typ host)", r"\1tcp\2 tcptype passive", good,
                      flags=re.I)
    fingerprint = re.search(r"a=fingerprint:sha-256 (\S+)", good)
    assert fingerprint is not None
    cases = {
        "only TCP candidates": (tcp_only, 400, "no_udp_candidates", "are TCP"),
        "a fingerprint that is not hex": (good.replace(fingerprint.group(1), "ZZ:" * 31 + "ZZ"), 400,
                                          "bad_fingerprint", "malformed"),
        "a truncated fingerprint": (good.replace(fingerprint.group(1), fingerprint.group(1)[:-3]), 400,
                                    "bad_fingerprint", "malformed"),
        "only a SHA-1 fingerprint": (re.sub(r"a=fingerprint:sha-\d+ \S+\r\n", "", good).replace(
            "a=setup:", "a=fingerprint:sha-1 " + ":".join(["AB"] * 20) + "\r\na=setup:"), 400,
            "bad_fingerprint", "no DTLS fingerprint"),
        "no fingerprint": (re.sub(r"a=fingerprint:\S+ \S+\r\n", "", good), 400, "bad_fingerprint",
                           "no DTLS fingerprint"),
    }
    for what, (offer, status, code, words) in cases.items():
        got, body = post(station, offer)
        assert (got, body.get("error") if isinstance(body, dict) else body) == (status, code), what
        assert words in body["message"], (what, body)
        nothing_left(station)

    # No H.264 in the offer at all (a VP8-only viewer).
    vp8 = await recvonly_peer()
    transceiver = vp8.getTransceivers()[0]
    transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                     if c.mimeType == "video/VP8"])
    await vp8.setLocalDescription(await vp8.createOffer())
    got, body = post(station, vp8.localDescription.sdp)
    await vp8.close()
    assert (got, body["error"]) == (400, "no_common_codec") and "H.264" in body["message"]
    nothing_left(station)


async def test_a_viewer_hidden_behind_mdns_that_never_checks_is_closed_with_the_reason(
        station: StationProcess) -> None:
    pc = await recvonly_peer()
    offer = hide_behind_mdns(pc.localDescription.sdp)
    await pc.close()  # this viewer goes away: no connectivity check will ever come
    status, _answer = post(station, offer)
    assert status == 201
    assert len(station.get("/api/live/sessions")[1]["sessions"]) == 1
    await nothing_left_soon(station, CONNECT_TIMEOUT + 10)
    wait_until(lambda: "were mDNS names and no connectivity check arrived" in station.log(), 5,
               "the reason was not logged")
    assert re.search(r"closed \(peer never connected within 3 s; its \d+ candidate\(s\) were mDNS", station.log())


async def test_a_wrong_fingerprint_ends_the_session_when_dtls_fails(station: StationProcess) -> None:
    pc = await recvonly_peer()
    offer = pc.localDescription.sdp
    fingerprint = re.search(r"a=fingerprint:sha-256 (\S+)", offer)
    assert fingerprint is not None
    forged = ":".join(["5A"] * 32)  # well formed, but not the viewer's certificate
    status, answer = post(station, offer.replace(fingerprint.group(1), forged))
    assert status == 201
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.decode(), type="answer"))
        await nothing_left_soon(station, 20)
        assert "closed (peer failed: DTLS handshake failed" in station.log()
    finally:
        await pc.close()
    # The slot is free and the camera still serves a good viewer.
    viewer, _ = await _whep_client(station.base_url, "gate", station.token)
    try:
        frames = await _frames(viewer, 3, timeout=20)
        assert (frames[-1].width, frames[-1].height) == (640, 360)
    finally:
        await viewer.close()
    await asyncio.sleep(0)
    assert station.camera("gate")["state"] == "online"
