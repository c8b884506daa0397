"""Live view of any station through the console: WHEP signalling relayed, media direct.

``POST /api/stations/{station}/cameras/{camera}/whep`` forwards the browser's
SDP offer to the station's own WHEP endpoint with the station token and the
``X-NVR-Via-Console`` / ``X-NVR-Central-User`` headers (a station honours
them only for a token of role ``central``, so its audit log names the
central user), and returns the station's answer.  The answer's ICE candidates
are the station's, so media flows from the station to the browser; the
console never sees a video packet.  ``DELETE`` on the returned ``Location``
is relayed the same way.  The console remembers which user opened which
session (bounded), so only that user or an admin can end it, and ends it at
the station when that user's identity ends (:mod:`web.identity_watch`).
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from central.station_link import StationLink

log = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
MAX_OFFER_BYTES = 64 * 1024
SESSION_PATH = "/api/stations/{station_id}/whep/sessions/{session_id}"
_STATION_SESSION = re.compile(r"^/api/whep/sessions/([A-Za-z0-9_-]{8,128})$")
# Remembered sessions; stations end unused ones themselves, this only bounds the console's memory.
_MAX_SESSIONS = 10_000


_ICE_LINK = re.compile(r'<(?:stun|turns?):[^>]*>[^,<]*rel="ice-server"[^<]*')


def ice_server_links(station_headers: dict[str, str]) -> dict[str, str]:
    """The station answer's ``Link: <turn:...>; rel="ice-server"`` headers (RFC 9725 4.6), for the browser.

    Media flows from the station to the browser directly, so the browser needs the station's STUN/TURN
    servers; nothing but ice-server links is passed on.
    """
    value = next((v for k, v in station_headers.items() if k.lower() == "link"), "")
    links = [m.group(0).strip().rstrip(",").strip() for m in _ICE_LINK.finditer(value)]
    return {"Link": ", ".join(links)} if links else {}


@dataclass(slots=True, eq=False)
class RelayedSession:
    station: str
    camera: str
    session_id: str
    user: str
    created_mono: float
    unwatch: Callable[[], None] = field(default=lambda: None)  # stop following the identity that opened it


class LiveRelay:
    def __init__(self) -> None:
        self.sessions: OrderedDict[tuple[str, str], RelayedSession] = OrderedDict()
        self.opened_total = 0

    @staticmethod
    def station_session(location: str | None) -> str | None:
        """The station's session id from its ``Location``; None when it is not one of ours."""
        match = _STATION_SESSION.match(location or "")
        return match.group(1) if match else None

    def add(self, link: StationLink, camera: str, session_id: str, user: str) -> RelayedSession:
        session = RelayedSession(link.id, camera, session_id, user, time.monotonic())
        self.sessions[(link.id, session_id)] = session
        self.opened_total += 1
        while len(self.sessions) > _MAX_SESSIONS:
            self.sessions.popitem(last=False)[1].unwatch()
        return session

    @staticmethod
    def location(session: RelayedSession) -> str:
        return SESSION_PATH.format(station_id=session.station, session_id=session.session_id)

    def get(self, station: str, session_id: str) -> RelayedSession | None:
        return self.sessions.get((station, session_id))

    def remove(self, station: str, session_id: str) -> RelayedSession | None:
        session = self.sessions.pop((station, session_id), None)
        if session is not None:
            session.unwatch()
        return session
