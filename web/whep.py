"""Live view over WebRTC: WHEP (RFC 9725) sessions relaying camera packets without transcoding.

``POST /api/cameras/{id}/whep`` with an SDP offer answers ``201`` with the SDP
answer and a ``Location`` for the session; ``DELETE`` on it ends the session.
Candidates are gathered before answering (no trickle ICE; ``PATCH`` answers
405).  STUN and TURN servers are used only when ``live.ice_servers`` names
some (:mod:`web.ice_servers`; they reach viewers as RFC 9725 ``Link`` headers
on ``OPTIONS`` and on the answer): station networks are closed, and aiortc's
default (a public STUN server) costs a timeout before every answer there.

Each session is one :class:`~aiortc.RTCPeerConnection` whose tracks read one
bounded hub reader through a :class:`~web.live_feed.LiveFeed`.  A session
ends on ``DELETE``, when its peer fails or closes, when the peer never
connects within ``live.connect_timeout_seconds``, when the identity that
opened it ends (logout, expiry, user removed, token revoked:
:mod:`web.identity_watch`), and at shutdown; the feed detaches from the hub
at once, whatever the reason, and ``live.stop`` is audited with it.

A session takes a slot (:class:`~web.slots.Slots`: ``live.max_sessions`` in
all, 503; ``live.max_sessions_per_user``, 429) before the offer handler's
first ``await``, so concurrent offers cannot overrun the limits.  A session
relayed by a central console counts for the central user it names.
"""

from __future__ import annotations

import asyncio
import logging
import secrets as pysecrets
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from nvr.base.config import Live, LiveTranscode
from nvr.base.timeutil import iso
from nvr.identity.roles import Role
from streams.camera import CameraStreams
from streams.hub import Hub
from streams.media import TrackInfo
from web import aiortc_fixes  # applied on import, before any peer connection
from web.access import ACCESS, audit, identity, via_console, visible
from web.h264_profile import (
    AIORTC_PROFILE_LEVEL_ID,
    H264Choice,
    NegotiationError,
    ProfileLevel,
    choose,
    honest_answer,
    offer_for_aiortc,
    video_section,
)
from web.http import error_response, find_camera, read_body
from web.ice_servers import IceServers
from web.live_fanout import LiveFanout
from web.live_feed import PASSTHROUGH_AUDIO, LiveFeed
from web.live_packetizer import LivePacketizer
from web.live_sender import LiveRtpSender
from web.live_track import LiveTrack
from web.live_transcode import LiveTranscoder
from web.ports import StationPort
from web.slots import LimitReached, Slot, Slots

log = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
MAX_OFFER_BYTES = 64 * 1024
SESSION_PATH = "/api/whep/sessions/{session_id}"


class WhepError(NegotiationError):
    """A request we refuse; becomes a JSON error response."""


def without_mdns_candidates(sdp: str) -> tuple[str, int]:
    """The offer without its ``.local`` (mDNS) host candidates, and how many there were.

    Browsers hide their addresses behind mDNS names by default (Chromium's WebRtcHideLocalIpsWithMdns).
    Resolving one means a multicast query that, on networks that do not answer it, waits for aioice's
    full 1 s timeout before the answer can be sent. The browser does not need them: its connectivity
    checks reach our host candidates (all in the answer), and we learn its address from them as a
    peer-reflexive candidate (RFC 8445 section 7.3.1.3). So they are left out, never resolved on the
    answer path.
    """
    kept, hidden = [], 0
    lines = sdp.splitlines(keepends=True)
    for line in lines:
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) > 4 and fields[4].lower().rstrip(".").endswith(".local"):
                hidden += 1
                continue
        kept.append(line)
    if hidden:
        # Without "end-of-candidates" ICE waits for the peer-reflexive candidates the checks reveal instead of
        # failing at once for want of pairs (the session's connect deadline bounds the wait).
        kept = [line for line in kept if not line.startswith("a=end-of-candidates")]
    return "".join(kept), hidden


FINGERPRINT_BYTES = {"sha-256": 32, "sha-384": 48, "sha-512": 64}  # what aiortc's DTLS can verify


