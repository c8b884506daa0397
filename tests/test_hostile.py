"""Hostile clients against a station: what an attacker on the police network tries, and what must hold.

Each story is an attack from issue 12, run as an attacker would: concurrent
requests are ``asyncio.gather`` of real HTTP requests over loopback TCP
against the real daemon (in process, :mod:`tests.hostile`).  Every limit
answers 429, 503 or 413 with a JSON ``{"error", "message"}``; streams end
when the identity that opened them does; nothing leaves the site or tells a
restricted user which cameras exist.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from nvr.base.timeutil import iso
from nvr.identity.roles import Role
from tests.hostile import PASSWORD, RunningStation, read_event_stream, running_station, station_config
from web.access import ACCESS, safe_next
from web.whep import WHEP


def is_json_error(body: Any, code: str | None = None) -> bool:
    return isinstance(body, dict) and isinstance(body.get("message"), str) and (
        body.get("error") == code if code else isinstance(body.get("error"), str))


# -- sign-in ----------------------------------------------------------------------------------


async def test_twenty_concurrent_guesses_evaluate_at_most_three_and_the_right_one_does_not_get_in(
        tmp_path: Path) -> None:
    # On main the limit was checked before the awaited Argon2 check and failures counted after it:
    # all twenty were evaluated and the twentieth, right, answered 200.
    async with running_station(station_config(tmp_path)) as station:
        wrong = [asyncio.ensure_future(station.login("monitor1", f"guess {n}")) for n in range(19)]
        throttle = station.server.app[ACCESS].throttle
        deadline = time.monotonic() + 1.0
        while getattr(throttle, "pending", 0) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # until the guesses are in (their password checks take 0.1-0.3 s)
        right = asyncio.ensure_future(station.login("monitor1", PASSWORD))
        results = await asyncio.gather(*wrong, right)
        statuses = [status for status, _, _ in results]
        assert statuses.count(401) <= 3, statuses
        assert results[-1][0] == 429 and results[-1][2] is None, "the right password got in past the limit"
        assert all(is_json_error(body, "login_locked") for status, body, _ in results if status == 429)
        failed = [e for e in await station.audit(action="login.failed") if e["actor"] == "monitor1"]
        assert len(failed) <= 3, f"{len(failed)} passwords were checked with a limit of 3"
        # Another user, from the same address, still signs in.
        assert (await station.login("auditor1"))[0] == 200
        _, metrics, _ = await station.request("GET", "/metrics", headers=station.auth("technician"))
        assert f'nvr_logins_refused_total{{reason="locked"}} {statuses.count(429)}.0'.encode() in metrics


async def test_a_sign_in_flood_waits_in_its_own_pool_and_the_default_executor_stays_free(tmp_path: Path) -> None:
    config = station_config(tmp_path, auth={"login_max_failures": 1000, "max_pending_logins": 4,
                                            "password_check_threads": 1})
    async with running_station(config) as station:
        loop = asyncio.get_running_loop()
        flood = [asyncio.ensure_future(station.login(f"ghost{n}", "guess")) for n in range(60)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await loop.run_in_executor(None, lambda: None)  # what clips and exports queue behind
        waited = time.monotonic() - started
        results = await asyncio.gather(*flood)
        statuses = [status for status, _, _ in results]
        assert waited < 0.5, f"the default executor was busy for {waited:.2f} s during a sign-in flood"
        assert statuses.count(401) + statuses.count(503) == 60, statuses
        assert statuses.count(503) >= 40, "more sign-ins were queued than max_pending_logins"
        busy = next(body for status, body, _ in results if status == 503)
        assert is_json_error(busy, "login_busy")


async def test_a_flood_of_refused_requests_leaves_a_bounded_trail(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                                  ) -> None:
    # Every refused request was audited (a disk write) and bad paths logged at WARNING, one each:
    # a flood from one address filled the audit log and the journal, and took the disk from recording.
    from yarl import URL

    async with running_station(station_config(tmp_path)) as station:
        bad = [station.http.get(URL(station.url("/") + f"static/..%2F..%2Fetc%2Fpasswd{n}", encoded=True))
               for n in range(150)]
        statuses = [resp.status for resp in await asyncio.gather(*bad)]
        assert statuses == [400] * 150
        for _ in range(3):
            await station.login("monitor1", "wrong")
        locked = await asyncio.gather(*(station.login("monitor1", "wrong") for _ in range(100)))
        assert [status for status, _, _ in locked] == [429] * 100
        rejected = await station.audit(action="request.rejected")
        assert 1 <= len(rejected) <= 25, f"{len(rejected)} audit entries for 150 bad paths"
        assert len(await station.audit(action="login.locked")) <= 25
        warnings = [r for r in caplog.records if r.levelname == "WARNING" and "refused GET" in r.getMessage()]
        assert 1 <= len(warnings) <= 25
        # Other clients' refusals are still recorded: the budget is per address and kind.
        status, _, _ = await station.request("GET", "/api/audit", headers=station.auth("monitor"))
        assert status == 403
        denied = await station.audit(action="access.denied")
        assert any(e["actor"] == "token:monitor" for e in denied)


# -- live sessions and event streams ----------------------------------------------------------


async def test_six_concurrent_offers_with_a_limit_of_two_open_two_sessions(tmp_path: Path) -> None:
    # On main the limit was checked before the awaits and the session inserted after: six sessions.
    async with running_station(station_config(tmp_path, live={"max_sessions": 2})) as station:
        results = await asyncio.gather(*(station.watch_live("hall", station.auth("monitor")) for _ in range(6)))
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [201, 201, 503, 503, 503, 503], statuses
        assert all(is_json_error(body, "too_many_sessions") for status, body, _ in results if status == 503)
        relay = station.server.app[WHEP]
        assert len(relay.sessions) == 2 and relay.slots.in_use == 2
        _, metrics, _ = await station.request("GET", "/metrics", headers=station.auth("technician"))
        assert b'nvr_live_sessions_refused_total{reason="total"} 4.0' in metrics
        assert b"nvr_live_sessions 2.0" in metrics
        # Ending one frees exactly one slot.
        sid = next(s for status, _, s in results if status == 201)
        assert (await station.request("DELETE", f"/api/whep/sessions/{sid}", headers=station.auth("monitor")))[0] == 204
        again = await asyncio.gather(*(station.watch_live("hall", station.auth("admin")) for _ in range(3)))
        assert sorted(s for s, _, _ in again) == [201, 503, 503]


async def test_one_user_cannot_take_every_live_session(tmp_path: Path) -> None:
    config = station_config(tmp_path, live={"max_sessions": 10, "max_sessions_per_user": 2})
    async with running_station(config) as station:
        results = await asyncio.gather(*(station.watch_live("hall", station.auth("monitor")) for _ in range(6)))
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [201, 201, 429, 429, 429, 429], statuses
        assert all(is_json_error(body, "too_many_sessions_per_user") for s, body, _ in results if s == 429)
        assert (await station.watch_live("cell", station.auth("admin")))[0] == 201  # others still get in


async def test_event_streams_are_bounded_in_all_and_per_user(tmp_path: Path) -> None:
    config = station_config(tmp_path, web={"max_event_streams": 3, "max_event_streams_per_user": 2})
    async with running_station(config) as station:
        results = await asyncio.gather(*(read_event_stream(station, station.auth("monitor")) for _ in range(5)))
        statuses = sorted(resp.status for resp, _ in results)
        assert statuses == [200, 200, 429, 429, 429], statuses
        assert all(b"error" in body and b"too_many_streams_per_user" in body
                   for resp, body in results if resp.status == 429)
        others = await asyncio.gather(*(read_event_stream(station, station.auth(who))
                                        for who in ("technician", "auditor")))
        assert sorted(resp.status for resp, _ in others) == [200, 503]
        for resp, _ in [*results, *others]:
            resp.close()
        async def freed() -> None:
            while station.server.app[ACCESS].event_streams.in_use:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(freed(), 5)  # closed streams give their slots back


# -- streams end when their identity does -----------------------------------------------------


async def _ended(resp: Any, timeout: float = 6.0) -> bool:
    """The event stream ends (EOF) within ``timeout``."""
    try:
        await asyncio.wait_for(resp.content.read(), timeout)
    except TimeoutError:
        return False
    return bool(resp.content.at_eof())


async def _live_stopped(station: RunningStation, sid: str, timeout: float = 6.0) -> dict[str, Any]:
    relay = station.server.app[WHEP]
    deadline = time.monotonic() + timeout
    while sid in relay.sessions:
        assert time.monotonic() < deadline, "the live session outlived its identity"
        await asyncio.sleep(0.05)
    stops = [e for e in await station.audit(action="live.stop") if e["details"].get("session") == sid[:8]]
    assert len(stops) == 1, stops
    return stops[0]


async def test_logout_ends_the_sessions_event_feed_and_live_view_at_once(tmp_path: Path) -> None:
    async with running_station(station_config(tmp_path)) as station:
        _, _, cookie = await station.login("monitor1")
        headers = {"Cookie": f"nvr_session={cookie}"}
        feed, _ = await read_event_stream(station, headers)
        status, body, sid = await station.watch_live("hall", headers)
        assert status == 201 and sid, body
        assert (await station.request("POST", "/api/logout", headers={**headers, "Origin": station.origin,
                                                                      "Sec-Fetch-Site": "same-origin"}))[0] == 204
        assert await _ended(feed, 4.0), "the event feed outlived the logout"
        stop = await _live_stopped(station, sid, 4.0)
        assert stop["actor"] == "monitor1" and stop["details"]["reason"] == "logout"


async def test_removed_user_expired_session_and_revoked_token_end_their_streams(tmp_path: Path) -> None:
    async with running_station(station_config(tmp_path)) as station:
        # A user removed with the CLI (another process, another connection).
        _, _, removed_cookie = await station.login("monitor1")
        removed = {"Cookie": f"nvr_session={removed_cookie}"}
        removed_feed, _ = await read_event_stream(station, removed)
        _, _, removed_sid = await station.watch_live("hall", removed)
        # A session that expires (idle timeout) while its streams are open.
        _, _, idle_cookie = await station.login("admin1")
        idle = {"Cookie": f"nvr_session={idle_cookie}"}
        idle_feed, _ = await read_event_stream(station, idle)
        # A token revoked with the CLI.
        token = station.auth("monitor")
        token_feed, _ = await read_event_stream(station, token)
        _, _, token_sid = await station.watch_live("cell", token)
        assert removed_sid and token_sid

        db = station.db()
        await asyncio.to_thread(db.remove_user, "monitor1")
        await asyncio.to_thread(db.revoke_token, "monitor")
        await asyncio.to_thread(db.close)
        conn = sqlite3.connect(station.daemon.config.auth_database)
        conn.execute("UPDATE sessions SET last_seen = last_seen - 7200 WHERE user = 'admin1'")
        conn.commit()
        conn.close()

        ended = await asyncio.gather(_ended(removed_feed), _ended(idle_feed), _ended(token_feed))
        assert ended == [True, True, True], "feeds outlived removal / expiry / revocation"
        assert (await _live_stopped(station, removed_sid))["details"]["reason"] == "user removed"
        assert (await _live_stopped(station, token_sid))["details"]["reason"] == "token revoked"
        # A feed of an identity that is still good carries on.
        good, _ = await read_event_stream(station, station.auth("technician"))
        assert not await _ended(good, 1.5)
        good.close()


# -- redirects after sign-in ------------------------------------------------------------------

OFF_SITE = [
    "/%09/evil.example", "/\t/evil.example", "/\r\n/evil.example", "/\n/evil.example", "//evil.example",
    "/\\evil.example", "\\\\evil.example", "/\\/evil.example", "https://evil.example/", "http:evil.example",
    "javascript:alert(1)", "%2F%2Fevil.example", "/%2F/evil.example", "/%5Cevil.example", "/%250909/evil",
    "/%252F%252Fevil.example", " //evil.example", "/\x00/evil.example", "evil.example", "", "/" * 3000,
]


@pytest.mark.parametrize("next_page", OFF_SITE)
def test_the_page_after_sign_in_never_leaves_the_site(next_page: str) -> None:
    assert safe_next(next_page) == "/"


def test_paths_on_the_site_are_kept() -> None:
    for page in ("/", "/playback?camera=hall&start=2026-01-01T00:00:00Z", "/api/me", "/playback#t=3"):
        assert safe_next(page) == page


async def test_sign_in_answers_only_a_same_site_next(tmp_path: Path) -> None:
    async with running_station(station_config(tmp_path)) as station:
        status, body, _ = await station.login("monitor1", next="/%09/evil.example")
        assert status == 200 and body["next"] == "/"
        status, body, _ = await station.login("monitor1", next="/playback?camera=hall")
        assert status == 200 and body["next"] == "/playback?camera=hall"
        status, body, _ = await station.login("monitor1", next={"not": "a string"})
        assert status == 200 and body["next"] == "/"


# -- point 6: offers, pages, ranges, allow-lists ----------------------------------------------


async def test_an_offer_split_across_tcp_segments_is_read_whole(tmp_path: Path) -> None:
    # On main the offer was read with content.read(n): whatever had arrived, so half an offer.
    async with running_station(station_config(tmp_path)) as station:
        offer = (await station.offer()).encode()
        port = station.server.port
        assert port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /api/cameras/hall/whep HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Authorization: Bearer {station.tokens['monitor']}\r\nContent-Type: application/sdp\r\n"
                     f"Content-Length: {len(offer)}\r\nConnection: close\r\n\r\n".encode() + offer[:300])
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(offer[300:])
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert reply.startswith(b"HTTP/1.1 201"), reply[:400]


async def test_an_oversized_offer_answers_413(tmp_path: Path) -> None:
    async with running_station(station_config(tmp_path)) as station:
        headers = {**station.auth("monitor"), "Content-Type": "application/sdp"}

        async def chunks() -> Any:
            yield b"v=0\r\n"
            for _ in range(80):
                yield b"a=x" + b"y" * 1021 + b"\r\n"

        status, body, _ = await station.request("POST", "/api/cameras/hall/whep", data=chunks(), headers=headers)
        assert status == 413 and is_json_error(body, "payload_too_large")


async def test_a_restricted_technician_sees_live_sessions_of_their_cameras_only(tmp_path: Path) -> None:
    restricted = {"hall-tech": (Role.TECHNICIAN, frozenset({"hall"}))}
    async with running_station(station_config(tmp_path), restricted) as station:
        assert (await station.watch_live("cell", station.auth("admin")))[0] == 201
        assert (await station.watch_live("hall", station.auth("admin")))[0] == 201
        status, body, _ = await station.request("GET", "/api/live/sessions", headers=station.auth("hall-tech"))
        assert status == 200
        assert [s["camera_id"] for s in body["sessions"]] == ["hall"]
        assert set(body["readers"]) == {"hall"}, "readers name cameras the technician may not see"


async def test_forbidden_and_unknown_cameras_answer_the_same_to_a_restricted_user(tmp_path: Path) -> None:
    restricted = {"hall-monitor": (Role.MONITOR, frozenset({"hall"})),
                  "hall-auditor": (Role.AUDITOR, frozenset({"hall"}))}
    async with running_station(station_config(tmp_path), restricted) as station:
        start, end = iso(time.time() - 600), iso(time.time() - 60)

        async def answer(who: str, method: str, path: str, camera: str) -> tuple[int, Any]:
            path = path.replace("CAM", camera)
            kwargs: dict[str, Any] = {"headers": station.auth(who)}
            if path.endswith("/whep"):
                kwargs["data"] = await station.offer()
                kwargs["headers"] = {**kwargs["headers"], "Content-Type": "application/sdp"}
            elif path == "/api/exports":
                kwargs["json"] = {"cameras": ["hall", camera], "start": start, "end": end, "reason": "case 1"}
            elif path == "/api/holds":
                kwargs["json"] = {"camera": camera, "start": start, "end": end, "reason": "case 1"}
            status, body, _ = await station.request(method, path, **kwargs)
            return status, body.get("error") if isinstance(body, dict) else body

        probes = [
            ("hall-monitor", "GET", "/api/cameras/CAM"),
            ("hall-monitor", "GET", "/api/events?camera=CAM"),
            ("hall-monitor", "POST", "/api/cameras/CAM/whep"),
            ("hall-monitor", "OPTIONS", "/api/cameras/CAM/whep"),
            ("hall-auditor", "GET", f"/api/recordings?camera=CAM&start={start}&end={end}"),
            ("hall-auditor", "GET", f"/api/recordings/CAM/clip.mp4?start={start}&end={end}"),
            ("hall-auditor", "GET", f"/api/coverage?camera=CAM&start={start}&end={end}"),
            ("hall-auditor", "POST", "/api/exports"),
            ("hall-auditor", "POST", "/api/holds"),
        ]
        for who, method, path in probes:
            forbidden = await answer(who, method, path, "cell")
            unknown = await answer(who, method, path, "no-such-camera")
            assert forbidden == unknown, f"{method} {path}: cell {forbidden} but an unknown camera {unknown}"
            assert forbidden[0] == 403, (path, forbidden)


async def test_a_restricted_auditor_cannot_tell_others_holds_from_missing_ones(tmp_path: Path) -> None:
    restricted = {"hall-auditor": (Role.AUDITOR, frozenset({"hall"}))}
    async with running_station(station_config(tmp_path), restricted) as station:
        start, end = iso(time.time() - 600), iso(time.time() - 60)
        status, hold, _ = await station.request("POST", "/api/holds", headers=station.auth("admin"), json={
            "camera": "cell", "start": start, "end": end, "reason": "complaint 9"})
        assert status == 201, hold
        other = await station.request("DELETE", f"/api/holds/{hold['id']}", headers=station.auth("hall-auditor"))
        missing = await station.request("DELETE", "/api/holds/999999", headers=station.auth("hall-auditor"))
        assert (other[0], other[1]["error"]) == (missing[0], missing[1]["error"]) == (404, "unknown_hold")
        status, holds, _ = await station.request("GET", "/api/holds", headers=station.auth("admin"))
        assert [h["id"] for h in holds] == [hold["id"]]  # still held


async def test_the_playback_page_sends_the_same_csp_as_the_console(tmp_path: Path) -> None:
    async with running_station(station_config(tmp_path)) as station:
        _, _, console = await station.request("GET", "/", headers=station.auth("admin"))
        status, _, playback = await station.request("GET", "/playback", headers=station.auth("admin"))
        assert status == 200
        csp = console.headers["Content-Security-Policy"]
        assert playback.headers.get("Content-Security-Policy") == csp and "script-src 'self'" in csp


async def test_a_search_range_is_bounded(tmp_path: Path) -> None:
    async with running_station(station_config(tmp_path, recordings={"max_search_hours": 48})) as station:
        now = time.time()
        q = urllib.parse.urlencode({"camera": "hall", "start": iso(now - 49 * 3600), "end": iso(now)})
        status, body, _ = await station.request("GET", f"/api/recordings?{q}", headers=station.auth("auditor"))
        assert status == 400 and is_json_error(body, "invalid_end") and "48" in body["message"]
        q = urllib.parse.urlencode({"camera": "hall", "start": iso(now - 47 * 3600), "end": iso(now)})
        assert (await station.request("GET", f"/api/recordings?{q}", headers=station.auth("auditor")))[0] == 200


async def test_the_api_describes_itself_from_the_route_table(tmp_path: Path) -> None:
    async with running_station(station_config(tmp_path)) as station:
        assert (await station.request("GET", "/api/openapi.json"))[0] == 401
        status, doc, _ = await station.request("GET", "/api/openapi.json", headers=station.auth("monitor"))
        assert status == 200 and doc["openapi"].startswith("3.")
        served = {(r.method, r.resource.canonical) for r in station.server.app.router.routes()
                  if r.resource is not None and r.method != "HEAD" and r.resource.canonical != "/static"}
        described = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
        assert described == served
        login = doc["paths"]["/api/login"]["post"]
        assert login["x-nvr-permission"] == "public" and "security" not in login
        schema = login["requestBody"]["content"]["application/json"]["schema"]
        assert schema["required"] == ["username", "password"]


# -- the same races against `nvr run` itself ---------------------------------------------------


def test_the_races_against_the_daemon_process(daemon_factory: Any, tmp_path: Path) -> None:
    """Sign-in and live-session races over real sockets to ``nvr run`` (its server, limits and all)."""
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection

    daemon = daemon_factory([{"id": "hall", "name": "Hall", "url": "rtsp://127.0.0.1:9/none", "record": False}],
                            auth={"login_max_failures": 3, "login_max_failures_per_address": 100},
                            live={"max_sessions": 2, "connect_timeout_seconds": 30})
    daemon.add_user("monitor1", "monitor", PASSWORD)
    origin = {"Origin": daemon.base_url, "Sec-Fetch-Site": "same-origin"}

    async def race() -> tuple[list[int], list[int]]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            async def login(password: str) -> int:
                async with http.post(daemon.base_url + "/api/login", headers=origin,
                                     json={"username": "monitor1", "password": password}) as resp:
                    return resp.status

            async def pending() -> float:
                async with http.get(daemon.base_url + "/metrics",
                                    headers={"Authorization": f"Bearer {daemon.token}"}) as resp:
                    line = next(x for x in (await resp.text()).splitlines() if x.startswith("nvr_logins_pending "))
                    return float(line.split()[1])

            guesses = [asyncio.ensure_future(login(f"guess {n}")) for n in range(19)]
            deadline = time.monotonic() + 2
            while await pending() < 3 and time.monotonic() < deadline:
                pass  # until three guesses are being checked (Argon2 takes 0.1-0.3 s each here)
            logins = await asyncio.gather(*guesses, login(PASSWORD))

            peers = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(6)]
            offers = []
            for pc in peers:
                pc.addTransceiver("video", direction="recvonly")
                await pc.setLocalDescription(await pc.createOffer())
                offers.append(pc.localDescription.sdp)

            async def offer(sdp: str) -> int:
                async with http.post(daemon.base_url + "/api/cameras/hall/whep", data=sdp, headers={
                        "Authorization": f"Bearer {daemon.token}", "Content-Type": "application/sdp"}) as resp:
                    return resp.status

            live = await asyncio.gather(*(offer(sdp) for sdp in offers))
            await asyncio.gather(*(pc.close() for pc in peers))
            return logins, live

    logins, live = asyncio.run(race())
    assert logins.count(401) <= 3 and logins[-1] == 429, logins
    assert sorted(live) == [201, 201, 503, 503, 503, 503], live
    assert "Traceback" not in daemon.log()
