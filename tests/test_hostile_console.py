"""Hostile users of the central console: allow-lists per station, and streams that end with the identity.

In process: one real station (:mod:`tests.hostile`) followed by a real
console app twice, as stations ``north`` and ``south`` (so both have a
camera ``hall``: the case where bare camera ids leaked), on loopback.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from central import config as console_config
from central.app import ConsoleRuntime, create_console_app
from nvr.identity.audit import AuditQuery
from nvr.identity.authdb import AuthError
from nvr.identity.roles import Role
from tests.hostile import PASSWORD, RunningStation, running_station, station_config
from web.whep import WHEP


class Room:
    """The station, the console following it twice, and an HTTP client (a plain class: hypothesis prints it short)."""

    def __init__(self, station: RunningStation, runtime: ConsoleRuntime, server: TestServer, http: aiohttp.ClientSession,
                 runtime_token: str) -> None:
        self.station = station
        self.runtime = runtime
        self.server = server
        self.http = http
        self.runtime_token = runtime_token  # an admin token of the console

    def __repr__(self) -> str:
        return f"Room({self.url('/')})"

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    @property
    def origin(self) -> str:
        return self.url("/").rstrip("/")

    async def login(self, user: str) -> dict[str, str]:
        async with self.http.post(self.url("/api/login"), json={"username": user, "password": PASSWORD},
                                  headers={"Origin": self.origin, "Sec-Fetch-Site": "same-origin"}) as resp:
            assert resp.status == 200, await resp.text()
            return {"Cookie": f"nvr_session={resp.cookies['nvr_session'].value}", "Origin": self.origin,
                    "Sec-Fetch-Site": "same-origin"}

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        async with self.http.get(self.url(path), headers=headers) as resp:
            return resp.status, await resp.json()

    async def watch(self, station: str, camera: str, headers: dict[str, str]) -> tuple[int, Any, str | None]:
        offer = await self.station.offer()
        async with self.http.post(self.url(f"/api/stations/{station}/cameras/{camera}/whep"), data=offer,
                                  headers={**headers, "Content-Type": "application/sdp"}) as resp:
            body = await resp.read()
            return resp.status, json.loads(body) if resp.content_type == "application/json" else body, \
                resp.headers.get("Location")


@pytest.fixture
async def room(tmp_path: Path) -> AsyncIterator[Room]:
    async with running_station(station_config(tmp_path / "station")) as station:
        text = yaml.safe_dump({
            "console": {"id": "central", "name": "Central"},
            "storage": {"path": str(tmp_path / "console")},
            "auth": {"identity_cache_seconds": 0},
            "follow": {"poll_seconds": 0.5, "timeout_seconds": 3, "backoff_initial_seconds": 0.5,
                       "backoff_max_seconds": 1},
            "stations": [{"id": sid, "url": station.origin, "token": "${CENTRAL_TOKEN}"} for sid in ("north", "south")],
        })
        config = console_config.parse(text, environ={"CENTRAL_TOKEN": station.tokens["central"]})
        runtime = ConsoleRuntime(config)
        for name, cameras in (("north-hall", frozenset({"north/hall"})), ("south-all", frozenset({"south/*"})),
                              ("everything", None)):
            await runtime.auth.call(runtime.auth.add_user, name, Role.MONITOR, PASSWORD, cameras)
        server = TestServer(create_console_app(runtime), host="127.0.0.1")
        await server.start_server()
        runtime.fleet.start()
        http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        token = await runtime.auth.call(runtime.auth.create_token, "console-admin", Role.ADMIN, None, "test")
        room = Room(station, runtime, server, http, token)
        try:
            deadline = time.monotonic() + 15
            while True:
                fleet = runtime.fleet.fleet_json()
                if all(s["reachable"] and s["cameras"] for s in fleet["stations"]):
                    break
                assert time.monotonic() < deadline, fleet
                await asyncio.sleep(0.1)
            yield room
        finally:
            await http.close()
            await server.close()
            await asyncio.to_thread(runtime.auth.close)


def test_a_console_allow_list_names_station_and_camera() -> None:
    text = yaml.safe_dump({"console": {"id": "central"}, "stations": [
        {"id": "north", "url": "http://127.0.0.1:1", "token": "${T}"}]})
    config = console_config.parse(text, environ={"T": "a-long-enough-token"})
    with pytest.raises(AuthError, match="bare camera id.*north/cell-1"):
        config.camera("cell-1")
    assert config.camera("north/cell-1") == "north/cell-1"
    assert config.camera("north/*") == "north/*"
    assert config.camera("south/cell-1") is None  # no such station in this file
    assert config.camera("north/../x") is None


async def test_a_user_allowed_one_stations_camera_sees_it_there_only(room: Room) -> None:
    north_hall = await room.login("north-hall")
    status, fleet = await room.get("/api/fleet", north_hall)
    assert status == 200
    seen = {s["id"]: [c["id"] for c in s["cameras"]] for s in fleet["stations"]}
    assert seen == {"north": ["hall"], "south": []}, "a bare 'hall' would have shown south's hall too"
    status, alarms = await room.get("/api/fleet/alarms", north_hall)
    assert {(a["station"], a["camera"]) for a in alarms["alarms"] if a["camera"]} <= {("north", "hall")}
    south_all = await room.login("south-all")
    seen = {s["id"]: sorted(c["id"] for c in s["cameras"]) for s in (await room.get("/api/fleet", south_all))[1][
        "stations"]}
    assert seen == {"north": [], "south": ["cell", "hall"]}

    # Live view: the same answer for another station's camera, an unknown camera and an unknown station.
    answers = []
    for station, camera in (("south", "hall"), ("north", "no-such-camera"), ("nowhere", "hall")):
        status, body, _ = await room.watch(station, camera, north_hall)
        answers.append((status, body["error"]))
    assert answers == [(403, "camera_forbidden")] * 3, answers
    status, body, location = await room.watch("north", "hall", north_hall)
    assert status == 201 and location, body


async def test_console_logout_ends_its_fleet_feed_and_the_live_view_at_the_station(room: Room) -> None:
    headers = await room.login("everything")
    feed = await room.http.get(room.url("/api/fleet/stream"), headers=headers)
    assert feed.status == 200
    await asyncio.wait_for(feed.content.readuntil(b"\n\n"), 5)
    status, body, location = await room.watch("north", "hall", headers)
    assert status == 201 and location, body
    station_relay = room.station.server.app[WHEP]
    assert len(station_relay.sessions) == 1

    async with room.http.post(room.url("/api/logout"), headers=headers) as resp:
        assert resp.status == 204
    await asyncio.wait_for(feed.content.read(), 5)
    assert feed.content.at_eof(), "the fleet feed outlived the logout"
    deadline = time.monotonic() + 10  # a request to the station: generous on a loaded machine
    while station_relay.sessions:
        assert time.monotonic() < deadline, "the station's live session outlived the console user's logout"
        await asyncio.sleep(0.05)
    # The console records live.stop once the station has answered its DELETE, which may be just after the
    # station dropped the session: wait for the entry (with a deadline) rather than race it.
    deadline = time.monotonic() + 10
    while True:
        await room.runtime.audit.db.call(lambda: None)
        entries = await room.runtime.audit.db.call(room.runtime.audit.query, AuditQuery(action="live.stop"))
        if entries or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert [(e.json()["actor"], e.json()["details"].get("reason")) for e in entries] == [("everything", "logout")]
    stops = await room.station.audit(action="live.stop")
    assert stops and stops[-1]["details"].get("central_user") == "everything"


# pytest-asyncio runs the hypothesis test inside a given of its own: that nesting is expected here.
@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.nested_given])
@given(data=st.data())
async def test_fuzzed_requests_to_the_console(room: Room, data: st.DataObject) -> None:
    """The console's own description drives the fuzzing, as on a station: never a 500, always a JSON error."""
    from tests.test_fuzz_api import bodies, check, json_operations, parameterised_operations, query_value

    headers = {"Authorization": f"Bearer {room.runtime_token}"}
    async with room.http.get(room.url("/api/openapi.json"), headers=headers) as resp:
        doc = await resp.json()
    for method, path, schema in json_operations(doc):
        body = data.draw(bodies(schema), label=f"{method} {path}")
        async with room.http.request(method, room.url(path), data=body, headers={
                "Content-Type": "application/json", "Origin": room.origin, "Sec-Fetch-Site": "same-origin"}) as resp:
            answer = await resp.json() if resp.content_type == "application/json" else await resp.read()
            check(resp.status, answer, f"{method} {path} {body[:200]!r}")
    for method, path, parameters in parameterised_operations(doc):
        concrete, query = path, {}
        for parameter in parameters:
            value = data.draw(query_value(parameter.get("schema", {})), label=parameter["name"])
            if parameter["in"] == "path":
                concrete = concrete.replace("{" + parameter["name"] + "}",
                                            urllib.parse.quote(value, safe="") or "x")
            elif data.draw(st.booleans()):
                query[parameter["name"]] = value
        url = URL(room.url(concrete), encoded=True).with_query(query) if query else URL(room.url(concrete),
                                                                                          encoded=True)
        if len(str(url)) > 8000:
            continue  # over aiohttp's request-line limit: its parser answers 400 in plain text
        async with room.http.request(method, url, headers=headers) as resp:
            answer = await resp.json() if resp.content_type == "application/json" else await resp.read()
            check(resp.status, answer, f"{method} {url}")