def check_transport(raw_offer: str, offer: aiortc_sdp.SessionDescription) -> None:
    """Refuse an offer whose peer cannot be reached or verified, before any socket is opened.

    * Only TCP candidates: aiortc sends and receives media over UDP only, so nothing could connect
      (a browser behind a UDP-blocking firewall needs a TURN server, ``live.ice_servers``).
    * No DTLS fingerprint with an algorithm aiortc verifies, or a malformed one: the handshake
      could only fail, after the browser waited for it.
    """
    transports = [line.split()[2].lower() for line in raw_offer.splitlines()
                  if line.startswith("a=candidate:") and len(line.split()) > 4]
    if transports and "udp" not in transports:
        raise WhepError(400, "no_udp_candidates",
                        f"all {len(transports)} ICE candidate(s) of the offer are TCP; live view needs UDP "
                        "(through a TURN server when the viewer's network blocks UDP)")
    for media in offer.media:
        usable = [f for f in media.dtls.fingerprints if f.algorithm.lower() in FINGERPRINT_BYTES] \
            if media.dtls is not None else []
        if not usable:
            raise WhepError(400, "bad_fingerprint",
                            f"the offer's {media.kind} section has no DTLS fingerprint with "
                            f"{', '.join(FINGERPRINT_BYTES)}")
        for fingerprint in usable:
            octets = fingerprint.value.split(":")
            if len(octets) != FINGERPRINT_BYTES[fingerprint.algorithm.lower()] or not all(
                    len(o) == 2 and all(c in "0123456789abcdefABCDEF" for c in o) for o in octets):
                raise WhepError(400, "bad_fingerprint",
                                f"the offer's {fingerprint.algorithm} DTLS fingerprint is malformed")


@dataclass(slots=True, eq=False)
class LiveStream:
    """What one camera's viewers read: its view hub, or its transcoder's."""

    hub: Hub
    profile: ProfileLevel | None  # the H.264 profile and level viewers get, when known
    audio: TrackInfo | None
    transcoder: LiveTranscoder | None = None


@dataclass(slots=True, eq=False)
class WhepSession:
    id: str
    camera_id: str
    pc: RTCPeerConnection
    feed: LiveFeed
    peer: str
    audio_codec: str | None
    video_profile: str = ""  # the profile-level-id the answer names (the camera's own when it is known)
    created_at: float = field(default_factory=time.time)
    created_mono: float = field(default_factory=time.monotonic)
    answer_seconds: float = 0.0
    connected_mono: float | None = None
    watchdog: asyncio.Task[None] | None = None
    user: str = "anonymous"  # who opened it, for the audit log and DELETE
    via: dict[str, str] = field(default_factory=dict)  # central console and user, when relayed by one
    slot: Slot | None = None
    unwatch: Callable[[], None] | None = None  # stop following the identity that opened it
    mdns_hidden: int = 0  # the offer's .local candidates, left to peer-reflexive discovery
    stream: LiveStream | None = None  # what the session reads (a transcoder's hub for H.265 cameras)
    relay_candidate: bool = False  # the daemon has a TURN relay candidate in its answer
    sender: LiveRtpSender | None = None  # the video sender, when it is the shared-packetization one

    def to_json(self) -> dict[str, Any]:
        feed = self.feed
        now = time.monotonic()
        first = feed.first_sent_mono
        return {
            "id": self.id,
            "camera_id": self.camera_id,
            "state": self.pc.connectionState,
            "age_seconds": round(now - self.created_mono, 3),
            "answer_ms": round(self.answer_seconds * 1000, 1),
            "connect_ms": round((self.connected_mono - self.created_mono) * 1000, 1)
            if self.connected_mono is not None else None,
            "first_packet_ms": round((first - self.created_mono) * 1000, 1) if first is not None else None,
            "video_profile_level_id": self.video_profile or None,
            "relay_candidate": self.relay_candidate,
            "audio_codec": self.audio_codec,
            "video_packets": feed.video_sent,
            "audio_packets": feed.audio_sent,
            "dropped_packets": feed.dropped + feed.parked_dropped + (
                self.sender.fanout_dropped if self.sender is not None else 0),
            "keyframe_requests": feed.keyframe_requests,
            "shared_packetization": self.sender is not None,
            "retransmitted_packets": self.sender.retransmitted if self.sender is not None else None,
            # NACKed packets no longer in the history, or beyond what the viewer was sent (a NACK flood)
            "nacks_unanswered": self.sender.nack_missed + self.sender.nack_refused if self.sender is not None else None,
            "gso_sends": self.sender.gso_sends if self.sender is not None else None,
            "gso_blocked": self.sender.gso_blocked if self.sender is not None else None,
            "unsent_units": self.sender.units_unsent if self.sender is not None else None,
            "queued_packets": (feed.reader.queued if feed.reader is not None else 0) + (
                self.sender.fanout_queued if self.sender is not None else 0),
            "relay_delay_ms": round(feed.relay_delay_sum / feed.relay_delay_count * 1000, 2)
            if feed.relay_delay_count else None,
            "relay_delay_samples": feed.relay_delay_count,  # live packets the mean is over (the backlog is not)
        }


