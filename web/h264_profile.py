"""Which H.264 profile and level a live viewer is told it gets, negotiated with what its browser offers.

The camera's packets are relayed as they are, so the answer must name the
camera's own profile and level (RFC 6184 ``profile-level-id``), read from its
SPS, not aiortc's default Constrained Baseline 3.1: players that check it
(Safari, Firefox, hardware decoders) refuse or mis-decode a High-profile stream
announced as Baseline.  The browser lists, one payload type each, the profiles
it decodes; we pick the one that decodes the camera's stream:

* the same profile, else the least capable one that still decodes it
  (a Constrained Baseline stream is also a valid Main and High stream, a Main
  stream a valid High stream, and High 4:4:4 Predictive decoders decode them
  all; see :data:`DECODED_BY`);
* packetization-mode 1 only (the only mode aiortc's packetizer sends);
* the level: the camera's own when the offer allows level asymmetry (every
  browser does), else only if it is no higher than the level offered.

aiortc itself matches only its two Baseline profile ids, so :func:`offer_for_aiortc`
hands it the offer with just the chosen payload type, under the id it knows,
and :func:`honest_answer` puts the negotiated id back into the answer.  Only
the SDP changes: aiortc's packetizer does not look at the profile.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import H264Level, H264Profile

from streams.bitstream import iter_nal_units

AIORTC_PROFILE_LEVEL_ID = "42e01f"  # the Constrained Baseline id aiortc's own H.264 codec carries

P = H264Profile
# Stream profile -> the receiver profiles that decode it, least capable first.  A High 4:4:4 Predictive
# decoder decodes every Main and High stream (H.264 A.2.11); Chromium built with FFmpeg offers it and not
# High itself.  Baseline proper may use FMO/ASO, which only Baseline decoders have.
DECODED_BY: dict[H264Profile, tuple[H264Profile, ...]] = {
    P.PROFILE_CONSTRAINED_BASELINE: (
        P.PROFILE_CONSTRAINED_BASELINE, P.PROFILE_BASELINE, P.PROFILE_MAIN, P.PROFILE_CONSTRAINED_HIGH,
        P.PROFILE_HIGH, P.PROFILE_PREDICTIVE_HIGH_444,
    ),
    P.PROFILE_BASELINE: (P.PROFILE_BASELINE,),
    P.PROFILE_MAIN: (P.PROFILE_MAIN, P.PROFILE_HIGH, P.PROFILE_PREDICTIVE_HIGH_444),
    P.PROFILE_CONSTRAINED_HIGH: (P.PROFILE_CONSTRAINED_HIGH, P.PROFILE_HIGH, P.PROFILE_PREDICTIVE_HIGH_444),
    P.PROFILE_HIGH: (P.PROFILE_HIGH, P.PROFILE_PREDICTIVE_HIGH_444),
    P.PROFILE_PREDICTIVE_HIGH_444: (P.PROFILE_PREDICTIVE_HIGH_444,),
}
PROFILE_NAMES = {
    P.PROFILE_CONSTRAINED_BASELINE: "Constrained Baseline", P.PROFILE_BASELINE: "Baseline", P.PROFILE_MAIN: "Main",
    P.PROFILE_CONSTRAINED_HIGH: "Constrained High", P.PROFILE_HIGH: "High",
    P.PROFILE_PREDICTIVE_HIGH_444: "High 4:4:4 Predictive",
}
# profile_idc values with no WebRTC profile-level-id (High 10, 4:2:2, Extended, ...), for messages.
OTHER_PROFILE_NAMES = {88: "Extended", 110: "High 10", 122: "High 4:2:2", 44: "CAVLC 4:4:4"}


class NegotiationError(Exception):
    """A refused offer: the HTTP ``status``, a stable ``code`` and a human ``message`` for the JSON error.

    Raised here when the offer cannot carry the camera's stream; :class:`web.whep.WhepError` refines it.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ProfileLevel:
    """An H.264 ``profile_idc``, its constraint flags (``profile-iop``) and ``level_idc``."""

    profile_idc: int
    iop: int
    level_idc: int

    @classmethod
    def from_sps(cls, sps: bytes) -> ProfileLevel | None:
        """From an SPS NAL unit (header byte first); None if it is too short to be one."""
        if len(sps) < 4 or sps[0] & 0x1F != 7:
            return None
        return cls(sps[1], sps[2], sps[3])

    @classmethod
    def from_extradata(cls, extradata: bytes) -> ProfileLevel | None:
        """From the first SPS of Annex-B parameter sets."""
        for nal in iter_nal_units(extradata):
            if nal and nal[0] & 0x1F == 7:
                return cls.from_sps(nal)
        return None

    @classmethod
    def from_hex(cls, text: str) -> ProfileLevel:
        if len(text) != 6:
            raise ValueError("profile-level-id must be 6 hex digits")
        value = bytes.fromhex(text)
        return cls(value[0], value[1], value[2])

    @property
    def hex(self) -> str:
        return f"{self.profile_idc:02x}{self.iop:02x}{self.level_idc:02x}"

    def parsed(self) -> tuple[H264Profile, H264Level] | None:
        """The WebRTC profile and level, or None for a profile no browser decodes.

        constraint_set4/5 and the reserved bits only narrow a profile further (e.g. frame_mbs_only);
        when they make the id unrecognised, the profile is read from the upper flags.
        """
        for iop in (self.iop, self.iop & 0xF0):
            try:
                return aiortc_sdp.parse_h264_profile_level_id(f"{self.profile_idc:02x}{iop:02x}{self.level_idc:02x}")
            except ValueError:
                continue
        return None

    def describe(self) -> str:
        parsed = self.parsed()
        name = PROFILE_NAMES[parsed[0]] if parsed else OTHER_PROFILE_NAMES.get(
            self.profile_idc, f"profile_idc {self.profile_idc}")
        return f"{name} level {level_text(parsed[1] if parsed else None, self.level_idc)}"


