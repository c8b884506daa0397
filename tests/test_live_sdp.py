"""Honest SDP: a viewer is told the camera's own H.264 profile and level, negotiated with what it offers.

Browsers and hardware decoders check ``profile-level-id``; a High-profile camera announced as Constrained
Baseline (aiortc's default) is refused or mis-decoded by some.  The pure negotiation is tested with
offers that contain only Main or only High profile ids; the daemon answers them for a real High-profile
simulated camera; and real Chromium (default features) plays that camera.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from aiortc import sdp as aiortc_sdp

from tests.conftest import StationProcess
from tests.test_live import OPEN_VIEWER_JS, browser, recvonly_peer  # noqa: F401 - browser: the Chromium fixture
from web.h264_profile import NegotiationError, ProfileLevel, choose, honest_answer, offer_for_aiortc, video_section

VIDEO = ("m=video 9 UDP/TLS/RTP/SAVPF {pts}\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n"
         "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
         "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n")


def offer(*codecs: tuple[int, str, bool], pm: str = "1") -> aiortc_sdp.MediaDescription:
    """A video section offering H.264 under each (payload type, profile-level-id, level asymmetry)."""
    lines = [VIDEO.format(pts=" ".join(str(pt) for pt, _, _ in codecs))]
    for pt, plid, asym in codecs:
        lines.append(f"a=rtpmap:{pt} H264/90000\r\n")
        lines.append(f"a=fmtp:{pt} {'level-asymmetry-allowed=1;' if asym else ''}"
                     f"packetization-mode={pm};profile-level-id={plid}\r\n")
    sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n" + "".join(lines)
    media = video_section(aiortc_sdp.SessionDescription.parse(sdp))
    assert media is not None
    return media


HIGH_40 = ProfileLevel.from_sps(bytes([0x67, 0x64, 0x00, 0x28, 0xAC]))  # what x264 writes for 1080p High
MAIN_31 = ProfileLevel(0x4D, 0x40, 0x1F)
CB_30 = ProfileLevel(0x42, 0xC0, 0x1E)


@pytest.mark.parametrize(("camera", "offered", "answered"), [
    (HIGH_40, [(102, "64001f", True)], "640028"),  # only High offered: the camera's own id, its own level
    (MAIN_31, [(100, "4d001f", True)], "4d401f"),  # only Main offered
    (MAIN_31, [(96, "42e01f", True), (98, "64001f", True)], "64001f"),  # Main is a valid High stream
    (CB_30, [(102, "64001f", True)], "64001e"),  # Constrained Baseline is a valid High stream
    (CB_30, [(98, "64001f", True), (96, "42e01f", True)], "42c01e"),  # same profile preferred, camera's flags
    (HIGH_40, [(96, "42e01f", True), (100, "4d001f", True), (102, "640c1f", True), (104, "64001f", True)],
     "640028"),
    (ProfileLevel(0x64, 0x08, 0x29), [(104, "64001f", True)], "640029"),  # constraint_set4: still High
    (HIGH_40, [(104, "640033", False)], "640028"),  # no asymmetry, but the offer's level is higher
    # what Chromium built with FFmpeg offers: no High, but High 4:4:4 Predictive, which decodes High
    (HIGH_40, [(102, "42001f", True), (108, "42e01f", True), (116, "4d001f", True), (41, "f4001f", True)],
     "f40028"),
    (MAIN_31, [(116, "4d001f", True), (41, "f4001f", True)], "4d401f"),
])
def test_the_answer_names_the_cameras_profile_and_level(
        camera: ProfileLevel, offered: list[tuple[int, str, bool]], answered: str) -> None:
    choice = choose(offer(*offered), camera)
    assert choice.profile_level_id == answered
    # the payload type the browser offered for a profile that decodes the camera's stream
    assert choice.payload_type in [pt for pt, plid, _ in offered
                                   if plid[:2] == answered[:2]]


@pytest.mark.parametrize(("camera", "offered", "status", "code", "words"), [
    (HIGH_40, [(96, "42e01f", True), (97, "42001f", True)], 400, "profile_not_offered", "High level 4.0"),
    (HIGH_40, [(100, "4d001f", True)], 400, "profile_not_offered", "decodes only Main level 3.1"),
    (HIGH_40, [(104, "64001f", False)], 400, "level_not_offered", "does not allow level asymmetry"),
    (ProfileLevel(0x6E, 0x00, 0x28), [(104, "64001f", True)], 409, "profile_unsupported", "High 10"),
    (HIGH_40, [(104, "zz001f", True)], 400, "no_common_codec", "packetization-mode=1"),
])
def test_offers_that_cannot_carry_the_camera_are_refused_with_a_reason(
        camera: ProfileLevel, offered: list[tuple[int, str, bool]], status: int, code: str, words: str) -> None:
    with pytest.raises(NegotiationError) as refused:
        choose(offer(*offered), camera)
    assert (refused.value.status, refused.value.code) == (status, code)
    assert words in refused.value.message


def test_packetization_mode_0_alone_is_no_common_codec() -> None:
    with pytest.raises(NegotiationError) as refused:
        choose(offer((96, "64001f", True), pm="0"), HIGH_40)
    assert refused.value.code == "no_common_codec"


def test_aiortc_gets_only_the_chosen_payload_type_and_the_answer_gets_the_honest_id() -> None:
    media = offer((96, "42e01f", True), (102, "64001f", True))
    session = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    full = aiortc_sdp.SessionDescription.parse(session + str(media))
    choice = choose(video_section(full), HIGH_40)  # type: ignore[arg-type]
    for_aiortc = offer_for_aiortc(full, choice)
    assert "m=video 9 UDP/TLS/RTP/SAVPF 102\r\n" in for_aiortc
    assert re.search(r"a=fmtp:102 [^\r]*profile-level-id=42e01f", for_aiortc)  # the id aiortc matches
    assert "a=rtpmap:96" not in for_aiortc
    answer = honest_answer(for_aiortc.replace("a=recvonly", "a=sendonly"), choice)
    assert re.search(r"a=fmtp:102 [^\r]*profile-level-id=640028", answer)


def with_profiles(sdp: str, *ids: str) -> str:
    """An aiortc offer whose H.264 payload types claim ``ids`` (one each, in order) instead of Baseline."""
    found = iter(ids)
    return re.sub(r"profile-level-id=42[0e]01f", lambda _m: f"profile-level-id={next(found)}", sdp)


async def test_the_daemon_answers_main_and_high_only_offers_for_a_high_profile_camera(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess]) -> None:
    cam = cameras("high", width=640, height=360, fps=15, profile="high")
    daemon = daemon_factory([{"id": "dock", "name": "Loading dock", "url": cam.url}])
    daemon.wait_state("dock", "online", timeout=30)
    pc = await recvonly_peer()
    try:
        base = pc.localDescription.sdp
        headers = {"Content-Type": "application/sdp"}

        status, body = daemon.request("POST", "/api/cameras/dock/whep", body=with_profiles(base, "4d001f",
                                                                                          "4d001f").encode(),
                                      headers=headers)
        assert status == 400 and body["error"] == "profile_not_offered", body
        assert "High level" in body["message"] and "Main" in body["message"]

        status, answer = daemon.request("POST", "/api/cameras/dock/whep", body=with_profiles(base, "4d001f",
                                                                                            "64001f").encode(),
                                        headers=headers)
        assert status == 201, answer
        answer = answer if isinstance(answer, str) else answer.decode()
        ids = re.findall(r"a=fmtp:\d+ [^\r\n]*profile-level-id=([0-9a-f]{6})", answer)
        assert len(ids) == 1 and ids[0].startswith("6400"), answer  # High, not aiortc's 42e01f
        sessions = daemon.get("/api/live/sessions")[1]["sessions"]
        assert [s["video_profile_level_id"] for s in sessions] == ids
        assert f"H.264 High level {int(ids[0][4:], 16) // 10}.{int(ids[0][4:], 16) % 10}" in daemon.log()
        assert daemon.get("/api/live/sessions")[1]["readers"] == {"dock": 0}  # a refused offer left no reader
    finally:
        await pc.close()


PLAY_JS = """async (camera) => {""" + OPEN_VIEWER_JS + """
  const { pc, video, offer, response, answer } = await openViewer(camera);
  if (response.status !== 201) return { status: response.status, answer, offer };
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  let frames = 0;
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("no frames in 20 s")), 20000);
    const count = () => { frames += 1; if (frames >= 15) { clearTimeout(t); resolve(); }
                          else video.requestVideoFrameCallback(count); };
    video.requestVideoFrameCallback(count);
  });
  const stats = await pc.getStats();
  let decoded = 0, codec = "";
  stats.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") decoded = s.framesDecoded;
                         if (s.type === "codec" && s.mimeType === "video/H264") codec = s.sdpFmtpLine; });
  const result = { status: 201, answer, offer, width: video.videoWidth, height: video.videoHeight, decoded, codec };
  await fetch(response.headers.get("Location"), { method: "DELETE" });
  pc.close();
  return result;
}"""


def test_chromium_plays_a_high_profile_camera_announced_as_high(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess], browser: Any) -> None:  # noqa: F811
    cam = cameras("high", width=1280, height=720, fps=15, profile="high")
    daemon = daemon_factory([{"id": "dock", "name": "Loading dock", "url": cam.url}])
    daemon.wait_state("dock", "online", timeout=30)
    page = browser.new_page()
    page.set_extra_http_headers({"Authorization": f"Bearer {daemon.token}"})
    page.goto(daemon.base_url + "/healthz")
    result = page.evaluate(PLAY_JS, "dock")
    assert result["status"] == 201, result["answer"]
    # Chromium built with FFmpeg offers High 4:4:4 Predictive (whose decoders decode High), Chrome also High
    assert re.search(r"profile-level-id=(64|f4)", result["offer"]), "this Chromium decodes no High profile"
    assert (result["width"], result["height"]) == (1280, 720)
    assert result["decoded"] >= 15
    # what it negotiated: a profile that decodes High, at the camera's level, never Baseline
    assert re.search(r"profile-level-id=(64|f4)00[0-9a-f]{2}", result["codec"]), result["codec"]
    page.close()


def test_aiortc_takes_chromiums_low_payload_types_and_keeps_its_ntp_clock() -> None:
    from aiortc import clock
    from aiortc import rtp as aiortc_rtp

    import web.whep  # noqa: F401 - applies web.aiortc_fixes
    assert 41 in aiortc_rtp.DYNAMIC_PAYLOAD_TYPES and 127 in aiortc_rtp.DYNAMIC_PAYLOAD_TYPES
    reference = clock.datetime_to_ntp(clock.current_datetime())
    assert abs(clock.current_ntp_time() - reference) < (1 << 32) // 100  # the same clock, within 10 ms