def h264_preferences() -> list[RTCRtpCodecCapability]:
    """aiortc's H.264 (packetization-mode 1, the id :func:`~web.h264_profile.offer_for_aiortc` maps onto) and RTX."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    h264 = [
        c for c in codecs
        if c.mimeType.lower() == "video/h264" and c.parameters.get("packetization-mode") == "1"
        and c.parameters.get("profile-level-id") == AIORTC_PROFILE_LEVEL_ID
    ]
    rtx = [c for c in codecs if c.mimeType.lower() == "video/rtx"]
    return h264 + rtx


def _profile_note(choice: H264Choice) -> str:
    if choice.camera is None:
        return f"profile-level-id {choice.profile_level_id} (the viewer's; the camera's is not known yet)"
    return f"{choice.camera.describe()} as profile-level-id {choice.profile_level_id}"


def _offered(offer: aiortc_sdp.SessionDescription, kind: str) -> list[str]:
    """Lower-case MIME types (with packetization-mode for H.264) offered for ``kind``."""
    names: list[str] = []
    for media in offer.media:
        if media.kind != kind:
            continue
        for codec in media.rtp.codecs:
            name = codec.mimeType.lower()
            if name == "video/h264":
                name += ";pm=" + str(codec.parameters.get("packetization-mode", "0"))
            names.append(name)
    return names


class WhepRelay:
    """Owns every live WHEP session of the daemon."""

    def __init__(self, station: StationPort, config: Live) -> None:
        self.station = station
        self.config = config
        self.sessions: dict[str, WhepSession] = {}
        self.opened_total = 0
        self.slots = Slots("sessions", "live sessions", config.max_sessions, config.max_sessions_per_user)
        self.ice = IceServers(config)
        self.transcoders: dict[str, LiveTranscoder] = {}  # camera id -> its shared transcode, while watched
        # One packetization per live stream (a camera's view hub or its transcoder's), shared by its viewers.
        self.packetizers: weakref.WeakKeyDictionary[Hub, LivePacketizer] = weakref.WeakKeyDictionary()
        # One fan-out per live stream: its shared-sender viewers' video, taken from the hub once.
        self.fanouts: weakref.WeakKeyDictionary[Hub, LiveFanout] = weakref.WeakKeyDictionary()
        unknown = sorted(set(config.cameras) - set(station.cameras))
        if unknown:
            log.warning("live.cameras names no configured camera: %s", ", ".join(unknown))
        self._closing = False

    def view_info(self, runtime: CameraStreams) -> tuple[TrackInfo | None, TrackInfo | None]:
        """Video and audio of the stream viewers get: current session, else the last one seen."""
        hub = runtime.view_hub
        source = runtime.live_source or runtime.source
        session = hub.session or source.session
        if session is None:
            return None, None
        return session.video, session.audio

    async def open(self, runtime: CameraStreams, offer_sdp: str, peer: str, user: str = "anonymous",
                   via: dict[str, str] | None = None) -> tuple[WhepSession, str]:
        if self._closing:
            raise WhepError(503, "shutting_down", "the daemon is shutting down")
        via = via or {}
        try:
            # Before the first await: the slot is counted the moment it is checked.
            slot = self.slots.take(f"{user}/{via['central_user']}" if "central_user" in via else user)
        except LimitReached as limit:
            raise WhepError(limit.status, limit.code, limit.message) from None
        with slot:  # given back if the offer is refused; the session holds it otherwise
            stream = self._stream(runtime)  # before the first await, like the slot
            try:
                return await self._open(runtime, stream, offer_sdp, peer, user, via, slot)
            except BaseException:
                await self._release(stream)
                raise

    def _stream(self, runtime: CameraStreams) -> LiveStream:
        """What viewers of this camera get; a transcoder is taken for the caller (give it back: :meth:`_release`)."""
        camera_id = runtime.config.id
        video, audio = self.view_info(runtime)
        if video is None or video.codec == "h264":
            profile = ProfileLevel.from_extradata(video.extradata) if video is not None else None
            return LiveStream(runtime.view_hub, profile, audio)
        if video.codec != "hevc":
            raise WhepError(409, "codec_unsupported",
                            f"camera {camera_id} streams {video.codec} for live view; browsers need H.264 "
                            "(configure an H.264 live_url substream)")
        if self.config.transcode_for(camera_id) is not LiveTranscode.H264:
            raise WhepError(409, "h265_needs_transcode",
                            f"the live stream of camera {camera_id} is H.265, which browsers cannot play over "
                            "WebRTC; set live.transcode: h264 (for all cameras, or for this one under live.cameras) "
                            "or give the camera an H.264 substream as live_url")
        transcoder = self.transcoders.get(camera_id)
        if transcoder is None or transcoder.failed:
            if transcoder is None and len(self.transcoders) >= self.config.max_transcodes:
                raise WhepError(503, "too_many_transcodes",
                                f"at most {self.config.max_transcodes} camera(s) are transcoded for live view at "
                                "once (live.max_transcodes); try again later")
            transcoder = self.transcoders[camera_id] = LiveTranscoder(camera_id, runtime.view_hub, self.config)
            transcoder.start()
        transcoder.viewers += 1
        return LiveStream(transcoder.hub, transcoder.predicted_profile(), None, transcoder)

    async def _release(self, stream: LiveStream) -> None:
        """Give back what :meth:`_stream` took; the last viewer of a transcoded camera stops its transcoder."""
        transcoder, stream.transcoder = stream.transcoder, None
        if transcoder is None:
            return
        transcoder.viewers -= 1
        if transcoder.viewers <= 0 and self.transcoders.get(transcoder.camera_id) is transcoder:
            del self.transcoders[transcoder.camera_id]
            await transcoder.stop()

    async def _open(self, runtime: CameraStreams, stream: LiveStream, offer_sdp: str, peer: str, user: str,
                    via: dict[str, str], slot: Slot) -> tuple[WhepSession, str]:
        camera_id = runtime.config.id
        audio = stream.audio
        offer_sdp, hidden = without_mdns_candidates(offer_sdp)
        try:
            offer = aiortc_sdp.SessionDescription.parse(offer_sdp)
        except Exception as exc:  # noqa: BLE001 - aiortc raises ValueError, KeyError, IndexError... on bad SDP
            raise WhepError(400, "bad_offer", f"the SDP offer cannot be parsed: {type(exc).__name__}") from None
        check_transport(offer_sdp, offer)
        video_media = video_section(offer)
        if video_media is None:
            raise WhepError(400, "bad_offer", "the SDP offer has no video media section")
        choice = choose(video_media, stream.profile)  # NegotiationError: answered like a WhepError
        audio_mime = None
        if audio is not None and audio.codec in PASSTHROUGH_AUDIO:
            mime = "audio/" + PASSTHROUGH_AUDIO[audio.codec].lower()
            if mime in _offered(offer, "audio"):
                audio_mime = mime

        session_id = pysecrets.token_urlsafe(16)
        feed = LiveFeed(
            stream.hub, f"whep:{session_id[:8]}", self.config.viewer_queue_packets, audio=audio_mime is not None
        )
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self.ice.for_daemon()))
        session = WhepSession(
            id=session_id, camera_id=camera_id, pc=pc, feed=feed, peer=peer,
            audio_codec=audio_mime.split("/")[1].upper() if audio_mime else None, user=user, via=via,
            slot=slot, video_profile=choice.profile_level_id, mdns_hidden=hidden, stream=stream,
        )
        started = time.monotonic()
        try:
            transceiver = pc.addTransceiver(LiveTrack(feed, "video"), direction="sendonly")
            transceiver.setCodecPreferences(h264_preferences())
            if self.config.shared_packetization and LiveRtpSender.adopt(
                    transceiver.sender, feed, self.fanout(stream.hub)):
                session.sender = transceiver.sender  # type: ignore[assignment]  # adopt() changed its class
            aiortc_fixes.on_keyframe_request(transceiver.sender, lambda: self._keyframe_requested(session))
            if audio_mime is not None:
                transceiver = pc.addTransceiver(LiveTrack(feed, "audio"), direction="sendonly")
                transceiver.setCodecPreferences(
                    [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == audio_mime]
                )
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_for_aiortc(offer, choice), type="offer"))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(RTCSessionDescription(sdp=honest_answer(answer.sdp, choice), type="answer"))
        except Exception as exc:  # noqa: BLE001 - whatever aiortc refuses in an offer is the client's error
            feed.close()
            await _close_refused(pc)
            log.info("[%s] WHEP offer from %s refused: %s: %s", camera_id, peer, type(exc).__name__, exc)
            raise WhepError(400, "bad_offer", f"the SDP offer was not accepted: {type(exc).__name__}") from None
        session.answer_seconds = time.monotonic() - started
        session.relay_candidate = self.ice.check_gathered(pc, camera_id)
        self.sessions[session_id] = session
        self.opened_total += 1

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            if state == "connected" and session.connected_mono is None:
                session.connected_mono = time.monotonic()
                log.debug("[%s] live session %s connected in %.0f ms", camera_id, session_id[:8],
                          (session.connected_mono - session.created_mono) * 1000)
            elif state in ("failed", "closed"):
                await self.close(session_id, _failure(pc) if state == "failed" else "peer closed")

        session.watchdog = asyncio.get_running_loop().create_task(
            self._connect_deadline(session), name=f"whep-deadline:{session_id[:8]}"
        )
        log.info(
            "[%s] live view opened by %s: session %s, H.264 %s%s, answered in %.0f ms%s",
            camera_id, peer, session_id[:8], _profile_note(choice),
            f" + {session.audio_codec}" if session.audio_codec else "",
            session.answer_seconds * 1000,
            f" ({hidden} mDNS candidate(s) left to peer-reflexive discovery)" if hidden else "",
        )
        assert pc.localDescription is not None
        return session, pc.localDescription.sdp

    def packetizer(self, hub: Hub) -> LivePacketizer:
        """The shared packetization of ``hub``'s stream (made with its first viewer)."""
        packetizer = self.packetizers.get(hub)
        if packetizer is None:
            packetizer = self.packetizers[hub] = LivePacketizer(hub.name)
        return packetizer

    def fanout(self, hub: Hub) -> LiveFanout:
        """The fan-out of ``hub``'s stream to its shared-sender viewers (its task runs while one is attached)."""
        fanout = self.fanouts.get(hub)
        if fanout is None:
            fanout = self.fanouts[hub] = LiveFanout(hub, self.packetizer(hub), self.config.viewer_queue_packets)
        return fanout

    def packetizer_stats(self, may_see: Callable[[str], bool]) -> dict[str, dict[str, int]]:
        """Per watched camera: access units packetized, and taken by a viewer from the shared cut."""
        stats: dict[str, dict[str, int]] = {}
        for session in self.sessions.values():
            if session.stream is None or session.camera_id in stats or not may_see(session.camera_id):
                continue
            packetizer = self.packetizers.get(session.stream.hub)
            if packetizer is not None:
                stats[session.camera_id] = {"units_cut": packetizer.units_cut, "units_shared": packetizer.units_shared}
        return stats

    def _keyframe_requested(self, session: WhepSession) -> None:
        """A PLI/FIR: a relayed camera's next keyframe answers it; a transcoder encodes one."""
        session.feed.keyframe_requests += 1
        transcoder = session.stream.transcoder if session.stream is not None else None
        if transcoder is not None:
            transcoder.request_keyframe()

    async def _connect_deadline(self, session: WhepSession) -> None:
        await asyncio.sleep(self.config.connect_timeout_seconds)
        if session.connected_mono is None:
            hint = (f"; its {session.mdns_hidden} candidate(s) were mDNS names and no connectivity check "
                    "arrived from it" if session.mdns_hidden else "")
            await self.close(session.id, f"peer never connected within {self.config.connect_timeout_seconds:g} s"
                             + hint)

    async def close(self, session_id: str, reason: str) -> bool:
        """End a session; False if there is none. Idempotent."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        if session.slot is not None:
            session.slot.release()
        if session.unwatch is not None:
            session.unwatch()
        session.feed.close()
        if session.stream is not None:
            await self._release(session.stream)
        watchdog = session.watchdog
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
        # The view ends now: logged and audited before the peer connection is torn down, which can take
        # aioice a minute when the TURN server is gone (its allocation's deletion is retried for ~63 s),
        # and would then inflate the audited duration, or lose the entry to a shutdown meanwhile.
        duration = time.monotonic() - session.created_mono
        feed = session.feed
        delay = feed.relay_delay_sum / feed.relay_delay_count * 1000 if feed.relay_delay_count else 0.0
        log.info(
            "[%s] live view session %s closed (%s) after %.0f s: %d video packet(s) sent, %d dropped, "
            "relay delay %.2f ms",
            session.camera_id, session_id[:8], reason, duration,
            feed.video_sent, feed.dropped + feed.parked_dropped, delay,
        )
        self.station.audit.record(
            "live.stop", actor=session.user, camera=session.camera_id, address=session.peer,
            session=session_id[:8], started_at=iso(session.created_at),
            duration_seconds=round(duration, 1), reason=reason, **session.via,
        )
        try:
            await session.pc.close()
        except Exception:
            log.warning("[%s] closing live session %s failed", session.camera_id, session_id[:8], exc_info=True)
        return True

    async def close_all(self, reason: str = "shutdown") -> None:
        self._closing = True
        await asyncio.gather(*(self.close(sid, reason) for sid in list(self.sessions)))

    def readers(self, may_see: Callable[[str], bool] = lambda _camera: True) -> dict[str, int]:
        """Live viewers attached to each camera's view hub (for leak checks), of the cameras ``may_see``."""
        def viewers(camera_id: str, hub: Hub) -> int:
            transcoder = self.transcoders.get(camera_id)
            hubs = (hub,) if transcoder is None else (hub, transcoder.hub)
            names = {r.name for h in hubs for r in h.readers if r.name.startswith("whep:")}
            leaked = 0
            for h in hubs:
                fanout = self.fanouts.get(h)
                if fanout is not None:
                    names.update(viewer.viewer_name for viewer in fanout.viewers)
                    # A fan-out still reading the hub with nobody to send to would be a leak: count it.
                    leaked += fanout.reader is not None and not fanout.viewers
            return len(names) + leaked

        return {
            camera_id: viewers(camera_id, runtime.view_hub)
            for camera_id, runtime in self.station.cameras.items() if may_see(camera_id)
        }