def level_text(level: H264Level | None, level_idc: int) -> str:
    if level is H264Level.LEVEL1_B:
        return "1b"
    return f"{level_idc // 10}.{level_idc % 10}"


@dataclass(frozen=True, slots=True)
class H264Choice:
    """The offered payload type we send on and the ``fmtp`` parameters the answer gives it."""

    payload_type: int
    parameters: dict[str, str | int]
    camera: ProfileLevel | None  # None: the camera's SPS is not known yet; the browser's own id is echoed

    @property
    def profile_level_id(self) -> str:
        return str(self.parameters["profile-level-id"])


def _offered_h264(media: aiortc_sdp.MediaDescription) -> list[RTCRtpCodecParameters]:
    return [
        c for c in media.rtp.codecs
        if c.mimeType.lower() == "video/h264" and str(c.parameters.get("packetization-mode", "0")) == "1"
        and c.payloadType is not None
    ]


def _offer_profile(codec: RTCRtpCodecParameters) -> tuple[ProfileLevel, H264Profile, H264Level] | None:
    # An offer without profile-level-id means Constrained Baseline 3.1 (RFC 6184 and libwebrtc).
    try:
        offered = ProfileLevel.from_hex(str(codec.parameters.get("profile-level-id", AIORTC_PROFILE_LEVEL_ID)))
    except ValueError:
        return None
    parsed = offered.parsed()
    return (offered, *parsed) if parsed else None


