"""STUN and TURN servers for live viewers on other networks (``live.ice_servers``), for both ends.

None are configured by default: station networks are closed, and an unreachable server costs every
answer aioice's 5 s gathering timeout.  When some are, the daemon's own peer connections use them, and
viewers learn them the way WHEP prescribes (RFC 9725 section 4.6): ``Link: <turn:...>; rel="ice-server"``
headers on ``OPTIONS`` and on the ``201`` answer of the WHEP endpoint, which only users allowed to watch
live video reach.  A TURN server is given either a fixed ``username``/``credential`` or an ``auth_secret``
shared with the TURN server (coturn's ``use-auth-secret``, the "TURN REST API"): then every viewer gets its
own credential that expires after ``credential_ttl_seconds``, and the secret never leaves the station.
Configured credentials and secrets are registered as secrets (redacted from logs, errors, metrics and
exports); the per-viewer credentials made from a secret are never logged and expire.

A STUN or TURN server that gives the daemon no candidate is left out of the daemon's own gathering for
``live.turn_retry_seconds`` (logged once), so that one unreachable server does not slow every answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass

from aiortc import RTCIceServer, RTCPeerConnection

from nvr.base.config import IceServer, Live

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Credential:
    username: str | None
    credential: str | None


def rest_credential(secret: str, user: str, ttl_seconds: int, now: float) -> Credential:
    """A TURN REST API credential (coturn ``use-auth-secret``): ``<expiry>:<user>`` and its HMAC-SHA1."""
    username = f"{int(now) + ttl_seconds}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    # Not registered with nvr.base.secrets: one per viewer and request would grow the redaction pattern
    # without bound. Nothing logs it; it expires; the secret it is made from is registered.
    return Credential(username, base64.b64encode(digest).decode())


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class IceServers:
    """The configured servers, with per-viewer credentials and the daemon's TURN bookkeeping."""

    def __init__(self, config: Live) -> None:
        self.config = config
        self.servers = config.ice_servers
        self._down_until: dict[str, float] = {}  # "stun" / "turn" -> monotonic time to ask it again

    def credential(self, server: IceServer, user: str, now: float) -> Credential:
        if server.auth_secret:
            return rest_credential(server.auth_secret, user, server.credential_ttl_seconds, now)
        return Credential(server.username, server.credential)

    def links(self, user: str) -> list[str]:
        """``Link`` header values for a viewer (RFC 9725 section 4.6), one per URL."""
        now = time.time()
        out = []
        for server in self.servers:
            cred = self.credential(server, user, now)
            for url in server.urls:
                value = f"<{url}>; rel=\"ice-server\""
                if url.startswith("turn") and cred.username is not None and cred.credential is not None:
                    value += f"; username={_quote(cred.username)}; credential={_quote(cred.credential)}"
                    value += '; credential-type="password"'
                out.append(value)
        return out

    def for_daemon(self) -> list[RTCIceServer]:
        """What the daemon's own peer connections gather with (a server found silent is left out a while)."""
        now = time.time()
        down = {kind for kind, until in self._down_until.items() if time.monotonic() < until}
        out = []
        for server in self.servers:
            urls = [u for u in server.urls if _kind(u) not in down]
            if not urls:
                continue
            cred = self.credential(server, "nvr-station", now)
            out.append(RTCIceServer(urls=urls, username=cred.username, credential=cred.credential))
        return out

    def check_gathered(self, pc: RTCPeerConnection, camera_id: str) -> bool:
        """After gathering: whether the daemon has a relay candidate; a server that gave none is skipped a while.

        aioice waits 5 s for STUN and TURN answers before it lets the answer go; a silent server would cost
        every viewer that.
        """
        wanted = {_kind(u) for s in self.servers for u in s.urls}
        now = time.monotonic()
        asked = {kind for kind in wanted if now >= self._down_until.get(kind, 0.0)}
        if not asked:
            return False
        types = {
            candidate.type
            for transceiver in pc.getTransceivers()
            if transceiver.receiver.transport is not None
            for candidate in transceiver.receiver.transport.transport.iceGatherer.getLocalCandidates()
        }
        retry = self.config.turn_retry_seconds
        for kind, candidate_type, what in (("stun", "srflx", "STUN"), ("turn", "relay", "TURN")):
            if kind in asked and candidate_type not in types:
                self._down_until[kind] = now + retry
                log.warning("[%s] the %s server gave no %s candidate (unreachable, or it refused the credential); "
                            "live answers leave it out for %g s, viewers still get it",
                            camera_id, what, "relay" if kind == "turn" else "server-reflexive", retry)
        return "relay" in types


def _kind(url: str) -> str:
    return "turn" if url.startswith("turn") else "stun"