def _failure(pc: RTCPeerConnection) -> str:
    """Why a peer failed, in words for the log and the audit."""
    if pc.iceConnectionState == "failed":
        return "peer failed: ICE failed (no candidate pair answered)"
    return "peer failed: DTLS handshake failed (wrong certificate fingerprint or a broken handshake)"


async def _close_refused(pc: RTCPeerConnection) -> None:
    """Close a peer whose offer failed half-way; aiortc's own close() can trip over what it never set up."""
    try:
        await pc.close()
    except Exception as exc:  # noqa: BLE001 - e.g. a transceiver without a transport (found by fuzzing)
        log.debug("closing a refused peer failed (%s: %s); stopping its transports one by one",
                  type(exc).__name__, exc)
        for transceiver in pc.getTransceivers():
            dtls = transceiver.receiver.transport
            if dtls is None:
                continue
            for stop in (dtls.stop, dtls.transport.stop):
                try:
                    await stop()
                except Exception as exc:  # noqa: BLE001 - best effort: the sockets must not leak
                    log.debug("stopping a transport of a refused peer failed: %s", exc)


# -- HTTP ---------------------------------------------------------------------------------

WHEP = web.AppKey("whep", WhepRelay)


def add_routes(app: web.Application, station: StationPort) -> WhepRelay:
    """Mount the WHEP endpoints; sessions are closed when the app shuts down."""
    relay = WhepRelay(station, station.config.live)
    app[WHEP] = relay
    app.router.add_post("/api/cameras/{camera_id}/whep", post_offer)
    app.router.add_route("OPTIONS", "/api/cameras/{camera_id}/whep", options_whep)
    app.router.add_delete(SESSION_PATH, delete_session)
    app.router.add_patch(SESSION_PATH, patch_session)
    app.router.add_get("/api/live/sessions", list_sessions)

    async def shutdown(_app: web.Application) -> None:
        await relay.close_all()

    app.on_shutdown.append(shutdown)
    return relay


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    response = error_response(status, code, message)
    response.headers.update(headers)
    return response