def choose(video: aiortc_sdp.MediaDescription, camera: ProfileLevel | None) -> H264Choice:
    """The offered H.264 payload type that carries ``camera``'s stream, and the answer's parameters."""
    offered = [(c, p) for c in _offered_h264(video) if (p := _offer_profile(c)) is not None]
    if not offered:
        raise NegotiationError(400, "no_common_codec",
                               "the offer has no H.264 with packetization-mode=1; nothing else is relayed")
    if camera is None:
        codec, (theirs, _, _) = offered[0]
        return H264Choice(_pt(codec), _answer_parameters(codec, theirs.hex), None)
    parsed = camera.parsed()
    if parsed is None:
        raise NegotiationError(409, "profile_unsupported",
                               f"the camera streams H.264 {camera.describe()}, which browsers do not decode; "
                               "set the camera (or a live_url substream) to Main or High profile")
    profile, level = parsed
    for wanted in DECODED_BY[profile]:
        for codec, (theirs, their_profile, their_level) in offered:
            if their_profile is not wanted:
                continue
            asymmetric = str(codec.parameters.get("level-asymmetry-allowed", "0")) == "1"
            if not asymmetric and _level_order(level) > _level_order(their_level):
                continue
            if wanted is profile:
                answer_id = ProfileLevel(camera.profile_idc, _recognised_iop(camera), camera.level_idc)
            else:  # the viewer's profile (a superset of the camera's), at the camera's level
                answer_id = ProfileLevel(theirs.profile_idc, theirs.iop, camera.level_idc)
            return H264Choice(_pt(codec), _answer_parameters(codec, answer_id.hex), camera)
    names = sorted({f"{PROFILE_NAMES[p]} level {level_text(lv, o.level_idc)}" for _, (o, p, lv) in offered})
    decodable = any(p in DECODED_BY[profile] for _, (_, p, _) in offered)
    if decodable:
        raise NegotiationError(400, "level_not_offered",
                               f"the camera streams H.264 {camera.describe()}; the viewer accepts only "
                               f"{', '.join(names)} and does not allow level asymmetry")
    raise NegotiationError(400, "profile_not_offered",
                           f"the camera streams H.264 {camera.describe()}; the viewer decodes only {', '.join(names)}")


def _pt(codec: RTCRtpCodecParameters) -> int:
    assert codec.payloadType is not None  # _offered_h264 keeps only codecs with one
    return codec.payloadType


def _level_order(level: H264Level) -> float:
    return 10.5 if level is H264Level.LEVEL1_B else float(level)


def _recognised_iop(camera: ProfileLevel) -> int:
    try:
        aiortc_sdp.parse_h264_profile_level_id(camera.hex)
    except ValueError:
        return camera.iop & 0xF0
    return camera.iop


def _answer_parameters(codec: RTCRtpCodecParameters, profile_level_id: str) -> dict[str, str | int]:
    parameters: dict[str, str | int] = {"packetization-mode": "1"}
    if str(codec.parameters.get("level-asymmetry-allowed", "0")) == "1":
        parameters["level-asymmetry-allowed"] = "1"
    parameters["profile-level-id"] = profile_level_id
    return parameters


def video_section(offer: aiortc_sdp.SessionDescription) -> aiortc_sdp.MediaDescription | None:
    return next((m for m in offer.media if m.kind == "video"), None)


def offer_for_aiortc(offer: aiortc_sdp.SessionDescription, choice: H264Choice) -> str:
    """The offer as aiortc can take it: its video section's only H.264 is the chosen one, under aiortc's id."""
    offer = copy.deepcopy(offer)
    video = video_section(offer)
    assert video is not None
    keep: list[RTCRtpCodecParameters] = []
    for codec in video.rtp.codecs:
        name = codec.mimeType.lower()
        if name == "video/h264":
            if codec.payloadType != choice.payload_type:
                continue
            codec.parameters = {"packetization-mode": "1", "level-asymmetry-allowed": "1",
                                "profile-level-id": AIORTC_PROFILE_LEVEL_ID}
        elif name == "video/rtx" and codec.parameters.get("apt") != choice.payload_type:
            continue
        keep.append(codec)
    video.rtp.codecs = keep
    kept = {c.payloadType for c in keep}
    video.fmt = [pt for pt in video.fmt if pt in kept]
    return str(offer)


def honest_answer(answer_sdp: str, choice: H264Choice) -> str:
    """aiortc's answer with the negotiated profile-level-id on the chosen payload type."""
    answer = aiortc_sdp.SessionDescription.parse(answer_sdp)
    video = video_section(answer)
    if video is not None:
        for codec in video.rtp.codecs:
            if codec.mimeType.lower() == "video/h264" and codec.payloadType == choice.payload_type:
                codec.parameters = dict(choice.parameters)
    return str(answer)
