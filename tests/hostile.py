"""Helpers of the robustness suite: an in-process station on loopback and a hostile HTTP client.

The station is the real :class:`~nvr.station.Station` with its real aiohttp app
on a loopback port (its cameras point at a closed port, so nothing streams);
every request is a real HTTP request over TCP, so ``asyncio.gather`` of them
is a real race against the server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from aiortc import RTCConfiguration, RTCPeerConnection

from nvr.base.config import Config
from nvr.identity.authdb import AuthDatabase
from nvr.identity.roles import Role
from nvr.station import Station
from web.app import create_app

PASSWORD = "correct horse battery"
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


def station_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "station": {"id": "st-test", "name": "Test"},
        "storage": {"path": str(tmp_path / "storage"), "segment_seconds": 4},
        "auth": {"login_max_failures": 3, "login_max_failures_per_address": 100, "login_lockout_seconds": 60,
                 "identity_cache_seconds": 0},
        "ingest": {"backoff_initial_seconds": 5, "backoff_max_seconds": 30},
        "live": {"connect_timeout_seconds": 60},
        "cameras": [
            {"id": "hall", "name": "Hall", "url": "rtsp://127.0.0.1:9/none"},
            {"id": "cell", "name": "Cell", "zone": "holding_cell", "url": "rtsp://127.0.0.1:9/none"},
        ],
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return Config.model_validate(data)


@dataclass
class RunningStation:
    daemon: Station
    server: TestServer
    http: aiohttp.ClientSession
    tokens: dict[str, str]
    peers: list[RTCPeerConnection] = field(default_factory=list)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    @property
    def origin(self) -> str:
        return self.url("/").rstrip("/")

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def db(self) -> AuthDatabase:
        """The auth database as the CLI opens it (another connection)."""
        return AuthDatabase(self.daemon.config.auth_database)

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.http.request(method, self.url(path), allow_redirects=False, **kwargs) as resp:
            raw = await resp.read()
            body: Any = raw
            if resp.content_type == "application/json":
                body = json.loads(raw)
            return resp.status, body, resp

    async def login(self, user: str, password: str = PASSWORD, **extra: Any) -> tuple[int, Any, str | None]:
        """Sign in; returns the status, the body and the session id (the cookie's value)."""
        status, body, resp = await self.request(
            "POST", "/api/login", json={"username": user, "password": password, **extra},
            headers={"Origin": self.origin, **SAME_ORIGIN})
        cookie = resp.cookies.get("nvr_session")
        return status, body, cookie.value if cookie is not None else None

    async def offer(self) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        self.peers.append(pc)
        assert pc.localDescription is not None
        return pc.localDescription.sdp

    async def watch_live(self, camera: str, headers: dict[str, str]) -> tuple[int, Any, str | None]:
        """POST a WHEP offer; the status, the body and the session id."""
        status, body, resp = await self.request(
            "POST", f"/api/cameras/{camera}/whep", data=await self.offer(),
            headers={"Content-Type": "application/sdp", "Origin": self.origin, **SAME_ORIGIN, **headers})
        location = resp.headers.get("Location")
        return status, body, location.rsplit("/", 1)[1] if location else None

    async def audit(self, **query: str) -> list[dict[str, Any]]:
        await self.daemon.audit.db.call(lambda: None)  # every queued entry is written
        status, body, _ = await self.request("GET", "/api/audit", params=query, headers=self.auth("admin"))
        assert status == 200, body
        return list(body["entries"])


@asynccontextmanager
async def running_station(config: Config, restricted: dict[str, tuple[Role, frozenset[str]]] | None = None
                          ) -> AsyncIterator[RunningStation]:
    """A started station with a token per role (plus ``restricted`` ones) and a user per role (``<role>1``)."""
    from recorder.storage import init_storage

    init_storage(config.storage.path, config.station.id)
    db = AuthDatabase(config.auth_database)
    tokens = {role.value: db.create_token(role.value, role, None, "test") for role in Role}
    for name, (role, cameras) in (restricted or {}).items():
        tokens[name] = db.create_token(name, role, cameras, "test")
    for role in Role:
        db.add_user(f"{role.value}1", role, PASSWORD, None)
    db.close()
    daemon = Station(config)
    await daemon.start()
    server = TestServer(create_app(daemon), host="127.0.0.1")
    await server.start_server()
    http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    station = RunningStation(daemon, server, http, tokens)
    try:
        yield station
    finally:
        await asyncio.gather(*(pc.close() for pc in station.peers), return_exceptions=True)
        await http.close()
        await server.close()
        await daemon.stop()


async def read_event_stream(station: RunningStation, headers: dict[str, str]) -> tuple[aiohttp.ClientResponse, bytes]:
    """Open ``/api/events/stream`` and read its greeting; the caller reads on (or closes) the response."""
    resp = await station.http.get(station.url("/api/events/stream"), headers=headers)
    if resp.status != 200:
        return resp, await resp.read()
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    return resp, first