async def post_offer(request: web.Request) -> web.Response:
    runtime = find_camera(request)
    if request.content_type != SDP_TYPE:
        return _error(415, "unsupported_media_type", f"send the SDP offer as {SDP_TYPE}", **{"Accept-Post": SDP_TYPE})
    body = await read_body(request, MAX_OFFER_BYTES, "an SDP offer")
    try:
        offer = body.decode("utf-8")
    except UnicodeDecodeError:
        return _error(400, "bad_offer", "the SDP offer is not UTF-8 text")
    if not offer.lstrip().startswith("v=0"):
        return _error(400, "bad_offer", "the body is not an SDP offer (it must start with v=0)")
    relay = request.app[WHEP]
    who = identity(request)
    try:
        session, answer = await relay.open(runtime, offer, request.remote or "?",
                                           who.name if who is not None else "anonymous", via_console(request))
    except NegotiationError as exc:  # WhepError included
        headers = {"Retry-After": "5"} if exc.status in (429, 503) else {}
        return _error(exc.status, exc.code, exc.message, **headers)
    if session.id in relay.sessions:  # not already closed while answering
        session.unwatch = request.app[ACCESS].watch.watch(
            who, f"live session {session.id[:8]} of {session.camera_id}",
            lambda reason: relay.close(session.id, reason))
    audit(request, "live.start", camera=session.camera_id, session=session.id[:8])
    location = SESSION_PATH.format(session_id=session.id)
    response = web.Response(
        status=201, text=answer, content_type=SDP_TYPE,
        headers={"Location": location, "Cache-Control": "no-store"},
    )
    _add_ice_links(request, response)
    return response


def _add_ice_links(request: web.Request, response: web.Response) -> None:
    """The viewer's STUN/TURN servers as RFC 9725 Link headers (TURN credentials only to who may watch)."""
    who = identity(request)
    user = via_console(request).get("central_user") or (who.name if who is not None else "anonymous")
    links = request.app[WHEP].ice.links("".join(c if c.isalnum() or c in "._-" else "_" for c in user))
    if links:
        # One header, comma-joined (RFC 9110 5.3): relays that keep one value per header name pass all of them.
        response.headers["Link"] = ", ".join(links)


async def options_whep(request: web.Request) -> web.Response:
    find_camera(request)
    response = web.Response(status=204, headers={"Accept-Post": SDP_TYPE, "Allow": "OPTIONS, POST",
                                                 "Cache-Control": "no-store"})
    _add_ice_links(request, response)
    return response


async def delete_session(request: web.Request) -> web.Response:
    relay = request.app[WHEP]
    session = relay.sessions.get(request.match_info["session_id"])
    who = identity(request)
    if session is not None and who is not None and who.role is not Role.ADMIN and session.user != who.name:
        return _error(403, "forbidden", "this live session belongs to someone else")
    if not await relay.close(request.match_info["session_id"], "ended by the viewer"):
        return _error(404, "unknown_session", "no such live session")
    return web.Response(status=204)


async def patch_session(request: web.Request) -> web.Response:
    relay = request.app[WHEP]
    if request.match_info["session_id"] not in relay.sessions:
        return _error(404, "unknown_session", "no such live session")
    # All our candidates are in the answer and we take the offer's: no trickle ICE, no ICE restart.
    return _error(405, "method_not_allowed", "trickle ICE and ICE restarts are not supported", Allow="DELETE")


async def list_sessions(request: web.Request) -> web.Response:
    relay = request.app[WHEP]
    return web.json_response({
        "sessions": [s.to_json() for s in relay.sessions.values() if visible(request, s.camera_id)],
        "opened_total": relay.opened_total,
        "readers": relay.readers(lambda camera_id: visible(request, camera_id)),
        "transcoders": {camera_id: t.to_json() for camera_id, t in relay.transcoders.items()
                        if visible(request, camera_id)},
        "packetizers": relay.packetizer_stats(lambda camera_id: visible(request, camera_id)),
    })
